"""The scorer protocol shared by every quality scorer, and rebuilding scorers from configs."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class QualityScorer(Protocol):
    """What quality_lora needs from an image-quality scorer.

    A scorer maps a batch of RGB images in [0, 1], shape ``(B, 3, H, W)`` float, to scores of
    shape ``(B,)`` float on the images' device, vectorised over the batch. ``higher_is_better``
    says which direction means better quality; :class:`~quality_lora.quality.AlphaMap` uses it.
    ``describe()`` returns a JSON-able ``{"name": ..., "params": {...}}`` that adapter configs
    record and :func:`scorer_from_description` turns back into a scorer.

    Scorers are plain objects (not ``nn.Module``) so a parent's ``.train()`` can never reach them.
    """

    higher_is_better: bool

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]: ...


def check_images(images: torch.Tensor, who: str) -> torch.Tensor:
    """Validate a ``(B, C, H, W)`` floating batch with C in {1, 3}; returns it unchanged."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{who}: images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{who}: images must have shape (B, 3, H, W) or (B, 1, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{who}: images must be a float tensor in [0, 1], got dtype {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError(f"{who}: empty batch (B = 0)")
    return images


def flatten_scores(out: Any, batch: int, who: str) -> torch.Tensor:
    """Turn a scorer's raw output ((B,), (B, 1) or a tuple whose first item is one) into (B,)."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{who}: expected a tensor of scores, got {type(out).__name__}")
    if out.ndim == 0 and batch == 1:
        out = out.reshape(1)
    if out.numel() != batch or (out.ndim > 1 and any(s != 1 for s in out.shape[1:])):
        raise ValueError(f"{who}: expected {batch} scores of shape ({batch},) or ({batch}, 1), got {tuple(out.shape)}")
    return out.reshape(batch).float()


def scorer_from_description(description: dict[str, Any]) -> QualityScorer:
    """Rebuild a built-in scorer from ``scorer.describe()`` output.

    Known names: ``"sharpness"`` (:class:`SharpnessScorer`) and ``"pyiqa"`` (:class:`PyIQAScorer`,
    needs the ``iqa`` extra). Raises ``ValueError`` naming the unknown name or bad parameter.
    """
    from quality_lora.quality.pyiqa_scorer import PyIQAScorer
    from quality_lora.quality.sharpness import SharpnessScorer

    builders: dict[str, Any] = {"sharpness": SharpnessScorer, "pyiqa": PyIQAScorer}
    if not isinstance(description, dict) or "name" not in description:
        raise ValueError(f"scorer description must be a dict with a 'name' key, got {description!r}")
    name = description["name"]
    if name not in builders:
        raise ValueError(f"unknown scorer name {name!r} in description; known: {sorted(builders)}")
    params = description.get("params", {})
    if not isinstance(params, dict):
        raise TypeError(f"scorer description 'params' must be a dict, got {type(params).__name__}")
    try:
        return builders[name](**params)
    except TypeError as err:  # an unexpected keyword: name it with the scorer it was meant for
        raise ValueError(f"bad params {sorted(params)} for scorer {name!r}: {err}") from err
