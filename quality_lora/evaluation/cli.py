"""``quality-lora eval``: run protocols for one or more models, print a table, write JSON + PNGs.

Examples::

    quality-lora eval --model pretrained=ckpt/model.pt --model petalface=ckpt/petal.pt \\
        --bin data/lfw.bin --bin data/agedb_30.bin --tinyface data/tinyface_aligned --out results/
    quality-lora eval --model m=model.pt --ijb data/IJB_release/IJBC --ijb-target IJBC --out results/

A model argument is ``name=path``; the path is loaded with
``quality_lora.models.load_petalface`` (original PETALface ``model.pt`` files or a Hub repo
``owner/repo:subfolder``). Embeddings are cached in ``<out>/cache`` so a second run is free.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from quality_lora._atomic import atomic_write_text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quality-lora eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                   help="model to evaluate (repeatable); PATH is a model.pt file, a folder written by `quality-lora convert`, or HUB_REPO:SUBFOLDER")
    p.add_argument("--bin", action="append", default=[], metavar="FILE", help=".bin verification set (repeatable)")
    p.add_argument("--tinyface", metavar="DIR", help="TinyFace test folder (Probe/, Gallery_Match/, Gallery_Distractor/)")
    p.add_argument("--ijb", metavar="DIR", help="IJB-B/C release folder (meta/, loose_crop/)")
    p.add_argument("--ijb-target", default="IJBC", choices=("IJBB", "IJBC"))
    p.add_argument("--ijb-max-missing", type=float, default=0.0, help="allowed share of missing IJB images")
    p.add_argument("--out", default="eval_results", help="output folder (JSON, PNG plots, embedding cache)")
    p.add_argument("--size", type=int, default=120, help="model input size in pixels")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--flip-fusion", default="normalized_sum", choices=("normalized_sum", "raw_sum"),
                   help="flip fusion for .bin sets (raw_sum = arcface_torch's verification.test)")
    p.add_argument("--scorer", default=None, metavar="NAME",
                   help="wrap each model in QualityGatedModel with this scorer (sharpness, or a pyiqa "
                        "metric such as brisque / cnniqa); needed for gated (PETALface) checkpoints")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="AlphaMap.petalface threshold for --scorer (alpha = 0.5 + score - threshold)")
    p.add_argument("--legacy-scoring", action="store_true",
                   help="score the [-1, 1] input as the original PETALface code did")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--no-plots", action="store_true")
    return p


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_model(spec: str, device: str, scorer: str | None = None, threshold: float = 0.5,
               legacy_scoring: bool = False) -> Callable:
    """``path`` or ``repo:subfolder`` -> model in eval mode (via ``quality_lora.models``), wrapped
    in a ``QualityGatedModel`` when ``scorer`` is given. ``path`` is an original ``model.pt`` or a
    folder written by ``quality-lora convert`` (base weights + adapter files)."""
    from quality_lora import models

    if os.path.isdir(spec) and os.path.isfile(os.path.join(spec, models.convert.CONFIG_NAME)):
        model = models.load_converted(spec)
    else:
        source = (tuple(spec.split(":", 1)) if ":" in spec and not os.path.exists(spec) else spec)
        model = models.load_petalface(source)
    if scorer is not None:
        from quality_lora.quality import AlphaMap, QualityGatedModel
        from quality_lora.quality.base import scorer_from_description

        desc = {"name": "sharpness"} if scorer == "sharpness" else {"name": "pyiqa", "params": {"metric": scorer}}
        model = QualityGatedModel(model, scorer_from_description(desc), AlphaMap.petalface(threshold),
                                  legacy_scoring=legacy_scoring)
    return model.to(device).eval()


def _fmt(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def format_table(results: dict[str, dict[str, dict]]) -> str:
    """Rows: models; columns: dataset metrics (percent), as in the paper's tables."""
    cols: list[tuple[str, str]] = []
    for per_model in results.values():
        for ds, metrics in per_model.items():
            for k in metrics:
                if (ds, k) not in cols:
                    cols.append((ds, k))
    head = ["model"] + [f"{ds}:{k}" for ds, k in cols]
    rows = [[name] + [_fmt(per.get(ds, {}).get(k)) for ds, k in cols] for name, per in results.items()]
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=1))   # never a half-written results file


