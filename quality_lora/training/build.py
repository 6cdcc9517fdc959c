"""Build what ``quality-lora train`` needs from a :class:`TrainConfig`: model, data, gate, head."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from quality_lora.losses import PartialFC, margin_loss_from_name
from quality_lora.training.config import TrainConfig


def build_model(config: TrainConfig) -> nn.Module:
    """Backbone with the base weights of ``config.pretrained`` and the adapters ``method`` asks for.

    ``model: petalface_swin`` builds the paper's Swin (``model_size``, ``model_kwargs``); its
    ``pretrained`` may be an original PETALface ``model.pt``. ``model: timm:<name>`` builds a timm
    model with ``num_classes = embedding_size`` (then ``target_modules`` is required).
    """
    c = config
    if c.model == "petalface_swin":
        from quality_lora.models import VARIANTS, load_petalface, petalface_swin

        if c.pretrained:
            model = load_petalface(c.pretrained, variant="pretrained")
        else:
            model = petalface_swin("pretrained", size=c.model_size, num_features=c.embedding_size, **c.model_kwargs)
        targets = c.target_modules if c.target_modules is not None else VARIANTS.get(c.method, {})
    elif c.model.startswith("timm:"):
        import timm

        model = timm.create_model(c.model[5:], pretrained=False, num_classes=c.embedding_size, **c.model_kwargs)
        if c.pretrained:
            from quality_lora.models import read_state_dict

            model.load_state_dict(read_state_dict(c.pretrained), strict=True)
        targets = c.target_modules
        if c.method != "full" and not targets:
            raise ValueError(f"config key 'target_modules': required for method {c.method!r} with model {c.model!r}")
    else:
        raise ValueError(f"config key 'model': {c.model!r} is neither 'petalface_swin' nor 'timm:<name>'")
    if c.method != "full":
        from quality_lora.inject import inject_adapters

        inject_adapters(model, targets, r=c.rank, scale=c.lora_scale, dropout=c.lora_dropout,
                        gated=c.method == "petalface")
        from quality_lora.gate import set_petalface_compatible

        # Only the original's alpha map produces alpha outside [0, 1].
        set_petalface_compatible(model, c.alpha_mode == "petalface")
    return model


def build_dataset(config: TrainConfig) -> Dataset:
    """A ``.rec`` file / folder with ``train.rec`` (RecordIO) or an image folder (one folder per identity)."""
    from quality_lora.data.folders import ImageFolderDataset
    from quality_lora.data.rec_dataset import RecordDataset
    from quality_lora.data.transforms import FaceTransform

    if not config.train_data:
        raise ValueError("config key 'train_data': not set (a .rec file, a folder with train.rec, or an image folder)")
    path = Path(config.train_data)
    if not path.exists():
        raise FileNotFoundError(f"config key 'train_data': {path} does not exist")
    # insightface trains with random horizontal flips.
    transform = FaceTransform(config.image_size, flip=0.5)
    if path.suffix == ".rec" or (path / "train.rec").is_file():
        return RecordDataset(path, transform=transform, num_classes=config.num_classes)
    return ImageFolderDataset(path, transform=transform)


def dataset_num_classes(dataset: Any, config: TrainConfig) -> int:
    if config.num_classes is not None:
        return config.num_classes
    n = getattr(dataset, "num_classes", None)
    if n:
        return int(n)
    labels = getattr(dataset, "labels", None)
    labels = labels() if callable(labels) else labels
    if labels is None:
        raise ValueError("config key 'num_classes': not set and the dataset does not tell it")
    return int(max(labels)) + 1


def build_alpha(config: TrainConfig, dataset: Any) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, Any, Any]:
    """(alpha_fn on model inputs, scorer, alpha_map) for ``petalface``; (None, None, None) otherwise.

    Model inputs are normalised to [-1, 1]; scorers take [0, 1] images, except in
    ``alpha_mode: petalface``, which reproduces the original (it scored the [-1, 1] tensors
    and never clipped alpha). Without a configured ``threshold`` the median training score is used.
    """
    c = config
    if c.method != "petalface":
        return None, None, None
    if c.scorer is None:
        raise ValueError("config key 'scorer': method 'petalface' needs a quality scorer "
                         "(sharpness, brisque, cnniqa, ...)")
    from quality_lora.quality import AlphaMap, PyIQAScorer, SharpnessScorer

    scorer = SharpnessScorer(**c.scorer_kwargs) if c.scorer == "sharpness" else PyIQAScorer(c.scorer, **c.scorer_kwargs)
    legacy = c.alpha_mode == "petalface"

    def score(images: torch.Tensor) -> torch.Tensor:
        return scorer(images if legacy else (images * 0.5 + 0.5).clamp(0.0, 1.0))

    threshold = c.threshold if c.threshold is not None else median_score(score, dataset)
    if legacy:
        alpha_map = AlphaMap.petalface(threshold)
    else:
        alpha_map = AlphaMap(threshold, higher_is_better=getattr(scorer, "higher_is_better", True))

    def alpha_fn(images: torch.Tensor) -> torch.Tensor:
        return alpha_map(score(images))
    return alpha_fn, scorer, alpha_map


@torch.no_grad()
def median_score(score: Callable[[torch.Tensor], torch.Tensor], dataset: Any, samples: int = 512,
                 batch: int = 64) -> float:
    """Median score over up to ``samples`` evenly spaced training images: the default threshold,
    so that alpha 0.5 splits the training set in half when no threshold is configured."""
    n = len(dataset)
    index = torch.linspace(0, n - 1, steps=min(samples, n)).round().long().unique()
    scores = []
    # The dataset's random flip must not move the global RNG (a resumed run redoes this).
    with torch.random.fork_rng(devices=[]):
        for chunk in index.split(batch):
            scores.append(score(torch.stack([dataset[int(i)][0] for i in chunk])).float().reshape(-1))
    return float(torch.cat(scores).median())


def build_head(config: TrainConfig, num_classes: int) -> PartialFC:
    margin = margin_loss_from_name(config.loss, config.logit_scale, config.margins)
    margin.easy_margin = config.easy_margin
    return PartialFC(margin, config.embedding_size, num_classes, sample_rate=config.sample_rate)
