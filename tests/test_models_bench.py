"""The model benchmark runs end to end on a small model and prints every ratio."""
from __future__ import annotations

import pytest

from quality_lora._bench.model import main


def test_bench_model_runs(capsys: pytest.CaptureFixture) -> None:
    assert main(["--size", "micro", "--batch", "2", "--repeats", "1", "--threads", "1", "--no-pyiqa"]) == 0
    out = capsys.readouterr().out
    for line in ("no adapters (reference)", "gated, per-sample alpha", "merged at alpha = 1", "SharpnessScorer"):
        assert line in out
    assert "trainable parameters (r=8)" in out
