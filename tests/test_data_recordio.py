"""RecordIO without mxnet: hand-built bytes, our writer, and files written by MXNet 1.9.1."""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import struct

import numpy as np
import pytest

from quality_lora.data.recordio import (MAGIC, IRHeader, RecordIOError, RecordIOReader,
                                        RecordIOWriter, frame, pack_header, read_index,
                                        unpack_header)

MAGIC_B = struct.pack("<I", MAGIC)


def _part(payload: bytes, cflag: int) -> bytes:
    """One record part straight from the format spec."""
    return struct.pack("<II", MAGIC, (cflag << 29) | len(payload)) + payload + b"\0" * (-len(payload) % 4)


def _write(tmp_path, blobs: list[bytes], name: str = "t"):
    rec = tmp_path / f"{name}.rec"
    offsets, data = [], b""
    for b in blobs:
        offsets.append(len(data))
        data += b
    rec.write_bytes(data)
    (tmp_path / f"{name}.idx").write_text("".join(f"{k}\t{o}\n" for k, o in enumerate(offsets)))
    return rec


@pytest.fixture()
def fixtures(shared_dir):
    return shared_dir / "fixtures" / "mxnet_formats"


def test_hand_built_records_single_and_multipart(tmp_path):
    # Record 1: three parts, the reader must put the magic word back at both cuts.
    blobs = [_part(b"abcde", 0), _part(b"xy", 1) + _part(b"", 2) + _part(b"tail!", 3), _part(b"", 0)]
    rec = _write(tmp_path, blobs)
    r = RecordIOReader(rec)
    assert len(r) == 3
    assert r.read(0) == b"abcde"
    assert r.read(1) == b"xy" + MAGIC_B + MAGIC_B + b"tail!"
    assert r.read(2) == b""
    assert r.scan() == [0, len(blobs[0]), len(blobs[0]) + len(blobs[1])]


def test_frame_splits_on_aligned_magic_only():
    payload = b"AAAA" + MAGIC_B + b"BB" + MAGIC_B + b"CC"  # second magic is at offset 10: unaligned
    framed = frame(payload)
    assert framed == _part(b"AAAA", 1) + _part(b"BB" + MAGIC_B + b"CC", 3)
    assert frame(MAGIC_B) == _part(b"", 1) + _part(b"", 3)
    assert frame(b"xyz") == _part(b"xyz", 0)


def test_header_pack_unpack_scalar_and_vector():
    h, img = unpack_header(pack_header(3.0, b"JPEG", id=7, id2=9))
    assert (h.flag, h.label, h.id, h.id2, img) == (0, 3.0, 7, 9, b"JPEG")
    h, img = unpack_header(pack_header([1.0, 0.25], b"PNG"))
    assert h.flag == 2 and img == b"PNG"
    np.testing.assert_array_equal(h.label, np.array([1.0, 0.25], np.float32))
    assert struct.unpack("<IfQQ", pack_header([5, 6])[:24]) == (2, 0.0, 0, 0)
    with pytest.raises(RecordIOError, match="shorter than the 24-byte"):
        unpack_header(b"\0" * 10, "x.rec, key 3")
    with pytest.raises(RecordIOError, match="3 label values"):
        unpack_header(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 4)


def test_writer_round_trip_with_magic_in_payload(tmp_path):
    payloads = [b"", b"\x01\x02\x03", MAGIC_B * 3 + b"end", bytes(range(256)) * 40]
    with RecordIOWriter(tmp_path / "w.rec") as w:
        for k, p in enumerate(payloads):
            w.write_image(k, float(k), p, id=k)
    r = RecordIOReader(tmp_path / "w.rec")
    for k, p in enumerate(payloads):
        h, img = r.read_header(k)
        assert img == p and h.label == float(k) and h.id == k


def test_reader_matches_mxnet_written_files(fixtures):
    for name in ("train", "labelvec"):
        expected = json.loads((fixtures / f"{name}.json").read_text())
        r = RecordIOReader(fixtures / f"{name}.rec")
        h0, rest = r.read_header(0)
        assert h0.flag == 2 and rest == b""
        assert [int(v) for v in h0.label] == expected["header0"]
        for key, rec in expected["records"].items():
            h, img = r.read_header(int(key))
            if "identity_range" in rec:
                assert [int(v) for v in h.label] == rec["identity_range"]
                continue
            assert np.allclose(h.label, rec["label"])
            assert len(img) == rec["payload_len"]
            assert hashlib.sha256(img).hexdigest() == rec["payload_sha256"]
        # Sequential scan finds the same record starts as MXNet's index.
        assert r.scan() == [r.index[k] for k in r.keys]


def test_mxnet_split_record_is_present_and_rejoined(fixtures):
    raw = (fixtures / "train.rec").read_bytes()
    index = read_index(fixtures / "train.idx")
    lrec = struct.unpack_from("<I", raw, index[5] + 4)[0]
    assert lrec >> 29 == 1  # MXNet wrote record 5 in two parts
    assert MAGIC_B in RecordIOReader(fixtures / "train.rec").read(5)


