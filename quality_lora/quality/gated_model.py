"""QualityGatedModel: score each input image, map the score to alpha, run the gated model."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from quality_lora.quality.alpha import AlphaMap
from quality_lora.quality.base import QualityScorer


def _per_channel(values: Sequence[float], name: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).flatten()
    if t.numel() not in (1, 3) or not bool(torch.isfinite(t).all()):
        raise ValueError(f"QualityGatedModel: {name} must be 1 or 3 finite numbers, got {values!r}")
    if name == "input_std" and not bool((t > 0).all()):
        raise ValueError(f"QualityGatedModel: input_std must be > 0, got {values!r}")
    return t.view(1, -1, 1, 1)


class QualityGatedModel(nn.Module):
    """Wraps a gated model so that ``gm(images)`` picks each sample's alpha itself.

    ``images`` are the model's normalised input ``(B, 3, H, W)``. The wrapper un-normalises
    them to [0, 1] (``images · input_std + input_mean``; defaults match PETALface's
    ``(x − 0.5) / 0.5``), scores them with ``scorer``, maps the scores with ``alpha_map`` under
    ``torch.no_grad()`` and calls ``model(images, alpha=alpha)``. ``legacy_scoring=True``
    scores the normalised tensor instead, as the original PETALface code did; its thresholds
    were chosen for that input.

    The scorer is kept outside the module tree (not a submodule, not in ``state_dict``), so
    ``.train()`` on this wrapper or its parents cannot switch a scorer's dropout on, and
    ``state_dict()`` is exactly the wrapped model's with a ``model.`` prefix.
    """

    def __init__(self, model: nn.Module, scorer: QualityScorer, alpha_map: AlphaMap,
                 input_mean: Sequence[float] = (0.5, 0.5, 0.5), input_std: Sequence[float] = (0.5, 0.5, 0.5),
                 legacy_scoring: bool = False) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"QualityGatedModel: model must be an nn.Module, got {type(model).__name__}")
        if not callable(scorer) or not isinstance(getattr(scorer, "higher_is_better", None), bool):
            raise TypeError(f"QualityGatedModel: scorer must be callable with a bool higher_is_better, got {scorer!r}")
        if not isinstance(alpha_map, AlphaMap):
            raise TypeError(f"QualityGatedModel: alpha_map must be an AlphaMap, got {type(alpha_map).__name__}")
        self.model = model
        # __setattr__ below stores it with object.__setattr__, skipping nn.Module's registration:
        # a scorer that is itself a Module stays out of .train(), .parameters() and state_dict().
        self.scorer = scorer
        self.alpha_map = alpha_map
        self.legacy_scoring = bool(legacy_scoring)
        # Non-persistent buffers: they follow .to(device) but stay out of state_dict.
        self.register_buffer("input_mean", _per_channel(input_mean, "input_mean"), persistent=False)
        self.register_buffer("input_std", _per_channel(input_std, "input_std"), persistent=False)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "scorer":  # replacing the scorer must keep it out of the module tree too
            if isinstance(value, nn.Module):
                value.eval()
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def to_unit_range(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised model input ``(B, C, H, W)`` back to [0, 1] (clamped: resampling overshoots)."""
        return (images * self.input_std.to(images.dtype) + self.input_mean.to(images.dtype)).clamp(0.0, 1.0)

    def score_alpha(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and alpha, both ``(B,)`` on the images' device, no gradient (e.g. for plots)."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"QualityGatedModel: images must be a (B, C, H, W) tensor, got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        with torch.no_grad():
            to_score = images.detach() if self.legacy_scoring else self.to_unit_range(images.detach())
            scores = self.scorer(to_score)
            if not isinstance(scores, torch.Tensor) or scores.shape != (images.shape[0],):
                raise ValueError(f"QualityGatedModel: scorer {self.scorer!r} returned "
                                 f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}, "
                                 f"expected shape ({images.shape[0]},)")
            scores = scores.to(images.device)
            alpha = self.alpha_map(scores).to(images.dtype if images.is_floating_point() else torch.float32)
        return scores, alpha

    def forward(self, images: torch.Tensor, **kwargs: Any) -> Any:
        """``model(images, alpha=alpha, **kwargs)`` with alpha ``(B,)`` from the images' quality."""
        if "alpha" in kwargs:
            raise TypeError("QualityGatedModel computes alpha itself; call .model(images, alpha=...) to set it by hand")
        _, alpha = self.score_alpha(images)
        return self.model(images, alpha=alpha, **kwargs)

    def describe(self) -> dict[str, Any]:
        """JSON-able record of how alpha is made (scorer, map, normalisation, legacy flag)."""
        describe = getattr(self.scorer, "describe", None)
        return {
            "scorer": describe() if callable(describe) else {"name": type(self.scorer).__name__},
            "alpha_map": self.alpha_map.to_dict(),
            "input_mean": self.input_mean.flatten().tolist(),
            "input_std": self.input_std.flatten().tolist(),
            "legacy_scoring": self.legacy_scoring,
        }

    def extra_repr(self) -> str:
        return f"scorer={self.scorer!r}, alpha_map={self.alpha_map!r}, legacy_scoring={self.legacy_scoring}"
