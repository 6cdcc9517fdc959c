"""Adapter files: save/load round trips, Hub (offline), bad files."""
from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
import timm
import torch
from torch import nn

import quality_lora as ql
from quality_lora.io import CONFIG_NAME, WEIGHTS_NAME, read_adapter_config


def make_model(targets=None) -> nn.Module:
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=0, depth=2).eval()
    return ql.inject_adapters(model, targets or {"attn.qkv": "gated", "mlp.fc2": "lora"}, r=4, scale=0.5)


def fresh_base() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=0, depth=2).eval()


@pytest.fixture()
def trained(tmp_path: Path) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = make_model()
    with torch.no_grad():
        for layer in ql.adapter_layers(model).values():
            layer.lora_A.normal_()
            layer.lora_B.normal_()
    return model, ql.save_adapters(model, tmp_path / "adapters", extra_config={"note": "test"})


def test_round_trip_is_bit_exact_for_every_layer_kind(trained) -> None:
    model, folder = trained
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    fresh = ql.load_adapters(fresh_base(), folder)
    src, dst = ql.adapter_layers(model), ql.adapter_layers(fresh)
    assert {n: l.kind for n, l in src.items()} == {n: l.kind for n, l in dst.items()}
    for name in src:
        assert torch.equal(src[name].lora_A, dst[name].lora_A) and torch.equal(src[name].lora_B, dst[name].lora_B)
        assert (dst[name].r, dst[name].scale) == (4, 0.5)
    x, alpha = torch.randn(2, 3, 32, 32), torch.tensor([0.2, 0.9])
    assert torch.equal(model(x, alpha=alpha), fresh(x, alpha=alpha))
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["format_version"] == 1 and config["note"] == "test"
    assert config["layers"]["blocks.0.attn.qkv"] == {"kind": "gated", "r": 4, "scale": 0.5, "dropout": 0.0, "in_features": 192, "out_features": 576}
    # Only adapter tensors are written.
    from safetensors.torch import load_file

    assert all(k.endswith((".lora_A", ".lora_B")) for k in load_file(folder / WEIGHTS_NAME))


def test_load_into_already_injected_model(trained) -> None:
    model, folder = trained
    target = make_model()
    ql.load_adapters(target, folder)
    for name, layer in ql.adapter_layers(model).items():
        assert torch.equal(ql.adapter_layers(target)[name].lora_B, layer.lora_B)


def test_alpha_map_and_scorer_are_recorded(tmp_path: Path) -> None:
    class Described:
        def to_dict(self) -> dict:
            return {"name": "sharpness", "threshold": 0.3}

    ql.save_adapters(make_model(), tmp_path, alpha_map=Described(), scorer={"name": "custom"})
    config = read_adapter_config(tmp_path)
    assert config["alpha_map"] == {"name": "sharpness", "threshold": 0.3} and config["scorer"] == {"name": "custom"}


def test_hub_repo_from_prefilled_cache_offline(trained, tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    model, folder = trained
    # A cache laid out as huggingface_hub writes it: models--owner--name/{refs,snapshots}.
    cache = tmp_path / "hub"
    repo = cache / "models--someone--faces-adapters"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        (snap / name).write_bytes((folder / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = ql.load_adapters(fresh_base(), "someone/faces-adapters")
    for name, layer in ql.adapter_layers(model).items():
        assert torch.equal(ql.adapter_layers(loaded)[name].lora_A, layer.lora_A)
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        ql.load_adapters(fresh_base(), "someone/not-downloaded")


def test_push_adapters_uploads_config_weights_and_card(trained) -> None:
    model, _ = trained
    uploaded: dict[str, set[str]] = {}

    def fake_upload(repo_id: str, folder_path: str, commit_message: str, revision=None):
        uploaded[repo_id] = {p.name for p in Path(folder_path).iterdir()}
        card = (Path(folder_path) / "README.md").read_text()
        assert "PETALface" in card and "ql.load_adapters" in card and "2 gated layers, 2 lora layers" in card
        return mock.Mock(commit_url="https://hub/commit/1")

    with mock.patch("huggingface_hub.HfApi") as api_cls:
        api = api_cls.return_value
        api.upload_folder.side_effect = fake_upload
        url = ql.push_adapters(model, "me/adapters", private=True)
    api.create_repo.assert_called_once_with("me/adapters", private=True, exist_ok=True)
    assert uploaded["me/adapters"] == {CONFIG_NAME, WEIGHTS_NAME, "README.md"} and url.endswith("/1")


def test_shape_mismatch_names_layer_and_leaves_model_alone(trained) -> None:
    _, folder = trained
    other = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=0, depth=2, embed_dim=96, num_heads=3)
    with pytest.raises(ValueError, match="blocks.0.attn.qkv.*do not fit"):
        ql.load_adapters(other, folder)
    assert not ql.adapter_layers(other)


def test_missing_target_layer(trained) -> None:
    _, folder = trained
    shallow = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=0, depth=1)
    with pytest.raises(ValueError, match="no layer 'blocks.1"):
        ql.load_adapters(shallow, folder)


def test_strict_refuses_extra_adapters(trained) -> None:
    _, folder = trained
    target = make_model({"attn.qkv": "gated", "mlp.fc2": "lora", "mlp.fc1": "lora"})
    with pytest.raises(ValueError, match="adapters the file lacks"):
        ql.load_adapters(target, folder)
    ql.load_adapters(target, folder, strict=False)


def test_truncated_and_corrupted_safetensors(trained, tmp_path: Path) -> None:
    _, folder = trained
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        ql.load_adapters(fresh_base(), folder)
    (folder / WEIGHTS_NAME).write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match=WEIGHTS_NAME):
        ql.load_adapters(fresh_base(), folder)


def test_key_mismatch_between_config_and_weights(trained) -> None:
    _, folder = trained
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["layers"]["blocks.0.mlp.fc1"] = dict(config["layers"]["blocks.0.mlp.fc2"])
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="missing.*blocks.0.mlp.fc1"):
        ql.load_adapters(fresh_base(), folder)


def test_newer_format_version_and_bad_json(trained) -> None:
    _, folder = trained
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["format_version"] = 99
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="newer quality-lora"):
        ql.load_adapters(fresh_base(), folder)
    (folder / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ql.load_adapters(fresh_base(), folder)


def test_missing_folder_and_model_without_adapters(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        ql.load_adapters(fresh_base(), tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a local folder"):
        ql.load_adapters(fresh_base(), str(tmp_path / "no" / "such" / "dir"))
    with pytest.raises(ValueError, match="no adapters"):
        ql.save_adapters(fresh_base(), tmp_path / "out")


def test_failed_save_keeps_previous_files(trained, monkeypatch) -> None:
    model, folder = trained
    before = (folder / WEIGHTS_NAME).read_bytes()
    import safetensors.torch

    def boom(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        ql.save_adapters(model, folder)
    assert (folder / WEIGHTS_NAME).read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_petalface_compatible_flag_travels(tmp_path: Path) -> None:
    model = ql.set_petalface_compatible(make_model())
    ql.save_adapters(model, tmp_path)
    loaded = ql.load_adapters(fresh_base(), tmp_path)
    assert ql.is_petalface_compatible(loaded)
