"""The demo's three stages: pretrain a small face Swin, adapt it three ways, evaluate."""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from quality_lora._atomic import atomic_write
from quality_lora.demo.data import EvalSets, TrainSet, to_input
from quality_lora.demo.settings import DemoSettings

METHODS = ("pretrained", "full", "lora", "petalface")
# Adapter placement: PETALface's (gated qkv, plain LoRA on the embedding projection
# feature_layer.2) plus the MLPs, which a model this small needs for capacity; plain LoRA gets
# the same layers ungated, so the two differ only in the gate.
TARGETS = {
    "lora": {"attn.qkv": "lora", "mlp.fc1": "lora", "mlp.fc2": "lora", "feature_layer.2": "lora"},
    "petalface": {"attn.qkv": "gated", "mlp.fc1": "gated", "mlp.fc2": "gated", "feature_layer.2": "lora"},
}
Log = Callable[[str], None]


def build_backbone(s: DemoSettings) -> nn.Module:
    """The reference PETALface Swin at the demo's size, no adapters: (B,3,S,S) -> (B, embedding_size)."""
    from quality_lora.models import petalface_swin

    # apply_shift_mask=True: Swin proper for a model trained from scratch (the original's
    # unmasked shifted windows are kept only for its published weights).
    return petalface_swin("pretrained", "micro", num_features=s.embedding_size, img_size=s.image_size,
                          patch_size=s.patch_size, embed_dim=s.embed_dim, depths=tuple(s.depths),
                          num_heads=tuple(s.num_heads), window_size=s.window_size, apply_shift_mask=True)


def _head(s: DemoSettings, num_classes: int) -> nn.Module:
    from quality_lora.losses import CosFace, PartialFC

    return PartialFC(CosFace(s=s.logit_scale, m=s.margin), s.embedding_size, num_classes)


def embed(model: Callable[[torch.Tensor], torch.Tensor], images01: torch.Tensor, device: torch.device,
          batch: int = 256) -> torch.Tensor:
    """Embedding of each image fused with its mirror's as PETALface does (raw sum, then L2-normalised):
    (N, D) on CPU. Each mirrored image gets its own alpha."""
    from quality_lora.evaluation.embed import embed_images

    batches = (to_input(images01[i:i + batch]) for i in range(0, len(images01), batch))
    return embed_images(model, batches, flip=True, device=device, progress=False).fused("raw_sum")


