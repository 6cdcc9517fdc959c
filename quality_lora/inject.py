"""Put adapters into any model, take them out again, merge them, count parameters.

Targets are found by structure (the module tree and its ``nn.Linear`` leaves), named by:
- an exact dotted suffix: ``"attn.qkv"`` matches ``layers.0.blocks.1.attn.qkv``;
- a regular expression prefixed ``"re:"`` and matched against the full dotted name;
- a preset: ``"attention"`` (Linear layers inside a module whose class name contains
  "Attention"), ``"mlp"`` (inside a class named like Mlp/MLP/FeedForward/FFN) or
  ``"all-linear"`` (every Linear except a timm model's classifier);
- a mapping ``{target: "gated" | "lora"}`` to choose the adapter kind per target.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from quality_lora.gate import AlphaState, alpha_states, install_alpha_hooks, remove_alpha_hooks
from quality_lora.layers import AdapterLayer, LoRALinear, QualityGatedLoRA

__all__ = [
    "inject_adapters",
    "remove_adapters",
    "merge_adapters",
    "count_parameters",
    "adapter_layers",
    "adapter_summary",
    "AdapterSummary",
    "PRESETS",
]

ADAPTER_KINDS: dict[str, type[AdapterLayer]] = {"gated": QualityGatedLoRA, "lora": LoRALinear}
PRESETS = ("attention", "mlp", "all-linear")
_MLP_CLASS = re.compile(r"mlp|feedforward|ffn", re.IGNORECASE)


@dataclass
class AdapterSummary:
    """What ``inject_adapters`` did: wrapped layer names with their kind, and parameter counts."""

    layers: dict[str, str] = field(default_factory=dict)
    trainable: int = 0
    total: int = 0

    def __str__(self) -> str:
        kinds: dict[str, int] = {}
        for kind in self.layers.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        parts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
        pct = 100.0 * self.trainable / self.total if self.total else 0.0
        return f"adapters: {parts}; trainable {self.trainable:,} / {self.total:,} ({pct:.3f}%)"


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """All adapter layers of ``model`` by dotted name, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``model`` (shared parameters counted once)."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def adapter_summary(model: nn.Module) -> AdapterSummary:
    trainable, total = count_parameters(model)
    layers = {name: m.kind for name, m in adapter_layers(model).items()}
    return AdapterSummary(layers=layers, trainable=trainable, total=total)


def _normalise_targets(target_modules: str | Iterable[str] | Mapping[str, str], gated: bool) -> dict[str, str]:
    default = "gated" if gated else "lora"
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    if isinstance(target_modules, Mapping):
        targets = dict(target_modules)
    else:
        targets = {t: default for t in target_modules}
    if not targets:
        raise ValueError("target_modules is empty: name at least one layer, regex ('re:...') or preset")
    for target, kind in targets.items():
        if not isinstance(target, str) or not target:
            raise TypeError(f"target_modules entries must be non-empty strings, got {target!r}")
        if kind not in ADAPTER_KINDS:
            raise ValueError(f"target {target!r}: adapter kind must be one of {sorted(ADAPTER_KINDS)}, got {kind!r}")
        if target.startswith("re:"):
            try:
                re.compile(target[3:])
            except re.error as err:
                raise ValueError(f"target {target!r} is not a valid regular expression: {err}") from err
    return targets


def _classifier_names(model: nn.Module) -> set[str]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    if isinstance(names, str):
        return {names}
    return set(names or ())


def _matches(target: str, name: str, parents: list[nn.Module], model: nn.Module) -> bool:
    if target.startswith("re:"):
        return re.fullmatch(target[3:], name) is not None
    if target == "attention":
        return any("attention" in type(p).__name__.lower() for p in parents[1:])
    if target == "mlp":
        return any(_MLP_CLASS.search(type(p).__name__) for p in parents[1:])
    if target == "all-linear":
        return name not in _classifier_names(model)
    return name == target or name.endswith("." + target)


def _weight_read_directly(name: str, module: nn.Module, parent: nn.Module | None) -> str | None:
    """Why wrapping ``module`` would have no effect, or None if it is safe."""
    if isinstance(parent, nn.MultiheadAttention):
        return (
            "nn.MultiheadAttention reads its projection weights directly in F.multi_head_attention_forward, "
            "so a wrapped layer would never be called"
        )
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "qkv" and getattr(parent, "q_bias", None) is not None and not getattr(parent, "qkv_bias_separate", False):
        return (
            f"{type(parent).__name__} computes F.linear(x, self.qkv.weight, q/k/v bias) without calling qkv "
            "(timm SwinV2/BEiT/EVA with qkv_bias); set `qkv_bias_separate = True` on the attention modules to "
            "make them call the layer, then inject"
        )
    return None