def run(models: dict[str, Callable], args: argparse.Namespace) -> dict:
    """Evaluate every model on the requested sets; returns {model: {dataset: full result dict}}."""
    from . import protocols

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = None if args.no_cache else out / "cache"
    kw = dict(batch_size=args.batch_size, num_workers=args.workers, device=args.device, cache_dir=cache)
    full: dict[str, dict] = {}
    for name, model in models.items():
        res: dict[str, dict] = {}
        for b in args.bin:
            res[Path(b).stem] = protocols.evaluate_verification_bin(model, b, size=args.size,
                                                                    flip_fusion=args.flip_fusion, **kw)
        if args.tinyface:
            res["tinyface"] = protocols.evaluate_tinyface(model, args.tinyface, size=args.size, **kw)
        if args.ijb:
            res[args.ijb_target.lower()] = protocols.evaluate_ijb(model, args.ijb, args.ijb_target, size=args.size,
                                                                  max_missing=args.ijb_max_missing, **kw)
        full[name] = res
    return full


def summarise(full: dict) -> dict[str, dict[str, dict]]:
    """The headline numbers (fractions) of each result, for the table and ``summary.json``."""
    table: dict[str, dict[str, dict]] = {}
    for name, res in full.items():
        row = {}
        for ds, r in res.items():
            if "accuracy_mean" in r:
                row[ds] = {"acc": r["accuracy_mean"]}
            elif "cmc" in r:
                row[ds] = {k: v for k, v in r.items() if k.startswith("rank_")}
            elif "tar_at_far" in r:
                row[ds] = {f"TAR@{far:g}": v for far, v in r["tar_at_far"].items()}
        table[name] = row
    return table


def plots(full: dict, out: Path, threshold: float | None = None) -> list[Path]:
    from .plots import plot_cmc, plot_quality_hist, plot_roc

    written = []
    names = list(full)
    datasets = {ds for res in full.values() for ds in res}
    for ds in sorted(datasets):
        per = {n: full[n][ds] for n in names if ds in full[n]}
        first = next(iter(per.values()))
        if "cmc" in first:
            written.append(plot_cmc({n: r["cmc"] for n, r in per.items()}, out / f"cmc_{ds}.png"))
            for n, r in per.items():
                q = r.get("quality", {})
                if q.get("gallery") and q.get("probe"):
                    written.append(plot_quality_hist(q["gallery"]["scores"], q["probe"]["scores"], threshold,
                                                     out / f"quality_{ds}_{n}.png",
                                                     alphas=(q["gallery"]["alphas"], q["probe"]["alphas"])))
        elif "fpr" in first:
            written.append(plot_roc({n: (r["fpr"], r["tpr"]) for n, r in per.items()}, out / f"roc_{ds}.png",
                                    title=f"ROC {ds}"))
    return written


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not (args.bin or args.tinyface or args.ijb):
        print("quality-lora eval: give at least one of --bin, --tinyface, --ijb", file=sys.stderr)
        return 2
    models = {}
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            print(f"quality-lora eval: --model expects NAME=PATH, got {spec!r}", file=sys.stderr)
            return 2
        models[name] = load_model(path, args.device, args.scorer, args.threshold, args.legacy_scoring)
    full = run(models, args)
    summary = summarise(full)
    print(format_table(summary))
    out = Path(args.out)
    _write_json(out / "summary.json", summary)
    _write_json(out / "results.json", full)
    if not args.no_plots:
        for p in plots(full, out, args.threshold if args.scorer else None):
            print(f"wrote {p}")
    return 0
