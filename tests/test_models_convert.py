"""Checkpoint conversion: full-size keys, round trips, converted folders, the CLI, bad input, Hub."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from quality_lora.models import export_petalface, load_petalface
from quality_lora.models.checkpoint import to_ours
from quality_lora.models.convert import load_converted, main, save_converted
from quality_lora.models.pretrained import build_for_checkpoint

VARIANTS = ("pretrained", "lora", "petalface")


@pytest.fixture(scope="module")
def ref(shared_dir: Path) -> Path:
    return shared_dir / "fixtures" / "petalface_reference"


@pytest.fixture(scope="module")
def tiny_sd(ref: Path) -> dict[str, torch.Tensor]:
    return torch.load(ref / "tiny_petalface_model.pt", weights_only=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_full_size_checkpoint_keys_all_used(ref: Path, variant: str) -> None:
    shapes = json.loads((ref / f"full_{variant}_keys.json").read_text())
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}  # no 860 MB allocation
    model, adapters = build_for_checkpoint(sd)
    assert (model.size, model.variant) == ("base", variant)
    ours, expected = to_ours(sd, adapters), model.state_dict()
    assert set(ours) == set(expected)
    assert all(ours[k].shape == expected[k].shape for k in ours)
    assert set(export_petalface(model)) == set(shapes)  # and back: the same keys, none extra
    params = json.loads((ref / "meta.json").read_text())["variants"][variant]["full_size_params"]
    assert sum(p.numel() for p in model.parameters()) == params


def test_round_trip_bit_exact(ref: Path, tiny_sd: dict) -> None:
    back = export_petalface(load_petalface(ref / "tiny_petalface_model.pt"))
    assert list(back) == list(tiny_sd)
    assert all(torch.equal(back[k], tiny_sd[k]) and back[k].dtype == tiny_sd[k].dtype for k in tiny_sd)


def test_convert_cli_and_back(ref: Path, tmp_path: Path, tiny_sd: dict, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "converted"
    assert main([str(ref / "tiny_petalface_model.pt"), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "variant 'petalface'" in printed and "smaller to share" in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == ["adapter_config.json", "adapter_model.safetensors", "base_model.safetensors", "model_config.json"]
    base = load_file(str(out / "base_model.safetensors"))
    assert set(base) == set(load_file(str(ref / "tiny_pretrained.safetensors")))  # backbone only
    assert (out / "adapter_model.safetensors").stat().st_size < 0.05 * (ref / "tiny_petalface_model.pt").stat().st_size

    io = load_file(str(ref / "io.safetensors"))
    model = load_converted(out)
    with torch.no_grad():
        emb = model(io["images"], alpha=io["alpha"])
    assert (emb - io["embedding_petalface"]).abs().max() <= 1e-5

    assert main(["--to-petalface", str(out), str(tmp_path / "back" / "model.pt")]) == 0
    back = torch.load(tmp_path / "back" / "model.pt", weights_only=True)
    assert list(back) == list(tiny_sd) and all(torch.equal(back[k], tiny_sd[k]) for k in tiny_sd)


@pytest.mark.parametrize("variant", ["pretrained", "lora"])
def test_converted_folder_other_variants(ref: Path, tmp_path: Path, variant: str) -> None:
    io = load_file(str(ref / "io.safetensors"))
    save_converted(load_petalface(ref / f"tiny_{variant}.safetensors"), tmp_path)
    with torch.no_grad():
        emb = load_converted(tmp_path)(io["images"], alpha=io["alpha"])
    assert (emb - io[f"embedding_{variant}"]).abs().max() <= 1e-5


def test_fresh_adapters_on_a_pretrained_checkpoint(ref: Path) -> None:
    io = load_file(str(ref / "io.safetensors"))
    model = load_petalface(ref / "tiny_pretrained.safetensors", variant="petalface", r=2)
    assert model.variant == "petalface" and model.adapter_config["r"] == 2
    with torch.no_grad():  # B = 0 at init: the pretrained embedding, whatever alpha
        assert (model(io["images"], alpha=io["alpha"]) - io["embedding_pretrained"]).abs().max() <= 1e-5
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)


# ---- bad input -------------------------------------------------------------------------------

def test_missing_and_unexpected_keys_are_listed(tiny_sd: dict) -> None:
    sd = dict(tiny_sd)
    del sd["layers.1.blocks.0.mlp.fc2.bias"]
    sd["layers.1.blocks.0.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError) as err:
        load_petalface(sd)
    text = str(err.value)
    assert "1 missing keys: layers.1.blocks.0.mlp.fc2.bias" in text
    assert "1 unexpected keys: layers.1.blocks.0.extra.weight" in text


def test_incomplete_adapter_is_named(tiny_sd: dict) -> None:
    sd = dict(tiny_sd)
    del sd["layers.0.blocks.1.attn.qkv.trainable_lora_up2.weight"]
    with pytest.raises(ValueError, match=r"layers\.0\.blocks\.1\.attn\.qkv.*trainable_lora_up2"):
        load_petalface(sd)


def test_wrong_size_names_shapes(tiny_sd: dict) -> None:
    with pytest.raises(ValueError, match=r"patch_embed\.proj\.weight: checkpoint \(16, 3, 6, 6\) vs model \(384, 3, 6, 6\)"):
        load_petalface(tiny_sd, size="base")


def test_variant_and_rank_conflicts(tiny_sd: dict) -> None:
    with pytest.raises(ValueError, match="holds 'petalface' adapters but variant='lora'"):
        load_petalface(tiny_sd, variant="lora")
    with pytest.raises(ValueError, match="rank 4"):
        load_petalface(tiny_sd, r=8)


def test_not_a_state_dict(tmp_path: Path) -> None:
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(TypeError, match="expected a state dict"):
        load_petalface(listed)
    mixed = tmp_path / "mixed.pt"
    torch.save({"epoch": 3, "w": torch.zeros(2)}, mixed)
    with pytest.raises(TypeError, match="'epoch' is a int"):
        load_petalface(mixed)
    text = tmp_path / "model.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_petalface(text)
    with pytest.raises(ValueError, match="not a PETALface Swin checkpoint"):
        load_petalface({"w": torch.zeros(2)})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_petalface(tmp_path / "absent.pt")


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what a malicious model.pt does: run a command when unpickled
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    torch.save({"patch_embed.proj.weight": _Exploit(marker)}, evil)
    with pytest.raises(ValueError, match="refused"):
        load_petalface(evil)
    assert not marker.exists()
    assert main([str(evil), str(tmp_path / "out")]) == 1
    assert not marker.exists() and not (tmp_path / "out" / "base_model.safetensors").exists()


# ---- Hub ---------------------------------------------------------------------------------------

NAME = "swin_cosface_webface4m_tinyface"


def test_hub_offline_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        load_petalface(("kartiknarayan/PETALface", NAME))
    text = str(err.value)
    assert f"{NAME}/model.pt" in text and "HF_HUB_OFFLINE" in text and "huggingface-cli download" in text


def test_hub_prefilled_cache_and_local_folder(ref: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--kartiknarayan--PETALface"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    target = repo / "snapshots" / commit / NAME / "model.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes((ref / "tiny_petalface_model.pt").read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    io = load_file(str(ref / "io.safetensors"))
    for source in (("kartiknarayan/PETALface", NAME), (str(repo / "snapshots" / commit), NAME), target.parent):
        model = load_petalface(source)
        with torch.no_grad():
            assert (model(io["images"], alpha=io["alpha"]) - io["embedding_petalface"]).abs().max() <= 1e-5
