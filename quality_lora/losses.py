"""Margin-based softmax losses (ArcFace, CosFace, combined) and the classifier heads they use.

A head owns the class centres and returns the loss: ``loss = head(embeddings (B, D), labels (B,))``.
:class:`PartialFC` is the one head for every case: on one process it is a plain cosine classifier
(L2-normalised weights, full softmax); inside ``torch.distributed`` it shards the class centres
over the ranks (model parallel, as insightface's Partial FC v2) and can sample a subset of the
negative centres per step (``sample_rate < 1``), which is how 200k–600k identity sets fit.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CombinedMarginLoss",
    "ArcFace",
    "CosFace",
    "PartialFC",
    "margin_loss_from_name",
    "margin_warmup_factor",
]


class CombinedMarginLoss(nn.Module):
    """Combined margin ``s · (cos(m1·θ + m2) − m3)`` on the target logit, as insightface defines it.

    ArcFace is ``(1.0, 0.5, 0.0)``, CosFace ``(1.0, 0.0, 0.4)``; mixtures such as ``(1.0, 0.3, 0.2)``
    work too. ``m1 != 1`` (SphereFace) is not supported, as in insightface/PETALface.

    Unlike insightface's current code (which applies the angular margin under ``no_grad`` and so
    back-propagates as if there were none), the angular margin here is differentiated exactly,
    with the two guards of the original ArcFace so that target angles near π never give NaN or a
    non-monotonic logit: past ``θ = π − m2`` the target becomes ``cos θ − m2·sin(π − m2)``
    (``easy_margin=False``), or the margin is only applied where ``cos θ > 0`` (``easy_margin=True``).

    ``margin_factor`` (in ``[0, 1]``) scales ``m2`` and ``m3``; the trainer ramps it to warm the
    margin up (see :func:`margin_warmup_factor`).
    """

    # 1 − cos² is clamped to this before the square root: its gradient stays finite at cos = ±1.
    _EPS = 1e-6

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0,
                 easy_margin: bool = False) -> None:
        super().__init__()
        if m1 != 1.0:
            raise ValueError(f"CombinedMarginLoss: m1={m1} (SphereFace-style) is not supported; use m1=1.0")
        if s <= 0 or m2 < 0 or m3 < 0 or m2 >= math.pi:
            raise ValueError(f"CombinedMarginLoss: need s > 0, 0 <= m2 < pi, m3 >= 0; got s={s}, m2={m2}, m3={m3}")
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.easy_margin = easy_margin
        self.margin_factor = 1.0

    def extra_repr(self) -> str:
        return f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, easy_margin={self.easy_margin}"

    def target_logit(self, cos: torch.Tensor) -> torch.Tensor:
        """The unscaled target logit for target cosines ``cos`` (any shape, values in [-1, 1])."""
        m2 = self.m2 * self.margin_factor
        m3 = self.m3 * self.margin_factor
        out = cos
        if m2 > 0:
            sin = torch.sqrt((1.0 - cos * cos).clamp_min(self._EPS))
            cos_m = cos * math.cos(m2) - sin * math.sin(m2)  # cos(θ + m2)
            if self.easy_margin:
                out = torch.where(cos > 0, cos_m, cos)
            else:
                out = torch.where(cos > math.cos(math.pi - m2), cos_m, cos - math.sin(math.pi - m2) * m2)
        return out - m3

    def forward(self, cosines: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margin logits.

        Args:
            cosines: (N, C) cosine similarities in [-1, 1] (clamped here).
            labels: (N,) long; column of each row's target, or -1 where the target is not among
                the C columns (another rank's shard, or a sampled-out class): no margin there.
        Returns:
            (N, C) float logits, already multiplied by ``s``; a new tensor (input untouched).
        """
        cosines = cosines.float().clamp(-1.0, 1.0)
        rows = torch.nonzero(labels >= 0, as_tuple=True)[0]
        if rows.numel():
            cols = labels[rows]
            target = self.target_logit(cosines[rows, cols])
            cosines = cosines.index_put((rows, cols), target)
        return cosines * self.s


def ArcFace(s: float = 64.0, m: float = 0.5, easy_margin: bool = False) -> CombinedMarginLoss:
    """ArcFace additive angular margin: ``CombinedMarginLoss(s, 1.0, m, 0.0)``."""
    return CombinedMarginLoss(s, 1.0, m, 0.0, easy_margin=easy_margin)


