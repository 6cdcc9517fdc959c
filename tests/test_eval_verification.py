from __future__ import annotations

import numpy as np
import pytest

from quality_lora.evaluation import verification_accuracy
from quality_lora.evaluation.verification import kfold_splits


def _reference(embeddings, issame, nfolds=10):
    """Independent loop-per-threshold computation with sklearn's KFold; the FAR interpolation
    uses np.interp, which for repeated x keeps the last point of each run (documented numpy
    behaviour), as interp1d(kind="slinear") did before scipy refused repeated x."""
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import normalize

    emb = normalize(embeddings)
    dist = np.sum(np.square(emb[0::2] - emb[1::2]), 1)
    issame = np.asarray(issame)

    def acc(t, d, s):
        p = d < t
        return (np.sum(p & s) + np.sum(~p & ~s)) / d.size

    def val_far(t, d, s):
        p = d < t
        return np.sum(p & s) / np.sum(s), np.sum(p & ~s) / np.sum(~s)

    th = np.arange(0, 4, 0.01)
    th_val = np.arange(0, 4, 0.001)
    accs, bests, vals, fars = [], [], [], []
    for train, test in KFold(n_splits=nfolds, shuffle=False).split(np.arange(len(dist))):
        a = [acc(t, dist[train], issame[train]) for t in th]
        k = int(np.argmax(a))
        bests.append(th[k])
        accs.append(acc(th[k], dist[test], issame[test]))
        far_train = np.array([val_far(t, dist[train], issame[train])[1] for t in th_val])
        t = np.interp(1e-3, far_train, th_val) if far_train.max() >= 1e-3 else 0.0
        v, f = val_far(t, dist[test], issame[test])
        vals.append(v)
        fars.append(f)
    return np.mean(accs), np.std(accs), np.array(bests), np.mean(vals), np.mean(fars)


def test_matches_independent_sklearn_computation():
    rng = np.random.default_rng(0)
    n_pairs, dim = 600, 16
    issame = rng.random(n_pairs) < 0.5
    a = rng.normal(size=(n_pairs, dim))
    b = np.where(issame[:, None], a + 0.9 * rng.normal(size=(n_pairs, dim)), rng.normal(size=(n_pairs, dim)))
    emb = np.empty((2 * n_pairs, dim))
    emb[0::2], emb[1::2] = a, b
    res = verification_accuracy(emb, issame)
    acc_m, acc_s, best, val, far = _reference(emb, issame)
    assert 0.6 < res["accuracy_mean"] < 0.99   # a non-trivial case
    assert res["accuracy_mean"] == pytest.approx(acc_m, abs=1e-12)
    assert res["accuracy_std"] == pytest.approx(acc_s, abs=1e-12)
    np.testing.assert_allclose(res["best_thresholds"], best)
    assert res["val_mean"] == pytest.approx(val, abs=1e-12)
    assert res["far_mean"] == pytest.approx(far, abs=1e-12)


def test_fold_assignment_matches_sklearn_kfold():
    from sklearn.model_selection import KFold

    for n in (10, 23, 6000, 7001):
        ours = kfold_splits(n, 10)
        ref = list(KFold(n_splits=10, shuffle=False).split(np.arange(n)))
        assert len(ours) == 10
        for (tr, te), (rtr, rte) in zip(ours, ref):
            np.testing.assert_array_equal(tr, rtr)
            np.testing.assert_array_equal(te, rte)
    # documented split: contiguous, first n % 10 folds one pair larger
    assert [len(te) for _, te in kfold_splits(23, 10)] == [3, 3, 3] + [2] * 7


def _pairs_at_distance(dists, dim=4):
    """Unit embeddings whose pair i has squared distance dists[i] (2 - 2 cos)."""
    rows = []
    for d in dists:
        cos = 1 - d / 2
        rows += [np.eye(dim)[0], np.array([cos, np.sqrt(max(0.0, 1 - cos * cos)), 0, 0])]
    return np.array(rows)


def test_closed_form_accuracy():
    # 10 folds of 10 pairs: genuine at distance 0.5, impostors at 1.5, except one impostor per
    # fold at 0.3 (below every genuine): the best threshold misclassifies it -> 90 % per fold.
    dists, same = [], []
    for _ in range(10):
        dists += [0.5] * 5 + [1.5] * 4 + [0.3]
        same += [True] * 5 + [False] * 5
    res = verification_accuracy(_pairs_at_distance(dists), same)
    assert res["accuracy_mean"] == pytest.approx(0.9)
    assert res["accuracy_std"] == pytest.approx(0.0, abs=1e-12)
    # first best threshold on ties: any t in (0.5, 1.5] reaches the training optimum; argmax -> 0.51
    np.testing.assert_allclose(res["best_thresholds"], 0.51)


def test_tie_handling_picks_first_best_threshold():
    # perfectly separable: all t in (0.205, 1.0] give 100 %; the first such grid point is 0.21
    dists = [0.205, 1.0] * 20
    same = [True, False] * 20
    res = verification_accuracy(_pairs_at_distance(dists), same)
    assert res["accuracy_mean"] == 1.0
    np.testing.assert_allclose(res["best_thresholds"], 0.21)


def test_bad_input():
    emb = np.random.default_rng(0).normal(size=(40, 8))
    with pytest.raises(ValueError, match="issame has 19 entries but embeddings hold 20 pairs"):
        verification_accuracy(emb, [True] * 19)
    emb[7, 3] = np.nan
    with pytest.raises(ValueError, match="row 7 \\(pair 3\\)"):
        verification_accuracy(emb, [True, False] * 10)
    with pytest.raises(ValueError, match="2 \\* n_pairs"):
        verification_accuracy(np.zeros((5, 3)), [True, False])
