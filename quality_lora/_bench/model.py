"""``quality-lora bench model``: cost of the adapters and the scorer on the full PETALface Swin.

Reference: the full-size model (random weights) with no adapters, batch 8 at 120 px on the CPU.
Measured against it in the same run: the model with PETALface adapters (gated qkv + LoRA head)
and a per-sample alpha; the same adapters merged at alpha = 1 (``merge_adapters``); and the wall
time of the quality scorer(s) on the same batch. The models take turns in every round so load
from other processes hits them alike; the median of the rounds is reported.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable


def _times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up (allocator, SDPA kernel choice)
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def _pyiqa_scorers(batch: object) -> dict[str, Callable[[], object]]:
    """cnniqa (random weights: timing only) and brisque (if its parameter file is already cached)."""
    try:
        import pyiqa
        import torch
    except ImportError:
        print("  (pyiqa not installed: cnniqa/brisque skipped; pip install quality-lora[iqa])")
        return {}
    from pathlib import Path

    common = dict(device="cpu", as_loss=False, check_input_range=False)
    out: dict[str, Callable[[], object]] = {}
    cnniqa = pyiqa.create_metric("cnniqa", pretrained=None, **common)
    out["pyiqa cnniqa"] = lambda: cnniqa(batch)
    # brisque would download its SVM parameters on first use: never from a benchmark.
    svm = Path(torch.hub.get_dir()) / "pyiqa" / "brisque_svm_weights.pth"
    if svm.is_file():
        brisque = pyiqa.create_metric("brisque", pretrained_model_path=str(svm), **common)
        out["pyiqa brisque"] = lambda: brisque(batch)
    else:
        print(f"  (pyiqa brisque skipped: {svm} is not cached)")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="quality-lora bench model", description=__doc__)
    p.add_argument("--size", default="base", help="model size (base = the paper's 215M model)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median is reported)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--r", type=int, default=8, help="adapter rank")
    p.add_argument("--no-pyiqa", action="store_true", help="skip the pyiqa scorers")
    p.add_argument("--explicit-attn", action="store_true", help="the original's softmax path, not SDPA")
    args = p.parse_args(argv)

    import torch

    from quality_lora.inject import (
        adapter_layers,
        count_parameters,
        inject_adapters,
        merge_adapters,
    )
    from quality_lora.models import VARIANTS, petalface_swin
    from quality_lora.quality import SharpnessScorer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = petalface_swin("pretrained", size=args.size, fused_attn=not args.explicit_attn).eval()
    gated = inject_adapters(copy.deepcopy(base), VARIANTS["petalface"], r=args.r).eval()
    with torch.no_grad():
        for layer in adapter_layers(gated).values():
            layer.lora_B.normal_(0, 0.02)  # non-zero adapters: nothing can be skipped
    trainable, total = count_parameters(gated)
    merged = merge_adapters(copy.deepcopy(gated), alpha=1.0).eval()
    side = base.config["img_size"]
    x = torch.rand(args.batch, 3, side, side) * 2 - 1
    alpha = torch.rand(args.batch)
    scorer = SharpnessScorer()

    fns: dict[str, Callable[[], object]] = {
        "no adapters (reference)": lambda: base(x),
        "gated, per-sample alpha": lambda: gated(x, alpha=alpha),
        "merged at alpha = 1": lambda: merged(x),
        "SharpnessScorer": lambda: scorer(x),
    }
    if not args.no_pyiqa:
        fns.update(_pyiqa_scorers(x))
    with torch.inference_mode():
        runs = _times(fns, args.repeats)
    times = {k: statistics.median(v) for k, v in runs.items()}
    best = {k: min(v) for k, v in runs.items()}
    ref, ref_best = times["no adapters (reference)"], best["no adapters (reference)"]
    goals = {"gated, per-sample alpha": "<= 1.05", "merged at alpha = 1": "<= 1.01", "SharpnessScorer": "<= 0.03"}
    print(f"bench model: PETALface Swin {args.size}, batch {args.batch} x {side}px, CPU, "
          f"threads={args.threads}, attention={'explicit' if args.explicit_attn else 'sdpa'}, "
          f"median of {args.repeats}")
    for name, t in times.items():
        goal = goals.get(name, "")
        print(f"  {name:26s} {t * 1e3:9.1f} ms   ratio {t / ref:7.4f} (best-of ratio "
              f"{best[name] / ref_best:7.4f})  {('goal ' + goal) if goal else ''}")
    print(f"  trainable parameters (r={args.r}): {trainable:,} / {total:,} = {100 * trainable / total:.3f}%")
    return 0
