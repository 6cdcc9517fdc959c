"""Datasets: RecordIO (insightface layout), image folders, TinyFace, .bin sets, packing."""
from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from quality_lora.data import (CorruptImageError, FaceTransform, ImageFolderDataset, RecordDataset,
                               RecordIOError, RecordIOReader, RecordIOWriter, TinyFaceDataset,
                               VerificationBinDataset, load_bin, pack_folder, tinyface_label)
from quality_lora.data.cli import main as data_cli

RAW = FaceTransform(size=None, mean=0.0, std=1.0)  # keeps [0, 1] values at the stored size


def _jpeg(color: tuple[int, int, int], size: int = 32, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format=fmt)
    return buf.getvalue()


def _tree(root, n_ids: int = 3, per_id: int = 2):
    for i in range(n_ids):
        (root / f"id{i}").mkdir(parents=True)
        for j in range(per_id):
            (root / f"id{i}" / f"{j}.jpg").write_bytes(_jpeg((40 * i, 100, 20 * j)))
    return root


@pytest.fixture()
def fixtures(shared_dir):
    return shared_dir / "fixtures" / "mxnet_formats"


@pytest.mark.parametrize("name", ["train", "labelvec"])
def test_record_dataset_on_mxnet_files(fixtures, name):
    expected = json.loads((fixtures / f"{name}.json").read_text())
    ds = RecordDataset(fixtures / f"{name}.rec", transform=RAW)
    images = {k: v for k, v in expected["records"].items() if "label" in v}
    assert len(ds) == len(images) and ds.header0 == tuple(expected["header0"])
    for i in range(len(ds)):
        x, label = ds[i]
        rec = images[str(ds.key(i))]
        assert label == int(np.asarray(rec["label"]).reshape(-1)[0])
        mean = (x * 255).mean(dim=(1, 2)).numpy()
        np.testing.assert_allclose(mean, rec["mean_rgb"], atol=0.05)  # PIL vs MXNet's decoder
    ranges = [tuple(v["identity_range"]) for v in expected["records"].values()
              if "identity_range" in v]
    assert ds.identity_ranges() == ranges
    assert ds.labels().tolist() == [int(np.asarray(images[str(k)]["label"]).reshape(-1)[0])
                                    for k in ds.imgidx]
    header, img = ds.read_record(0)
    assert img[:2] == b"\xff\xd8"


def test_default_transform_output(fixtures):
    x, label = RecordDataset(fixtures / "train.rec")[0]
    assert x.shape == (3, 120, 120) and x.dtype == torch.float32 and label == 0
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_record_dataset_without_header0(tmp_path):
    with RecordIOWriter(tmp_path / "plain.rec") as w:
        for k in range(4):
            w.write_image(k, float(k % 2), _jpeg((k * 50, 0, 0)))
    ds = RecordDataset(tmp_path / "plain.rec", transform=RAW)
    assert ds.header0 is None and len(ds) == 4 and ds.identity_ranges() == []
    assert [ds[i][1] for i in range(4)] == [0, 1, 0, 1]


def test_num_classes_check_and_property_file(fixtures, tmp_path):
    ds = RecordDataset(fixtures / "train.rec", transform=RAW, num_classes=3)
    assert ds[0][1] == 0
    with pytest.raises(ValueError, match=r"train\.rec, key 10: label 3 is outside \[0, 3\)"):
        ds[9]
    with pytest.raises(ValueError, match="outside"):
        ds.labels()
    for f in ("train.rec", "train.idx"):
        shutil.copy(fixtures / f, tmp_path / f)
    (tmp_path / "property").write_text("2,112,112")
    ds = RecordDataset(tmp_path, transform=RAW)  # a folder finds train.rec and property
    assert ds.num_classes == 2
    with pytest.raises(ValueError, match="label 2 is outside"):
        ds[6]


def test_corrupt_image_raise_or_skip(tmp_path):
    with RecordIOWriter(tmp_path / "c.rec") as w:
        w.write_image(0, 0.0, _jpeg((255, 0, 0)))
        w.write_image(1, 1.0, _jpeg((0, 255, 0))[:60])  # truncated JPEG
        w.write_image(2, 2.0, b"not an image at all")
        w.write_image(3, 3.0, _jpeg((0, 0, 255)))
    ds = RecordDataset(tmp_path / "c.rec", transform=RAW)
    with pytest.raises(CorruptImageError, match=r"c\.rec, key 1: cannot decode image"):
        ds[1]
    ds = RecordDataset(tmp_path / "c.rec", transform=RAW, on_corrupt="skip")
    with pytest.warns(RuntimeWarning) as caught:
        x, label = ds[1]
    assert ["key 1:" in str(w.message) for w in caught] == [True, False]
    assert "key 2:" in str(caught[1].message)
    # The substitute is record 3 with its own label: image and label never disagree.
    assert label == 3 and float(x[2].mean()) > 0.9 and float(x[0].mean()) < 0.1
    assert ds.corrupt_count == 2
    with pytest.raises(ValueError, match="on_corrupt must be one of"):
        RecordDataset(tmp_path / "c.rec", on_corrupt="ignore")