def test_writer_reproduces_mxnet_bytes(fixtures, tmp_path):
    src = RecordIOReader(fixtures / "train.rec")
    with RecordIOWriter(tmp_path / "train.rec") as w:
        for k in src.keys:
            w.write(k, src.read(k))
    assert (tmp_path / "train.rec").read_bytes() == (fixtures / "train.rec").read_bytes()
    assert (tmp_path / "train.idx").read_text() == (fixtures / "train.idx").read_text()


def test_truncated_rec(fixtures, tmp_path):
    raw = (fixtures / "train.rec").read_bytes()
    index = read_index(fixtures / "train.idx")
    cut = index[16] + 20  # inside the last record's payload
    (tmp_path / "train.rec").write_bytes(raw[:cut])
    shutil.copy(fixtures / "train.idx", tmp_path / "train.idx")
    r = RecordIOReader(tmp_path / "train.rec")
    assert r.read(15)  # earlier records still fine
    with pytest.raises(RecordIOError, match=rf"train\.rec: truncated record at offset {index[16]}"):
        r.read(16)
    with pytest.raises(RecordIOError, match="truncated"):
        r.scan()
    (tmp_path / "train.rec").write_bytes(raw[:index[16] + 4])
    with pytest.raises(RecordIOError, match=f"truncated record header at offset {index[16]}"):
        RecordIOReader(tmp_path / "train.rec").read(16)


def test_bad_magic_and_bad_flags(tmp_path):
    rec = _write(tmp_path, [_part(b"ok", 0), b"\xde\xad\xbe\xef" + _part(b"zz", 0)[4:]])
    r = RecordIOReader(rec)
    with pytest.raises(RecordIOError, match=r"t\.rec: bad magic number 0xefbeadde at offset 12"):
        r.read(1)
    rec = _write(tmp_path, [_part(b"mid", 2)], "flag")
    with pytest.raises(RecordIOError, match="unexpected continuation flag 2 at offset 0"):
        RecordIOReader(rec).read(0)


def test_index_errors(fixtures, tmp_path):
    shutil.copy(fixtures / "train.rec", tmp_path / "train.rec")
    idx = tmp_path / "train.idx"
    idx.write_text("0\t0\n1\t999999\n")
    with pytest.raises(RecordIOError, match=r"train\.idx, line 2: key 1 points at offset 999999, "
                                            r"past the end of the \.rec file \(28232 bytes\)"):
        RecordIOReader(tmp_path / "train.rec")
    idx.write_text("0\t0\nnot a line\n")
    with pytest.raises(RecordIOError, match="line 2: expected 'key<TAB>offset'"):
        RecordIOReader(tmp_path / "train.rec")
    idx.write_text("0\t0\n1\t4\n")  # inside record 0: no magic there
    with pytest.raises(RecordIOError, match="bad magic number .* at offset 4"):
        RecordIOReader(tmp_path / "train.rec").read(1)
    with pytest.raises(KeyError, match="no record with key 7"):
        RecordIOReader(tmp_path / "train.rec").read(7)
    with pytest.raises(FileNotFoundError, match="missing.rec"):
        RecordIOReader(tmp_path / "missing.rec")


def test_reader_without_idx_scans(fixtures, tmp_path):
    shutil.copy(fixtures / "labelvec.rec", tmp_path / "labelvec.rec")
    r = RecordIOReader(tmp_path / "labelvec.rec")
    ref = RecordIOReader(fixtures / "labelvec.rec")
    assert len(r) == len(ref) and all(r.read(k) == ref.read(k) for k in ref.keys)


def test_reader_pickles_without_handle(fixtures):
    r = RecordIOReader(fixtures / "train.rec")
    first = r.read(1)
    clone = pickle.loads(pickle.dumps(r))
    assert clone._file is None and clone._map is None
    assert clone.read(1) == first
    r.close()
    assert r.read(2)  # reopens on demand


def test_writer_is_atomic_and_refuses_duplicates(tmp_path):
    target = tmp_path / "x.rec"
    target.write_bytes(b"good")
    with pytest.raises(ValueError, match="key 1 written twice"):
        with RecordIOWriter(target) as w:
            w.write(1, b"a")
            w.write(1, b"b")
    assert target.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.rec"]
    with pytest.raises(ValueError, match="keys are integers >= 0"):
        with RecordIOWriter(target) as w:
            w.write(-1, b"a")


def test_writer_patch(tmp_path):
    with RecordIOWriter(tmp_path / "p.rec") as w:
        w.write_image(0, [0.0, 0.0], patchable=True)
        w.write_image(1, 1.0, b"img")
        w.patch(0, pack_header([2.0, 3.0]))
        with pytest.raises(ValueError, match="needs 40 framed bytes"):
            w.patch(0, pack_header([2.0, 3.0, 4.0]))
        with pytest.raises(KeyError, match="patchable=True"):
            w.patch(1, pack_header(1.0, b"img"))
    h, _ = RecordIOReader(tmp_path / "p.rec").read_header(0)
    assert isinstance(h, IRHeader) and h.label.tolist() == [2.0, 3.0]
