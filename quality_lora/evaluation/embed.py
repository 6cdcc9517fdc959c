"""Run a model over images (and their mirrors) and cache the embeddings on disk.

The model is any callable ``model(images) -> (B, D)``: a ``QualityGatedModel`` (it scores each
input itself) or a plain model. The mirror is flipped *before* the model runs, so a quality-gated
model scores the flipped image and gives it its own alpha. When the model exposes ``scorer`` and
``alpha_map`` (as ``QualityGatedModel`` does), the quality scores and alphas of the un-flipped
images are recorded too, for the gallery-vs-probe histogram.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from quality_lora._atomic import atomic_write

FUSIONS = ("normalized_sum", "raw_sum", "none")


@dataclass
class Embeddings:
    """Raw embeddings of N images: ``emb`` (N, D), ``emb_flip`` (N, D) or None, and quality
    ``scores`` / ``alphas`` (N,) or None when the model does not expose its scorer."""

    emb: torch.Tensor
    emb_flip: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    alphas: torch.Tensor | None = None

    def fused(self, fusion: str = "normalized_sum") -> torch.Tensor:
        """Flip fusion -> (N, D) float32.

        ``normalized_sum``: L2-normalise image and mirror embeddings, add, normalise (``.bin``
        verification sets, as the issue/fixture README specify); ``raw_sum``: add the raw
        embeddings, normalise (PETALface's TinyFace ``pre_norm_vector_add``; also what
        arcface_torch's ``verification.test`` does); ``none``: the un-flipped embedding, normalised.
        """
        n = torch.nn.functional.normalize
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if fusion == "none" or self.emb_flip is None:
            return n(self.emb.float(), dim=1)
        if fusion == "raw_sum":
            return n(self.emb.float() + self.emb_flip.float(), dim=1)
        return n(n(self.emb.float(), dim=1) + n(self.emb_flip.float(), dim=1), dim=1)


def _quality(model, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scores, alphas) (B,) from ``model.score_alpha`` (QualityGatedModel), else None."""
    score_alpha = getattr(model, "score_alpha", None)
    if score_alpha is None:
        return None
    scores, alphas = score_alpha(images)
    return torch.as_tensor(scores).reshape(-1).float(), torch.as_tensor(alphas).reshape(-1).float()


def check_finite(emb: torch.Tensor, names: Sequence[str] | None, what: str = "embedding") -> None:
    """Raise ValueError naming the first image whose ``what`` row is NaN/inf."""
    bad = torch.nonzero(~torch.isfinite(emb.reshape(len(emb), -1)).all(dim=1))[:, 0]
    if len(bad):
        i = int(bad[0])
        who = names[i] if names is not None and i < len(names) else f"index {i}"
        raise ValueError(f"{what} of image {who} is not finite (NaN/inf); {len(bad)} bad images in all")


@torch.no_grad()
def embed_images(model: Callable, batches: Iterable[torch.Tensor], *, flip: bool = True,
                 names: Sequence[str] | None = None, device: str | torch.device = "cpu",
                 total: int | None = None, desc: str = "embedding", progress: bool = True) -> Embeddings:
    """Embed every image of ``batches`` (each (B, 3, H, W) float, already normalised).

    Args:
        model: ``model(images) -> (B, D)``; put in eval mode by the caller.
        flip: also embed ``torch.flip(images, dims=[3])`` (its own forward pass and alpha).
        names: image names for error messages (NaN embeddings), aligned with the batch order.
        total: number of batches, for the progress bar.
    Returns:
        :class:`Embeddings` on the CPU.
    """
    embs, flips, scores, alphas = [], [], [], []
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc=desc, total=total, unit="batch")
    for x in it:
        x = x.to(device)
        embs.append(model(x).float().cpu())
        q = _quality(model, x)
        if q is not None:
            scores.append(q[0].cpu())
            alphas.append(q[1].cpu())
        if flip:
            flips.append(model(torch.flip(x, dims=[3])).float().cpu())
    if not embs:
        raise ValueError("no images to embed (empty data set)")
    out = Embeddings(torch.cat(embs), torch.cat(flips) if flip else None,
                     torch.cat(scores) if scores else None, torch.cat(alphas) if alphas else None)
    check_finite(out.emb, names)
    if out.emb_flip is not None:
        check_finite(out.emb_flip, names, "embedding of the mirrored image")
    return out


def model_fingerprint(model) -> str:
    """sha256 over the model's class, state dict (names, dtypes, bytes) and scorer/alpha_map repr."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for attr in ("scorer", "alpha_map"):
        if getattr(model, attr, None) is not None:
            h.update(repr(getattr(model, attr)).encode())
    if isinstance(model, torch.nn.Module):
        for k, v in model.state_dict().items():
            h.update(k.encode())
            h.update(str(v.dtype).encode())
            h.update(v.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class EmbeddingCache:
    """Embeddings stored as ``<dir>/<key>.safetensors``; key = sha256(model, data, options)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)

    @staticmethod
    def key(model_fp: str, data_fp: str, **options) -> str:
        return hashlib.sha256(json.dumps([model_fp, data_fp, options], sort_keys=True).encode()).hexdigest()[:32]

    def load(self, key: str) -> Embeddings | None:
        from safetensors.torch import load_file

        path = self.dir / f"{key}.safetensors"
        if not path.is_file():
            return None
        t = load_file(str(path))
        return Embeddings(t["emb"], t.get("emb_flip"), t.get("scores"), t.get("alphas"))

    def save(self, key: str, e: Embeddings) -> Path:
        from safetensors.torch import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in
                   (("emb", e.emb), ("emb_flip", e.emb_flip), ("scores", e.scores), ("alphas", e.alphas))
                   if v is not None}
        path = self.dir / f"{key}.safetensors"
        return atomic_write(path, lambda tmp: save_file(tensors, tmp))   # no half-written cache entry

    def get_or_compute(self, key: str, compute: Callable[[], Embeddings]) -> Embeddings:
        cached = self.load(key)
        if cached is not None:
            return cached
        e = compute()
        self.save(key, e)
        return e
