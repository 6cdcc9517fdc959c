"""Image-quality scorers, the score-to-alpha map, and the self-gating model wrapper.

Nothing here imports pyiqa at module level: :class:`PyIQAScorer` imports it when built.
"""
from __future__ import annotations

from quality_lora.quality.alpha import AlphaMap
from quality_lora.quality.base import QualityScorer, scorer_from_description
from quality_lora.quality.gated_model import QualityGatedModel
from quality_lora.quality.pyiqa_scorer import PyIQAScorer
from quality_lora.quality.sharpness import SharpnessScorer

__all__ = [
    "AlphaMap",
    "PyIQAScorer",
    "QualityGatedModel",
    "QualityScorer",
    "SharpnessScorer",
    "scorer_from_description",
]
