"""AlphaMap: the formula, direction, the PETALface rule, calibration by fit, configs, bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from quality_lora.quality import AlphaMap


def test_linear_clipped_and_direction() -> None:
    scores = torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0])
    up = AlphaMap(threshold=2.0, slope=0.25)
    torch.testing.assert_close(up(scores), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    down = AlphaMap(threshold=2.0, slope=0.25, higher_is_better=False)
    torch.testing.assert_close(down(scores), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert up(scores.view(-1, 1)).shape == (5,)
    assert up(scores.double()).dtype == torch.float64
    unclipped = AlphaMap(threshold=2.0, slope=0.25, clip=False)
    torch.testing.assert_close(unclipped(scores), torch.tensor([0.0, 0.25, 0.5, 0.75, 2.5]))


def test_petalface_rule_is_exact() -> None:
    scores = torch.tensor([10.5, 37.25, 61.0, 80.9, -3.0])  # brisque-like, lower is better there
    threshold = 40.0
    alpha = AlphaMap.petalface(threshold)(scores)
    assert torch.equal(alpha, 0.5 + (scores - threshold))  # bit for bit, unclipped, no flip
    assert alpha.max() > 1 and alpha.min() < 0
    assert AlphaMap.petalface(threshold).to_dict() == {
        "type": "linear", "threshold": 40.0, "slope": 1.0, "higher_is_better": True, "clip": False}


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_fit_separated_sets(higher_is_better: bool) -> None:
    gen = np.random.default_rng(0)
    sign = 1 if higher_is_better else -1
    hq = sign * gen.normal(5.0, 0.5, 300)
    lq = sign * gen.normal(1.0, 0.5, 300)
    amap = AlphaMap.fit(hq, lq, higher_is_better=higher_is_better)
    assert amap.higher_is_better is higher_is_better and amap.clip
    a_hq, a_lq = amap(torch.as_tensor(hq)), amap(torch.as_tensor(lq))
    assert float(a_hq.median()) == pytest.approx(1.0, abs=1e-9)
    assert float(a_lq.median()) == pytest.approx(0.0, abs=1e-9)
    assert float(a_hq.mean()) > 0.9 and float(a_lq.mean()) < 0.1
    assert 2.0 < sign * amap.threshold < 4.0


def test_fit_rule_exact_on_small_sets() -> None:
    # gap between 3 and 7: threshold is its middle; medians 8 and 2, nearer one (8) is 3 away
    amap = AlphaMap.fit([7.0, 8.0, 12.0], [0.0, 2.0, 3.0])
    assert amap.threshold == 5.0
    assert amap.slope == pytest.approx(0.5 / 3.0)
    torch.testing.assert_close(amap(torch.tensor([8.0, 2.0, 5.0])), torch.tensor([1.0, 0.0, 0.5]))
    # lower is better: same numbers negated give the mirrored map
    mirrored = AlphaMap.fit([-7.0, -8.0, -12.0], [0.0, -2.0, -3.0], higher_is_better=False)
    assert mirrored.threshold == -5.0 and mirrored.slope == pytest.approx(0.5 / 3.0)
    torch.testing.assert_close(mirrored(torch.tensor([-8.0, -2.0])), torch.tensor([1.0, 0.0]))


def test_fit_overlapping_sets_still_orders() -> None:
    gen = np.random.default_rng(1)
    hq, lq = gen.normal(1.0, 1.0, 500), gen.normal(0.0, 1.0, 500)
    amap = AlphaMap.fit(torch.as_tensor(hq), torch.as_tensor(lq).view(-1, 1))
    assert 0.0 < amap.threshold < 1.0
    assert float(amap(torch.as_tensor(hq)).mean()) > float(amap(torch.as_tensor(lq)).mean()) + 0.3


def test_fit_wrong_direction_and_identical_sets() -> None:
    with pytest.raises(ValueError, match="not lower than .* higher_is_better=False"):
        AlphaMap.fit([5.0, 6.0], [1.0, 2.0], higher_is_better=False)
    with pytest.raises(ValueError, match="do not separate"):
        AlphaMap.fit([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="do not separate"):
        AlphaMap.fit([1.0, 2.0], [5.0, 6.0])  # swapped arguments


@pytest.mark.parametrize(
    "hq, lq, match",
    [
        ([], [1.0], "scores_hq: no scores"),
        ([1.0], np.array([]), "scores_lq: no scores"),
        ([1.0, math.nan], [0.0], r"scores_hq: score at index 1 is nan"),
        ([1.0], [0.0, math.inf], r"scores_lq: score at index 1 is inf"),
        ([[1.0, 2.0]], [0.0], r"shape \(N,\)"),
        (["a"], [0.0], "scores_hq"),
    ],
)
def test_fit_bad_input(hq, lq, match) -> None:
    with pytest.raises(ValueError, match=match):
        AlphaMap.fit(hq, lq)


def test_call_bad_input() -> None:
    amap = AlphaMap(0.0)
    with pytest.raises(ValueError, match="index 2 is nan"):
        amap(torch.tensor([0.0, 1.0, math.nan]))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        amap(torch.zeros(2, 3))
    for kwargs, match in (({"threshold": math.nan}, "threshold"), ({"threshold": 0.0, "slope": 0.0}, "slope must be > 0"),
                          ({"threshold": 0.0, "slope": math.inf}, "slope")):
        with pytest.raises(ValueError, match=match):
            AlphaMap(**kwargs)


def test_dict_round_trip_and_errors() -> None:
    amap = AlphaMap.fit([7.0, 8.0, 12.0], [0.0, 2.0, 3.0], higher_is_better=True)
    again = AlphaMap.from_dict(json.loads(json.dumps(amap.to_dict())))
    assert again == amap
    scores = torch.linspace(-5, 15, 11)
    assert torch.equal(again(scores), amap(scores))
    with pytest.raises(ValueError, match="unknown key"):
        AlphaMap.from_dict({"threshold": 1.0, "treshold": 2.0})
    with pytest.raises(ValueError, match="missing key 'threshold'"):
        AlphaMap.from_dict({"slope": 2.0})
    with pytest.raises(ValueError, match="unknown type 'sigmoid'"):
        AlphaMap.from_dict({"type": "sigmoid", "threshold": 1.0})
