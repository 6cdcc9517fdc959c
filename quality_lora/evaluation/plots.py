"""PNG plots of evaluation results (matplotlib, Agg backend, imported only when a plot is drawn)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg")   # no display needed; safe on servers and in tests
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_cmc(curves: Mapping[str, Sequence[float]], path: str | Path, max_rank: int | None = 50) -> Path:
    """CMC curves (``cmc[k-1]`` = rank-k rate, fractions) of several models, log-scaled rank axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, cmc in curves.items():
        c = np.asarray(cmc, dtype=float)
        c = c[:max_rank] if max_rank else c
        ax.plot(np.arange(1, len(c) + 1), 100 * c, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("rank")
    ax.set_ylabel("identification rate (%)")
    ax.set_title("CMC")
    ax.grid(True, which="both", linestyle="--", linewidth=0.5)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_roc(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
             title: str = "ROC", xlim: tuple[float, float] = (1e-6, 1.0)) -> Path:
    """ROC curves: ``curves[name] = (fpr, tpr)``; log-scaled FPR axis (zeros are dropped)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (fpr, tpr) in curves.items():
        f, t = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
        keep = f > 0
        ax.plot(f[keep], 100 * t[keep], label=name)
    ax.set_xscale("log")
    ax.set_xlim(*xlim)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate (%)")
    ax.set_title(title)
    ax.grid(True, which="both", linestyle="--", linewidth=0.5)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_quality_hist(scores_gallery, scores_probe, threshold: float | None, path: str | Path,
                      alphas: tuple[Sequence[float], Sequence[float]] | None = None,
                      labels: tuple[str, str] = ("gallery", "probe")) -> Path:
    """Quality-score histograms of gallery vs probe images with the AlphaMap threshold drawn.

    ``alphas = (alphas_gallery, alphas_probe)`` adds a second panel with the alpha each image
    got. Well separated populations on either side of the threshold mean the gate tells the two
    domains apart.
    """
    plt = _pyplot()
    n = 2 if alphas is not None else 1
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.5), squeeze=False)
    sg, sp = np.asarray(scores_gallery, dtype=float), np.asarray(scores_probe, dtype=float)
    both = np.concatenate([sg, sp])
    bins = np.linspace(both.min(), both.max() + 1e-9, 41) if both.size else 10
    ax = axes[0, 0]
    ax.hist(sg, bins=bins, alpha=0.6, label=labels[0], density=True)
    ax.hist(sp, bins=bins, alpha=0.6, label=labels[1], density=True)
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("quality score")
    ax.set_ylabel("density")
    ax.legend()
    if alphas is not None:
        ax = axes[0, 1]
        ag, ap = np.asarray(alphas[0], dtype=float), np.asarray(alphas[1], dtype=float)
        both = np.concatenate([ag, ap])
        abins = np.linspace(min(0.0, both.min()), max(1.0, both.max()) + 1e-9, 41)
        ax.hist(ag, bins=abins, alpha=0.6, label=labels[0], density=True)
        ax.hist(ap, bins=abins, alpha=0.6, label=labels[1], density=True)
        ax.axvline(0.5, color="k", linestyle="--", label="alpha 0.5")
        ax.set_xlabel("alpha (1 = high-quality branch)")
        ax.legend()
    return _save(fig, path)
