"""PyIQAScorer over pyiqa (optional extra), offline with weight files the tests write; import without pyiqa."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from quality_lora.quality import AlphaMap, QualityGatedModel, scorer_from_description


def test_import_without_pyiqa() -> None:
    # A fresh interpreter in which ``import pyiqa`` fails, as when the extra is not installed.
    code = (
        "import sys; sys.modules['pyiqa'] = None\n"
        "import quality_lora.quality as q\n"
        "assert q.SharpnessScorer()(__import__('torch').rand(1, 3, 32, 32)).shape == (1,)\n"
        "try:\n"
        "    q.PyIQAScorer('cnniqa')\n"
        "except ImportError as err:\n"
        "    assert 'quality-lora[iqa]' in str(err), err\n"
        "else:\n"
        "    raise SystemExit('PyIQAScorer built without pyiqa')\n"
        "assert 'pyiqa' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def pyiqa():
    return pytest.importorskip("pyiqa")


@pytest.fixture(scope="module")
def cnniqa_weights(pyiqa, tmp_path_factory) -> Path:
    from pyiqa.archs.cnniqa_arch import CNNIQA

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("iqa") / "cnniqa_random.pth"
    torch.save({"params": CNNIQA(pretrained=None).state_dict()}, path)  # pyiqa's key layout
    return path


@pytest.fixture(scope="module")
def brisque_weights(pyiqa, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("iqa") / "brisque_random.pth"
    gen = torch.Generator().manual_seed(0)
    torch.save((torch.randn(20, generator=gen), torch.randn(20, 36, generator=gen)), path)  # (sv_coef, sv)
    return path


def test_cnniqa_offline_batched_eval(pyiqa, cnniqa_weights) -> None:
    from quality_lora.quality import PyIQAScorer

    scorer = PyIQAScorer("cnniqa", weights=cnniqa_weights, device="cpu")
    assert scorer.higher_is_better is True
    x = torch.rand(4, 3, 64, 64)
    scores = scorer(x)
    assert scores.shape == (4,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    one_by_one = torch.cat([scorer(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(scores, one_by_one, rtol=1e-5, atol=1e-5)
    # someone flips it to train mode directly: the next call is back in eval (no dropout)
    scorer._model.train()
    torch.testing.assert_close(scorer(x), scores)
    assert not scores.requires_grad


def test_brisque_direction_from_lower_better(pyiqa, brisque_weights) -> None:
    from quality_lora.quality import PyIQAScorer

    scorer = PyIQAScorer("brisque", weights=brisque_weights, device="cpu")
    assert scorer.higher_is_better is False
    scores = scorer(torch.rand(2, 3, 48, 48))
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert AlphaMap(float(scores.mean()), higher_is_better=scorer.higher_is_better).higher_is_better is False


def test_parent_train_cannot_reach_cnniqa_dropout(pyiqa, cnniqa_weights) -> None:
    from quality_lora.quality import PyIQAScorer

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x, alpha):
            return self.lin(x.mean((2, 3))) * alpha[:, None]

    scorer = PyIQAScorer("cnniqa", weights=cnniqa_weights, device="cpu")
    gm = QualityGatedModel(Tiny(), scorer, AlphaMap(0.0, slope=1.0))
    nn.Sequential(gm).train()
    x = torch.rand(3, 3, 40, 40) * 2 - 1
    torch.testing.assert_close(gm.score_alpha(x)[0], gm.score_alpha(x)[0])  # deterministic: dropout off
    assert not scorer._model.training
    assert set(gm.state_dict()) == {"model.lin.weight", "model.lin.bias"}
    # legacy scoring hands pyiqa the [-1, 1] tensor; its range check must not refuse it
    legacy = QualityGatedModel(Tiny(), scorer, AlphaMap.petalface(0.0), legacy_scoring=True)
    assert legacy.score_alpha(x)[0].shape == (3,)


def test_describe_round_trip(pyiqa, cnniqa_weights) -> None:
    from quality_lora.quality import PyIQAScorer

    scorer = PyIQAScorer("cnniqa", weights=cnniqa_weights, device="cpu")
    d = scorer.describe()
    assert d == {"name": "pyiqa", "params": {"metric": "cnniqa", "weights": str(cnniqa_weights), "device": "cpu"}}
    rebuilt = scorer_from_description(d)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), scorer(x))


class _Payload:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_bad_weights_and_metric(pyiqa, tmp_path) -> None:
    from quality_lora.quality import PyIQAScorer

    with pytest.raises(FileNotFoundError, match="missing.pth"):
        PyIQAScorer("cnniqa", weights=tmp_path / "missing.pth")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"params": _Payload()}, unsafe)
    with pytest.raises(ValueError, match="unsafe.pth.*weights_only=True"):
        PyIQAScorer("cnniqa", weights=unsafe)
    with pytest.raises(ValueError, match="'not-a-metric' is not a no-reference pyiqa metric"):
        PyIQAScorer("not-a-metric")
    with pytest.raises(ValueError, match="'psnr' is not a no-reference"):
        PyIQAScorer("psnr")  # full-reference: needs a second image
