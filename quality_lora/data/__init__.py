"""Face data: RecordIO without mxnet, image folders, TinyFace, ``.bin`` verification sets,
transforms, low-resolution degradation and SynthFaces (procedural faces for demos and tests)."""
from __future__ import annotations

from .degrade import Degradation, degrade, degrade_batch
from .folders import (DISTRACTOR_LABEL, ImageFolderDataset, TinyFaceDataset, list_images,
                      tinyface_label)
from .pack import PackResult, pack_folder
from .rec_dataset import RecordDataset, read_property
from .recordio import (IRHeader, RecordIOError, RecordIOReader, RecordIOWriter, pack_header,
                       read_index, unpack_header)
from .transforms import CorruptImageError, FaceTransform, decode_image, load_image
from .verification import VerificationBinDataset, load_bin

from .synthfaces import SynthFaces, SynthFacesDataset

__all__ = [
    "CorruptImageError", "DISTRACTOR_LABEL", "Degradation", "FaceTransform", "IRHeader",
    "ImageFolderDataset", "PackResult", "RecordDataset", "RecordIOError", "RecordIOReader",
    "RecordIOWriter", "SynthFaces", "SynthFacesDataset", "TinyFaceDataset", "VerificationBinDataset", "decode_image", "degrade",
    "degrade_batch", "list_images", "load_bin", "load_image", "pack_folder", "pack_header",
    "read_index", "read_property", "tinyface_label", "unpack_header",
]
