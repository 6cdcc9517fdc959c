"""Sizes and recipe of the offline demo, one frozen dataclass per preset."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DemoSettings:
    """Everything that decides the demo's numbers (the output folder and device do not).

    Identities are disjoint blocks of one SynthFaces population: ``[0, pretrain_ids)`` for
    pretraining, the next ``adapt_ids`` for adaptation (as TinyFace's training identities), the
    next ``eval_ids`` for the probes and the next ``distractor_ids`` for gallery distractors.
    """

    seed: int = 0
    image_size: int = 64
    difficulty: float = 0.7
    identity_spread: float = 1.0
    lowres_size: tuple[int, int] = (12, 20)
    # model: the reference Swin at a small size (64 px, 8x8 tokens, two stages)
    patch_size: int = 8
    embed_dim: int = 64
    depths: tuple[int, ...] = (2, 2)
    num_heads: tuple[int, ...] = (2, 4)
    window_size: int = 4
    embedding_size: int = 128
    # 1. pretraining on high-resolution identities
    pretrain_ids: int = 1000
    pretrain_per_id: int = 10
    pretrain_steps: int = 800
    pretrain_batch: int = 128
    pretrain_lr: float = 2e-3
    logit_scale: float = 32.0
    margin: float = 0.35
    # 2. adaptation: one recipe for full fine-tuning, LoRA and PETALface
    adapt_ids: int = 150
    adapt_per_id: int = 12
    adapt_lowres_fraction: float = 0.8
    adapt_steps: int = 300
    adapt_batch: int = 64
    adapt_lr: float = 2e-3
    rank: int = 8
    # 3. evaluation on held-out identities
    eval_ids: int = 200
    distractor_ids: int = 800
    probes_per_id: int = 3
    verification_pairs: int = 1000

    def key(self) -> str:
        """Hash of the settings that decide the pretrained backbone (the cache key)."""
        fields = ("seed", "image_size", "difficulty", "identity_spread", "patch_size", "embed_dim",
                  "depths", "num_heads", "window_size", "embedding_size", "pretrain_ids",
                  "pretrain_per_id", "pretrain_steps", "pretrain_batch", "pretrain_lr",
                  "logit_scale", "margin")
        blob = json.dumps({f: getattr(self, f) for f in fields}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, DemoSettings] = {
    "default": DemoSettings(),
    # Same pipeline on less data and fewer steps (the tests run it).
    "quick": DemoSettings(pretrain_ids=200, pretrain_per_id=8, pretrain_steps=150, pretrain_batch=64,
                          adapt_ids=60, adapt_per_id=8, adapt_steps=40, adapt_batch=32,
                          eval_ids=60, distractor_ids=140, probes_per_id=2, verification_pairs=200),
    # Smallest run that goes through every step (determinism test).
    "tiny": DemoSettings(pretrain_ids=16, pretrain_per_id=4, pretrain_steps=4, pretrain_batch=32,
                         adapt_ids=8, adapt_per_id=4, adapt_steps=3, adapt_batch=16,
                         eval_ids=8, distractor_ids=8, probes_per_id=2, verification_pairs=40),
}
