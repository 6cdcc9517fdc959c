"""How a per-sample alpha reaches every gated layer of a model.

A model with adapters owns one :class:`AlphaState`, shared by its adapter layers (a plain
object, not a submodule, so it never appears in ``state_dict``). The alpha lives in a
thread-local stack: two threads running the same model with different alphas each see their
own, and nested ``use_alpha`` blocks restore the outer value on exit.

Two ways to set it:
- ``model(x, alpha=a)``: a forward pre-hook on the injected model takes ``alpha`` out of the
  keyword arguments before the model's own ``forward`` runs (so any backbone works, whatever
  its signature) and a forward hook clears it afterwards, also when the forward raises.
- ``with use_alpha(model, a): model(x)``: for code that calls the model itself
  (evaluation loops, wrappers such as DDP or PEFT that do not forward unknown keywords).
"""
from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from quality_lora.layers import AdapterLayer

__all__ = [
    "AlphaState",
    "use_alpha",
    "set_petalface_compatible",
    "is_petalface_compatible",
    "validate_alpha",
    "resolve_alpha",
]


class AlphaState:
    """Per-model alpha shared by its adapter layers; thread-local, stackable."""

    def __init__(self) -> None:
        self._local = threading.local()
        # PETALface-compatible mode accepts the original's unclipped alpha (0.5 + score - t).
        self.petalface_compatible = False
        self.checked_calls = False
        self.hook_handles: list[Any] = []

    def _stack(self) -> list[Tensor]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def push(self, alpha: Tensor) -> None:
        self._stack().append(alpha)

    def pop(self) -> None:
        stack = self._stack()
        if stack:
            stack.pop()

    def current(self) -> Tensor | None:
        stack = self._stack()
        return stack[-1] if stack else None

    # threading.local and hook handles cannot be copied or pickled: a copy starts empty.
    def __getstate__(self) -> dict[str, Any]:
        return {"petalface_compatible": self.petalface_compatible, "checked_calls": self.checked_calls}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        self.petalface_compatible = state["petalface_compatible"]
        self.checked_calls = state["checked_calls"]


