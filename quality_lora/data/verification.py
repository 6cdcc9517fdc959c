"""LFW-style ``.bin`` verification sets (LFW, CFP-FP, AgeDB-30, ...), read safely.

A ``.bin`` is a pickle of ``(list of encoded images, list of bool issame)``; pairs are rows
``(2i, 2i+1)``. Pickle can run code, so these files are read with an unpickler that only
builds plain containers, bytes and numpy arrays. The published sets were written by Python 2
(``str`` byte strings, ``encoding="bytes"`` needed); Python 3 re-pickles load the same way.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .common import fingerprint
from .recordio import IRHeader, PathLike
from .transforms import FaceTransform, decode_image


def _numpy_globals() -> dict[tuple[str, str], object]:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    allowed = {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar,
               "ndarray": np.ndarray, "dtype": np.dtype}
    out: dict[tuple[str, str], object] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy"):
        for name, obj in allowed.items():
            out[(module, name)] = obj
    return out


class _SafeUnpickler(pickle.Unpickler):
    """Builds only lists/tuples/bytes/bools/numbers and numpy arrays; refuses any other global."""

    _GLOBALS: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str) -> object:
        if _SafeUnpickler._GLOBALS is None:
            import _codecs

            g = _numpy_globals()
            # Python 3 writes bytes as _codecs.encode(str, "latin1") under protocols < 3.
            g[("_codecs", "encode")] = _codecs.encode
            g[("builtins", "bytearray")] = g[("__builtin__", "bytearray")] = bytearray
            _SafeUnpickler._GLOBALS = g
        try:
            return _SafeUnpickler._GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}: verification "
                                         "files hold only image bytes and bools") from None


def _as_bytes(item: object, path: Path, i: int) -> bytes:
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype.kind in "uiS" and item.dtype.itemsize == 1:
        return item.tobytes()
    if isinstance(item, str):  # a py2 str read with a text encoding
        return item.encode("latin1")
    raise ValueError(f"{path}: image {i} is a {type(item).__name__}, expected encoded image bytes")


def load_bin(path: PathLike) -> tuple[list[bytes], np.ndarray]:
    """Read a ``.bin`` verification set: ``(encoded images (2P,), issame (P,) bool)``.

    Images stay encoded (a few KB each); decode them one at a time.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification file not found: {path}")
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError) as e:
        raise ValueError(f"{path}: not a readable verification .bin pickle: {e}") from e
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{path}: expected a pickled (images, issame) pair, got "
                         f"{type(obj).__name__}")
    bins, issame = obj
    try:
        images = [_as_bytes(b, path, i) for i, b in enumerate(bins)]
        same = np.asarray([bool(v) for v in issame], dtype=bool)
    except TypeError as e:
        raise ValueError(f"{path}: images and issame must be sequences: {e}") from e
    if len(images) != 2 * len(same):
        raise ValueError(f"{path}: {len(images)} images for {len(same)} pairs "
                         f"(need exactly 2 per pair)")
    return images, same


class VerificationBinDataset(Dataset):
    """A ``.bin`` verification set as a dataset of single images, decoded lazily.

    Item ``i`` is ``(image (3, size, size) float, i)``; image ``2k`` and ``2k+1`` form pair
    ``k`` and ``issame[k]`` says whether they show one person. Only the encoded bytes are held
    in memory; flipped copies for test-time flip are the evaluator's job (``x.flip(-1)``).
    Decoded RGB and resized to ``size`` as insightface's ``load_bin`` does.
    """

    def __init__(self, path: PathLike, transform: Callable | None = None,
                 size: int | None = 120) -> None:
        self.path = Path(path)
        self.images, self.issame = load_bin(self.path)
        self.transform = transform if transform is not None else FaceTransform(size)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_pairs(self) -> int:
        return len(self.issame)

    def read_record(self, index: int) -> tuple[IRHeader, bytes]:
        """Raw access: ``(IRHeader(label=index, id=index), encoded image bytes)``."""
        return IRHeader(0, float(index), int(index), 0), self.images[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        # Corrupt images always raise: skipping one would silently change a pair's verdict.
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images in {self.path}")
        index %= len(self)
        img = decode_image(self.images[index], f"{self.path}, image {index}")
        return self.transform(img), index

    def dataset_hash(self) -> str:
        """Cheap fingerprint (size, mtime, image count)."""
        return fingerprint([self.path], len(self))

    def __repr__(self) -> str:
        return f"VerificationBinDataset({str(self.path)!r}, pairs={self.num_pairs})"
