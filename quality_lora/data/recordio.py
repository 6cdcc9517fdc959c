"""MXNet RecordIO (``.rec`` + ``.idx``) read and written without mxnet.

Written here rather than imported because mxnet is unmaintained, pins old numpy and is a
multi-hundred-MB install; the format is small and fully specified by dmlc-core's
``recordio.cc`` and ``mxnet/recordio.py``:

* a record is ``uint32 magic 0xced7230a``, ``uint32 lrec`` (upper 3 bits: continuation flag,
  lower 29 bits: length), the payload, then zero padding to a multiple of 4 bytes;
* the writer never lets the magic word appear 4-byte aligned inside a payload: it cuts the
  payload there, drops that word and writes the pieces as parts with flags 1 (start),
  2 (middle), 3 (end); the reader puts the magic word back between the parts;
* the ``.idx`` file is text, ``key<TAB>offset`` per line;
* an image payload starts with ``IRHeader`` packed ``<IfQQ`` (flag, label, id, id2); when
  ``flag > 0`` the label is ``flag`` float32 values following the header.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence, Union

import numpy as np

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LEN_MASK = (1 << 29) - 1
MAX_PART_LEN = _LEN_MASK
IR_FORMAT = "<IfQQ"
_HEAD = struct.Struct("<II")
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24

PathLike = Union[str, "os.PathLike[str]"]


class RecordIOError(ValueError):
    """A ``.rec``/``.idx`` file is malformed; the message names the file and offset or key."""


@dataclass(frozen=True)
class IRHeader:
    """The image-record header: ``label`` is a float, or a float32 vector when ``flag > 0``."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def pack_header(label: float | Sequence[float] | np.ndarray, payload: bytes = b"",
                id: int = 0, id2: int = 0) -> bytes:
    """Pack ``IRHeader`` + ``payload`` as ``mxnet.recordio.pack`` does.

    A scalar label gives ``flag = 0``; a vector label gives ``flag = len(label)`` with the
    values stored as float32 after the header (and the header's own label field 0).
    """
    if isinstance(label, (int, float, np.integer, np.floating)):
        return struct.pack(IR_FORMAT, 0, float(label), id, id2) + payload
    vec = np.asarray(label, dtype="<f4").reshape(-1)
    if vec.size == 0:
        raise ValueError("pack_header: a vector label needs at least one value")
    return struct.pack(IR_FORMAT, vec.size, 0.0, id, id2) + vec.tobytes() + payload


