"""``QualityLoraModel`` (the PEFT tuner) and the registration of ``QUALITY_LORA`` with peft.

Checkpoint keys are written in quality-lora's own naming, ``<layer>.lora_A`` / ``<layer>.lora_B``
(layer names relative to the adapted model, no ``base_model.model.`` prefix, no adapter name),
so ``PeftModel.save_pretrained`` writes a folder that ``quality_lora.load_adapters`` reads
unchanged, and ``PeftModel.from_pretrained`` reads folders written by ``quality_lora.save_adapters``.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.peft_types import PeftType
from torch import nn

from quality_lora.gate import AlphaState, alpha_states, install_alpha_hooks
from quality_lora.peft.layer import QualityLoraLinear

__all__ = ["PEFT_NAME", "PREFIX", "QualityLoraModel", "quality_lora_peft_type", "register"]

PEFT_NAME = "quality_lora"
PREFIX = "quality_lora_"
_PEFT_PREFIX = "base_model.model."


def quality_lora_peft_type() -> PeftType:
    """``PeftType.QUALITY_LORA``, adding the member to peft's enum on first use.

    Why this touches enum internals: peft (0.21.2) offers ``register_peft_method`` for new
    methods, but it only accepts a name that is already a ``PeftType`` member, and Python enums
    cannot be extended through any public API. So the member is added here, once, the way
    ``EnumType`` itself stores members (member map, value map, name list, class attribute).
    ``tests/test_peft.py`` checks the result on the peft version pinned in the ``peft`` extra.
    """
    name = PEFT_NAME.upper()
    if name in PeftType.__members__:
        return PeftType[name]
    for attr in ("_member_map_", "_value2member_map_", "_member_names_"):
        if not hasattr(PeftType, attr):
            raise RuntimeError(
                f"cannot add {name} to peft.PeftType on this Python ({attr} missing); use the peft version "
                "pinned in quality-lora's [peft] extra"
            )
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_names_.append(name)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    # EnumType.__setattr__ refuses to rebind members; this is a new name, set on the class dict.
    type.__setattr__(PeftType, name, member)
    return member


def _checkpoint_key(key: str, adapter_name: str) -> str | None:
    """``[base_model.model.]<layer>.quality_lora_A.<adapter>`` → ``<layer>.lora_A`` (None if not ours)."""
    key = key.removeprefix(_PEFT_PREFIX)
    match = re.fullmatch(rf"(.+)\.{PREFIX}([AB])\.{re.escape(adapter_name)}", key)
    return f"{match.group(1)}.lora_{match.group(2)}" if match else None


class QualityLoraModel(BaseTuner):
    """PEFT tuner that wraps the targeted ``nn.Linear`` layers with :class:`QualityLoraLinear`.

    Made by ``peft.get_peft_model(model, QualityLoraConfig(...))``. ``peft_model(x, alpha=a)``
    (alpha (B,) or (B, 1) in [0, 1]) or ``with quality_lora.use_alpha(peft_model, a):`` sets the
    per-sample alpha of every gated layer.
    """

    prefix: str = PREFIX
    tuner_layer_cls = QualityLoraLinear
    target_module_mapping: ClassVar[dict[str, list[str]]] = {}  # no per-architecture defaults

    @property
    def alpha_state(self) -> AlphaState:
        """The alpha state shared by every adapter layer of the wrapped model (created once)."""
        state = self.__dict__.get("_ql_alpha_state")
        if state is None:
            found = alpha_states(self.model)
            state = found[0] if found else AlphaState()
            self.__dict__["_ql_alpha_state"] = state
        return state

    def _prepare_adapter_config(self, peft_config: Any, model_config: dict) -> Any:
        if peft_config.target_modules is None:
            raise ValueError("QualityLoraConfig: target_modules must name the nn.Linear layers to adapt")
        return peft_config

    def _create_and_replace(
        self,
        peft_config: Any,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        if current_key is None:
            raise ValueError("QualityLoraModel: PEFT gave no module name for the target")
        spec = peft_config.layer_spec(current_key)
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, nn.Linear):
            raise TypeError(
                f"QualityLoraConfig targets {current_key!r}, a {type(base).__name__}; only nn.Linear layers can "
                "take quality-gated adapters (narrow target_modules)"
            )
        if isinstance(target, QualityLoraLinear):
            target.update_layer(adapter_name, init_weights=peft_config.init_weights, **spec)
        elif isinstance(target, BaseTunerLayer):
            raise TypeError(f"layer {current_key!r} already holds a {type(target).__name__} adapter of another PEFT method")
        else:
            new = QualityLoraLinear(
                target, adapter_name, init_weights=peft_config.init_weights,
                alpha_state=self.alpha_state, layer_name=current_key, **spec,
            )
            if adapter_name not in self.active_adapters:
                new.requires_grad_(False)
            self._replace_module(parent, target_name, new, target)
        peft_config.layers[current_key] = {
            **spec, "in_features": base.in_features, "out_features": base.out_features,
        }
        self.__dict__["_ql_injected"].add(current_key)

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        # Overridden rather than using the pre/post-injection hooks: PeftModel.add_adapter calls
        # inject_adapter directly, and the layer record and alpha hooks are needed there as well.
        config = self.peft_config[adapter_name]
        config.base_model_class = config.base_model_class or type(model).__name__
        self.__dict__["_ql_injected"] = set()
        try:
            super().inject_adapter(model, adapter_name, *args, **kwargs)
            injected = self.__dict__["_ql_injected"]
        finally:
            self.__dict__.pop("_ql_injected", None)
        # The record lists exactly this adapter's layers in this model (quality_lora.load_adapters
        # expects a tensor pair for every listed layer).
        config.layers = {name: spec for name, spec in config.layers.items() if name in injected}
        state = self.alpha_state
        if config.petalface_compatible:
            state.petalface_compatible = True
        state.checked_calls = False
        # The hooks go on the wrapped model: PeftModel.forward passes its keywords (alpha=...) on to it.
        install_alpha_hooks(model, state)

    @contextmanager
    def _merge_alpha(self, alpha: float | None) -> Iterator[None]:
        if alpha is not None and not isinstance(alpha, (int, float)):
            raise TypeError(f"merge alpha must be a number (one fixed quality), got {type(alpha).__name__}")
        if alpha is not None and not self.alpha_state.petalface_compatible and not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"merge alpha must lie in [0, 1], got {alpha}")
        layers = [m for m in self.model.modules() if isinstance(m, QualityLoraLinear)]
        for layer in layers:
            layer.merge_alpha = None if alpha is None else float(alpha)
        try:
            yield
        finally:
            for layer in layers:
                layer.merge_alpha = None

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False, alpha: float | None = None) -> None:
        """Merge the adapters into the base weights at a fixed ``alpha`` (needed for gated adapters)."""
        with self._merge_alpha(alpha):
            super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def merge_and_unload(self, progressbar: bool = False, safe_merge: bool = False, adapter_names: list[str] | None = None, alpha: float | None = None) -> nn.Module:  # type: ignore[override]
        """The base model with the adapters merged at a fixed ``alpha`` (1.0: high quality), for export."""
        with self._merge_alpha(alpha):
            return super().merge_and_unload(progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        # Saved keys use quality-lora's file naming, so both loaders read the same safetensors file.
        mapped = _checkpoint_key(key, adapter_name)
        return mapped if mapped is not None else super()._remove_adapter_name_from_key(key, adapter_name)


def register() -> None:
    """Register ``QUALITY_LORA`` with peft (idempotent); done on ``import quality_lora.peft``."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import register_peft_method

    from quality_lora.peft.config import QualityLoraConfig

    peft_type = quality_lora_peft_type()
    if peft_type in PEFT_TYPE_TO_CONFIG_MAPPING:
        return
    register_peft_method(name=PEFT_NAME, config_cls=QualityLoraConfig, model_cls=QualityLoraModel, prefix=PREFIX)