def test_dataloader_workers_and_distributed_sampler(fixtures):
    ds = RecordDataset(fixtures / "train.rec", transform=RAW)
    ds[0]  # opens the mapping in this process; workers must not reuse it
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.reader._map is None
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    labels = torch.cat([y for _, y in loader]).tolist()
    assert labels == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=1)
        for _, batch_labels in DataLoader(ds, batch_size=3, sampler=sampler):
            seen += batch_labels.tolist()
    assert sorted(seen) == sorted(labels)


def test_dataset_hash_changes_with_file(fixtures, tmp_path):
    for f in ("train.rec", "train.idx"):
        shutil.copy(fixtures / f, tmp_path / f)
    h1 = RecordDataset(tmp_path / "train.rec").dataset_hash()
    assert h1 == RecordDataset(tmp_path / "train.rec").dataset_hash() and len(h1) == 16
    with open(tmp_path / "train.rec", "ab") as f:
        f.write(b"\0" * 4)
    assert RecordDataset(tmp_path / "train.rec").dataset_hash() != h1


def test_empty_and_bad_header0(tmp_path):
    (tmp_path / "e.rec").write_bytes(b"")
    (tmp_path / "e.idx").write_text("")
    with pytest.raises(ValueError, match=r"e\.rec: the RecordIO file holds no records"):
        RecordDataset(tmp_path / "e.rec")
    with RecordIOWriter(tmp_path / "h.rec") as w:
        w.write_image(0, [50.0, 60.0])
        w.write_image(1, 0.0, _jpeg((1, 2, 3)))
    with pytest.raises(RecordIOError, match="header record 0 says images are records 1..49"):
        RecordDataset(tmp_path / "h.rec")


