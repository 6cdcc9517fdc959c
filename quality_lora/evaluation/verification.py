"""1:1 verification on pair lists (LFW, CFP-FP, CFP-FF, AgeDB-30, CALFW, CPLFW ``.bin`` sets).

Same procedure and numbers as insightface's ``eval/verification.py`` for the same embeddings:
squared Euclidean distance of L2-normalised embeddings, thresholds ``np.arange(0, 4, 0.01)``,
10 folds without shuffling (sklearn ``KFold(10, shuffle=False)`` on the pair index), the best
threshold chosen on the 9 training folds (``argmax``: the first best on ties), and the
``val``/``far`` figures at FAR 1e-3 from ``interp1d(far_train, thresholds, 'slinear')`` over
``np.arange(0, 4, 0.001)`` (see :func:`interp_threshold`).
"""
from __future__ import annotations

import numpy as np

ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)


def kfold_splits(n: int, nfolds: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays of sklearn ``KFold(nfolds, shuffle=False)`` over ``range(n)``.

    Written out (rather than importing sklearn) so the metric works without the ``eval`` extra;
    the test checks it against sklearn. The first ``n % nfolds`` folds hold one extra pair.
    """
    if nfolds < 2:
        raise ValueError(f"nfolds must be >= 2, got {nfolds}")
    if n < nfolds:
        raise ValueError(f"cannot split {n} pairs into nfolds={nfolds} folds")
    sizes = np.full(nfolds, n // nfolds)
    sizes[: n % nfolds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    idx = np.arange(n)
    return [(np.concatenate([idx[:a], idx[b:]]), idx[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _confusion(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """tp, fp, tn, fn per threshold (T,) for predictions ``dist < threshold``."""
    order = np.sort(dist[issame]), np.sort(dist[~issame])
    # Count of distances strictly below each threshold, by binary search: O((N + T) log N)
    # instead of a (T, N) boolean matrix, and the same counts as ``np.less``.
    tp = np.searchsorted(order[0], thresholds, side="left")
    fp = np.searchsorted(order[1], thresholds, side="left")
    fn = len(order[0]) - tp
    tn = len(order[1]) - fp
    return tp, fp, tn, fn


def _accuracy(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    tp, _, tn, _ = _confusion(dist, issame, thresholds)
    return (tp + tn) / dist.size


def _rates(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tpr, fpr) per threshold; 0 where a class is empty (as insightface's calculate_accuracy)."""
    tp, fp, tn, fn = _confusion(dist, issame, thresholds)
    pos, neg = tp + fn, fp + tn
    tpr = np.where(pos > 0, tp / np.maximum(pos, 1), 0.0)
    fpr = np.where(neg > 0, fp / np.maximum(neg, 1), 0.0)
    return tpr, fpr


def _val_far(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(val, far) per threshold; NaN where a class is empty (insightface would divide by zero)."""
    tp, fp, tn, fn = _confusion(dist, issame, thresholds)
    n_same, n_diff = tp + fn, fp + tn
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / n_same.astype(float), fp / n_diff.astype(float)


def pair_distances(embeddings: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Squared Euclidean distance of each pair. embeddings: (2P, D), pair i = rows 2i, 2i+1 -> (P,)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] % 2:
        raise ValueError(f"embeddings must be (2 * n_pairs, dim), got shape {emb.shape}")
    bad = np.flatnonzero(~np.isfinite(emb).all(axis=1))
    if bad.size:
        raise ValueError(f"embeddings row {int(bad[0])} (pair {int(bad[0]) // 2}) is not finite "
                         f"({bad.size} bad rows in all)")
    if normalize:
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb / np.maximum(norms, 1e-12)
    diff = emb[0::2] - emb[1::2]
    return np.sum(np.square(diff), axis=1)


def verification_accuracy(embeddings: np.ndarray, issame: np.ndarray | list[bool], nfolds: int = 10, normalize: bool = True,
                          far_target: float = 1e-3) -> dict:
    """10-fold verification accuracy and VAL@FAR, as insightface computes them.

    Args:
        embeddings: (2P, D) array, pairs interleaved (rows 2i and 2i+1 form pair i), as ``.bin``
            sets order them. With ``normalize`` (default) each row is L2-normalised first; the
            0–4 threshold grid assumes unit vectors.
        issame: (P,) booleans, True for a genuine pair.
        nfolds: number of folds (contiguous, unshuffled).
    Returns:
        dict with ``accuracy_mean``, ``accuracy_std`` (fractions), ``accuracies`` (per fold),
        ``best_thresholds`` (per fold), ``val_mean``, ``val_std``, ``far_mean`` (at
        ``far_target``), ``tpr``/``fpr`` (fold-averaged, per threshold of the 0.01 grid: the ROC),
        ``thresholds`` and ``n_pairs``.
    """
    issame = np.asarray(issame).astype(bool).reshape(-1)
    dist = pair_distances(embeddings, normalize=normalize)
    if dist.shape[0] != issame.shape[0]:
        raise ValueError(f"issame has {issame.shape[0]} entries but embeddings hold {dist.shape[0]} pairs "
                         f"({2 * dist.shape[0]} rows)")
    folds = kfold_splits(len(dist), nfolds)
    accs, best, tprs, fprs, vals, fars = [], [], [], [], [], []
    for train, test in folds:
        acc_train = _accuracy(dist[train], issame[train], ACC_THRESHOLDS)
        k = int(np.argmax(acc_train))
        best.append(float(ACC_THRESHOLDS[k]))
        accs.append(float(_accuracy(dist[test], issame[test], ACC_THRESHOLDS[k:k + 1])[0]))
        tpr, fpr = _rates(dist[test], issame[test], ACC_THRESHOLDS)
        tprs.append(tpr)
        fprs.append(fpr)
        val, far = _val_at_far(dist, issame, train, test, far_target)
        vals.append(val)
        fars.append(far)
    accs_a = np.asarray(accs)
    return {
        "accuracy_mean": float(np.mean(accs_a)),
        "accuracy_std": float(np.std(accs_a)),
        "accuracies": accs_a,
        "best_thresholds": np.asarray(best),
        "val_mean": float(np.mean(vals)),
        "val_std": float(np.std(vals)),
        "far_mean": float(np.mean(fars)),
        "tpr": np.mean(tprs, axis=0),
        "fpr": np.mean(fprs, axis=0),
        "thresholds": ACC_THRESHOLDS.copy(),
        "n_pairs": int(len(dist)),
    }


def interp_threshold(far_train: np.ndarray, thresholds: np.ndarray, far_target: float) -> float:
    """The threshold at which the (non-decreasing) training FAR curve reaches ``far_target``.

    What ``scipy.interpolate.interp1d(far_train, thresholds, kind="slinear")(far_target)``
    returned when insightface wrote its evaluation: linear interpolation between the last point
    with ``far <= far_target`` and the next one. Written out because scipy >= 1.10 refuses the
    repeated x values that ``far_train`` always has (long runs of 0), so calling it now fails.
    """
    j = int(np.searchsorted(far_train, far_target, side="right")) - 1
    if j >= len(far_train) - 1:
        return float(thresholds[-1])
    x0, x1, y0, y1 = far_train[j], far_train[j + 1], thresholds[j], thresholds[j + 1]
    return float(y0 + (far_target - x0) * (y1 - y0) / (x1 - x0))


def _val_at_far(dist: np.ndarray, issame: np.ndarray, train: np.ndarray, test: np.ndarray,
                far_target: float) -> tuple[float, float]:
    _, far_train = _val_far(dist[train], issame[train], VAL_THRESHOLDS)
    if np.nanmax(far_train) >= far_target:
        threshold = interp_threshold(far_train, VAL_THRESHOLDS, far_target)
    else:
        threshold = 0.0
    val, far = _val_far(dist[test], issame[test], np.asarray([threshold]))
    return float(val[0]), float(far[0])
