"""``quality-lora demo``: the method end to end on SynthFaces, offline, on a CPU in minutes.

1. Pretrain a small PETALface Swin on high-resolution SynthFaces identities (CosFace margin).
2. Adapt it on a small, mostly low-resolution set of other identities three ways with one
   recipe: full fine-tuning, LoRA, PETALface (quality-gated, built-in sharpness scorer).
3. Evaluate on held-out identities: LR and HR identification against an HR gallery with
   distractors (TinyFace protocol) and HR 10-fold verification; print the table, write
   ``results.json`` and plots into ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from quality_lora.demo.settings import PRESETS, DemoSettings

__all__ = ["PRESETS", "DemoSettings", "main", "run"]


def run(settings: DemoSettings, out: str | Path, device: str = "cpu", cache: bool = True,
        quiet: bool = False) -> dict:
    """Run the demo; returns the results dict that is also written to ``out/results.json``."""
    from quality_lora.demo import data, pipeline, report

    log = (lambda msg: None) if quiet else (lambda msg: print(msg, flush=True))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    faces = data.make_faces(settings)
    log("1/3 pretraining on high-resolution identities ...")
    base, pre_seconds, cached = pipeline.load_or_pretrain(
        settings, lambda: data.pretrain_set(faces, settings), dev, out if cache else None, log)
    log("2/3 adapting on a small, mostly low-resolution set ...")
    adapt_data = data.adapt_set(faces, settings)
    sets = data.eval_sets(faces, settings)
    n_base = sum(p.numel() for p in base.parameters())
    models = {"pretrained": pipeline.Adapted(base, n_base, pre_seconds)}
    for method in ("full", "lora", "petalface"):
        models[method] = pipeline.adapt(method, base, settings, adapt_data, dev, log)
    log("3/3 evaluating on held-out identities ...")
    evals = {name: pipeline.evaluate(m.model, sets, dev) for name, m in models.items()}
    methods = {name: {"lr_rank1": e["lr_rank1"], "lr_rank5": e["lr_rank5"], "hr_rank1": e["hr_rank1"],
                      "hr_verification": e["hr_verification"],
                      "trainable_params": int(models[name].trainable_params),
                      "train_seconds": round(float(models[name].train_seconds), 3)}
               for name, e in evals.items()}
    report.check_finite(methods)
    figures = report.plots(out, evals, sets, models["petalface"].gate, dev)
    results = {"methods": methods, "seconds": round(time.perf_counter() - start, 3),
               "cpu_seconds": round(time.process_time() - cpu_start, 3),
               "pretrained_from_cache": cached, "device": str(dev), "settings": settings.to_dict()}
    path = report.write_json(out / "results.json", results)
    log("")
    log(report.table(methods))
    log("")
    log(f"LR = {settings.lowres_size[0]}-{settings.lowres_size[1]} px probes against a "
        f"{len(sets.gallery)}-image HR gallery ({settings.distractor_ids} distractor identities); "
        f"HR verification: {settings.verification_pairs} pairs, 10 folds.")
    log(f"total {results['seconds']:.0f} s (CPU time {results['cpu_seconds']:.0f} s)")
    log(f"results: {path}")
    log("plots:   " + ", ".join(str(p) for p in figures))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="quality-lora demo", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="quality_lora_demo", help="output folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="same pipeline on less data (about 2 minutes)")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # smoke/determinism tests
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--seed", type=int, default=None, help="seed of identities, images and training")
    parser.add_argument("--no-cache", action="store_true",
                        help="always pretrain (by default the backbone is cached in --out, keyed by the settings)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    settings = PRESETS["tiny" if args.tiny else "quick" if args.quick else "default"]
    if args.seed is not None:
        settings = dataclasses.replace(settings, seed=args.seed)
    run(settings, args.out, device=args.device, cache=not args.no_cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
