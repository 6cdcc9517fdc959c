"""quality-gated LoRA as a PEFT method: registration, save/load both ways, alpha, adapters, Hub."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from unittest import mock

import pytest
import timm
import torch
from torch import nn

peft = pytest.importorskip("peft")

import quality_lora as ql
import quality_lora.peft as qlp
from quality_lora.io import CONFIG_NAME, WEIGHTS_NAME

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["attn.qkv", "attn.proj", "mlp.fc2"]


def swin() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224", img_size=56, num_classes=0, depths=(2, 2), num_heads=(3, 6),
        embed_dim=48, window_size=7,
    ).eval()


def peft_swin(**kwargs) -> nn.Module:
    config = qlp.QualityLoraConfig(**{"target_modules": TARGETS, "r": 4, "init_weights": False, **kwargs})
    return peft.get_peft_model(swin(), config).eval()


def layers_of(model: nn.Module) -> dict[str, qlp.QualityLoraLinear]:
    return {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, qlp.QualityLoraLinear)}


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 56, 56, generator=gen), torch.tensor([0.0, 0.35, 1.0])


def test_peft_type_is_registered_on_the_pinned_peft() -> None:
    from peft.mapping import (
        PEFT_TYPE_TO_CONFIG_MAPPING,
        PEFT_TYPE_TO_PREFIX_MAPPING,
        PEFT_TYPE_TO_TUNER_MAPPING,
    )
    from peft.utils import PeftType

    assert peft.__version__ == "0.21.2"  # the version pinned in pyproject's [peft] extra
    member = PeftType("QUALITY_LORA")
    assert member is PeftType.QUALITY_LORA is PeftType["QUALITY_LORA"] is qlp.QUALITY_LORA
    assert member in list(PeftType) and member == "QUALITY_LORA" and member.value == "QUALITY_LORA"
    assert len({m.value for m in PeftType}) == len(list(PeftType))  # no duplicate member
    assert PEFT_TYPE_TO_CONFIG_MAPPING["QUALITY_LORA"] is qlp.QualityLoraConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[member] is qlp.QualityLoraModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[member] == "quality_lora_"
    qlp.register()  # idempotent
    assert qlp.quality_lora_peft_type() is member and qlp.QualityLoraConfig(target_modules=["q"]).peft_type is member


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="r must be a positive int"):
        qlp.QualityLoraConfig(target_modules=["qkv"], r=0)
    with pytest.raises(ValueError, match="dropout"):
        qlp.QualityLoraConfig(target_modules=["qkv"], dropout=1.5)
    with pytest.raises(ValueError, match="give target_modules"):
        qlp.QualityLoraConfig()
    with pytest.raises(ValueError, match=r"layers\['a.qkv'\] has kind 'dora'"):
        qlp.QualityLoraConfig(layers={"a.qkv": {"kind": "dora", "r": 4, "scale": 1.0, "dropout": 0.0}})
    with pytest.raises(ValueError, match="format_version 2"):
        qlp.QualityLoraConfig(target_modules=["qkv"], format_version=2)
    with pytest.raises(TypeError, match="'layers.0.blocks.0.norm1', a LayerNorm"):
        peft.get_peft_model(swin(), qlp.QualityLoraConfig(target_modules=["norm1"]))


def test_alpha_reaches_gated_layers_through_peft_model(images) -> None:
    x, alpha = images
    model = peft_swin()
    with pytest.raises(RuntimeError, match="gated layer 'layers.0.blocks.0.attn.qkv' ran without alpha"):
        model(x)
    y = model(x, alpha=alpha)
    with ql.use_alpha(model, alpha):
        assert torch.equal(model(x), y)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 1\]"):
        model(x, alpha=torch.tensor([0.0, 0.5, 2.0]))
    # Alpha matters, and a disabled adapter gives the base model (no alpha needed).
    assert not torch.allclose(model(x, alpha=torch.zeros(3)), model(x, alpha=torch.ones(3)))
    with model.disable_adapter():
        assert torch.equal(model(x), swin()(x))


def test_batched_equals_per_sample_on_swin(images) -> None:
    x, alpha = images
    model = peft_swin(lora_modules=["mlp.fc2"])
    batched = model(x, alpha=alpha)
    single = torch.cat([model(x[i : i + 1], alpha=alpha[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_layer_matches_quality_lora_math(images) -> None:
    x, alpha = images
    model = peft_swin(lora_modules=["mlp.fc2"])
    reference = ql.inject_adapters(swin(), {"attn.qkv": "gated", "attn.proj": "gated", "mlp.fc2": "lora"}, r=4)
    with torch.no_grad():
        for name, layer in ql.adapter_layers(reference).items():
            layer.lora_A.copy_(layers_of(model)[name].lora_A)
            layer.lora_B.copy_(layers_of(model)[name].lora_B)
    summary = ql.adapter_summary(model)  # quality-lora's tools see the PEFT layers
    assert sorted(summary.layers.values()) == ["gated"] * 8 + ["lora"] * 4
    torch.testing.assert_close(model(x, alpha=alpha), reference(x, alpha=alpha), rtol=1e-5, atol=1e-5)


def test_save_pretrained_from_pretrained_is_bit_exact(images, tmp_path: Path) -> None:
    x, alpha = images
    model = peft_swin(lora_modules=["mlp.fc2"], scale=0.5)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["peft_type"] == "QUALITY_LORA" and config["format_version"] == 1
    assert config["layers"]["layers.1.blocks.1.mlp.fc2"] == {
        "kind": "lora", "r": 4, "scale": 0.5, "dropout": 0.0, "in_features": 384, "out_features": 96,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "missing adapter keys" warning from peft
        loaded = peft.PeftModel.from_pretrained(swin(), tmp_path).eval()
    src, dst = layers_of(model), layers_of(loaded)
    assert src.keys() == dst.keys() and len(src) == 12
    for name in src:
        assert torch.equal(src[name].lora_A, dst[name].lora_A) and torch.equal(src[name].lora_B, dst[name].lora_B)
        assert (dst[name].kind, dst[name].scale) == (src[name].kind, 0.5)
    assert torch.equal(loaded(x, alpha=alpha), model(x, alpha=alpha))


def test_quality_lora_reads_peft_folder(images, tmp_path: Path) -> None:
    x, alpha = images
    model = peft_swin(lora_modules=["mlp.fc2"])
    model.save_pretrained(tmp_path)
    plain = ql.load_adapters(swin(), tmp_path)
    for name, layer in ql.adapter_layers(plain).items():
        assert torch.equal(layer.lora_A, layers_of(model)[name].lora_A) and layer.kind == layers_of(model)[name].kind
    torch.testing.assert_close(plain(x, alpha=alpha), model(x, alpha=alpha), rtol=1e-5, atol=1e-5)


def test_peft_reads_quality_lora_folder(images, tmp_path: Path) -> None:
    x, alpha = images
    plain = ql.inject_adapters(swin(), {"attn.qkv": "gated", "mlp.fc2": "lora"}, r=4, scale=0.5)
    with torch.no_grad():
        for layer in ql.adapter_layers(plain).values():
            layer.lora_B.normal_()
    # A folder written by quality_lora.save_adapters, as it is.
    ql.save_adapters(plain, tmp_path)
    loaded = peft.PeftModel.from_pretrained(swin(), tmp_path).eval()
    for name, layer in ql.adapter_layers(plain).items():
        assert torch.equal(layer.lora_B, layers_of(loaded)[name].lora_B)
        assert (layers_of(loaded)[name].kind, layers_of(loaded)[name].scale) == (layer.kind, 0.5)
    torch.testing.assert_close(loaded(x, alpha=alpha), plain(x, alpha=alpha), rtol=1e-5, atol=1e-5)


def test_multiple_adapters(images, tmp_path: Path) -> None:
    x, alpha = images
    model = peft_swin()
    first = model(x, alpha=alpha)
    torch.manual_seed(5)
    model.add_adapter("other", qlp.QualityLoraConfig(target_modules=["attn.qkv"], r=2, init_weights=False))
    assert torch.equal(model(x, alpha=alpha), first)  # add_adapter does not activate it
    model.set_adapter("other")
    assert model.active_adapter == "other"
    other = model(x, alpha=alpha)
    assert not torch.allclose(other, first, atol=1e-3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".other") for n in trainable)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "other" / CONFIG_NAME).read_text())
    assert sorted(saved["layers"]) == [f"layers.{i}.blocks.{j}.attn.qkv" for i in (0, 1) for j in (0, 1)]
    assert len(json.loads((tmp_path / CONFIG_NAME).read_text())["layers"]) == 12
    loaded = peft.PeftModel.from_pretrained(swin(), tmp_path).eval()
    loaded.load_adapter(tmp_path / "other", adapter_name="other")
    assert torch.equal(loaded(x, alpha=alpha), first)
    loaded.set_adapter("other")
    assert torch.equal(loaded(x, alpha=alpha), other)
    model.set_adapter("default")
    model.delete_adapter("other")
    assert all("other" not in layer.quality_lora_A for layer in layers_of(model).values())


def test_merge_and_unload_at_fixed_alpha(images) -> None:
    x, _ = images
    model = peft_swin(lora_modules=["mlp.fc2"])
    expected = model(x, alpha=torch.ones(3))
    with pytest.raises(ValueError, match="needs a fixed alpha"):
        model.merge_adapter()
    with pytest.raises(ValueError, match=r"merge alpha must lie in \[0, 1\]"):
        model.merge_and_unload(alpha=1.5)
    merged = model.merge_and_unload(alpha=1.0)
    assert not any(isinstance(m, qlp.QualityLoraLinear) for m in merged.modules())
    torch.testing.assert_close(merged(x), expected, rtol=1e-4, atol=1e-5)


def test_training_step_updates_only_adapters(images) -> None:
    x, alpha = images
    model = peft_swin(dropout=0.1).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dim() == 2 for p in trainable)
    model(x, alpha=alpha).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_push_to_hub_with_mocked_api(tmp_path: Path) -> None:
    from huggingface_hub.errors import EntryNotFoundError

    model = peft_swin()
    uploaded: dict[str, bytes] = {}

    def fake_commit(repo_id, operations, **kwargs):
        for op in operations:
            uploaded[op.path_in_repo] = Path(op.path_or_fileobj).read_bytes()
        return mock.Mock(commit_url="https://hub/commit/1", oid="1")

    api = mock.MagicMock()
    api.create_repo.return_value = mock.Mock(repo_id="me/faces")
    api.create_commit.side_effect = fake_commit
    with mock.patch("transformers.utils.hub.hf_api", return_value=api), mock.patch(
        "transformers.utils.hub.ModelCard.load", side_effect=EntryNotFoundError("no card")
    ):
        model.push_to_hub("me/faces")
    api.create_repo.assert_called_once()
    assert {CONFIG_NAME, WEIGHTS_NAME} <= set(uploaded)
    assert json.loads(uploaded[CONFIG_NAME])["peft_type"] == "QUALITY_LORA"
    (tmp_path / WEIGHTS_NAME).write_bytes(uploaded[WEIGHTS_NAME])
    from safetensors.torch import load_file

    assert set(load_file(tmp_path / WEIGHTS_NAME)) == {f"{n}.lora_{p}" for n in layers_of(model) for p in "AB"}


def test_from_pretrained_hub_id_offline(images, tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    x, alpha = images
    model = peft_swin()
    model.save_pretrained(tmp_path / "saved")
    repo = tmp_path / "hub" / "models--someone--faces"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        (snap / name).write_bytes((tmp_path / "saved" / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = peft.PeftModel.from_pretrained(swin(), "someone/faces").eval()
    assert torch.equal(loaded(x, alpha=alpha), model(x, alpha=alpha))


def test_loading_without_quality_lora_peft_fails_loudly(tmp_path: Path) -> None:
    peft_swin().save_pretrained(tmp_path)
    script = f"""
import sys, timm, peft
import quality_lora
assert "quality_lora.peft" not in sys.modules
model = timm.create_model("swin_tiny_patch4_window7_224", img_size=56, num_classes=0, depths=(2, 2),
                          num_heads=(3, 6), embed_dim=48, window_size=7)
for load in (lambda: peft.PeftModel.from_pretrained(model, {str(tmp_path)!r}),
             lambda: peft.LoraConfig.from_pretrained({str(tmp_path)!r})):
    try:
        load()
    except KeyError as err:
        assert "QUALITY_LORA" in str(err), err
    else:
        raise SystemExit("loaded a QUALITY_LORA adapter without quality_lora.peft")
print("refused")
"""
    done = subprocess.run([sys.executable, "-c", script], check=False, cwd=REPO, capture_output=True, text=True, env={
        **__import__("os").environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and "refused" in done.stdout, done.stderr[-2000:]


def test_import_quality_lora_does_not_import_peft() -> None:
    script = "import sys, quality_lora; assert 'peft' not in sys.modules and 'quality_lora.peft' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", script], check=False, cwd=REPO, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
