"""Image-folder datasets: ``identity/xxx.jpg`` trees and the TinyFace test layout."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .common import CorruptPolicy, check_label, fingerprint
from .recordio import IRHeader, PathLike
from .transforms import FaceTransform, load_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TINYFACE_SUBSETS = ("Probe", "Gallery_Match", "Gallery_Distractor")
DISTRACTOR_LABEL = -100


def list_images(folder: PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (sorted, hidden files skipped)."""
    root = Path(folder)
    it = root.rglob("*") if recursive else root.iterdir()
    exts = tuple(e.lower() for e in extensions)
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in exts
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


class _FileDataset(Dataset):
    """Shared loading for datasets that are a list of ``(path, label)``."""

    paths: list[Path]
    labels: np.ndarray
    root: Path

    def _setup(self, transform: Callable | None, size: int | None, on_corrupt: str) -> None:
        self.transform = transform if transform is not None else FaceTransform(size)
        self._policy = CorruptPolicy(on_corrupt)

    @property
    def corrupt_count(self) -> int:
        """Images skipped as corrupt in this process (``on_corrupt="skip"``)."""
        return self._policy.corrupt_count

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_image(self.paths[index])), int(self.labels[index])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """``(image (3, size, size) float, label int)``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images in {self.root}")
        return self._policy.get(index % len(self), len(self), self._load, lambda i: self.paths[i])

    def read_record(self, index: int) -> tuple[IRHeader, bytes]:
        """Raw access for caches: ``(IRHeader(label=label, id=index), encoded image bytes)``.

        Same shape as :meth:`RecordDataset.read_record`, so cache code handles both alike.
        """
        header = IRHeader(0, float(self.labels[index]), int(index), 0)
        return header, self.paths[index].read_bytes()

    def dataset_hash(self) -> str:
        """Cheap fingerprint over file names, sizes and mtimes (no contents read)."""
        return fingerprint(self.paths, len(self), extra="|".join(
            str(p.relative_to(self.root)) for p in self.paths))


class ImageFolderDataset(_FileDataset):
    """``root/<identity>/<image>``: label = rank of the identity folder name (sorted).

    ``classes[label]`` gives the folder name back; folders without images are left out.
    Images directly under ``root`` are refused (they have no identity). Empty folders raise ``FileNotFoundError``/``ValueError``
    naming the folder.
    """

    def __init__(self, root: PathLike, transform: Callable | None = None, size: int | None = 120,
                 num_classes: int | None = None, on_corrupt: str = "raise",
                 extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        loose = list_images(self.root, extensions, recursive=False)
        if loose:
            raise ValueError(f"{self.root}: image {loose[0].name} is not inside an identity "
                             "folder (expected root/<identity>/<image>)")
        # Identity folders without images get no label, as in pack_folder, so a packed
        # folder and the folder itself agree on every label.
        self.classes: list[str] = []
        paths, labels = [], []
        for d in sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")):
            files = list_images(d, extensions)
            if files:
                paths += files
                labels += [len(self.classes)] * len(files)
                self.classes.append(d.name)
        if not paths:
            raise ValueError(f"{self.root}: no images ({', '.join(extensions)}) in any identity "
                             "folder")
        self.num_classes = num_classes
        if num_classes is not None and len(self.classes) > num_classes:
            check_label(len(self.classes) - 1, num_classes,
                        f"{self.root / self.classes[-1]} ({len(self.classes)} identity folders)")
        self.paths, self.labels = paths, np.asarray(labels, dtype=np.int64)
        self._setup(transform, size, on_corrupt)

    def __repr__(self) -> str:
        return (f"ImageFolderDataset({str(self.root)!r}, images={len(self)}, "
                f"classes={len(self.classes)})")


def tinyface_label(path: PathLike) -> int:
    """TinyFace identity from a file name: ``'1_3.jpg'`` -> 1 (the part before the first ``_``).

    Same parsing as AdaFace's / PETALface's TinyFace evaluation.
    """
    name = Path(path).name
    head = name.split("_")[0]
    if not head.isdigit():
        raise ValueError(f"{path}: TinyFace file names start with '<identity>_' (e.g. 1_3.jpg); "
                         f"cannot read an identity from {name!r}")
    return int(head)


class TinyFaceDataset(_FileDataset):
    """The TinyFace test set: ``root/Probe``, ``root/Gallery_Match``, ``root/Gallery_Distractor``.

    Labels come from file names (:func:`tinyface_label`); distractors are labelled -100.
    ``subset`` holds each image's subset name and ``keys`` its file stem (the key the
    evaluation protocol uses). ``subsets`` picks which of the three to load (all by default).
    """

    def __init__(self, root: PathLike, subsets: Sequence[str] = TINYFACE_SUBSETS,
                 transform: Callable | None = None, size: int | None = 120,
                 on_corrupt: str = "raise", extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"TinyFace folder not found: {self.root}")
        paths, labels, subset = [], [], []
        for name in subsets:
            if name not in TINYFACE_SUBSETS:
                raise ValueError(f"unknown TinyFace subset {name!r}; expected {TINYFACE_SUBSETS}")
            folder = self.root / name
            if not folder.is_dir():
                raise FileNotFoundError(f"TinyFace subset folder not found: {folder}")
            files = list_images(folder, extensions)
            if not files:
                raise ValueError(f"{folder}: no images ({', '.join(extensions)})")
            paths += files
            subset += [name] * len(files)
            labels += [DISTRACTOR_LABEL if name == "Gallery_Distractor" else tinyface_label(p)
                       for p in files]
        self.paths, self.labels = paths, np.asarray(labels, dtype=np.int64)
        self.subset = np.asarray(subset)
        self.keys = [p.stem for p in paths]
        self._setup(transform, size, on_corrupt)

    def indices(self, subset: str) -> np.ndarray:
        """Item indices of one subset (e.g. ``"Probe"``)."""
        return np.flatnonzero(self.subset == subset)

    def __repr__(self) -> str:
        counts = {s: int((self.subset == s).sum()) for s in TINYFACE_SUBSETS}
        return f"TinyFaceDataset({str(self.root)!r}, {counts})"
