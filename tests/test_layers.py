"""QualityGatedLoRA and LoRALinear against the literal formulas."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import quality_lora as ql


def literal(layer: ql.QualityGatedLoRA, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The original two-branch formula, with alpha already per row."""
    a = alpha.view(-1, *([1] * (x.dim() - 1)))
    lq = x @ layer.lq_A.t() @ layer.lq_B.t()
    hq = x @ layer.hq_A.t() @ layer.hq_B.t()
    return layer.base(x) + layer.scale * ((1 - a) * lq + a * hq)


def randomised(layer: ql.QualityGatedLoRA | ql.LoRALinear) -> None:
    with torch.no_grad():
        layer.lora_B.normal_()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(4, 16), (4, 7, 16), (4, 3, 5, 16)])
def test_gated_equals_literal(bias: bool, shape: tuple[int, ...]) -> None:
    layer = ql.QualityGatedLoRA(nn.Linear(16, 24, bias=bias), r=4, scale=0.7)
    randomised(layer)
    x = torch.randn(shape)
    alpha = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(layer(x, alpha), literal(layer, x, alpha), atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x, alpha[:, None]), literal(layer, x, alpha), atol=1e-6, rtol=0)


def test_fresh_adapter_is_identity_and_init_matches_petalface() -> None:
    base = nn.Linear(64, 32)
    layer = ql.QualityGatedLoRA(base, r=8)
    x = torch.randn(5, 64)
    torch.testing.assert_close(layer(x, torch.rand(5)), base(x))
    assert torch.count_nonzero(layer.lora_B) == 0
    assert layer.lora_A.shape == (16, 64) and layer.lora_B.shape == (32, 16)
    big = ql.QualityGatedLoRA(nn.Linear(2048, 8), r=8)
    assert abs(big.lora_A.std().item() - 1 / 8) < 0.01


def test_window_rows_repeat_alpha_per_sample() -> None:
    layer = ql.QualityGatedLoRA(nn.Linear(8, 8), r=2)
    randomised(layer)
    x = torch.randn(3 * 4, 5, 8)  # 4 windows per image, batch outermost
    alpha = torch.tensor([0.1, 0.6, 0.9])
    expected = literal(layer, x, alpha.repeat_interleave(4))
    torch.testing.assert_close(layer(x, alpha), expected, atol=1e-6, rtol=0)


def test_alpha_extremes_select_one_branch() -> None:
    layer = ql.QualityGatedLoRA(nn.Linear(8, 6), r=2, scale=2.0)
    randomised(layer)
    x = torch.randn(2, 8)
    hq = layer.base(x) + 2.0 * x @ layer.hq_A.t() @ layer.hq_B.t()
    lq = layer.base(x) + 2.0 * x @ layer.lq_A.t() @ layer.lq_B.t()
    torch.testing.assert_close(layer(x, torch.ones(2)), hq)
    torch.testing.assert_close(layer(x, torch.zeros(2)), lq)


def test_gradcheck_float64() -> None:
    layer = ql.QualityGatedLoRA(nn.Linear(6, 5).double(), r=2, scale=0.5)
    randomised(layer)
    x = torch.randn(3, 2, 6, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor([0.2, 0.7, 1.0], dtype=torch.float64)

    def f(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            layer.lora_A.copy_(a)
            layer.lora_B.copy_(b)
        return torch.func.functional_call(layer, {"lora_A": a, "lora_B": b}, (x, alpha))

    a = layer.lora_A.detach().clone().requires_grad_(True)
    b = layer.lora_B.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (x, a, b))


def test_base_gets_no_grad_and_alpha_never_requires_grad() -> None:
    layer = ql.QualityGatedLoRA(nn.Linear(8, 8), r=2)
    randomised(layer)
    alpha = torch.rand(4, requires_grad=True)
    layer(torch.randn(4, 8), alpha).sum().backward()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None
    assert alpha.grad is None


def test_dtype_device_follow_base_and_bf16_autocast() -> None:
    layer = ql.QualityGatedLoRA(nn.Linear(8, 8).to(torch.bfloat16), r=2)
    assert layer.lora_A.dtype == torch.bfloat16
    assert layer(torch.randn(2, 8, dtype=torch.bfloat16), torch.rand(2)).dtype == torch.bfloat16
    f32 = ql.QualityGatedLoRA(nn.Linear(8, 8), r=2)
    randomised(f32)
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = f32(x, torch.rand(4))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


def test_torch_compile_matches_eager() -> None:
    layer = ql.QualityGatedLoRA(nn.Linear(16, 16), r=4)
    randomised(layer)
    x, alpha = torch.randn(6, 3, 16), torch.rand(6)
    compiled = torch.compile(layer, backend="aot_eager")
    torch.testing.assert_close(compiled(x, alpha), layer(x, alpha), atol=1e-6, rtol=0)


def test_dropout_per_branch_in_training_only() -> None:
    layer = ql.QualityGatedLoRA(nn.Linear(16, 16), r=4, dropout=0.5)
    randomised(layer)
    x, alpha = torch.randn(8, 16), torch.rand(8)
    layer.eval()
    torch.testing.assert_close(layer(x, alpha), literal(layer, x, alpha), atol=1e-5, rtol=0)
    layer.train()
    torch.manual_seed(1)
    y = layer(x, alpha)
    assert not torch.allclose(y, literal(layer, x, alpha))
    # Dropout never touches the base output: with both branches dropped entirely we get base(x).
    layer.dropout.p = 1.0 - 1e-12
    torch.testing.assert_close(layer(x, alpha), layer.base(x), atol=1e-4, rtol=0)


def test_lora_linear_formula() -> None:
    layer = ql.LoRALinear(nn.Linear(10, 4), r=3, scale=0.5)
    randomised(layer)
    x = torch.randn(2, 5, 10)
    expected = layer.base(x) + 0.5 * x @ layer.lora_A.t() @ layer.lora_B.t()
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=0)
    assert layer.lora_A.shape == (3, 10)


@pytest.mark.parametrize(
    "alpha, match",
    [
        (torch.rand(3, 2), "shape"),
        (torch.tensor([0.5, float("nan"), 0.5, 0.5]), "NaN"),
        (torch.tensor([0.5, 1.2, 0.5, 0.5]), r"\[0, 1\]"),
        (torch.tensor([-0.1, 0.5, 0.5, 0.5]), r"\[0, 1\]"),
        (torch.rand(3), "multiple"),
    ],
)
def test_bad_alpha_is_a_clear_error(alpha: torch.Tensor, match: str) -> None:
    layer = ql.QualityGatedLoRA(nn.Linear(8, 8), r=2)
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(4, 8), alpha)


def test_missing_alpha_names_the_layer() -> None:
    layer = ql.QualityGatedLoRA(nn.Linear(8, 8), r=2)
    with pytest.raises(RuntimeError, match="without alpha"):
        layer(torch.randn(4, 8))


@pytest.mark.parametrize("kwargs, match", [({"r": 0}, "r must"), ({"dropout": 1.0}, "dropout"), ({"scale": float("inf")}, "scale")])
def test_bad_constructor_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ql.QualityGatedLoRA(nn.Linear(4, 4), **kwargs)
    with pytest.raises(TypeError, match="nn.Linear"):
        ql.LoRALinear(nn.Conv2d(3, 3, 1))  # type: ignore[arg-type]