def test_image_folder(tmp_path):
    root = _tree(tmp_path / "faces")
    ds = ImageFolderDataset(root, size=16)
    assert len(ds) == 6 and ds.classes == ["id0", "id1", "id2"]
    assert [ds[i][1] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    assert ds[0][0].shape == (3, 16, 16)
    header, data = ds.read_record(2)
    assert (header.label, header.id) == (1.0, 2) and data == ds.paths[2].read_bytes()
    with pytest.raises(ValueError, match=r"id2 \(3 identity folders\): label 2 is outside \[0, 2\)"):
        ImageFolderDataset(root, num_classes=2)
    (tmp_path / "empty" / "id0").mkdir(parents=True)
    with pytest.raises(ValueError, match="empty: no images"):
        ImageFolderDataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolderDataset(tmp_path / "nowhere")
    (root / "loose.jpg").write_bytes(_jpeg((0, 0, 0)))
    with pytest.raises(ValueError, match="loose.jpg is not inside an identity folder"):
        ImageFolderDataset(root)


def test_image_folder_corrupt(tmp_path):
    root = _tree(tmp_path / "faces", n_ids=2, per_id=1)
    (root / "id0" / "0.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(CorruptImageError, match=r"id0/0\.jpg"):
        ImageFolderDataset(root)[0]
    ds = ImageFolderDataset(root, on_corrupt="skip")
    with pytest.warns(RuntimeWarning):
        assert ds[0][1] == 1
    assert ds.corrupt_count == 1


def test_tinyface_layout(tmp_path):
    for sub, names in {"Probe": ["1_1.jpg", "12_3.jpg"], "Gallery_Match": ["1_2.jpg", "12_1.jpg"],
                       "Gallery_Distractor": ["99_1.jpg", "abc.jpg"]}.items():
        (tmp_path / sub).mkdir()
        for n in names:
            (tmp_path / sub / n).write_bytes(_jpeg((10, 20, 30)))
    ds = TinyFaceDataset(tmp_path, size=24)
    assert ds.labels.tolist() == [12, 1, 12, 1, -100, -100]  # sorted names: "12_3" < "1_1"
    assert ds.indices("Probe").tolist() == [0, 1] and ds.keys[0] == "12_3"
    assert ds[5][1] == -100 and ds[5][0].shape == (3, 24, 24)
    assert tinyface_label("x/1_3.jpg") == 1
    with pytest.raises(ValueError, match="cannot read an identity from 'abc.jpg'"):
        tinyface_label("abc.jpg")
    with pytest.raises(ValueError, match="unknown TinyFace subset"):
        TinyFaceDataset(tmp_path, subsets=["Gallery"])
    shutil.rmtree(tmp_path / "Probe")
    with pytest.raises(FileNotFoundError, match="Probe"):
        TinyFaceDataset(tmp_path)


@pytest.mark.parametrize("which", ["py2", "py3"])
def test_verification_bins(fixtures, which):
    expected = json.loads((fixtures / "verification.json").read_text())
    ds = VerificationBinDataset(fixtures / f"verification_{which}.bin", transform=RAW)
    assert ds.issame.tolist() == expected["issame"] and len(ds) == 12 and ds.num_pairs == 6
    for i, rec in enumerate(expected["images"]):
        x, idx = ds[i]
        assert idx == i
        np.testing.assert_allclose((x * 255).mean(dim=(1, 2)).numpy(), rec["mean_rgb"], atol=0.05)
    assert VerificationBinDataset(fixtures / f"verification_{which}.bin", size=112)[0][0].shape == (3, 112, 112)
    header, data = ds.read_record(3)
    assert header.id == 3 and hashlib.sha256(data).hexdigest() == expected["images"][3]["sha256"]


class _Py2Pickler(pickle._Pickler):
    """Writes bytes and str as Python 2 ``str`` opcodes, as the published .bin sets have."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def test_bin_with_py2_numpy_arrays(tmp_path):
    imgs = [np.frombuffer(_jpeg((200, 10 * i, 0)), np.uint8) for i in range(4)]
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump((imgs, [True, False]))
    path = tmp_path / "np.bin"
    path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    images, issame = load_bin(path)
    assert issame.tolist() == [True, False] and images[1] == imgs[1].tobytes()


def test_bin_refuses_code_and_bad_shapes(tmp_path):
    evil = tmp_path / "evil.bin"
    evil.write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    with pytest.raises(ValueError, match=r"evil\.bin: .*refusing to load global os\.system"):
        load_bin(evil)
    odd = tmp_path / "odd.bin"
    odd.write_bytes(pickle.dumps(([_jpeg((0, 0, 0))] * 3, [True])))
    with pytest.raises(ValueError, match=r"odd\.bin: 3 images for 1 pairs"):
        load_bin(odd)
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(pickle.dumps(([1, 2], [True])))
    with pytest.raises(ValueError, match="image 0 is a int"):
        load_bin(wrong)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(pickle.dumps(([b"nope", _jpeg((1, 1, 1))], [False])))
    with pytest.raises(CorruptImageError, match=r"bad\.bin, image 0"):
        VerificationBinDataset(bad)[0]


def test_pack_folder_round_trip(tmp_path):
    root = _tree(tmp_path / "faces", n_ids=3, per_id=2)
    (root / "id1" / "p.png").write_bytes(_jpeg((7, 8, 9), fmt="PNG"))
    (root / "empty_id").mkdir()
    r = pack_folder(root, tmp_path / "train.rec")
    assert (r.num_images, r.classes) == (7, ["id0", "id1", "id2"])
    ds = RecordDataset(tmp_path / "train.rec", transform=RAW)
    folder = ImageFolderDataset(root, transform=RAW)
    assert ds.header0 == (8, 11) and ds.identity_ranges() == [(1, 3), (3, 6), (6, 8)]
    assert ds.labels().tolist() == folder.labels.tolist()
    # JPEG/PNG bytes are stored untouched.
    assert [ds.read_record(i)[1] for i in range(7)] == [p.read_bytes() for p in folder.paths]
    assert RecordIOReader(tmp_path / "train.rec").index[0] == 0  # header record first


def test_pack_resize_skip_and_errors(tmp_path):
    root = _tree(tmp_path / "faces", n_ids=2, per_id=2)
    (root / "id0" / "0.jpg").write_bytes(b"broken")
    with pytest.raises(CorruptImageError, match=r"id0/0\.jpg"):
        pack_folder(root, tmp_path / "a.rec")
    assert not (tmp_path / "a.rec").exists()
    with pytest.warns(RuntimeWarning):
        r = pack_folder(root, tmp_path / "b.rec", size=20, on_corrupt="skip")
    assert r.num_images == 3 and len(r.skipped) == 1
    assert RecordDataset(tmp_path / "b.rec", size=None)[0][0].shape == (3, 20, 20)
    (tmp_path / "none" / "id0").mkdir(parents=True)
    with pytest.raises(ValueError, match="none: no images"):
        pack_folder(tmp_path / "none", tmp_path / "c.rec")


def test_data_cli(tmp_path, capsys):
    root = _tree(tmp_path / "faces", n_ids=2, per_id=2)
    assert data_cli(["pack", str(root), str(tmp_path / "t.rec")]) == 0
    assert "4 images, 2 identities" in capsys.readouterr().out
    assert data_cli(["info", str(tmp_path / "t.rec")]) == 0
    assert "4 images, 2 identity records" in capsys.readouterr().out
    assert data_cli(["pack", str(tmp_path / "missing"), str(tmp_path / "u.rec")]) == 1
    assert "image folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        data_cli(["--help"])
    assert e.value.code == 0
