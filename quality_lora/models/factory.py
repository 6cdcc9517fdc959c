"""Named sizes and adapter variants of the PETALface Swin, and their timm registration.

``petalface_swin(variant, size)`` builds the plain backbone (:class:`PetalFaceSwin`) and then adds
the adapters with :func:`quality_lora.inject.inject_adapters`, exactly where the original puts
them. The same models are registered with timm, so after ``import quality_lora.models``::

    timm.create_model("petalface_swin_base")              # variant "pretrained" (no adapters)
    timm.create_model("petalface_swin_base_petalface")    # gated qkv + LoRA on feature_layer.2
    timm.create_model("petalface_swin_micro_lora", r=4)   # plain LoRA on every qkv
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from quality_lora.models.swin import PetalFaceSwin

# Architecture of each size. "base" is the paper's model (swin_256new); "tiny" is the
# configuration of the reference fixtures; "small" and "micro" have no published weights
# ("micro" is the fast model of the offline demo: 112 px, 16x16 -> 8x8 -> 4x4 tokens).
SIZES: dict[str, dict[str, Any]] = {
    "base": dict(img_size=120, patch_size=6, embed_dim=384, depths=(2, 18, 2), num_heads=(8, 16, 16), window_size=5),
    "small": dict(img_size=120, patch_size=6, embed_dim=192, depths=(2, 6, 2), num_heads=(6, 12, 24), window_size=5),
    "tiny": dict(img_size=120, patch_size=6, embed_dim=16, depths=(2, 2, 2), num_heads=(2, 4, 4), window_size=5),
    "micro": dict(img_size=112, patch_size=7, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=4),
}

# Where each variant puts its adapters (targets for inject_adapters).
VARIANTS: dict[str, dict[str, str]] = {
    "pretrained": {},
    "lora": {"attn.qkv": "lora"},
    "petalface": {"attn.qkv": "gated", "feature_layer.2": "lora"},
}

# The original's LoRA hyper-parameters: output scale s (not alpha/r) and dropout 0.1 after
# each up-projection; the published checkpoints use r = 8.
DEFAULT_R, DEFAULT_SCALE, DEFAULT_DROPOUT = 8, 1.0, 0.1

_ORIGIN = "https://github.com/Kartik-3004/PETALface"


def default_cfg(size: str = "base", img_size: int | None = None) -> dict[str, Any]:
    """timm-style pretrained/default config: input size, normalisation (x/255 − 0.5)/0.5, ..."""
    side = img_size or SIZES[size]["img_size"]
    return dict(
        url="", input_size=(3, side, side), fixed_input_size=True, interpolation="bicubic",
        crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), num_classes=512,
        first_conv="patch_embed.proj", classifier="feature_layer.2", license="mit",
        origin_url=_ORIGIN, paper_name="PETALface: Parameter Efficient Transfer Learning for "
        "Low-resolution Face Recognition",
    )


def petalface_swin(variant: str = "petalface", size: str = "base", num_features: int = 512,
                   r: int = DEFAULT_R, scale: float = DEFAULT_SCALE, dropout: float = DEFAULT_DROPOUT,
                   **kwargs: Any) -> PetalFaceSwin:
    """Build the PETALface Swin with random weights: (B, 3, 120, 120) -> (B, num_features).

    Args:
        variant: ``"pretrained"`` (no adapters), ``"lora"`` (LoRA on every attention ``qkv``) or
            ``"petalface"`` (quality-gated adapters on every ``qkv`` plus a LoRA on the final
            feature projection ``feature_layer.2``); the model then takes ``alpha`` (B,) or (B, 1).
        size: a key of :data:`SIZES`; any architecture argument of :class:`PetalFaceSwin`
            (``img_size``, ``patch_size``, ``window_size``, ``embed_dim`` ...) overrides it.
        r: adapter rank.
        scale: adapter output scale (original: 1).
        dropout: adapter dropout in training (original: 0.1).
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    arch = {**SIZES[size], **kwargs}
    model = PetalFaceSwin(num_features=num_features, **arch)
    model.pretrained_cfg = default_cfg(size, arch["img_size"])
    model.pretrained_cfg["num_classes"] = num_features
    model.default_cfg = model.pretrained_cfg
    model.variant, model.size = variant, size
    if VARIANTS[variant]:
        from quality_lora.inject import inject_adapters

        inject_adapters(model, VARIANTS[variant], r=r, scale=scale, dropout=dropout)
    model.adapter_config = dict(variant=variant, r=r, scale=scale, dropout=dropout)
    return model


def _entrypoint(size: str, variant: str) -> Callable[..., nn.Module]:
    name = f"petalface_swin_{size}" + ("" if variant == "pretrained" else f"_{variant}")

    def build(pretrained: bool = False, pretrained_cfg: Any = None,
              pretrained_cfg_overlay: dict[str, Any] | None = None, **kwargs: Any) -> nn.Module:
        if pretrained:
            raise ValueError(
                f"{name}: the published PETALface weights are pickled model.pt files that timm "
                "cannot read; use quality_lora.models.load_petalface(('kartiknarayan/PETALface', "
                "'<checkpoint name>')) or load_petalface('model.pt')")
        kwargs.pop("cache_dir", None)  # timm passes it for Hub weights; there are none here
        model = petalface_swin(variant=kwargs.pop("variant", variant), size=size, **kwargs)
        if pretrained_cfg is not None or pretrained_cfg_overlay:
            from timm.models import resolve_pretrained_cfg

            cfg = resolve_pretrained_cfg(name, pretrained_cfg, pretrained_cfg_overlay).to_dict()
            model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, **cfg}
        return model

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    build.__doc__ = f"PETALface Swin, size {size!r}, variant {variant!r} (see petalface_swin)."
    return build


def _register() -> None:
    from timm.models import generate_default_cfgs, register_model

    module = sys.modules[__name__]
    fns = [_entrypoint(size, variant) for size in SIZES for variant in VARIANTS]
    # timm reads the module's ``default_cfgs`` while registering each entry point.
    module.default_cfgs = generate_default_cfgs({  # type: ignore[attr-defined]
        fn.__name__: default_cfg(fn.__name__.split("_")[2]) for fn in fns})
    for fn in fns:
        setattr(module, fn.__name__, register_model(fn))


_register()