def CosFace(s: float = 64.0, m: float = 0.4) -> CombinedMarginLoss:
    """CosFace additive cosine margin: ``CombinedMarginLoss(s, 1.0, 0.0, m)``."""
    return CombinedMarginLoss(s, 1.0, 0.0, m)


def margin_loss_from_name(name: str, s: float = 64.0, margins: list[float] | tuple[float, ...] | None = None
                          ) -> CombinedMarginLoss:
    """``"arcface"`` / ``"cosface"`` (paper margins unless ``margins`` given) or ``"combined"`` (needs margins)."""
    defaults = {"arcface": (1.0, 0.5, 0.0), "cosface": (1.0, 0.0, 0.4)}
    if name not in (*defaults, "combined"):
        raise ValueError(f"loss: unknown margin loss {name!r}; choose arcface, cosface or combined")
    if margins is None:
        if name == "combined":
            raise ValueError("loss: 'combined' needs margins: [m1, m2, m3]")
        margins = defaults[name]
    if len(margins) != 3:
        raise ValueError(f"margins: need three values [m1, m2, m3], got {list(margins)}")
    return CombinedMarginLoss(s, *map(float, margins))


def margin_warmup_factor(step: int, warmup_steps: int, start: float = 0.0) -> float:
    """Margin multiplier at optimizer step ``step``: ``start`` at 0, rising linearly to 1 at ``warmup_steps``.

    Large margins from the first step can keep a freshly initialised classifier from learning at
    all (seen on the SynthFaces demo); ramping them in avoids that.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return start + (1.0 - start) * step / warmup_steps


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class PartialFC(nn.Module):
    """Cosine classifier with margin loss; class centres sharded over ranks (Partial FC).

    Rank ``r`` of ``W`` holds classes ``[start_r, start_r + num_local_r)`` (contiguous, sizes
    differing by at most one). Each step the embeddings and labels of all ranks are gathered,
    every rank scores the whole global batch against its shard, and the softmax denominator is
    summed across ranks. The returned loss is the mean over the *global* batch, identical on all
    ranks, and its gradients are arranged so that a DDP-wrapped backbone (which averages gradients
    over ranks) receives exactly the gradient of a single process on the global batch.

    With ``sample_rate < 1`` each rank keeps the centres of the positive classes of the global
    batch plus random negatives, ``max(positives, int(sample_rate · num_local))`` in all.

    Args:
        margin_loss: maps (N, C) cosines and (N,) labels (−1 = not here) to (N, C) logits.
        embedding_size: D.
        num_classes: total number of classes over all ranks.
        sample_rate: fraction of each shard's centres used per step, in (0, 1].
    """

    def __init__(self, margin_loss: nn.Module, embedding_size: int, num_classes: int,
                 sample_rate: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"PartialFC: sample_rate must be in (0, 1], got {sample_rate}")
        if num_classes < 1 or embedding_size < 1:
            raise ValueError(f"PartialFC: need num_classes >= 1 and embedding_size >= 1, "
                             f"got {num_classes}, {embedding_size}")
        self.margin_loss = margin_loss
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.sample_rate = sample_rate
        self.rank, self.world_size = _world()
        base, extra = divmod(num_classes, self.world_size)
        self.num_local = base + int(self.rank < extra)
        self.class_start = base * self.rank + min(self.rank, extra)
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (self.num_local, embedding_size)))

    def extra_repr(self) -> str:
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
                f"shard=[{self.class_start}, {self.class_start + self.num_local}), sample_rate={self.sample_rate}")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @torch.no_grad()
    def set_full_weight(self, weight: torch.Tensor) -> None:
        """Load this rank's rows of a full (num_classes, D) centre matrix."""
        if tuple(weight.shape) != (self.num_classes, self.embedding_size):
            raise ValueError(f"PartialFC.set_full_weight: expected shape {(self.num_classes, self.embedding_size)}, "
                             f"got {tuple(weight.shape)}")
        self.weight.copy_(weight[self.class_start:self.class_start + self.num_local])

    @torch.no_grad()
    def full_weight(self) -> torch.Tensor:
        """The full (num_classes, D) centre matrix, gathered from every rank (collective call)."""
        if not self.distributed:
            return self.weight.detach().clone()
        sizes = [self.num_classes // self.world_size + int(r < self.num_classes % self.world_size)
                 for r in range(self.world_size)]
        padded = max(sizes)
        # all_gather needs equal shapes: pad each shard to the largest one.
        mine = torch.cat([self.weight.detach(), self.weight.new_zeros(padded - self.num_local, self.embedding_size)])
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(out, mine)
        return torch.cat([o[:n] for o, n in zip(out, sizes)])

    def _gather(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch.distributed.nn.functional as dnn

        size = torch.tensor([embeddings.shape[0]], device=embeddings.device)
        sizes = [torch.empty_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        if len({int(s) for s in sizes}) != 1:
            raise ValueError(f"PartialFC: every rank needs the same batch size, got {[int(s) for s in sizes]}")
        all_labels = [torch.empty_like(labels) for _ in range(self.world_size)]
        dist.all_gather(all_labels, labels)
        # Each rank back-propagates the same global loss, so every gradient reaching a rank is
        # the sum over ranks; the 1/W at the loss (see forward) undoes that, and this W undoes
        # the 1/W of DDP's gradient averaging for the backbone.
        scaled = _ScaleGrad.apply(embeddings, float(self.world_size))
        return torch.cat(dnn.all_gather(scaled)), torch.cat(all_labels)

    def _sample(self, local_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(centre indices used, labels remapped into them); positives always kept."""
        positive = torch.unique(local_labels[local_labels >= 0])
        num_sample = max(int(self.sample_rate * self.num_local), positive.numel())
        score = torch.rand(self.num_local, device=self.weight.device)
        score[positive] = 2.0
        index = torch.topk(score, k=num_sample).indices.sort().values
        remapped = local_labels.clone()
        keep = local_labels >= 0
        remapped[keep] = torch.searchsorted(index, local_labels[keep])
        return index, remapped

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean margin-softmax cross-entropy over the global batch.

        Args:
            embeddings: (B, D) this rank's embeddings (any float dtype; computed in float32).
            labels: (B,) or (B, 1) integer class ids in ``[0, num_classes)``.
        Returns:
            scalar loss (float32), the same value on every rank.
        """
        labels = labels.reshape(-1).long().to(embeddings.device)
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size or embeddings.shape[0] != labels.numel():
            raise ValueError(f"PartialFC: expected embeddings (B, {self.embedding_size}) and labels (B,), "
                             f"got {tuple(embeddings.shape)} and {labels.numel()} labels")
        if self.distributed:
            embeddings, labels = self._gather(embeddings, labels)
        bad = (labels < 0) | (labels >= self.num_classes)
        if bool(bad.any()):
            raise ValueError(f"PartialFC: labels must be in [0, {self.num_classes}); got "
                             f"{sorted({int(v) for v in labels[bad][:8]})} (num_classes={self.num_classes})")
        local = labels - self.class_start
        local = torch.where((local >= 0) & (local < self.num_local), local, torch.full_like(local, -1))
        weight = self.weight
        if self.sample_rate < 1.0:
            index, local = self._sample(local)
            weight = weight[index]
        cos = F.linear(F.normalize(embeddings.float()), F.normalize(weight.float()))
        logits = self.margin_loss(cos, local)
        if not self.distributed:
            return F.cross_entropy(logits, local)
        return _ScaleGrad.apply(_dist_cross_entropy(logits, local), 1.0 / self.world_size)


def _dist_cross_entropy(logits: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over class-sharded logits: (N, C_local) per rank, targets -1 where not local."""
    import torch.distributed.nn.functional as dnn

    # The max only stabilises exp(); treating it as a constant leaves the result exact.
    with torch.no_grad():
        shift = logits.max(dim=1, keepdim=True).values
        dist.all_reduce(shift, op=dist.ReduceOp.MAX)
    shifted = logits - shift
    denom = dnn.all_reduce(shifted.exp().sum(dim=1))
    rows = local >= 0
    target = shifted.new_zeros(local.shape[0])
    target = target.index_put((rows.nonzero(as_tuple=True)[0],), shifted[rows, local[rows]])
    target = dnn.all_reduce(target)
    return (denom.log() - target).mean()


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; gradient multiplied by ``factor``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.factor, None