def _find_targets(model: nn.Module, targets: dict[str, str], exclude: dict[str, str]) -> dict[str, str]:
    """Dotted name -> adapter kind for every Linear to wrap; errors for bad or empty targets."""
    chosen: dict[str, str] = {}
    hits: dict[str, int] = {t: 0 for t in targets}

    def walk(module: nn.Module, prefix: str, parents: list[nn.Module]) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            chain = parents + [module]
            matched = [t for t in targets if _matches(t, name, chain + [child], model)]
            if isinstance(child, AdapterLayer):
                if any(not t.startswith(("re:",)) and t not in PRESETS for t in matched):
                    raise ValueError(f"layer {name!r} already has a {child.kind} adapter; remove_adapters(model) first")
                continue
            if matched and not any(_matches(e, name, chain + [child], model) for e in exclude):
                if isinstance(child, nn.Linear):
                    reason = _weight_read_directly(name, child, module)
                    if reason is not None:
                        raise ValueError(f"cannot adapt layer {name!r}: {reason}")
                    kinds = {targets[t] for t in matched}
                    if len(kinds) > 1:
                        raise ValueError(f"layer {name!r} is matched by targets {matched} with different kinds {sorted(kinds)}")
                    chosen[name] = kinds.pop()
                    for t in matched:
                        hits[t] += 1
                    continue
                explicit = [t for t in matched if t not in PRESETS and not t.startswith("re:")]
                if explicit and not list(child.children()):
                    raise ValueError(
                        f"target {explicit[0]!r} matches {name!r}, a {type(child).__name__}; only nn.Linear "
                        "layers can take adapters"
                    )
            walk(child, name, chain)

    walk(model, "", [])
    missing = [t for t, n in hits.items() if n == 0]
    if missing:
        raise ValueError(
            f"target(s) {missing} matched no nn.Linear layer of {type(model).__name__}; "
            f"some Linear layers are: {[n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:6]}"
        )
    return chosen


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


def inject_adapters(
    model: nn.Module,
    target_modules: str | Iterable[str] | Mapping[str, str],
    r: int = 8,
    scale: float = 1.0,
    dropout: float = 0.0,
    gated: bool = True,
    exclude_modules: str | Iterable[str] | None = None,
) -> nn.Module:
    """Wrap the targeted ``nn.Linear`` layers of ``model`` with adapters, in place.

    Every base parameter is frozen (adapter parameters are the only trainable ones); call
    ``requires_grad_(True)`` on a head you want to train as well. After injection
    ``model(x, alpha=a)`` with ``a`` of shape (B,) or (B, 1) sets the per-sample alpha of every
    gated layer. ``adapter_summary(model)`` tells what was wrapped.

    Args:
        model: any module.
        target_modules: dotted suffixes, ``"re:<regex>"``, presets (``"attention"``, ``"mlp"``,
            ``"all-linear"``) or a mapping ``{target: "gated" | "lora"}``.
        r: adapter rank (per branch).
        scale: adapter output scale.
        dropout: per-branch dropout on the adapter output, in training only.
        gated: adapter kind for targets given as a list (two-branch gated if True, plain LoRA if False).
        exclude_modules: targets (same syntax) to leave alone.

    Returns:
        ``model``.
    """
    targets = _normalise_targets(target_modules, gated)
    exclude = _normalise_targets(exclude_modules, gated) if exclude_modules else {}
    chosen = _find_targets(model, targets, exclude)
    states = alpha_states(model)
    state = states[0] if states else AlphaState()
    for param in model.parameters():
        param.requires_grad_(False)
    for name, kind in chosen.items():
        layer = ADAPTER_KINDS[kind](model.get_submodule(name), r=r, scale=scale, dropout=dropout)
        layer.alpha_state = state
        layer.adapter_name = name
        _set_submodule(model, name, layer)
    state.checked_calls = False
    for layer in adapter_layers(model).values():
        layer.called = False
    install_alpha_hooks(model, state)
    return model


def _replace_adapters(model: nn.Module, make: callable) -> nn.Module:  # type: ignore[valid-type]
    layers = adapter_layers(model)
    states = alpha_states(model)
    for name, layer in layers.items():
        _set_submodule(model, name, make(layer))
    for state in states:
        remove_alpha_hooks(model, state)
    return model


def remove_adapters(model: nn.Module) -> nn.Module:
    """Take every adapter out, putting the original ``nn.Linear`` objects back, and drop the hooks.

    The state dict afterwards is bit-identical to the one before injection. Parameters stay
    frozen (call ``requires_grad_(True)`` to train the model again).
    """
    return _replace_adapters(model, lambda layer: layer.base)


@torch.no_grad()
def merge_adapters(model: nn.Module, alpha: float = 1.0) -> nn.Module:
    """Replace every adapter layer by a plain ``nn.Linear`` equal to it at a fixed ``alpha``.

    For export (ONNX, TorchScript, serving) when every input has the same quality, e.g.
    ``alpha=1.0`` for high-resolution galleries. The merged weights are computed in float64
    and cast back to the base dtype.
    """
    if not isinstance(alpha, (int, float)):
        raise TypeError(f"merge_adapters: alpha must be a number (a fixed quality), got {type(alpha).__name__}")
    if not (-1e6 < float(alpha) < 1e6):
        raise ValueError(f"merge_adapters: alpha must be finite, got {alpha!r}")
    allow_unclipped = all(s.petalface_compatible for s in alpha_states(model))
    if not allow_unclipped and not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"merge_adapters: alpha must lie in [0, 1], got {alpha}")

    def merged(layer: AdapterLayer) -> nn.Linear:
        base = layer.base
        out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                        device=base.weight.device, dtype=base.weight.dtype)
        weight = base.weight.double() + layer.delta_weight(float(alpha)).double()
        out.weight.copy_(weight.to(base.weight.dtype))
        if base.bias is not None:
            out.bias.copy_(base.bias)
        out.requires_grad_(False)
        return out

    return _replace_adapters(model, merged)
