"""Model-level protocols: data on disk + a model callable -> metric dicts.

Each runner embeds images (and mirrors) with :func:`embed_images`, caches the embeddings in
``cache_dir`` (safetensors, keyed by model fingerprint + data fingerprint + options) so that
re-running a metric is free, and hands arrays to the pure metric functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from quality_lora.data.common import fingerprint

from .embed import EmbeddingCache, Embeddings, embed_images, model_fingerprint
from .identification import identification
from .ijb import align_face, pair_scores, read_ijb_meta, roc, tar_at_far, template_features
from .verification import verification_accuracy


def _batches(dataset, batch_size: int, num_workers: int):
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return (x for x, _ in loader), len(loader)


def _embed_cached(model, dataset, data_fp: str, *, cache_dir, batch_size, num_workers, device, desc,
                  size: int, names=None) -> Embeddings:
    def compute() -> Embeddings:
        if isinstance(model, torch.nn.Module):
            model.eval()
        it, total = _batches(dataset, batch_size, num_workers)
        return embed_images(model, it, flip=True, names=names, device=device, total=total, desc=desc)

    if cache_dir is None:
        return compute()
    cache = EmbeddingCache(cache_dir)
    key = cache.key(model_fingerprint(model), data_fp, protocol=desc, n=len(dataset), size=size)
    return cache.get_or_compute(key, compute)


def _quality_summary(e: Embeddings, idx: np.ndarray) -> dict:
    if e.scores is None:
        return {}
    return {"scores": e.scores.numpy()[idx], "alphas": e.alphas.numpy()[idx]}


def evaluate_verification_bin(model: Callable, path: str | Path, *, size: int = 120, batch_size: int = 64,
                              num_workers: int = 0, device="cpu", cache_dir=None,
                              flip_fusion: str = "normalized_sum") -> dict:
    """Verification on a ``.bin`` set (LFW, CFP-FP, AgeDB-30, ...): :func:`verification_accuracy`
    on the flip-fused embeddings, plus ``quality`` (scores/alphas, when the model has a scorer)."""
    from quality_lora.data import VerificationBinDataset

    ds = VerificationBinDataset(path, size=size)
    e = _embed_cached(model, ds, ds.dataset_hash(), cache_dir=cache_dir, batch_size=batch_size,
                      num_workers=num_workers, device=device, desc=f"verification {Path(path).stem}", size=size,
                      names=[f"{path} image {i}" for i in range(len(ds))])
    res = verification_accuracy(e.fused(flip_fusion).numpy(), ds.issame)
    res["quality"] = _quality_summary(e, np.arange(len(ds)))
    return res


def evaluate_tinyface(model: Callable, root: str | Path, *, size: int = 120, batch_size: int = 64,
                      num_workers: int = 0, device="cpu", cache_dir=None, ranks=(1, 5, 10, 20),
                      flip_fusion: str = "raw_sum") -> dict:
    """TinyFace closed-set identification: probes vs Gallery_Match + Gallery_Distractor (-100).

    ``root`` holds ``Probe/``, ``Gallery_Match/``, ``Gallery_Distractor/`` (aligned crops; file
    names start with the identity). Flip fusion as PETALface: raw embeddings added, normalised.
    Returns :func:`identification`'s dict plus ``quality`` = {"gallery": ..., "probe": ...}.
    """
    from quality_lora.data import TinyFaceDataset

    ds = TinyFaceDataset(root, size=size)
    e = _embed_cached(model, ds, ds.dataset_hash(), cache_dir=cache_dir, batch_size=batch_size,
                      num_workers=num_workers, device=device, desc="tinyface", size=size,
                      names=[str(p) for p in ds.paths])
    feats = e.fused(flip_fusion).numpy()
    probe = ds.indices("Probe")
    gallery = np.concatenate([ds.indices("Gallery_Match"), ds.indices("Gallery_Distractor")])
    res = identification(feats[probe], ds.labels[probe], feats[gallery], ds.labels[gallery], ranks=ranks,
                         progress=True)
    res["quality"] = {"gallery": _quality_summary(e, gallery), "probe": _quality_summary(e, probe)}
    return res


class _IJBImages(torch.utils.data.Dataset):
    """Aligned 112-px crops of the IJB images that exist; normalised to [-1, 1]."""

    def __init__(self, root: Path, names: list[str], landmarks: np.ndarray, size: int):
        self.root, self.names, self.landmarks, self.size = root, names, landmarks, size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int):
        from quality_lora.data import load_image
        from quality_lora.data.transforms import pil_to_tensor01

        img = pil_to_tensor01(load_image(self.root / "loose_crop" / self.names[i]))
        x = align_face(img, self.landmarks[i], 112)
        if self.size != 112:
            x = torch.nn.functional.interpolate(x[None], size=(self.size, self.size), mode="bicubic",
                                                align_corners=False)[0].clamp_(0, 1)
        return (x - 0.5) / 0.5, i


def evaluate_ijb(model: Callable, root: str | Path, target: str = "IJBC", *, size: int = 112,
                 batch_size: int = 64, num_workers: int = 0, device="cpu", cache_dir=None,
                 max_missing: float = 0.0, fars=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)) -> dict:
    """IJB-B/C 1:1 template verification (see :mod:`quality_lora.evaluation.ijb`).

    Images listed in the meta files but absent from ``loose_crop/`` are counted; if their share
    exceeds ``max_missing`` a ``FileNotFoundError`` names the first few, otherwise they are left
    out of their templates (reported as ``n_missing_images``). ``size`` resizes the 112-px
    aligned crop for models trained at another resolution (PETALface: 120).
    Returns ``{"tar_at_far": {far: tar}, "fpr", "tpr", "n_pairs", "n_missing_images", ...}``.
    """
    root = Path(root)
    meta = read_ijb_meta(root, target)
    present = np.array([(root / "loose_crop" / n).is_file() for n in meta.names])
    n_missing = int((~present).sum())
    if n_missing > max_missing * len(present):
        first = [meta.names[i] for i in np.flatnonzero(~present)[:5]]
        raise FileNotFoundError(f"{n_missing} of {len(present)} images listed in {root / 'meta'} are missing "
                                f"from {root / 'loose_crop'} (allowed: {max_missing:.2%}); first: {first}")
    keep = np.flatnonzero(present)
    names = [meta.names[i] for i in keep]
    ds = _IJBImages(root, names, meta.landmarks[keep], size)
    e = _embed_cached(model, ds, fingerprint([root / "loose_crop" / n for n in names], len(names)), cache_dir=cache_dir,
                      batch_size=batch_size, num_workers=num_workers, device=device,
                      desc=target.lower(), size=size, names=names)
    # insightface (eval_ijbc.py, F2 + N1 + D1): raw image + raw mirror embedding, times face score.
    feats = (e.emb.double() + e.emb_flip.double()).numpy() * meta.face_scores[keep, None]
    uniq, tfeats = template_features(feats, meta.templates[keep], meta.medias[keep])
    scores = pair_scores(tfeats, uniq, meta.pairs, progress=True)
    fpr, tpr = roc(scores, meta.labels)
    return {"tar_at_far": tar_at_far(scores, meta.labels, fars), "fpr": fpr, "tpr": tpr,
            "n_pairs": int(len(scores)), "n_images": int(len(keep)), "n_missing_images": n_missing,
            "quality": _quality_summary(e, np.arange(len(keep)))}
