"""The two adapter layers: quality-gated LoRA (two branches mixed per sample) and plain LoRA.

``QualityGatedLoRA`` computes, for a frozen ``base`` layer and a per-sample weight α ∈ [0, 1]::

    y = base(x) + scale · ((1 − α) · B_lq A_lq x + α · B_hq A_hq x)

Both branches are stored fused: ``lora_A`` stacks ``A_lq`` over ``A_hq`` (2r × in) and
``lora_B`` puts ``B_lq`` beside ``B_hq`` (out × 2r). The forward then needs one
down-projection, a per-row gate on the 2r hidden columns and one up-projection that is
accumulated into the base output (``addmm``), instead of the four matmuls on the two scaled
copies of ``x`` that the literal formula costs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from quality_lora.gate import AlphaState, resolve_alpha

__all__ = ["QualityGatedLoRA", "LoRALinear", "AdapterLayer"]


def _check_base(base: nn.Module, r: int, scale: float, dropout: float) -> None:
    if not isinstance(base, nn.Linear):
        raise TypeError(f"adapters wrap nn.Linear only, got {type(base).__name__}")
    if not isinstance(r, int) or r < 1:
        raise ValueError(f"r must be a positive int, got {r!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


class AdapterLayer(nn.Module):
    """What both adapter kinds share: the frozen base, rank, scale, dropout and a name."""

    kind: str = ""
    branches: int = 1

    def __init__(self, base: nn.Linear, r: int = 8, scale: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        _check_base(base, r, float(scale), float(dropout))
        self.base = base
        self.r = r
        self.scale = float(scale)
        self.dropout_p = float(dropout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        rows = self.branches * r
        self.lora_A = nn.Parameter(torch.empty(rows, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rows, **factory))
        self.reset_adapter()
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        # Set by inject_adapters: the shared per-model alpha state and the module's dotted name.
        self.alpha_state: AlphaState | None = None
        self.adapter_name = type(self).__name__
        self.called = False

    def reset_adapter(self) -> None:
        """PETALface initialisation: A ~ N(0, σ = 1/r), B = 0, so the adapter starts as a no-op."""
        with torch.no_grad():
            self.lora_A.normal_(0.0, 1.0 / self.r)
            self.lora_B.zero_()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> Tensor:
        # Read-only access for code that inspects ``layer.weight`` (shape/dtype/device checks).
        return self.base.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    def delta_weight(self, alpha: float = 1.0) -> Tensor:
        """The adapter's contribution as a dense (out, in) matrix at a fixed alpha."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"kind={self.kind}, r={self.r}, scale={self.scale}, dropout={self.dropout_p}"


class QualityGatedLoRA(AdapterLayer):
    """Two LoRA branches on a frozen ``nn.Linear``, mixed per sample by alpha.

    Args:
        base: the layer to adapt; frozen in place, dtype and device are taken from it.
        r: rank of each branch.
        scale: multiplier of the adapter output (PETALface uses 1.0).
        dropout: dropout on each branch's output, in training only.

    Call as ``layer(x, alpha)`` with ``x`` of shape (B', ..., in) and ``alpha`` of shape (B,) or
    (B, 1), where ``B' = k·B`` (k = 1 for token layers, windows per image for window
    attention, batch outermost). With ``alpha=None`` the alpha set on the model
    (``model(x, alpha=...)`` or ``use_alpha``) is used. Returns (B', ..., out).
    """

    kind = "gated"
    branches = 2

    @property
    def lq_A(self) -> Tensor:
        return self.lora_A[: self.r]

    @property
    def hq_A(self) -> Tensor:
        return self.lora_A[self.r :]

    @property
    def lq_B(self) -> Tensor:
        return self.lora_B[:, : self.r]

    @property
    def hq_B(self) -> Tensor:
        return self.lora_B[:, self.r :]

    def forward(self, x: Tensor, alpha: Tensor | None = None) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"layer {self.adapter_name!r}: input must have shape (B, ..., {self.in_features}), got {tuple(x.shape)}")
        rows = x.shape[0]
        a = resolve_alpha(self, alpha, rows)  # (rows,)
        self.called = True
        x2 = x.reshape(-1, x.shape[-1])
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        gate = branch_gate(a, self.r, self.scale, dtype)
        if self.training and self.dropout_p > 0:
            # Independent dropout per branch output (as the original) rules out the fused up-projection.
            hidden = gate_rows(F.linear(x2, self.lora_A), gate)
            up = self.dropout(F.linear(hidden[:, : self.r], self.lq_B))
            up = up + self.dropout(F.linear(hidden[:, self.r :], self.hq_B))
            out = F.linear(x2, self.base.weight, self.base.bias) + up
        elif torch.is_autocast_enabled(x.device.type):
            # Autocast picks the matmul dtypes; the fused Function would bypass it.
            hidden = gate_rows(F.linear(x2, self.lora_A), gate)
            out = F.linear(x2, self.base.weight, self.base.bias) + F.linear(hidden, self.lora_B)
        else:
            out = _FusedGatedLinear.apply(x2, self.lora_A, self.lora_B, self.base.weight, self.base.bias, gate)
        return out.view(*x.shape[:-1], self.out_features)

    def delta_weight(self, alpha: float = 1.0) -> Tensor:
        """``scale · ((1 − α) B_lq A_lq + α B_hq A_hq)`` as an (out, in) matrix."""
        return gated_delta_weight(self.lora_A, self.lora_B, self.r, self.scale, alpha)


