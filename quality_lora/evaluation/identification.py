"""Closed-set identification (CMC, rank-k) by blockwise scanning, without the full score matrix.

A probe's rank is the position of the first gallery item with its label when the gallery is
sorted by cosine similarity, i.e. ``1 + #(non-mates scoring >= the best mate)``. Ties between
the best mate and a non-mate count *against* the probe (pessimistic), so the result does not
depend on a sort's tie order; with real-valued features exact ties practically never occur.
Probes whose label has no gallery item are left out of the rates (as PFE/AdaFace's ``DIR_FAR``
does) and counted in ``n_unmatched_probes``.

Memory: the gallery is read in chunks of ``gallery_block`` rows (a numpy memmap works), so peak
extra memory is about ``probe_block * gallery_block * 6`` bytes plus one normalised chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ScanResult:
    """Per-probe statistics of one probe-vs-gallery scan (all shape (P,))."""

    best_mate: np.ndarray        # highest mate score; -inf when the probe has no mate
    n_above: np.ndarray          # non-mates scoring >= best_mate
    max_nonmate: np.ndarray      # highest non-mate score; -inf when there is none
    has_mate: np.ndarray         # bool


def _as_labels(labels, n: int, name: str) -> np.ndarray:
    arr = np.asarray(labels).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but its features have {n} rows")
    return arr


def _check_feats(feats, name: str) -> None:
    if getattr(feats, "ndim", None) != 2:
        raise ValueError(f"{name} must be a 2-D (n, dim) array, got shape {getattr(feats, 'shape', None)}")


def _normed(block, name: str, offset: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(block, dtype=np.float32))
    finite = torch.isfinite(t).all(dim=1)
    if not bool(finite.all()):
        row = offset + int(torch.nonzero(~finite)[0, 0])
        raise ValueError(f"{name} row {row} is not finite (NaN or inf)")
    return torch.nn.functional.normalize(t, dim=1)


def scan(probe_feats, probe_labels, gallery_feats, gallery_labels, *, probe_block: int = 1024,
         gallery_block: int = 32768, progress: bool = False, desc: str = "identification") -> ScanResult:
    """Cosine-similarity scan of probes (P, D) against a gallery (G, D) with labels (P,), (G,).

    Features are L2-normalised here, block by block. Returns a :class:`ScanResult`.
    """
    _check_feats(probe_feats, "probe_feats")
    _check_feats(gallery_feats, "gallery_feats")
    if probe_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(f"probe_feats dim {probe_feats.shape[1]} != gallery_feats dim {gallery_feats.shape[1]}")
    n_p, n_g = probe_feats.shape[0], gallery_feats.shape[0]
    p_lab = _as_labels(probe_labels, n_p, "probe_labels")
    g_lab = _as_labels(gallery_labels, n_g, "gallery_labels")
    # Labels become dense integer codes so that equality is a cheap tensor comparison.
    uniq, codes = np.unique(np.concatenate([p_lab, g_lab]), return_inverse=True)
    p_code = torch.as_tensor(codes[:n_p], dtype=torch.int64)
    g_code = torch.as_tensor(codes[n_p:], dtype=torch.int64)

    best = _best_mate_scores(probe_feats, p_code, gallery_feats, g_code)
    n_above = torch.zeros(n_p, dtype=torch.int64)
    max_nm = torch.full((n_p,), -float("inf"))
    probes = [(a, _normed(probe_feats[a:a + probe_block], "probe_feats", a)) for a in range(0, n_p, probe_block)]
    starts = range(0, n_g, gallery_block)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="chunk")
    for g0 in starts:
        g = _normed(gallery_feats[g0:g0 + gallery_block], "gallery_feats", g0)
        gc = g_code[g0:g0 + gallery_block]
        for p0, p in probes:
            sims = p @ g.T
            sims.masked_fill_(p_code[p0:p0 + len(p), None] == gc[None, :], -float("inf"))
            n_above[p0:p0 + len(p)] += (sims >= best[p0:p0 + len(p), None]).sum(dim=1)
            max_nm[p0:p0 + len(p)] = torch.maximum(max_nm[p0:p0 + len(p)], sims.max(dim=1).values)
    has_mate = torch.isfinite(best)
    return ScanResult(best.numpy(), n_above.numpy(), max_nm.numpy(), has_mate.numpy())


def _best_mate_scores(probe_feats, p_code: torch.Tensor, gallery_feats, g_code: torch.Tensor) -> torch.Tensor:
    """Highest cosine score of each probe against its own label's gallery items; -inf if none."""
    best = torch.full((len(p_code),), -float("inf"))
    g_sorted, g_order = torch.sort(g_code, stable=True)
    for code in torch.unique(p_code).tolist():
        lo = int(torch.searchsorted(g_sorted, code, right=False))
        hi = int(torch.searchsorted(g_sorted, code, right=True))
        if hi == lo:
            continue
        p_idx = torch.nonzero(p_code == code)[:, 0].numpy()
        g_idx = np.sort(g_order[lo:hi].numpy())
        p = _normed(probe_feats[p_idx], "probe_feats", int(p_idx[0]))
        g = _normed(gallery_feats[g_idx], "gallery_feats", int(g_idx[0]))
        best[p_idx] = (p @ g.T).max(dim=1).values
    return best


def identification(probe_feats: np.ndarray, probe_labels: np.ndarray, gallery_feats: np.ndarray,
                   gallery_labels: np.ndarray, ranks: tuple[int, ...] = (1, 5, 10, 20), *,
                   probe_block: int = 1024, gallery_block: int = 32768, progress: bool = False) -> dict:
    """Closed-set identification by cosine similarity of L2-normalised features.

    Args:
        probe_feats: (P, D) array (numpy, memmap or tensor).
        probe_labels: (P,) identity labels.
        gallery_feats: (G, D).
        gallery_labels: (G,); TinyFace distractors carry label -100.
        ranks: the rank-k rates to report.
    Returns:
        dict with ``rank_<k>`` (fractions in [0, 1]) for each k, ``cmc`` (G,) float array with
        ``cmc[k-1]`` = rank-k rate, ``probe_ranks`` (P,) int array (0 for unmatched probes),
        ``n_probes`` (matched probes used) and ``n_unmatched_probes``.
    """
    res = scan(probe_feats, probe_labels, gallery_feats, gallery_labels, probe_block=probe_block,
               gallery_block=gallery_block, progress=progress)
    n_g = gallery_feats.shape[0]
    rank = np.where(res.has_mate, res.n_above + 1, 0)
    matched = rank[res.has_mate]
    if matched.size == 0:
        raise ValueError("no probe label occurs in gallery_labels: closed-set identification is undefined")
    hist = np.bincount(matched - 1, minlength=n_g)
    cmc = np.cumsum(hist) / matched.size
    out: dict = {f"rank_{k}": float(cmc[min(k, n_g) - 1]) for k in ranks}
    out.update(cmc=cmc, probe_ranks=rank, n_probes=int(matched.size),
               n_unmatched_probes=int((~res.has_mate).sum()))
    return out
