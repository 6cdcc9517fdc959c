"""Quality-gated LoRA as a PEFT method (optional extra: ``pip install "quality-lora[peft]"``).

Importing this module registers the peft type ``QUALITY_LORA``::

    import peft
    import quality_lora.peft as qlp

    model = peft.get_peft_model(backbone, qlp.QualityLoraConfig(target_modules=["attn.qkv"], r=8))
    emb = model(images, alpha=alpha)          # alpha (B,) in [0, 1]: 1 = high quality
    model.save_pretrained("dir")              # also readable by quality_lora.load_adapters
    model = peft.PeftModel.from_pretrained(backbone, "dir")

A saved ``QUALITY_LORA`` adapter can only be loaded after ``import quality_lora.peft``; without
it peft raises (it never falls back to plain LoRA).
"""
from __future__ import annotations

try:
    import peft as _peft  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "quality_lora.peft needs the peft package: pip install 'quality-lora[peft]'"
    ) from err

from quality_lora.peft.config import QualityLoraConfig
from quality_lora.peft.layer import QualityLoraLinear
from quality_lora.peft.model import (
    PEFT_NAME,
    PREFIX,
    QualityLoraModel,
    quality_lora_peft_type,
    register,
)

__all__ = [
    "PEFT_NAME",
    "PREFIX",
    "QUALITY_LORA",
    "QualityLoraConfig",
    "QualityLoraLinear",
    "QualityLoraModel",
    "quality_lora_peft_type",
    "register",
]

register()
QUALITY_LORA = quality_lora_peft_type()
