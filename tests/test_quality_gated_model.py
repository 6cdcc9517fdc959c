"""QualityGatedModel: un-normalised scoring, alpha plumbing, module-tree hygiene, real injected model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from quality_lora.quality import AlphaMap, QualityGatedModel, SharpnessScorer


class TinyGated(nn.Module):
    """A model whose forward takes alpha=, and records what it got."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 4)
        self.register_buffer("calls", torch.zeros(()))
        self.last_alpha: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, alpha: torch.Tensor, extra: float = 0.0) -> torch.Tensor:
        self.last_alpha = alpha
        return self.proj(x.mean((2, 3))) * alpha[:, None] + extra


class MeanScorer:
    """Mean brightness as the score; remembers its input."""

    higher_is_better = True

    def __init__(self) -> None:
        self.seen: torch.Tensor | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.seen = images
        return images.mean((1, 2, 3))

    def describe(self) -> dict:
        return {"name": "mean", "params": {}}


class DropoutScorer(nn.Module):
    """A scorer that is an nn.Module with dropout: it must never be put in train mode by a parent."""

    higher_is_better = True

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.lin = nn.Linear(3, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.lin(self.drop(images.mean((2, 3))))[:, 0]


def test_unnormalises_scores_and_passes_alpha() -> None:
    scorer = MeanScorer()
    amap = AlphaMap(threshold=0.5, slope=2.0)
    gm = QualityGatedModel(TinyGated(), scorer, amap, input_mean=(0.5, 0.4, 0.3), input_std=(0.5, 0.25, 0.2))
    images01 = torch.rand(3, 3, 8, 8)
    images01[0] *= 0.2  # dark: low score
    normalised = (images01 - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 0.2]).view(1, 3, 1, 1)
    out = gm(normalised, extra=1.0)
    torch.testing.assert_close(scorer.seen, images01)
    expected_alpha = amap(images01.mean((1, 2, 3)))
    torch.testing.assert_close(gm.model.last_alpha, expected_alpha)
    torch.testing.assert_close(out, gm.model(normalised, alpha=expected_alpha, extra=1.0))
    scores, alpha = gm.score_alpha(normalised)
    torch.testing.assert_close(scores, images01.mean((1, 2, 3)))
    torch.testing.assert_close(alpha, expected_alpha)
    assert alpha[0] < alpha[1:].min()


def test_legacy_scoring_sees_normalised_tensor() -> None:
    scorer = MeanScorer()
    gm = QualityGatedModel(TinyGated(), scorer, AlphaMap.petalface(0.0), legacy_scoring=True)
    x = torch.randn(2, 3, 8, 8)
    gm(x)
    assert torch.equal(scorer.seen, x)
    torch.testing.assert_close(gm.model.last_alpha, 0.5 + x.mean((1, 2, 3)))  # unclipped, as the original


def test_alpha_has_no_gradient_but_model_does() -> None:
    gm = QualityGatedModel(TinyGated(), MeanScorer(), AlphaMap(0.5))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    gm(x).sum().backward()
    assert not gm.model.last_alpha.requires_grad
    assert x.grad is not None and gm.model.proj.weight.grad is not None


def test_scorer_outside_module_tree() -> None:
    scorer = DropoutScorer()
    model = TinyGated()
    gm = QualityGatedModel(model, scorer, AlphaMap(0.0, slope=0.1))
    parent = nn.Sequential(gm)
    parent.train()
    assert gm.model.training and not scorer.training
    assert all(m is not scorer for m in parent.modules())
    assert not any(p is scorer.lin.weight for p in parent.parameters())
    prefixed = {f"model.{k}": v for k, v in model.state_dict().items()}
    state = gm.state_dict()
    assert list(state) == list(prefixed) and all(torch.equal(state[k], prefixed[k]) for k in state)
    x = torch.rand(4, 3, 8, 8)
    first, second = gm.score_alpha(x)[1], gm.score_alpha(x)[1]
    assert torch.equal(first, second)  # dropout stayed off
    gm.scorer = DropoutScorer()  # replacing it keeps it out of the tree as well
    assert "scorer" not in dict(gm.named_children()) and not gm.scorer.training


def test_buffers_follow_dtype_and_loading() -> None:
    gm = QualityGatedModel(TinyGated(), MeanScorer(), AlphaMap(0.5)).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert gm(x).dtype == torch.float64 and gm.model.last_alpha.dtype == torch.float64
    other = QualityGatedModel(TinyGated(), MeanScorer(), AlphaMap(0.5)).double()
    other.load_state_dict(gm.state_dict())  # strict: no extra keys from scorer or normalisation


def test_describe_and_bad_arguments() -> None:
    gm = QualityGatedModel(TinyGated(), SharpnessScorer(), AlphaMap(1.0))
    d = gm.describe()
    assert d["scorer"]["name"] == "sharpness" and d["alpha_map"]["threshold"] == 1.0 and d["legacy_scoring"] is False
    with pytest.raises(TypeError, match="computes alpha itself"):
        gm(torch.rand(2, 3, 32, 32), alpha=torch.ones(2))
    with pytest.raises(ValueError, match="input_std must be > 0"):
        QualityGatedModel(TinyGated(), MeanScorer(), AlphaMap(0.5), input_std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="input_mean"):
        QualityGatedModel(TinyGated(), MeanScorer(), AlphaMap(0.5), input_mean=(0.5, 0.5))
    with pytest.raises(TypeError, match="alpha_map must be an AlphaMap"):
        QualityGatedModel(TinyGated(), MeanScorer(), {"threshold": 1.0})
    with pytest.raises(TypeError, match="higher_is_better"):
        QualityGatedModel(TinyGated(), lambda x: x.mean((1, 2, 3)), AlphaMap(0.5))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        gm(torch.rand(3, 32, 32))

    class BadScorer(MeanScorer):
        def __call__(self, images: torch.Tensor) -> torch.Tensor:
            return images.mean((2, 3))

    with pytest.raises(ValueError, match=r"expected shape \(2,\)"):
        QualityGatedModel(TinyGated(), BadScorer(), AlphaMap(0.5))(torch.rand(2, 3, 8, 8))


def test_real_injected_timm_model() -> None:
    ql = pytest.importorskip("quality_lora")
    timm = pytest.importorskip("timm")
    if not hasattr(ql, "inject_adapters"):
        from quality_lora.inject import inject_adapters
    else:
        inject_adapters = ql.inject_adapters
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=0, depth=2).eval()
    inject_adapters(model, ["attn.qkv"], r=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)
    gm = QualityGatedModel(model, SharpnessScorer(), AlphaMap(threshold=1.0, slope=0.5)).eval()
    # sharp blocky images (flat areas, hard edges); the middle one blurred from 8 px
    images01 = torch.nn.functional.interpolate(torch.rand(3, 3, 8, 8), size=32, mode="nearest")
    images01[1] = torch.nn.functional.interpolate(
        torch.nn.functional.interpolate(images01[1:2], size=8, mode="area"), size=32, mode="bilinear")[0]
    x = (images01 - 0.5) / 0.5
    _, alpha = gm.score_alpha(x)
    assert alpha[1] < alpha[0] and alpha[1] < alpha[2]
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x, alpha=alpha))
        assert not torch.allclose(gm(x), model(x, alpha=torch.ones(3)))
    assert set(gm.state_dict()) == {f"model.{k}" for k in model.state_dict()}
