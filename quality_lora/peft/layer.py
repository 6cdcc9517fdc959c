"""``QualityLoraLinear``: the PEFT tuner layer, one frozen ``nn.Linear`` with named adapters.

Each adapter stores its branches fused, exactly as ``quality_lora.layers`` does:
``quality_lora_A[name]`` is (branches·r, in) with rows [0, r) = lq and [r, 2r) = hq,
``quality_lora_B[name]`` is (out, branches·r) with the columns in the same order. For a gated
adapter and a per-sample alpha::

    y = base(x) + scale · ((1 − α) · B_lq A_lq x + α · B_hq A_hq x)

A "lora" adapter has one branch and no alpha: ``y = base(x) + scale · B A x``.

The layer is also a :class:`quality_lora.layers.AdapterLayer`, so ``quality_lora.use_alpha``,
``model(x, alpha=...)`` and ``quality_lora.adapter_layers`` find it inside a ``PeftModel``; the
AdapterLayer attributes (``lora_A``, ``r``, ``kind``, ...) describe the first active adapter.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import Tensor, nn

from quality_lora.gate import AlphaState, resolve_alpha
from quality_lora.layers import AdapterLayer, branch_gate, gate_rows, gated_delta_weight

__all__ = ["QualityLoraLinear"]


class QualityLoraLinear(AdapterLayer, BaseTunerLayer):
    """A frozen ``nn.Linear`` with any number of named quality-gated (or plain) LoRA adapters.

    ``x``: (B', ..., in) with B' = k·B rows for a batch of B samples (batch outermost) →
    (B', ..., out). Gated adapters read the per-sample alpha (B,) set on the model.
    """

    adapter_layer_names = ("quality_lora_A", "quality_lora_B")
    other_param_names = ("ql_kind", "ql_r", "ql_scale", "ql_dropout")

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        *,
        kind: str,
        r: int,
        scale: float,
        dropout: float,
        init_weights: bool = True,
        alpha_state: AlphaState | None = None,
        layer_name: str = "",
    ) -> None:
        # AdapterLayer.__init__ is skipped on purpose: it creates one lora_A/lora_B pair, while a
        # PEFT layer keeps one pair per adapter name in ParameterDicts (PEFT's multi-adapter API).
        nn.Module.__init__(self)
        base = base_layer.get_base_layer() if isinstance(base_layer, BaseTunerLayer) else base_layer
        if not isinstance(base, nn.Linear):
            raise TypeError(f"quality_lora targets nn.Linear layers only; {layer_name!r} is a {type(base).__name__}")
        self.base_layer = base_layer
        self.quality_lora_A = nn.ParameterDict({})
        self.quality_lora_B = nn.ParameterDict({})
        self.quality_lora_dropout = nn.ModuleDict({})
        self.ql_kind: dict[str, str] = {}
        self.ql_r: dict[str, int] = {}
        self.ql_scale: dict[str, float] = {}
        self.ql_dropout: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._merged_alpha: dict[str, float] = {}
        # Alpha used by merge(); set by QualityLoraModel.merge_and_unload(alpha=...).
        self.merge_alpha: float | None = None
        self.alpha_state = alpha_state
        self.adapter_name = layer_name or type(self).__name__
        self.called = False
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, kind=kind, r=r, scale=scale, dropout=dropout, init_weights=init_weights)

    # -- AdapterLayer view: the first active adapter -------------------------------------------
    def _first(self) -> str:
        for name in self.active_adapters:
            if name in self.quality_lora_A:
                return name
        return next(iter(self.quality_lora_A))

    @property
    def base(self) -> nn.Linear:  # type: ignore[override]
        return self.get_base_layer()

    @property
    def lora_A(self) -> Tensor:  # type: ignore[override]
        return self.quality_lora_A[self._first()]

    @property
    def lora_B(self) -> Tensor:  # type: ignore[override]
        return self.quality_lora_B[self._first()]

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.ql_kind[self._first()]

    @property
    def branches(self) -> int:  # type: ignore[override]
        return 2 if self.kind == "gated" else 1

    @property
    def r(self) -> int:  # type: ignore[override]
        return self.ql_r[self._first()]

    @property
    def scale(self) -> float:  # type: ignore[override]
        return self.ql_scale[self._first()]

    @property
    def dropout_p(self) -> float:  # type: ignore[override]
        return self.ql_dropout[self._first()]

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        return self.get_base_layer().weight

    @property
    def bias(self) -> Tensor | None:  # type: ignore[override]
        return self.get_base_layer().bias

    def delta_weight(self, alpha: float = 1.0) -> Tensor:
        return self.get_delta_weight(self._first(), alpha)

    # -- PEFT adapter management -----------------------------------------------------------------
    def update_layer(
        self, adapter_name: str, *, kind: str, r: int, scale: float, dropout: float, init_weights: bool = True
    ) -> None:
        """Add (or replace) the adapter ``adapter_name``: A (branches·r, in), B (out, branches·r)."""
        if kind not in ("gated", "lora"):
            raise ValueError(f"layer {self.adapter_name!r}: adapter kind must be 'gated' or 'lora', got {kind!r}")
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"layer {self.adapter_name!r}: r must be a positive int, got {r!r}")
        base = self.get_base_layer()
        rows = (2 if kind == "gated" else 1) * r
        self.ql_kind[adapter_name], self.ql_r[adapter_name] = kind, r
        self.ql_scale[adapter_name], self.ql_dropout[adapter_name] = float(scale), float(dropout)
        self.quality_lora_A[adapter_name] = nn.Parameter(torch.empty(rows, base.in_features))
        self.quality_lora_B[adapter_name] = nn.Parameter(torch.zeros(base.out_features, rows))
        self.quality_lora_dropout[adapter_name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        with torch.no_grad():
            # PETALface init (as quality_lora.layers): A ~ N(0, 1/r), B = 0, so the adapter starts as a no-op.
            self.quality_lora_A[adapter_name].normal_(0.0, 1.0 / r)
            if not init_weights:
                self.quality_lora_B[adapter_name].normal_(0.0, 1.0 / r)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters)

    def get_delta_weight(self, adapter: str, alpha: float | None = None) -> Tensor:
        """The adapter as a dense (out, in) matrix; gated adapters need a fixed ``alpha``."""
        a, b = self.quality_lora_A[adapter], self.quality_lora_B[adapter]
        r, scale = self.ql_r[adapter], self.ql_scale[adapter]
        if self.ql_kind[adapter] == "lora":
            return scale * (b @ a)
        if alpha is None:
            raise ValueError(
                f"layer {self.adapter_name!r}: merging gated adapter {adapter!r} needs a fixed alpha; call "
                "peft_model.merge_and_unload(alpha=1.0) (or merge_adapter(alpha=...))"
            )
        return gated_delta_weight(a, b, r, scale, alpha)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the active (or given) adapters into the base weight at ``self.merge_alpha``."""
        names = check_adapters_to_merge(self, adapter_names)
        base = self.get_base_layer()
        for name in names:
            if name not in self.quality_lora_A:
                continue
            alpha = self.merge_alpha
            delta = self.get_delta_weight(name, alpha).detach().to(base.weight.dtype)
            with torch.no_grad():
                merged = base.weight.data + delta
                if safe_merge and not torch.isfinite(merged).all():
                    raise ValueError(f"layer {self.adapter_name!r}: merging adapter {name!r} gives NaN/inf weights")
                base.weight.data = merged
            self._merged_alpha[name] = alpha  # type: ignore[assignment]
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.quality_lora_A:
                alpha = self._merged_alpha.pop(name, None)
                with torch.no_grad():
                    base.weight.data -= self.get_delta_weight(name, alpha).to(base.weight.dtype)

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        # Marked before the early returns: a disabled or merged adapter still counts as called,
        # so the uncalled-layer warning of quality_lora.gate stays quiet.
        self.called = True
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        active = [a for a in self.active_adapters if a in self.quality_lora_A]
        if self.merged or not active:
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        x2 = x.reshape(-1, x.shape[-1])
        alpha = None
        if any(self.ql_kind[a] == "gated" for a in active):
            if x.dim() < 2:
                raise ValueError(f"layer {self.adapter_name!r}: input must have shape (B, ..., in), got {tuple(x.shape)}")
            alpha = resolve_alpha(self, None, x.shape[0])  # (rows,)
        delta = None
        for name in active:
            out = self._adapter_output(name, x2, alpha)
            delta = out if delta is None else delta + out
        return result + delta.view(*x.shape[:-1], -1).to(result.dtype)  # type: ignore[union-attr]

    def _adapter_output(self, name: str, x2: Tensor, alpha: Tensor | None) -> Tensor:
        """One adapter's contribution for rows x2 (M, in), M = k·rows; returns (M, out)."""
        a = self.quality_lora_A[name]
        b = self.quality_lora_B[name]
        r, scale, drop = self.ql_r[name], self.ql_scale[name], self.quality_lora_dropout[name]
        if not torch.is_autocast_enabled(x2.device.type):
            x2 = x2.to(a.dtype)  # peft keeps fp32 adapters on a half-precision base (autocast_adapter_dtype)
        hidden = F.linear(x2, a)
        if self.ql_kind[name] == "lora":
            return drop(F.linear(hidden, b) * scale)
        hidden = gate_rows(hidden, branch_gate(alpha.to(device=hidden.device), r, scale, hidden.dtype))  # type: ignore[union-attr]
        if self.training and self.ql_dropout[name] > 0:
            # Independent dropout on each branch output, as quality_lora.layers and the original.
            return drop(F.linear(hidden[:, :r], b[:, :r])) + drop(F.linear(hidden[:, r:], b[:, r:]))
        return F.linear(hidden, b)

    def extra_repr(self) -> str:
        specs = ", ".join(f"{n}: {self.ql_kind[n]} r={self.ql_r[n]}" for n in self.quality_lora_A)
        return f"adapters=({specs})"

    def __repr__(self) -> str:
        return "quality_lora." + super().__repr__()
