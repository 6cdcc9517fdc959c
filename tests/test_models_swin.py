"""The PETALface Swin: parity with the original's outputs, options, variants, timm registration."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from quality_lora.inject import adapter_layers, count_parameters
from quality_lora.models import SIZES, PetalFaceSwin, load_petalface, petalface_swin

VARIANTS = ("pretrained", "lora", "petalface")
TINY = dict(embed_dim=16, depths=(2, 2, 2), num_heads=(2, 4, 4))


@pytest.fixture(scope="module")
def ref(shared_dir: Path) -> Path:
    return shared_dir / "fixtures" / "petalface_reference"


@pytest.fixture(scope="module")
def io(ref: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ref / "io.safetensors"))


def _embed(model: torch.nn.Module, io: dict[str, torch.Tensor], alpha: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(io["images"], alpha=io["alpha"] if alpha is None else alpha)


@pytest.mark.parametrize("fused", [False, True], ids=["explicit", "sdpa"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_with_original(ref: Path, io: dict, variant: str, fused: bool) -> None:
    model = load_petalface(ref / f"tiny_{variant}.safetensors", fused_attn=fused)
    assert (model.variant, model.size, model.training) == (variant, "tiny", False)
    diff = (_embed(model, io) - io[f"embedding_{variant}"]).abs().max().item()
    assert diff <= 1e-5


def test_parity_from_torch_pickle_and_unclipped_alpha_matters(ref: Path, io: dict) -> None:
    model = load_petalface(ref / "tiny_petalface_model.pt")
    assert io["alpha"][-1, 0].item() == pytest.approx(1.4)
    expected = io["embedding_petalface"]
    assert (_embed(model, io, io["alpha"][:, 0]) - expected).abs().max() <= 1e-5  # alpha (B,)
    clipped = io["alpha"].clamp(0, 1)
    assert (_embed(model, io, clipped)[-1] - expected[-1]).abs().max() > 1e-4  # 1.4 is really used
    assert (_embed(model, io, clipped)[:3] - expected[:3]).abs().max() <= 1e-5


def test_adapters_change_the_embedding(io: dict) -> None:
    # The fixtures' adapters are not zero, so parity of the adapter variants is a real check.
    assert (io["embedding_petalface"] - io["embedding_pretrained"]).abs().max() > 1e-3
    assert (io["embedding_lora"] - io["embedding_pretrained"]).abs().max() > 1e-3


def test_shift_mask_option_changes_output(ref: Path, io: dict) -> None:
    sd = load_file(str(ref / "tiny_pretrained.safetensors"))
    masked = PetalFaceSwin(**TINY, apply_shift_mask=True).eval()
    masked.load_state_dict(sd)
    # Swin proper (mask applied) is not what the published weights were trained with.
    assert (_embed(masked, io) - io["embedding_pretrained"]).abs().max() > 1e-4


def test_merge_order_option(ref: Path, io: dict) -> None:
    sd = load_file(str(ref / "tiny_pretrained.safetensors"))
    other = PetalFaceSwin(**TINY, merge_order="row_major").eval()
    other.load_state_dict(sd)
    assert (_embed(other, io) - io["embedding_pretrained"]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="merge_order"):
        PetalFaceSwin(**TINY, merge_order="zigzag")


def test_variant_placement_and_parameter_counts() -> None:
    with torch.device("meta"):
        models = {v: petalface_swin(v, size="base") for v in VARIANTS}
    kinds = {v: sorted({(n.split(".")[-1], l.kind) for n, l in adapter_layers(m).items()}) for v, m in models.items()}
    assert kinds == {"pretrained": [], "lora": [("qkv", "lora")], "petalface": [("2", "lora"), ("qkv", "gated")]}
    assert len(adapter_layers(models["petalface"])) == 22 + 1  # every block's qkv + feature_layer.2
    assert count_parameters(models["petalface"]) == (1_441_792, 215_108_560)
    assert count_parameters(models["lora"]) == (565_248, 214_232_016)


def test_alpha_forms_and_errors() -> None:
    model = petalface_swin("petalface", size="micro", r=2).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.normal_()
        a = model(x, alpha=torch.tensor([0.2, 0.9]))
        b = model(x, alpha=torch.tensor([[0.2], [0.9]]))
        assert a.shape == (2, 512) and torch.equal(a, b)
        assert not torch.allclose(a, model(x, alpha=torch.tensor([0.9, 0.2])))
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            model(x, alpha=torch.tensor([0.2, 1.4]))  # a fresh model clips: only load_petalface does not
        with pytest.raises(RuntimeError, match="without alpha"):
            model(x)
        plain = petalface_swin("pretrained", size="micro").eval()
        assert torch.equal(plain(x), plain(x, alpha=torch.ones(2)))  # no adapters: alpha unused


def test_micro_size_and_constraints() -> None:
    model = petalface_swin("pretrained", size="micro").eval()
    assert model.pretrained_cfg["input_size"] == (3, 112, 112)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 112, 112)).shape == (2, 512)
    small = petalface_swin("pretrained", size="micro", img_size=64, patch_size=4, window_size=4, num_features=128)
    assert small.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 128)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        petalface_swin("pretrained", size="micro", img_size=100)
    with pytest.raises(ValueError, match="token grid"):
        petalface_swin("pretrained", size="micro", img_size=70, patch_size=7)  # 10 -> 5 -> odd
    with pytest.raises(ValueError, match="window_size"):
        petalface_swin("pretrained", size="micro", img_size=96, patch_size=4, window_size=5)  # 24 % 5
    with pytest.raises(ValueError, match="unknown size"):
        petalface_swin("pretrained", size="huge")


def test_fused_attention_matches_explicit_path() -> None:
    model = petalface_swin("pretrained", size="tiny").eval()
    x = torch.randn(2, 3, 120, 120)
    with torch.no_grad():
        fused = model(x)
        model.set_fused_attn(False)
        explicit = model(x)
    assert (fused - explicit).abs().max() <= 1e-5


def test_timm_registration() -> None:
    import timm

    import quality_lora.models  # noqa: F401  (registers)

    names = timm.list_models("petalface_swin_*")
    assert {f"petalface_swin_{s}{v}" for s in SIZES for v in ("", "_lora", "_petalface")} <= set(names)
    model = timm.create_model("petalface_swin_micro_petalface", r=2)
    assert model.variant == "petalface" and adapter_layers(model)
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and model.pretrained_cfg["input_size"] == (3, 112, 112)
    cfg = timm.data.resolve_data_config({}, model=timm.create_model("petalface_swin_micro"))
    assert cfg["input_size"] == (3, 112, 112) and cfg["std"] == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="load_petalface"):
        timm.create_model("petalface_swin_base", pretrained=True)