def validate_alpha(alpha: Any, *, where: str, allow_unclipped: bool = False) -> Tensor:
    """Check an alpha given by a user and return it as a 1-D float tensor (B,).

    Accepts a tensor, a number sequence or a numpy array of shape (B,) or (B, 1).
    Raises ``ValueError`` naming ``where`` for a wrong shape, NaN/inf, or values outside [0, 1]
    (the range check is skipped in PETALface-compatible mode).
    """
    if not isinstance(alpha, Tensor):
        try:
            alpha = torch.as_tensor(alpha, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{where}: alpha must be a tensor of shape (B,) or (B, 1), got {type(alpha).__name__}") from err
    if alpha.dim() == 2 and alpha.shape[1] == 1:
        alpha = alpha[:, 0]
    if alpha.dim() != 1:
        raise ValueError(f"{where}: alpha must have shape (B,) or (B, 1), got {tuple(alpha.shape)}")
    if not alpha.is_floating_point():
        alpha = alpha.float()
    if alpha.requires_grad:
        alpha = alpha.detach()
    if not bool(torch.isfinite(alpha).all()):
        bad = torch.nonzero(~torch.isfinite(alpha)).flatten().tolist()
        raise ValueError(f"{where}: alpha contains NaN or inf at sample(s) {bad[:10]}")
    if not allow_unclipped and alpha.numel() and bool(((alpha < 0) | (alpha > 1)).any()):
        lo, hi = float(alpha.min()), float(alpha.max())
        raise ValueError(
            f"{where}: alpha must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
            "(map quality scores with AlphaMap, or call set_petalface_compatible(model) to accept "
            "the original PETALface's unclipped alpha)"
        )
    return alpha


def expand_alpha(alpha: Tensor, rows: int, layer: str, x_shape: tuple[int, ...]) -> Tensor:
    """Repeat a (B,) alpha to one value per row of ``x`` (rows = k·B, batch outermost)."""
    batch = alpha.shape[0]
    if batch == rows:
        return alpha
    if batch == 0 or rows % batch:
        raise ValueError(
            f"layer {layer!r}: input has {rows} rows (x shape {tuple(x_shape)}) but alpha has "
            f"{batch} samples (shape {tuple(alpha.shape)}); rows must be a multiple k·B of the batch "
            "with the batch outermost (as window attention lays them out)"
        )
    return alpha.repeat_interleave(rows // batch)


def resolve_alpha(layer: AdapterLayer, alpha: Any, rows: int) -> Tensor:
    """The per-row alpha (rows,) for a gated layer call: the explicit one, else the model's."""
    name = layer.adapter_name
    state = layer.alpha_state
    if alpha is not None:
        alpha = validate_alpha(alpha, where=f"layer {name!r}", allow_unclipped=bool(state and state.petalface_compatible))
    else:
        alpha = state.current() if state is not None else None
        if alpha is None:
            raise RuntimeError(
                f"gated layer {name!r} ran without alpha: call model(x, alpha=a) or wrap the call in "
                "`with quality_lora.use_alpha(model, a):` (alpha = 1 for high-quality, 0 for low-quality inputs)"
            )
    ref = layer.lora_A
    return expand_alpha(alpha.to(device=ref.device), rows, name, (rows,))


def alpha_states(model: nn.Module) -> list[AlphaState]:
    """The distinct alpha states of the adapter layers inside ``model``."""
    from quality_lora.layers import AdapterLayer

    seen: dict[int, AlphaState] = {}
    for module in model.modules():
        if isinstance(module, AdapterLayer) and module.alpha_state is not None:
            seen.setdefault(id(module.alpha_state), module.alpha_state)
    return list(seen.values())


def _require_states(model: nn.Module) -> list[AlphaState]:
    states = alpha_states(model)
    if not states:
        raise ValueError(
            f"{type(model).__name__} has no quality-gated adapters: call quality_lora.inject_adapters(model, ...) first"
        )
    return states


@contextmanager
def use_alpha(model: nn.Module, alpha: Any) -> Iterator[Tensor]:
    """Set the per-sample alpha (B,) or (B, 1) for every gated layer of ``model`` in this block.

    Works through wrappers (DDP, PEFT, ``QualityGatedModel``): the adapter layers are found by
    structure. Thread-local, so concurrent threads can use different alphas.
    """
    states = _require_states(model)
    value = validate_alpha(alpha, where="use_alpha", allow_unclipped=all(s.petalface_compatible for s in states))
    for state in states:
        state.push(value)
    try:
        yield value
    finally:
        for state in states:
            state.pop()


def set_petalface_compatible(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Accept the original PETALface's unclipped alpha (any finite value) in ``model``.

    The original computes ``alpha = 0.5 + score - threshold`` and never clips it, and its
    published weights are evaluated that way. Returns ``model``.
    """
    for state in _require_states(model):
        state.petalface_compatible = bool(enabled)
    return model


def is_petalface_compatible(model: nn.Module) -> bool:
    states = alpha_states(model)
    return bool(states) and all(s.petalface_compatible for s in states)


class AlphaKeywordHook:
    """Forward pre-hook: takes ``alpha=`` out of the call's keywords and pushes it.

    An object rather than a closure so that ``copy.deepcopy(model)`` gives the copy a hook
    bound to the copy's own state.
    """

    def __init__(self, state: AlphaState) -> None:
        self.state = state

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        pushes = getattr(self.state._local, "pushes", None)
        if pushes is None:
            pushes = self.state._local.pushes = []
        # Record "nothing pushed" first: if validation raises, the always-called cleanup hook
        # still pops exactly this call's entry.
        pushes.append(False)
        if "alpha" not in kwargs:
            return args, kwargs
        kwargs = dict(kwargs)
        alpha = kwargs.pop("alpha")
        if alpha is not None:
            where = f"{type(module).__name__}(alpha=...)"
            self.state.push(validate_alpha(alpha, where=where, allow_unclipped=self.state.petalface_compatible))
            pushes[-1] = True
        return args, kwargs


class AlphaCleanupHook:
    """Forward hook (always called): pops what the matching pre-hook pushed."""

    def __init__(self, state: AlphaState) -> None:
        self.state = state

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        pushes = getattr(self.state._local, "pushes", None)
        if pushes and pushes.pop():
            self.state.pop()


class UncalledLayerHook:
    """Forward hook: after the first successful forward, warn once about adapters never called."""

    def __init__(self, state: AlphaState) -> None:
        self.state = state

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.state.checked_calls:
            return
        self.state.checked_calls = True
        from quality_lora.layers import AdapterLayer

        missed = [
            name for name, m in module.named_modules()
            if isinstance(m, AdapterLayer) and m.alpha_state is self.state and not m.called
        ]
        if missed:
            warnings.warn(
                f"{len(missed)} adapter layer(s) were not called during the forward pass, so their adapters "
                f"have no effect: {missed[:8]}{' ...' if len(missed) > 8 else ''}. The module may read the "
                "weight directly or take a fused fast path (e.g. nn.TransformerEncoderLayer in eval mode).",
                RuntimeWarning,
                stacklevel=2,
            )


def install_alpha_hooks(model: nn.Module, state: AlphaState) -> None:
    """Attach the keyword, cleanup and uncalled-layer hooks to ``model`` (once per state)."""
    if any(isinstance(h, AlphaKeywordHook) and h.state is state for h in model._forward_pre_hooks.values()):
        return
    state.hook_handles = [
        model.register_forward_pre_hook(AlphaKeywordHook(state), with_kwargs=True),
        model.register_forward_hook(UncalledLayerHook(state)),
        model.register_forward_hook(AlphaCleanupHook(state), always_call=True),
    ]


def remove_alpha_hooks(model: nn.Module, state: AlphaState) -> None:
    for handle in state.hook_handles:
        handle.remove()
    state.hook_handles = []
    # Hooks copied along with a deepcopy of the model are not tracked by handles: drop by type.
    for hooks in (model._forward_pre_hooks, model._forward_hooks):
        for key, hook in list(hooks.items()):
            if isinstance(hook, (AlphaKeywordHook, AlphaCleanupHook, UncalledLayerHook)) and hook.state is state:
                del hooks[key]
