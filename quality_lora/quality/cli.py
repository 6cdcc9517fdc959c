"""``quality-lora score``: score image files/folders and show the alpha each score maps to."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from quality_lora.quality.alpha import AlphaMap
from quality_lora.quality.base import QualityScorer
from quality_lora.quality.pyiqa_scorer import PyIQAScorer
from quality_lora.quality.sharpness import SharpnessScorer

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quality-lora score",
        description="Score images with a quality scorer and print score and alpha (1 = high quality).",
    )
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--scorer", default="sharpness",
                   help="'sharpness' (built-in, default) or 'pyiqa:<metric>', e.g. pyiqa:cnniqa (needs the iqa extra)")
    p.add_argument("--weights", help="local weight file for a pyiqa metric (nothing is downloaded with it)")
    p.add_argument("--size", type=int, default=120,
                   help="resize every image to SIZE x SIZE (bicubic) before scoring, as the models see them; 0 = native size")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--legacy", action="store_true",
                   help="score the [-1, 1]-normalised image, as the original PETALface did")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--threshold", type=float, help="alpha = clip(0.5 + slope * (score - threshold)), direction-aware")
    group.add_argument("--petalface-threshold", type=float, help="the original rule: alpha = 0.5 + score - threshold, unclipped")
    group.add_argument("--alpha-map", type=Path, help="JSON file with an AlphaMap (to_dict) or a dict holding one under 'alpha_map'")
    group.add_argument("--fit", nargs=2, metavar=("HQ", "LQ"), type=Path,
                       help="fit the alpha map on two folders (high / low quality) and print it as JSON")
    p.add_argument("--slope", type=float, default=1.0, help="slope for --threshold (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image instead of a table")
    return p


def _make_scorer(spec: str, weights: str | None, device: str) -> QualityScorer:
    if spec == "sharpness":
        if weights:
            raise ValueError("--weights is only for pyiqa scorers; 'sharpness' needs none")
        return SharpnessScorer()
    if spec.startswith("pyiqa:"):
        return PyIQAScorer(spec.split(":", 1)[1], weights=weights, device=device)
    raise ValueError(f"--scorer: unknown scorer {spec!r}; use 'sharpness' or 'pyiqa:<metric>'")


def _image_files(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under folder {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"image file or folder {path} does not exist")
    return files


def _load(path: Path, size: int) -> torch.Tensor:
    """RGB image as (3, H, W) float in [0, 1], resized to size x size when size > 0."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
            if size > 0:
                rgb = rgb.resize((size, size), Image.BICUBIC)
            arr = np.asarray(rgb, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def score_files(files: list[Path], scorer: QualityScorer, size: int = 120, batch_size: int = 64,
                device: str = "cpu", legacy: bool = False) -> torch.Tensor:
    """Scores ``(N,)`` for image files, in batches of equal-size images (one per batch if size = 0)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if size < 0 or 0 < size < 16:
        raise ValueError(f"--size must be 0 (native) or >= 16, got {size}")
    step = batch_size if size > 0 else 1
    scores = []
    for start in range(0, len(files), step):
        batch = torch.stack([_load(f, size) for f in files[start:start + step]]).to(device)
        if legacy:
            batch = (batch - 0.5) / 0.5
        scores.append(scorer(batch).cpu())
    return torch.cat(scores)


def _read_alpha_map(path: Path) -> AlphaMap:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--alpha-map: cannot read JSON from {path}: {err}") from err
    if isinstance(data, dict) and "alpha_map" in data:
        data = data["alpha_map"]
    try:
        return AlphaMap.from_dict(data)
    except ValueError as err:
        raise ValueError(f"--alpha-map {path}: {err}") from err


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``quality-lora score``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        scorer = _make_scorer(args.scorer, args.weights, args.device)
        files = _image_files(args.paths)
        common = {"size": args.size, "batch_size": args.batch_size, "device": args.device, "legacy": args.legacy}
        scores = score_files(files, scorer, **common)
        alpha_map: AlphaMap | None = None
        if args.threshold is not None:
            alpha_map = AlphaMap(args.threshold, slope=args.slope, higher_is_better=scorer.higher_is_better)
        elif args.petalface_threshold is not None:
            alpha_map = AlphaMap.petalface(args.petalface_threshold)
        elif args.alpha_map is not None:
            alpha_map = _read_alpha_map(args.alpha_map)
        elif args.fit is not None:
            hq = score_files(_image_files([args.fit[0]]), scorer, **common)
            lq = score_files(_image_files([args.fit[1]]), scorer, **common)
            alpha_map = AlphaMap.fit(hq, lq, higher_is_better=scorer.higher_is_better)
            print(json.dumps({"scorer": scorer.describe(), "alpha_map": alpha_map.to_dict()}), file=sys.stderr)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"quality-lora score: error: {err}", file=sys.stderr)
        return 2
    alphas = alpha_map(scores) if alpha_map is not None else None
    if not args.json:
        print(f"{'score':>12} {'alpha':>8}  path")
    for i, f in enumerate(files):
        alpha = None if alphas is None else float(alphas[i])
        if args.json:
            print(json.dumps({"path": str(f), "score": float(scores[i]), "alpha": alpha}))
        else:
            print(f"{float(scores[i]):12.5g} {'-' if alpha is None else f'{alpha:8.4f}':>8}  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
