"""Training: the loop (``Trainer``), its config (``TrainConfig``) and ``quality-lora train``.

Programmatic use::

    from quality_lora.training import Trainer, TrainConfig
    from quality_lora.losses import PartialFC, CosFace

    head = PartialFC(CosFace(s=32), embedding_size=128, num_classes=600)
    losses = Trainer(model, head, TrainConfig(method="petalface", steps=150)).fit(dataset)
"""
from __future__ import annotations

from quality_lora.training.checkpoint import atomic_save, checkpoint_path, load_checkpoint
from quality_lora.training.config import TrainConfig
from quality_lora.training.trainer import PolyWarmup, Trainer, base_state_hash


def main(argv: list[str] | None = None) -> int:
    """``quality-lora train CONFIG.yaml [--set key=value ...] [--resume]``."""
    from quality_lora.training.cli import main as _main

    return _main(argv)


__all__ = [
    "Trainer",
    "TrainConfig",
    "PolyWarmup",
    "base_state_hash",
    "atomic_save",
    "checkpoint_path",
    "load_checkpoint",
    "main",
]
