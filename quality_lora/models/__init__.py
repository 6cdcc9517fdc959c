"""Reference backbones: the PETALface face Swin, and conversion of the original checkpoints.

Importing this package registers the models with timm (``timm.create_model("petalface_swin_base")``).
"""
from __future__ import annotations

from quality_lora.models.checkpoint import export_petalface, read_state_dict
from quality_lora.models.convert import load_converted, save_converted, save_petalface
from quality_lora.models.factory import SIZES, VARIANTS, default_cfg, petalface_swin
from quality_lora.models.pretrained import HUB_REPO, hub_checkpoint, load_petalface
from quality_lora.models.swin import PetalFaceSwin

__all__ = [
    "HUB_REPO",
    "SIZES",
    "VARIANTS",
    "PetalFaceSwin",
    "default_cfg",
    "export_petalface",
    "hub_checkpoint",
    "load_converted",
    "load_petalface",
    "petalface_swin",
    "read_state_dict",
    "save_converted",
    "save_petalface",
]
