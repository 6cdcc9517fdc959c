from __future__ import annotations

import numpy as np
import pytest
import torch

from quality_lora.evaluation import identification


def _dense_reference(p, pl, g, gl):
    """Full-matrix rank of the first mate, ties against the probe (the documented rule)."""
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    s = p @ g.T
    ranks = []
    for i in range(len(p)):
        mate = gl == pl[i]
        if not mate.any():
            continue
        best = s[i, mate].max()
        ranks.append(1 + int(((s[i] >= best) & ~mate).sum()))
    return np.array(ranks)


def test_closed_form_ranks():
    # All probes are e0. Distractor j has cosine 0.9 - 0.1 j, probe i's mate 0.95 - 0.1 i, so
    # above probe i's mate lie i distractors and the i mates of probes 0..i-1: rank 2 i + 1.
    dim = 12
    e = np.eye(dim)
    n_nonmate = 6
    gallery = [np.cos(np.arccos(0.9 - 0.1 * j)) * e[0] + np.sin(np.arccos(0.9 - 0.1 * j)) * e[1 + j]
               for j in range(n_nonmate)]
    g_labels = [-100] * n_nonmate
    probes, p_labels = [], []
    for i in range(4):
        c = 0.95 - 0.1 * i
        gallery.append(c * e[0] + np.sqrt(1 - c * c) * e[8 + i])
        g_labels.append(i)
        probes.append(e[0])
        p_labels.append(i)
    res = identification(np.array(probes), p_labels, np.array(gallery), g_labels, ranks=(1, 2, 3, 7))
    np.testing.assert_array_equal(res["probe_ranks"], [1, 3, 5, 7])
    assert res["rank_1"] == 0.25 and res["rank_2"] == 0.25 and res["rank_3"] == 0.5 and res["rank_7"] == 1.0
    assert len(res["cmc"]) == len(gallery)
    np.testing.assert_allclose(res["cmc"][:8], [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0])


def test_blockwise_matches_dense_and_unmatched_probes():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(500, 32)).astype(np.float32)
    gl = np.concatenate([np.arange(100), np.full(400, -100)])
    p = (g[:100] + 1.5 * rng.normal(size=(100, 32))).astype(np.float32)
    pl = np.arange(100)
    p = np.concatenate([p, rng.normal(size=(7, 32)).astype(np.float32)])   # 7 probes with no mate
    pl = np.concatenate([pl, np.arange(1000, 1007)])
    ref = _dense_reference(p, pl, g, gl)
    res = identification(p, pl, g, gl, probe_block=16, gallery_block=37)   # uneven blocks
    assert res["n_unmatched_probes"] == 7 and res["n_probes"] == 100
    np.testing.assert_array_equal(res["probe_ranks"][:100], ref)
    assert 0.05 < res["rank_1"] < 0.95
    for k in (1, 5, 10, 20):
        assert res[f"rank_{k}"] == pytest.approx(np.mean(ref <= k))
    # torch tensors and memmap-like inputs give the same result
    res_t = identification(torch.from_numpy(p), pl, torch.from_numpy(g), gl)
    np.testing.assert_array_equal(res_t["probe_ranks"], res["probe_ranks"])


def test_ties_count_against_the_probe_and_multiple_mates_use_the_best():
    e = np.eye(4)
    probe = e[[0]]
    # distractor identical to the best mate (exact tie) -> rank 2; a weaker second mate is ignored
    gallery = np.stack([e[1], e[0], e[0], 0.5 * e[0] + e[2]])
    labels = np.array([7, 7, -100, 7])
    res = identification(probe, [7], gallery, labels)
    assert res["probe_ranks"].tolist() == [2]
    assert res["rank_1"] == 0.0 and res["rank_5"] == 1.0


def test_bad_input():
    g = np.ones((4, 3))
    with pytest.raises(ValueError, match="gallery_labels has 3 entries"):
        identification(np.ones((2, 3)), [0, 1], g, [0, 1, 2])
    with pytest.raises(ValueError, match="dim"):
        identification(np.ones((2, 5)), [0, 1], g, [0, 1, 2, 3])
    g[2, 1] = np.nan
    with pytest.raises(ValueError, match="gallery_feats row 2 is not finite"):
        identification(np.ones((2, 3)), [0, 1], g, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="no probe label"):
        identification(np.ones((2, 3)), [5, 6], np.ones((4, 3)), [0, 1, 2, 3])
