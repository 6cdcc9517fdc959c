"""The demo's outputs: the paper-style table, results.json and the plots."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from quality_lora._atomic import atomic_write_text
from quality_lora.demo.data import EvalSets

NAMES = {"pretrained": "Pretrained (HR only)", "full": "Full fine-tuning", "lora": "LoRA",
         "petalface": "PETALface"}
METRICS = ("lr_rank1", "lr_rank5", "hr_rank1", "hr_verification", "trainable_params", "train_seconds")


def table(methods: dict[str, dict]) -> str:
    """Markdown table: one row per method, rates in percent."""
    head = ("| method | LR rank-1 | LR rank-5 | HR rank-1 | HR verification | trainable params | train s |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    rows = [head]
    for name, m in methods.items():
        rows.append(f"| {NAMES.get(name, name)} | {100 * m['lr_rank1']:.1f} | {100 * m['lr_rank5']:.1f} | "
                    f"{100 * m['hr_rank1']:.1f} | {100 * m['hr_verification']:.1f} | "
                    f"{m['trainable_params']:,} | {m['train_seconds']:.0f} |")
    return "\n".join(rows)


def write_json(path: Path, data: dict) -> Path:
    """Atomically write ``data`` as JSON (a crash never leaves a half-written results.json)."""
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def plots(out: Path, curves: dict[str, dict], sets: EvalSets, gate, device: torch.device) -> list[Path]:
    """CMC curves (LR and HR probes), PETALface's quality/alpha histogram and a sample grid."""
    from quality_lora.demo.data import to_input
    from quality_lora.evaluation.plots import plot_cmc, plot_quality_hist

    paths = [plot_cmc({NAMES[k]: v["cmc_lr"] for k, v in curves.items()}, out / "cmc_lr.png"),
             plot_cmc({NAMES[k]: v["cmc_hr"] for k, v in curves.items()}, out / "cmc_hr.png")]
    if gate is not None:
        with torch.no_grad():
            sg, ag = gate.score_alpha(to_input(sets.gallery).to(device))
            sp, ap = gate.score_alpha(to_input(sets.probes_lr).to(device))
        paths.append(plot_quality_hist(sg.cpu(), sp.cpu(), gate.alpha_map.threshold, out / "alpha_hist.png",
                                       alphas=(ag.cpu(), ap.cpu()), labels=("HR gallery", "LR probes")))
    paths.append(sample_grid(sets, out / "samples.png"))
    return paths


def sample_grid(sets: EvalSets, path: Path, n: int = 8) -> Path:
    """Top row: gallery (HR) images of ``n`` probe identities; middle: HR probes; bottom: LR probes."""
    from PIL import Image

    per = int((sets.probe_labels == sets.probe_labels[0]).sum())
    n = min(n, len(sets.probe_labels) // per)
    probe_rows = torch.arange(n) * per
    gallery_rows = torch.searchsorted(sets.gallery_labels, sets.probe_labels[probe_rows])
    rows = [sets.gallery[gallery_rows], sets.probes_hr[probe_rows], sets.probes_lr[probe_rows]]
    pad, side = 2, sets.gallery.shape[-1]
    # White-padded grid by hand: torchvision (make_grid) is not a dependency.
    grid = torch.ones(3, 3 * (side + pad) + pad, n * (side + pad) + pad)
    for r, row in enumerate(rows):
        for c in range(n):
            y, x = pad + r * (side + pad), pad + c * (side + pad)
            grid[:, y:y + side, x:x + side] = row[c]
    pixels = (grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(path)
    return path


def check_finite(methods: dict[str, dict]) -> None:
    for name, m in methods.items():
        for key in METRICS:
            if not math.isfinite(float(m[key])):
                raise FloatingPointError(f"demo: {name}.{key} is {m[key]}")
