"""Adapter from pyiqa metrics (CNNIQA, BRISQUE, ...) to the quality_lora scorer protocol."""
from __future__ import annotations

import os
from typing import Any

import torch

from quality_lora.quality.base import check_images, flatten_scores


class PyIQAScorer:
    """A no-reference pyiqa metric as a scorer (optional extra: ``pip install quality-lora[iqa]``).

    ``metric``: a pyiqa metric name (``"cnniqa"``, ``"brisque"``, ...). ``weights``: a local
    weight file handed to pyiqa as ``pretrained_model_path``, so nothing is downloaded; it is
    first opened with ``torch.load(weights_only=True)`` so a file that would run code when
    unpickled is refused before pyiqa (which loads with ``weights_only=False``) sees it.
    Without ``weights`` pyiqa fetches its default weights (needs network or its cache).
    ``device``: where the metric runs (default: CUDA if available); scores come back on the
    images' device.

    ``higher_is_better`` is read from pyiqa's ``lower_better``. The metric is held in eval mode
    with gradients off and is not an ``nn.Module`` attribute of anything, so ``.train()`` on a
    parent cannot switch on CNNIQA's dropout (it is also put back in eval mode on every call).
    pyiqa's [0, 1] input check is off so PETALface's legacy scoring of [-1, 1] tensors works.
    """

    name = "pyiqa"

    def __init__(self, metric: str, weights: str | os.PathLike[str] | None = None,
                 device: str | torch.device | None = None) -> None:
        try:
            import pyiqa
        except ImportError as err:
            raise ImportError(
                "PyIQAScorer needs pyiqa, an optional extra: pip install quality-lora[iqa] "
                "(or use quality_lora.quality.SharpnessScorer, which needs no extra)"
            ) from err
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"PyIQAScorer: metric must be a pyiqa metric name, got {metric!r}")
        known = pyiqa.list_models(metric_mode="NR")
        if metric not in known:
            raise ValueError(f"PyIQAScorer: {metric!r} is not a no-reference pyiqa metric; known: {sorted(known)}")
        kwargs: dict[str, Any] = {"check_input_range": False}
        if weights is not None:
            weights = os.fspath(weights)
            _check_weights_file(weights)
            kwargs["pretrained_model_path"] = weights
        self.metric = metric
        self.weights = weights
        self.device = torch.device(device) if device is not None else None
        model = pyiqa.create_metric(metric, device=self.device, as_loss=False, **kwargs)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self._model = model
        self.higher_is_better = not bool(model.lower_better)

    def describe(self) -> dict[str, Any]:
        """JSON-able ``{"name": "pyiqa", "params": {"metric", "weights", "device"}}``."""
        device = None if self.device is None else str(self.device)
        return {"name": self.name, "params": {"metric": self.metric, "weights": self.weights, "device": device}}

    def __repr__(self) -> str:
        return f"PyIQAScorer(metric={self.metric!r}, weights={self.weights!r}, device={self.device!r})"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Scores ``(B,)`` float32 on the images' device for images ``(B, 3, H, W)`` in [0, 1].

        Batched through the metric (pyiqa metrics are vectorised); pyiqa's ``(B, 1)`` or
        ``(B,)`` outputs are flattened to ``(B,)``.
        """
        check_images(images, f"PyIQAScorer({self.metric})")
        self._model.eval()  # a user may have called .train() on it directly
        target = self._model.dummy_param.device
        with torch.no_grad():
            out = self._model(images.to(target, torch.float32))
        return flatten_scores(out, images.shape[0], f"PyIQAScorer({self.metric})").to(images.device)


def _check_weights_file(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PyIQAScorer: weights file {path!r} does not exist")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors come in many types; all mean "refuse this file"
        raise ValueError(
            f"PyIQAScorer: weights file {path!r} cannot be read with torch.load(weights_only=True) "
            f"(not a plain tensor file, or it would run code when loaded): {err}"
        ) from err