def pretrain(s: DemoSettings, data: TrainSet, device: torch.device, log: Log) -> tuple[nn.Module, float]:
    """Train the backbone from scratch with the CosFace margin (margin ramped in). -> (model, seconds)."""
    from quality_lora.training import TrainConfig, Trainer

    torch.manual_seed(s.seed)
    model, head = build_backbone(s), _head(s, data.num_classes)
    config = TrainConfig(method="full", steps=s.pretrain_steps, batch_size=s.pretrain_batch,
                         lr=s.pretrain_lr, weight_decay=0.05, warmup_steps=max(1, s.pretrain_steps // 20),
                         margin_warmup_steps=max(1, s.pretrain_steps // 5), margin_warmup_start=0.0,
                         seed=s.seed, progress=False, log="none", device=str(device))
    start = time.perf_counter()
    losses = Trainer(model, head, config, device=device).fit(
        TensorDataset(to_input(data.images), data.labels))
    seconds = time.perf_counter() - start
    log(f"  pretrained {s.pretrain_steps} steps in {seconds:.0f} s (loss {losses[0]:.2f} -> {losses[-1]:.2f})")
    return model.eval(), seconds


def load_or_pretrain(s: DemoSettings, make_data: Callable[[], TrainSet], device: torch.device,
                     cache_dir: Path | None, log: Log) -> tuple[nn.Module, float, bool]:
    """The pretrained backbone from ``cache_dir/pretrained_<key>.safetensors`` or freshly trained.

    Returns (model in eval mode, pretraining seconds (as measured when trained), loaded from cache).
    """
    from safetensors.torch import load_file, save_file

    path = cache_dir / f"pretrained_{s.key()}.safetensors" if cache_dir is not None else None
    if path is not None and path.is_file():
        from safetensors import safe_open

        model = build_backbone(s)
        model.load_state_dict(load_file(path))
        with safe_open(path, "pt") as f:
            seconds = float((f.metadata() or {}).get("train_seconds", "nan"))
        log(f"  loaded the pretrained backbone from {path} (delete it or pass --no-cache to retrain)")
        return model.to(device).eval(), seconds, True
    data = make_data()
    model, seconds = pretrain(s, data, device, log)
    if path is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        metadata = {"train_seconds": f"{seconds:.3f}", "settings_key": s.key()}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    return model, seconds, False


@dataclass
class Adapted:
    """An adapted model ready for evaluation: ``model(x)`` picks alpha itself when gated."""

    model: Callable[[torch.Tensor], torch.Tensor]
    trainable_params: int
    train_seconds: float
    losses: list[float] = field(default_factory=list)
    gate: object | None = None   # the QualityGatedModel of PETALface (for the alpha histogram)


def adapt(method: str, base: nn.Module, s: DemoSettings, data: TrainSet, device: torch.device,
          log: Log) -> Adapted:
    """Adapt a copy of ``base`` on ``data`` with ``method`` (full | lora | petalface), one recipe.

    The classifier of the new identities starts at their mean pretrained embeddings (same for
    every method), so the first steps do not push random-centre gradients into the backbone.
    """
    import quality_lora as ql
    from quality_lora.quality import AlphaMap, QualityGatedModel, SharpnessScorer
    from quality_lora.training import TrainConfig, Trainer

    torch.manual_seed(s.seed + 1)
    model = copy.deepcopy(base).cpu()
    if method != "full":
        ql.inject_adapters(model, TARGETS[method], r=s.rank, scale=1.0, dropout=0.1)
    head = _head(s, data.num_classes)
    feats = embed(base, data.images, device)
    centres = torch.zeros(data.num_classes, feats.shape[1]).index_add_(0, data.labels, feats)
    with torch.no_grad():
        head.weight.copy_(torch.nn.functional.normalize(centres, dim=1))
    tensors = [to_input(data.images), data.labels]
    gate = None
    if method == "petalface":
        scorer = SharpnessScorer()
        scores = scorer(data.images)
        alpha_map = AlphaMap.fit(scores[~data.lowres], scores[data.lowres])
        tensors.append(alpha_map(scores))
        log(f"  gate: {alpha_map}")
    config = TrainConfig(method=method, steps=s.adapt_steps, batch_size=s.adapt_batch, lr=s.adapt_lr,
                         weight_decay=0.05, warmup_steps=max(1, s.adapt_steps // 10), seed=s.seed,
                         progress=False, log="none", device=str(device))
    start = time.perf_counter()
    trainer = Trainer(model, head, config, device=device)
    losses = trainer.fit(TensorDataset(*tensors))
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in trainer.model_params)
    model.eval()
    run: Callable[[torch.Tensor], torch.Tensor] = model
    if method == "petalface":
        gate = QualityGatedModel(model, scorer, alpha_map).to(device)
        run = gate
    log(f"  {method}: {trainable:,} trainable parameters, {s.adapt_steps} steps in {seconds:.0f} s "
        f"(loss {losses[0]:.2f} -> {losses[-1]:.2f})")
    return Adapted(run, trainable, seconds, losses, gate)


def evaluate(model: Callable[[torch.Tensor], torch.Tensor], sets: EvalSets, device: torch.device) -> dict:
    """LR and HR identification (HR gallery with distractors) and HR verification of one model.

    Returns lr_rank1, lr_rank5, hr_rank1, hr_verification (fractions) and the two CMC curves.
    """
    from quality_lora.evaluation import identification, verification_accuracy

    gallery = embed(model, sets.gallery, device).numpy()
    g_labels = sets.gallery_labels.numpy()
    p_labels = sets.probe_labels.numpy()
    lr = identification(embed(model, sets.probes_lr, device).numpy(), p_labels, gallery, g_labels, ranks=(1, 5))
    hr = identification(embed(model, sets.probes_hr, device).numpy(), p_labels, gallery, g_labels, ranks=(1, 5))
    ver = verification_accuracy(embed(model, sets.pairs, device).numpy(), sets.issame.numpy())
    out = {"lr_rank1": lr["rank_1"], "lr_rank5": lr["rank_5"], "hr_rank1": hr["rank_1"],
           "hr_verification": ver["accuracy_mean"], "cmc_lr": lr["cmc"], "cmc_hr": hr["cmc"]}
    for key in ("lr_rank1", "lr_rank5", "hr_rank1", "hr_verification"):
        if not np.isfinite(out[key]):
            raise FloatingPointError(f"demo: {key} is {out[key]} (non-finite embeddings?)")
    return out
