"""quality-lora: quality-gated low-rank adaptation (PETALface) for any PyTorch backbone.

``y = base(x) + scale · ((1 − α) · B_lq A_lq x + α · B_hq A_hq x)`` with a per-sample α ∈ [0, 1]
from an image-quality score (α = 1: high quality).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from quality_lora.gate import is_petalface_compatible, set_petalface_compatible, use_alpha
from quality_lora.inject import (
    adapter_layers,
    adapter_summary,
    count_parameters,
    inject_adapters,
    merge_adapters,
    remove_adapters,
)
from quality_lora.layers import LoRALinear, QualityGatedLoRA

# Submodules and names that pull in more than torch are loaded on first use.
_LAZY = {
    "save_adapters": "quality_lora.io",
    "load_adapters": "quality_lora.io",
    "push_adapters": "quality_lora.io",
    "AlphaMap": "quality_lora.quality",
    "QualityGatedModel": "quality_lora.quality",
    "Trainer": "quality_lora.training",
    "TrainConfig": "quality_lora.training",
}
_SUBMODULES = {"quality", "models", "data", "evaluation", "losses", "training", "io", "peft"}

__all__ = [
    "QualityGatedLoRA",
    "LoRALinear",
    "inject_adapters",
    "remove_adapters",
    "merge_adapters",
    "count_parameters",
    "adapter_layers",
    "adapter_summary",
    "use_alpha",
    "set_petalface_compatible",
    "is_petalface_compatible",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"quality_lora.{name}")
    raise AttributeError(f"module 'quality_lora' has no attribute {name!r}")