def branch_gate(alpha: Tensor, r: int, scale: float, dtype: torch.dtype) -> Tensor:
    """Per-row weights of the 2r hidden columns: (1 − α)·scale on the lq half, α·scale on the hq half.

    alpha (rows,) -> (rows, 2r).
    """
    return torch.stack((1.0 - alpha, alpha), dim=-1).to(dtype).mul_(scale).repeat_interleave(r, dim=-1)


def gated_delta_weight(lora_a: Tensor, lora_b: Tensor, r: int, scale: float, alpha: float) -> Tensor:
    """Fused two-branch adapter (A (2r, in), B (out, 2r)) as a dense (out, in) matrix at a fixed alpha."""
    return scale * ((1.0 - alpha) * (lora_b[:, :r] @ lora_a[:r]) + alpha * (lora_b[:, r:] @ lora_a[r:]))


def gate_rows(hidden: Tensor, gate: Tensor) -> Tensor:
    """Multiply (M, 2r) hidden rows by a (rows, 2r) gate, M = k·rows (batch outermost)."""
    rows = gate.shape[0]
    return (hidden.view(rows, -1, hidden.shape[-1]) * gate.unsqueeze(1)).view_as(hidden)


class _FusedGatedLinear(torch.autograd.Function):
    """``x W^T + b + (gate ⊙ x A^T) B^T`` with the base and up-projection in one matmul.

    Forward: one skinny down-projection, then ``[x | h] @ [W | B]^T`` so the output is written
    once (a second ``addmm`` pass over the output costs as much as the whole adapter).
    Backward: ``gy @ [W | B]`` yields the base input gradient and the hidden gradient in one
    pass over ``gy``; the frozen base weight gets no gradient unless it requires one.
    Shapes: x (M, in), A (2r, in), B (out, 2r), W (out, in), b (out,) or None, gate (rows, 2r).
    """

    @staticmethod
    def forward(ctx, x, lora_a, lora_b, weight, bias, gate):  # type: ignore[override]
        hidden = gate_rows(x @ lora_a.t(), gate)
        joint_in = torch.cat((x, hidden), dim=1)
        joint_w = torch.cat((weight, lora_b), dim=1)
        out = torch.addmm(bias, joint_in, joint_w.t()) if bias is not None else joint_in @ joint_w.t()
        ctx.save_for_backward(x, lora_a, lora_b, weight, hidden, gate)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, lora_a, lora_b, weight, hidden, gate = ctx.saved_tensors
        need_x, need_a, need_b, need_w, need_bias, _ = ctx.needs_input_grad
        grad_x = grad_a = grad_b = grad_w = grad_bias = None
        in_features = x.shape[1]
        if need_x:
            joint = grad_out @ torch.cat((weight, lora_b), dim=1)  # (M, in + 2r)
            grad_x, grad_hidden = joint[:, :in_features], joint[:, in_features:]
        else:
            grad_hidden = grad_out @ lora_b
        grad_h = gate_rows(grad_hidden, gate)
        if need_x:
            grad_x = grad_x.addmm_(grad_h, lora_a)
        if need_a:
            grad_a = grad_h.t() @ x
        if need_b:
            grad_b = grad_out.t() @ hidden
        if need_w:
            grad_w = grad_out.t() @ x
        if need_bias and ctx.has_bias:
            grad_bias = grad_out.sum(0)
        return grad_x, grad_a, grad_b, grad_w, grad_bias, None


class LoRALinear(AdapterLayer):
    """One LoRA branch on a frozen ``nn.Linear``: ``y = base(x) + dropout(scale · B A x)``.

    PETALface puts one on the final feature projection. ``x``: (..., in) → (..., out).
    """

    kind = "lora"
    branches = 1

    def forward(self, x: Tensor) -> Tensor:
        self.called = True
        x2 = x.reshape(-1, x.shape[-1])
        hidden = F.linear(x2, self.lora_A)
        if self.training and self.dropout_p > 0:
            out = F.linear(x2, self.base.weight, self.base.bias)
            out = out + self.dropout(F.linear(hidden, self.lora_B) * self.scale)
        else:
            base_out = (
                torch.addmm(self.base.bias, x2, self.base.weight.t())
                if self.base.bias is not None
                else x2 @ self.base.weight.t()
            )
            out = torch.addmm(base_out, hidden, self.lora_B.t(), alpha=self.scale)
        return out.view(*x.shape[:-1], self.out_features)

    def delta_weight(self, alpha: float = 1.0) -> Tensor:
        """``scale · B A`` as an (out, in) matrix (alpha is ignored: one branch)."""
        return self.scale * (self.lora_B @ self.lora_A)
