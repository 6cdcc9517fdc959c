"""Helpers shared by the datasets: corrupt-image policy, fingerprints, label checks."""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable, Iterable

import torch

from .transforms import CorruptImageError

ON_CORRUPT = ("raise", "skip")


def check_on_corrupt(on_corrupt: str) -> str:
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
    return on_corrupt


def fingerprint(files: Iterable[Path | str], count: int, extra: str = "") -> str:
    """Cheap dataset fingerprint: sha256 over (name, size, mtime) of ``files`` and ``count``.

    Changes when a file is rewritten, grows or is replaced; reads no file contents, so it is
    safe to call on multi-GB ``.rec`` files as an evaluation-cache key. 16 hex digits.
    """
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{Path(f).name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(f"count={count}\0{extra}".encode())
    return h.hexdigest()[:16]


def check_label(label: int, num_classes: int | None, where: str) -> int:
    """Refuse labels outside ``[0, num_classes)`` (a classifier would index out of range)."""
    if num_classes is not None and not 0 <= label < num_classes:
        raise ValueError(f"{where}: label {label} is outside [0, {num_classes}) "
                         f"(num_classes={num_classes})")
    return label


class CorruptPolicy:
    """``on_corrupt="skip"`` bookkeeping: substitute the next good sample and count the bad.

    A map-style dataset must return *something* for every index; substituting the next
    decodable sample keeps image and label together (the label is that sample's own), which a
    placeholder image could not. Counts are per process (each ``DataLoader`` worker keeps
    its own); every skipped key is also reported once with ``warnings.warn``.
    """

    def __init__(self, on_corrupt: str) -> None:
        self.on_corrupt = check_on_corrupt(on_corrupt)
        self.corrupt: set[object] = set()

    @property
    def corrupt_count(self) -> int:
        return len(self.corrupt)

    def get(self, index: int, n: int, load: Callable[[int], tuple[torch.Tensor, int]],
            key_of: Callable[[int], object]) -> tuple[torch.Tensor, int]:
        for step in range(n):
            i = (index + step) % n
            try:
                return load(i)
            except CorruptImageError as e:
                if self.on_corrupt == "raise":
                    raise
                key = key_of(i)
                if key not in self.corrupt:
                    self.corrupt.add(key)
                    warnings.warn(f"skipping corrupt image: {e}", RuntimeWarning, stacklevel=3)
        raise CorruptImageError(f"every one of the {n} images is corrupt (last index {index})")
