"""Pack an ``identity/xxx.jpg`` folder tree into insightface-layout RecordIO."""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .folders import IMAGE_EXTENSIONS, list_images
from .recordio import PathLike, RecordIOWriter, pack_header
from .transforms import CorruptImageError, decode_image

_KEEP_FORMATS = ("JPEG", "PNG")


@dataclass
class PackResult:
    """What :func:`pack_folder` wrote."""

    rec_path: Path
    idx_path: Path
    num_images: int
    classes: list[str] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def pack_folder(folder: PathLike, rec_path: PathLike, idx_path: PathLike | None = None,
                size: int | None = None, quality: int = 95, on_corrupt: str = "raise",
                extensions: Sequence[str] = IMAGE_EXTENSIONS) -> PackResult:
    """Write ``folder/<identity>/<image>`` as ``rec_path`` + ``.idx`` in insightface layout.

    Layout (what :class:`RecordDataset` and insightface's ``MXFaceDataset`` read): record 0 is
    the header, label ``[N + 1, N + C + 1]``; images are records ``1..N`` with the identity's
    label (rank of its folder name, identities without a readable image dropped); records
    ``N+1 .. N+C`` hold each identity's ``[first, end)`` image range.

    Every image is decoded once to check it. JPEG/PNG bytes are stored as they are (no
    re-encoding loss) unless ``size`` is given, in which case images are resized (bicubic) to
    ``size×size`` and stored as JPEG at ``quality``; other formats are always re-encoded.
    ``on_corrupt="skip"`` leaves undecodable files out (listed in ``skipped``) instead of
    raising. Output replaces ``rec_path`` only when packing succeeds.
    """
    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    if on_corrupt not in ("raise", "skip"):
        raise ValueError(f"on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality}")
    identities = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = {d: list_images(d, extensions) for d in identities}
    if not any(files.values()):
        raise ValueError(f"{root}: no images ({', '.join(extensions)}) in identity folders "
                         "(expected folder/<identity>/<image>)")
    result = PackResult(Path(rec_path), Path(idx_path) if idx_path else Path(rec_path).with_suffix(".idx"), 0)
    ranges: list[tuple[int, int]] = []
    with RecordIOWriter(result.rec_path, result.idx_path) as writer:
        # Reserve record 0 at offset 0 (readers without the .idx see it first, as with
        # insightface files); its counts are known only at the end. The labels are floats
        # far from the magic word's bit pattern, so the framed size cannot change.
        writer.write_image(0, [0.0, 0.0], patchable=True)
        key = 1
        for ident in identities:
            first = key
            for path in files[ident]:
                data = path.read_bytes()
                try:
                    img = decode_image(data, str(path))
                    fmt = Image.open(io.BytesIO(data)).format
                except CorruptImageError:
                    if on_corrupt == "raise":
                        raise
                    warnings.warn(f"skipping corrupt image {path}", RuntimeWarning, stacklevel=2)
                    result.skipped.append(path)
                    continue
                if size is not None or fmt not in _KEEP_FORMATS:
                    if size is not None:
                        img = img.resize((size, size), Image.BICUBIC)
                    buf = io.BytesIO()
                    img.save(buf, format="JPEG", quality=quality)
                    data = buf.getvalue()
                writer.write_image(key, float(len(ranges)), data, id=key)
                key += 1
            if key > first:
                ranges.append((first, key))
                result.classes.append(ident.name)
        result.num_images = key - 1
        if result.num_images == 0:
            raise ValueError(f"{root}: every image was corrupt; nothing packed")
        id_start = key
        for first, end in ranges:
            writer.write_image(key, [float(first), float(end)], id=key)
            key += 1
        writer.patch(0, _header0(id_start, key))
    return result


def _header0(id_start: int, end: int) -> bytes:
    if end >= 1 << 24:  # float32 stops holding every integer here
        raise ValueError(f"{end} records is more than the float32 header label can count")
    return pack_header([float(id_start), float(end)])
