"""The insightface training-set layout (``train.rec`` + ``train.idx``) as a PyTorch dataset."""
from __future__ import annotations

import numbers
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .common import CorruptPolicy, check_label, fingerprint
from .recordio import IRHeader, PathLike, RecordIOError, RecordIOReader
from .transforms import FaceTransform, decode_image


def _resolve(path: PathLike) -> Path:
    p = Path(path)
    return p / "train.rec" if p.is_dir() else p


def read_property(folder: PathLike) -> tuple[int, int, int] | None:
    """insightface's ``property`` file (``num_classes,height,width``), or None if absent."""
    p = Path(folder) / "property"
    if not p.is_file():
        return None
    text = p.read_text().strip()
    try:
        n, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{p}: expected 'num_classes,height,width', got {text[:80]!r}") from None
    return n, h, w


class RecordDataset(Dataset):
    """Face images in MXNet RecordIO, read without mxnet; items are ``(image, label)``.

    Follows insightface's ``MXFaceDataset``: if record 0 has a vector label (``flag > 0``),
    it is the header, ``label[0]`` is the first identity record and images are records
    ``1 .. label[0] - 1``; otherwise every key in the index is an image. A vector image label
    contributes its first value as the class.

    Args:
        path: the ``.rec`` file, or a folder holding ``train.rec`` / ``train.idx``.
        transform: decoded RGB ``PIL.Image`` -> tensor; default ``FaceTransform(size)``.
        size: output size for the default transform (``None`` keeps the stored size).
        num_classes: labels outside ``[0, num_classes)`` raise ``ValueError``; default read
            from insightface's ``property`` file next to the ``.rec`` when present.
        on_corrupt: ``"raise"`` (default) or ``"skip"``: substitute the next good image and
            count the bad one (``corrupt_count``; see :class:`~quality_lora.data.common.CorruptPolicy`).

    Pickles without an open file, so it works with ``DataLoader(num_workers>0)`` and
    ``DistributedSampler`` like any map-style dataset.
    """

    def __init__(self, path: PathLike, idx_path: PathLike | None = None,
                 transform: Callable | None = None, size: int | None = 120,
                 num_classes: int | None = None, on_corrupt: str = "raise") -> None:
        self.rec_path = _resolve(path)
        self.reader = RecordIOReader(self.rec_path, idx_path)
        self.transform = transform if transform is not None else FaceTransform(size)
        self._policy = CorruptPolicy(on_corrupt)
        if num_classes is None:
            prop = read_property(self.rec_path.parent)
            num_classes = prop[0] if prop else None
        self.num_classes = num_classes
        self.header0: tuple[int, int] | None = None
        if not self.reader.keys:
            raise ValueError(f"{self.rec_path}: the RecordIO file holds no records")
        first = self.reader.keys[0] if 0 not in self.reader else 0
        head, _ = self.reader.read_header(first)
        if first == 0 and head.flag > 0:
            lab = np.asarray(head.label)
            start, end = int(lab[0]), int(lab[1]) if lab.size > 1 else int(lab[0])
            if not 1 <= start <= max(self.reader.keys) + 1:
                raise RecordIOError(f"{self.rec_path}: header record 0 says images are records "
                                    f"1..{start - 1}, but the index has keys up to "
                                    f"{max(self.reader.keys)}")
            self.header0 = (start, end)
            self.imgidx = np.arange(1, start, dtype=np.int64)
            # A sample of keys (first, last, ~1000 between) keeps opening a 4M-image set fast.
            probe = list(self.imgidx[:: max(1, len(self.imgidx) // 1000)]) + list(self.imgidx[-1:])
            missing = [int(k) for k in probe if int(k) not in self.reader]
            if missing:
                raise RecordIOError(f"{self.reader.idx_path}: image key {missing[0]} (from header "
                                    "record 0) is not in the index")
        else:
            self.imgidx = np.asarray(self.reader.keys, dtype=np.int64)
        if len(self.imgidx) == 0:
            raise ValueError(f"{self.rec_path}: no image records (header record 0 says 0 images)")

    @property
    def corrupt_count(self) -> int:
        """Images skipped as corrupt in this process (``on_corrupt="skip"``)."""
        return self._policy.corrupt_count

    def __len__(self) -> int:
        return len(self.imgidx)

    def key(self, index: int) -> int:
        """The RecordIO key of dataset item ``index``."""
        return int(self.imgidx[index])

    def read_record(self, index: int) -> tuple[IRHeader, bytes]:
        """Raw access for caches: ``(IRHeader, encoded_image_bytes)`` of item ``index``."""
        return self.reader.read_header(self.key(index))

    def label_of(self, header: IRHeader, key: int) -> int:
        lab = header.label
        value = float(lab) if isinstance(lab, numbers.Number) else float(np.asarray(lab)[0])
        return check_label(int(value), self.num_classes, f"{self.rec_path}, key {key}")

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        key = self.key(index)
        header, data = self.reader.read_header(key)
        label = self.label_of(header, key)
        img = decode_image(data, f"{self.rec_path}, key {key}")
        return self.transform(img), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """``(image (3, size, size) float, label int)``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images in {self.rec_path}")
        return self._policy.get(index % len(self), len(self), self._load, self.key)

    def labels(self) -> np.ndarray:
        """Every image's label ``(N,)`` int64 (reads each record, decodes nothing)."""
        out = np.empty(len(self), dtype=np.int64)
        for i in range(len(self)):
            out[i] = self.label_of(self.read_record(i)[0], self.key(i))
        return out

    def identity_ranges(self) -> list[tuple[int, int]]:
        """insightface identity records: ``[first_key, end_key)`` of each identity's images.

        Empty when the file has no header record 0.
        """
        if self.header0 is None:
            return []
        ranges = []
        for key in range(*self.header0):
            head, _ = self.reader.read_header(key)
            lab = np.asarray(head.label).reshape(-1)
            if head.flag < 2:
                raise RecordIOError(f"{self.rec_path}, key {key}: identity record needs a "
                                    f"(start, end) label, got flag {head.flag}")
            ranges.append((int(lab[0]), int(lab[1])))
        return ranges

    def dataset_hash(self) -> str:
        """Cheap fingerprint (sizes, mtimes, image count) for evaluation/score caches."""
        files = [self.rec_path] + ([self.reader.idx_path] if self.reader.idx_path.is_file() else [])
        return fingerprint(files, len(self))

    def __repr__(self) -> str:
        return (f"RecordDataset({str(self.rec_path)!r}, images={len(self)}, "
                f"num_classes={self.num_classes}, header0={self.header0})")