def unpack_header(record: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    """Split a record payload into ``(IRHeader, image_bytes)`` (``mxnet.recordio.unpack``)."""
    if len(record) < IR_SIZE:
        raise RecordIOError(f"{where}: {len(record)} bytes is shorter than the {IR_SIZE}-byte "
                            "image header (IRHeader)")
    flag, label, id_, id2 = struct.unpack_from(IR_FORMAT, record)
    end = IR_SIZE
    if flag > 0:
        end = IR_SIZE + 4 * flag
        if len(record) < end:
            raise RecordIOError(f"{where}: header says {flag} label values but the record has "
                                f"only {len(record) - IR_SIZE} bytes after the header")
        label = np.frombuffer(record, dtype="<f4", count=flag, offset=IR_SIZE).astype(np.float32)
    return IRHeader(int(flag), label, int(id_), int(id2)), record[end:]


def frame(payload: bytes) -> bytes:
    """Frame one payload as RecordIO bytes, splitting it where the magic word is aligned."""
    cuts, i = [], payload.find(_MAGIC_BYTES)
    while i >= 0:
        if i % 4 == 0:  # only aligned words are cut (dmlc-core checks every 4th byte)
            cuts.append(i)
            i = payload.find(_MAGIC_BYTES, i + 4)
        else:
            i = payload.find(_MAGIC_BYTES, i + 1)
    pieces, start = [], 0
    for i in cuts:
        pieces.append(payload[start:i])
        start = i + 4
    pieces.append(payload[start:])
    out = bytearray()
    for n, piece in enumerate(pieces):
        if len(piece) > MAX_PART_LEN:
            raise ValueError(f"record part of {len(piece)} bytes exceeds the RecordIO limit of "
                             f"{MAX_PART_LEN} bytes")
        if len(pieces) == 1:
            cflag = 0
        else:
            cflag = 1 if n == 0 else (3 if n == len(pieces) - 1 else 2)
        out += struct.pack("<II", MAGIC, (cflag << 29) | len(piece))
        out += piece
        out += b"\0" * (-len(piece) % 4)
    return bytes(out)


def read_index(idx_path: PathLike, rec_size: int | None = None) -> dict[int, int]:
    """Read a ``.idx`` file into ``{key: offset}`` (file order kept).

    Offsets at or past ``rec_size`` (the ``.rec`` file's size) are refused here, so a stale
    index fails when the dataset opens rather than deep inside a training run.
    """
    index: dict[int, int] = {}
    with open(idx_path, "r", encoding="ascii") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split("\t")
            try:
                if len(parts) != 2:
                    raise ValueError
                key, offset = int(parts[0]), int(parts[1])
            except ValueError:
                raise RecordIOError(f"{idx_path}, line {lineno}: expected 'key<TAB>offset', "
                                    f"got {line[:80]!r}") from None
            if offset < 0 or (rec_size is not None and offset >= rec_size):
                raise RecordIOError(f"{idx_path}, line {lineno}: key {key} points at offset "
                                    f"{offset}, past the end of the .rec file ({rec_size} bytes)")
            index[key] = offset
    return index


class RecordIOReader:
    """Random access to an indexed ``.rec`` file.

    The file is opened lazily and reopened in every process that uses it, so the reader can be
    pickled (no handle travels) and used by ``DataLoader`` workers, whether forked (a forked
    handle would share its file position with the parent) or spawned.

    Args:
        rec_path: the ``.rec`` file.
        idx_path: its ``.idx`` file; default: ``rec_path`` with suffix ``.idx``. If that file
            does not exist the ``.rec`` is scanned once to build the index in memory (keys
            0, 1, ... in file order, as ``MXRecordIO`` would read them).
    """

    def __init__(self, rec_path: PathLike, idx_path: PathLike | None = None) -> None:
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise FileNotFoundError(f"RecordIO file not found: {self.rec_path}")
        self.size = self.rec_path.stat().st_size
        default_idx = self.rec_path.with_suffix(".idx")
        self.idx_path = Path(idx_path) if idx_path is not None else default_idx
        if self.idx_path.is_file():
            self.index = read_index(self.idx_path, self.size)
        elif idx_path is not None:
            raise FileNotFoundError(f"RecordIO index not found: {self.idx_path}")
        else:
            self.index = {k: off for k, off in enumerate(self.scan())}
        self.keys: list[int] = list(self.index)
        self._file: BinaryIO | None = None
        self._map: mmap.mmap | None = None
        self._pid = -1

    # -- pickling: never carry an open handle or mapping across processes
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"], state["_map"], state["_pid"] = None, None, -1
        return state

    def _buffer(self) -> mmap.mmap:
        if self._map is None or self._pid != os.getpid():
            # Map once per process: a read is then a slice (no syscall, no seek), and nothing
            # is shared with a parent that forked us.
            if self.size == 0:
                raise RecordIOError(f"{self.rec_path}: the file is empty")
            self._file = open(self.rec_path, "rb")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            if len(self._map) != self.size:
                raise RecordIOError(f"{self.rec_path}: file changed size since it was opened "
                                    f"({self.size} -> {len(self._map)} bytes)")
            self._pid = os.getpid()
        return self._map

    def close(self) -> None:
        if self._pid == os.getpid():
            if self._map is not None:
                self._map.close()
            if self._file is not None:
                self._file.close()
        self._file, self._map, self._pid = None, None, -1

    def __enter__(self) -> "RecordIOReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: int) -> bool:
        return key in self.index

    def read_at(self, offset: int) -> bytes:
        """The payload of the record starting at byte ``offset`` (multi-part records joined)."""
        buf, size = self._buffer(), self.size
        parts: list[bytes] = []
        pos = offset
        while True:
            if pos + 8 > size:
                raise RecordIOError(f"{self.rec_path}: truncated record header at offset {pos} "
                                    f"(file is {size} bytes)")
            magic, lrec = _HEAD.unpack_from(buf, pos)
            if magic != MAGIC:
                raise RecordIOError(f"{self.rec_path}: bad magic number 0x{magic:08x} at offset "
                                    f"{pos} (expected 0x{MAGIC:08x}); wrong offset in the index "
                                    "or not a RecordIO file")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            if cflag != (2 if parts else 0) and cflag != (3 if parts else 1):
                raise RecordIOError(f"{self.rec_path}: unexpected continuation flag {cflag} at "
                                    f"offset {pos} (record starting at offset {offset})")
            if pos + 8 + length > size:
                raise RecordIOError(f"{self.rec_path}: truncated record at offset {pos}: header "
                                    f"says {length} bytes, only {size - pos - 8} left in the file")
            data = buf[pos + 8:pos + 8 + length]
            if cflag == 0:
                return data
            parts.append(data)
            pos += 8 + length + (-length % 4)
            if cflag == 3:
                # The writer dropped the magic word at each cut; put it back.
                return _MAGIC_BYTES.join(parts)

    def read(self, key: int) -> bytes:
        """The payload of the record with index key ``key``."""
        try:
            offset = self.index[key]
        except KeyError:
            raise KeyError(f"{self.idx_path}: no record with key {key}") from None
        return self.read_at(offset)

    def read_header(self, key: int) -> tuple[IRHeader, bytes]:
        """``(IRHeader, image_bytes)`` of record ``key``."""
        return unpack_header(self.read(key), f"{self.rec_path}, key {key}")

    def scan(self) -> list[int]:
        """Offsets of every record start, found by walking the file (no index needed)."""
        offsets, pos = [], 0
        with open(self.rec_path, "rb") as f:
            while pos < self.size:
                start, cflag = pos, 1
                while cflag not in (0, 3):
                    f.seek(pos)
                    head = f.read(8)
                    if len(head) < 8:
                        raise RecordIOError(f"{self.rec_path}: truncated record header at "
                                            f"offset {pos}")
                    magic, lrec = struct.unpack("<II", head)
                    if magic != MAGIC:
                        raise RecordIOError(f"{self.rec_path}: bad magic number 0x{magic:08x} "
                                            f"at offset {pos}")
                    cflag, length = lrec >> 29, lrec & _LEN_MASK
                    pos += 8 + length + (-length % 4)
                    if pos > self.size:
                        raise RecordIOError(f"{self.rec_path}: truncated record at offset "
                                            f"{start}: it runs past the end of the file")
                offsets.append(start)
        return offsets


class RecordIOWriter:
    """Write an indexed ``.rec`` + ``.idx`` pair the way ``MXIndexedRecordIO`` does.

    Output goes to temporary files that replace the targets only on a clean ``close()``, so a
    failed run never leaves a half-written file over a good one. Use as a context manager.
    """

    def __init__(self, rec_path: PathLike, idx_path: PathLike | None = None) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        if self.rec_path.resolve() == self.idx_path.resolve():
            raise ValueError(f"RecordIOWriter: .rec and .idx paths are the same: {self.rec_path}")
        self._tmp_rec = self.rec_path.with_name(self.rec_path.name + f".tmp{os.getpid()}")
        self._tmp_idx = self.idx_path.with_name(self.idx_path.name + f".tmp{os.getpid()}")
        self._rec = open(self._tmp_rec, "wb")
        self._idx = open(self._tmp_idx, "w", encoding="ascii")
        self._seen = bytearray()  # one bit per key: duplicate check in ~N/8 bytes, not a set
        self._spans: dict[int, tuple[int, int]] = {}  # (offset, framed length) of patchable keys
        self.offset = 0

    def write(self, key: int, payload: bytes, patchable: bool = False) -> int:
        """Append a raw payload under ``key`` (an int >= 0); returns its offset.

        ``patchable=True`` remembers where it went so :meth:`patch` can rewrite it later.
        """
        if not isinstance(key, (int, np.integer)) or key < 0:
            raise ValueError(f"RecordIOWriter({self.rec_path}): keys are integers >= 0, got {key!r}")
        key = int(key)
        byte, bit = divmod(key, 8)
        if byte >= len(self._seen):
            self._seen.extend(bytes(max(byte + 1 - len(self._seen), len(self._seen))))
        if self._seen[byte] & (1 << bit):
            raise ValueError(f"RecordIOWriter({self.rec_path}): key {key} written twice")
        self._seen[byte] |= 1 << bit
        data = frame(payload)
        offset = self.offset
        self._rec.write(data)
        self._idx.write(f"{key}\t{offset}\n")
        if patchable:
            self._spans[key] = (offset, len(data))
        self.offset += len(data)
        return offset

    def write_image(self, key: int, label: float | Sequence[float] | np.ndarray,
                    image_bytes: bytes = b"", id: int = 0, id2: int = 0,
                    patchable: bool = False) -> int:
        """Append ``IRHeader(label, id, id2)`` + encoded image bytes under ``key``."""
        return self.write(key, pack_header(label, image_bytes, id, id2), patchable)

    def patch(self, key: int, payload: bytes) -> None:
        """Overwrite record ``key`` in place; the new framing must have the same length.

        Lets a writer reserve record 0 (the insightface header) at the start of the file and
        fill in the counts once every image is written.
        """
        if key not in self._spans:
            raise KeyError(f"RecordIOWriter({self.rec_path}): key {key} was not written with "
                           "patchable=True")
        data = frame(payload)
        offset, old_len = self._spans[key]
        if len(data) != old_len:
            raise ValueError(f"RecordIOWriter({self.rec_path}): patching key {key} needs "
                             f"{old_len} framed bytes, got {len(data)}")
        self._rec.seek(offset)
        self._rec.write(data)
        self._rec.seek(0, os.SEEK_END)

    def close(self) -> None:
        if self._rec.closed:
            return
        self._rec.close()
        self._idx.close()
        os.replace(self._tmp_rec, self.rec_path)
        os.replace(self._tmp_idx, self.idx_path)

    def abort(self) -> None:
        """Drop everything written so far; the targets are left as they were."""
        self._rec.close()
        self._idx.close()
        for p in (self._tmp_rec, self._tmp_idx):
            p.unlink(missing_ok=True)

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
