"""AlphaMap: quality scores to the per-sample gate weight alpha (1 = high quality)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

ScoresLike = torch.Tensor | Sequence[float]


def _as_scores(scores: Any, name: str) -> torch.Tensor:
    """A 1-D, non-empty, finite float tensor from a tensor / array / list, else ValueError naming it."""
    try:
        t = torch.as_tensor(scores)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name}: cannot read scores from {type(scores).__name__}: {err}") from err
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1:
        raise ValueError(f"{name}: scores must have shape (N,) or (N, 1), got {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name}: no scores (empty set)")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.int16, torch.uint8)):
        raise ValueError(f"{name}: scores must be numbers, got dtype {t.dtype}")
    t = t.to(torch.float64)
    bad = ~torch.isfinite(t)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name}: score at index {i} is {t[i].item()} (scores must be finite)")
    return t


class AlphaMap:
    """Maps quality scores ``(B,)`` to alpha ``(B,)``: 1 = high quality (hq branch), 0 = low.

    ``alpha = clip(0.5 + slope · sign · (score − threshold), 0, 1)`` with ``sign = +1`` when
    ``higher_is_better`` and ``−1`` otherwise, so the direction of the metric (pyiqa's
    ``lower_better``) is respected. A clipped line rather than a sigmoid: it contains the
    original PETALface rule as a special case (:meth:`petalface`) and sends clearly good or bad
    images to exactly one branch. ``clip=False`` leaves alpha unbounded, as the original did
    (gated layers only accept that in PETALface-compatible mode).

    Use :meth:`fit` to calibrate threshold and slope from two score sets instead of tuning
    a threshold per metric by hand.
    """

    def __init__(self, threshold: float, slope: float = 1.0, higher_is_better: bool = True, clip: bool = True) -> None:
        for name, value in (("threshold", threshold), ("slope", slope)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"AlphaMap: {name} must be a finite number, got {value!r}")
        if slope <= 0:
            raise ValueError(f"AlphaMap: slope must be > 0 (use higher_is_better for direction), got {slope!r}")
        if not isinstance(higher_is_better, bool) or not isinstance(clip, bool):
            raise TypeError(f"AlphaMap: higher_is_better and clip must be bools, got {higher_is_better!r}, {clip!r}")
        self.threshold = float(threshold)
        self.slope = float(slope)
        self.higher_is_better = higher_is_better
        self.clip = clip

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """Alpha for scores ``(B,)`` or ``(B, 1)``; returns ``(B,)`` float on the scores' device."""
        if not isinstance(scores, torch.Tensor):
            scores = torch.as_tensor(scores)
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if scores.ndim != 1:
            raise ValueError(f"AlphaMap: scores must have shape (B,) or (B, 1), got {tuple(scores.shape)}")
        if not scores.is_floating_point():
            scores = scores.float()
        finite = torch.isfinite(scores)
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0, 0])
            raise ValueError(f"AlphaMap: score at index {i} is {scores[i].item()} (scores must be finite)")
        sign = 1.0 if self.higher_is_better else -1.0
        alpha = 0.5 + (self.slope * sign) * (scores - self.threshold)
        return alpha.clamp(0.0, 1.0) if self.clip else alpha

    @classmethod
    def petalface(cls, threshold: float) -> AlphaMap:
        """The original PETALface rule, exactly: ``alpha = 0.5 + (score − threshold)``.

        Unclipped, slope 1, and no direction flip: the original ignores pyiqa's ``lower_better``
        (so with BRISQUE, where lower is better, sharper images get the *lower* alpha there).
        """
        return cls(threshold, slope=1.0, higher_is_better=True, clip=False)

    @classmethod
    def fit(cls, scores_hq: ScoresLike, scores_lq: ScoresLike, higher_is_better: bool = True) -> AlphaMap:
        """Calibrate threshold and slope from scores of high-quality and low-quality images.

        Rule (scores first multiplied by −1 when ``higher_is_better`` is False):

        1. ``m_hq``, ``m_lq``: the two medians; ``m_hq > m_lq`` is required (else the sets do
           not separate in the stated direction: ``ValueError``).
        2. ``threshold``: among the midpoints between consecutive sorted pooled scores, the one
           with the lowest balanced error ``(P(hq < t) + P(lq > t)) / 2``; ties go to the one
           nearest ``(m_hq + m_lq) / 2``. For separated sets that is the middle of the gap.
           If it falls outside ``(m_lq, m_hq)`` the medians' midpoint is used instead.
        3. ``slope = 0.5 / min(m_hq − threshold, threshold − m_lq)``: the nearer median maps
           exactly to its end (1 or 0) and the other one past it, so clipped to 1 or 0.

        Accepts tensors, arrays or lists of shape ``(N,)`` or ``(N, 1)``; returns a clipped map.
        """
        if not isinstance(higher_is_better, bool):
            raise TypeError(f"AlphaMap.fit: higher_is_better must be a bool, got {higher_is_better!r}")
        sign = 1.0 if higher_is_better else -1.0
        hq = _as_scores(scores_hq, "AlphaMap.fit scores_hq") * sign
        lq = _as_scores(scores_lq, "AlphaMap.fit scores_lq") * sign
        m_hq, m_lq = float(hq.median()), float(lq.median())
        if not m_hq > m_lq:
            direction = "higher" if higher_is_better else "lower"
            raise ValueError(
                f"AlphaMap.fit: high-quality scores (median {m_hq * sign:.6g}) are not {direction} than "
                f"low-quality scores (median {m_lq * sign:.6g}); the sets do not separate "
                f"(identical sets, swapped arguments, or wrong higher_is_better={higher_is_better})"
            )
        middle = 0.5 * (m_hq + m_lq)
        threshold = _best_threshold(hq, lq, middle)
        if not m_lq < threshold < m_hq:
            threshold = middle
        slope = 0.5 / min(m_hq - threshold, threshold - m_lq)
        return cls(threshold * sign, slope=slope, higher_is_better=higher_is_better, clip=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description; :meth:`from_dict` inverts it."""
        return {"type": "linear", "threshold": self.threshold, "slope": self.slope,
                "higher_is_better": self.higher_is_better, "clip": self.clip}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlphaMap:
        """Rebuild from :meth:`to_dict` output; ``ValueError`` naming a missing or unknown key."""
        if not isinstance(d, dict):
            raise TypeError(f"AlphaMap.from_dict: expected a dict, got {type(d).__name__}")
        if d.get("type", "linear") != "linear":
            raise ValueError(f"AlphaMap.from_dict: unknown type {d['type']!r} (known: 'linear')")
        known = {"type", "threshold", "slope", "higher_is_better", "clip"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"AlphaMap.from_dict: unknown key(s) {unknown}; known: {sorted(known)}")
        if "threshold" not in d:
            raise ValueError("AlphaMap.from_dict: missing key 'threshold'")
        return cls(d["threshold"], slope=d.get("slope", 1.0), higher_is_better=d.get("higher_is_better", True),
                   clip=d.get("clip", True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AlphaMap) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"AlphaMap(threshold={self.threshold:.6g}, slope={self.slope:.6g}, "
                f"higher_is_better={self.higher_is_better}, clip={self.clip})")


def _best_threshold(hq: torch.Tensor, lq: torch.Tensor, middle: float) -> float:
    """Midpoint between sorted pooled scores with the lowest balanced error (ties: nearest ``middle``)."""
    pooled = torch.cat([hq, lq]).unique()  # sorted
    if pooled.numel() < 2:
        return middle
    candidates = 0.5 * (pooled[1:] + pooled[:-1])
    hq_below = torch.searchsorted(hq.sort().values, candidates).double() / hq.numel()
    lq_above = 1.0 - torch.searchsorted(lq.sort().values, candidates).double() / lq.numel()
    error = 0.5 * (hq_below + lq_above)
    best = error <= error.min() + 1e-12
    distance = torch.where(best, (candidates - middle).abs(), torch.full_like(candidates, math.inf))
    return float(candidates[distance.argmin()])
