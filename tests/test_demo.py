"""The offline demo end to end: files, table, finiteness, determinism, cache, bad arguments."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from quality_lora.demo import PRESETS, main
from quality_lora.demo.report import METRICS

METHODS = ("pretrained", "full", "lora", "petalface")
TIMINGS = {"train_seconds"}


def _read(folder) -> dict:
    return json.loads((folder / "results.json").read_text())


def _without_timings(results: dict) -> dict:
    methods = {name: {k: v for k, v in m.items() if k not in TIMINGS} for name, m in results["methods"].items()}
    return {"methods": methods, "settings": results["settings"]}


def test_quick_end_to_end(tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    results = _read(tmp_path)
    assert set(results["methods"]) == set(METHODS)
    for name in METHODS:
        m = results["methods"][name]
        assert set(m) == set(METRICS), name
        for key in ("lr_rank1", "lr_rank5", "hr_rank1", "hr_verification"):
            assert math.isfinite(m[key]) and 0.0 <= m[key] <= 1.0, (name, key, m[key])
        assert m["lr_rank5"] >= m["lr_rank1"]
        assert m["trainable_params"] > 0 and m["train_seconds"] >= 0
    assert results["seconds"] > 0 and results["pretrained_from_cache"] is False
    # Adapters train a small fraction of what full fine-tuning trains.
    full = results["methods"]["full"]["trainable_params"]
    assert results["methods"]["lora"]["trainable_params"] < full / 10
    assert results["methods"]["petalface"]["trainable_params"] < full / 5
    for png in ("cmc_lr.png", "cmc_hr.png", "alpha_hist.png", "samples.png"):
        assert (tmp_path / png).stat().st_size > 1000, png
    printed = capsys.readouterr().out
    for row in ("Pretrained (HR only)", "Full fine-tuning", "LoRA", "PETALface", str(tmp_path / "results.json")):
        assert row in printed
    assert "nan" not in printed.lower()


def test_tiny_is_deterministic_and_cache_gives_same_results(tmp_path):
    fresh, cached = tmp_path / "fresh", tmp_path / "cached"
    assert main(["--tiny", "--no-cache", "--out", str(fresh)]) == 0
    assert not list(fresh.glob("pretrained_*.safetensors"))
    assert main(["--tiny", "--out", str(cached)]) == 0       # trains and writes the cache
    assert len(list(cached.glob("pretrained_*.safetensors"))) == 1
    first = _read(cached)
    assert main(["--tiny", "--out", str(cached)]) == 0       # loads the cached backbone
    second = _read(cached)
    assert first["pretrained_from_cache"] is False and second["pretrained_from_cache"] is True
    assert _without_timings(_read(fresh)) == _without_timings(first) == _without_timings(second)
    # The pretraining time reported for a cached backbone is the one measured when it was trained.
    assert second["methods"]["pretrained"]["train_seconds"] == pytest.approx(
        first["methods"]["pretrained"]["train_seconds"], abs=1e-3)


def test_seed_changes_results(tmp_path):
    assert main(["--tiny", "--no-cache", "--out", str(tmp_path / "s0")]) == 0
    assert main(["--tiny", "--no-cache", "--seed", "3", "--out", str(tmp_path / "s3")]) == 0
    s0, s3 = _read(tmp_path / "s0"), _read(tmp_path / "s3")
    assert s3["settings"]["seed"] == 3
    assert _without_timings(s0)["methods"] != _without_timings(s3)["methods"]


def test_cache_key_follows_pretraining_settings_only():
    s = PRESETS["quick"]
    assert dataclasses.replace(s, adapt_lr=5e-4).key() == s.key()
    assert dataclasses.replace(s, eval_ids=10).key() == s.key()
    assert dataclasses.replace(s, pretrain_steps=s.pretrain_steps + 1).key() != s.key()
    assert dataclasses.replace(s, seed=s.seed + 1).key() != s.key()


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "--threads"),
    (["--seed", "x"], "--seed"),
    (["--bogus"], "--bogus"),
])
def test_bad_arguments(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as err:
        main([*argv, "--out", str(tmp_path)])
    assert err.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_gpu_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--device", "cuda", "--out", str(tmp_path)])
    assert "no CUDA device" in capsys.readouterr().err
