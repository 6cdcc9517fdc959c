"""``quality-lora convert``: an original ``model.pt`` -> base weights + adapter files, and back.

The converted folder holds::

    base_model.safetensors     the frozen backbone (keys as an original "pretrained" checkpoint)
    adapter_model.safetensors  the adapters alone (quality_lora.io format, a few MB)
    adapter_config.json
    model_config.json          architecture, variant, rank, scale (to rebuild the model)

so the adapters can be shared without the ~860 MB pickle. ``--to-petalface`` goes the other way
(a converted folder -> a ``model.pt`` the original evaluation scripts read).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

from quality_lora._atomic import atomic_write, atomic_write_text
from quality_lora.models.checkpoint import DOWN, UP, export_petalface
from quality_lora.models.factory import VARIANTS, petalface_swin
from quality_lora.models.pretrained import finish, load_petalface
from quality_lora.models.swin import PetalFaceSwin

BASE_NAME = "base_model.safetensors"
CONFIG_NAME = "model_config.json"
FORMAT_VERSION = 1


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone weights without adapters, keyed as an original pretrained checkpoint."""
    return {k: v.contiguous() for k, v in export_petalface(model).items() if f".{DOWN}" not in k and f".{UP}" not in k}


def save_converted(model: PetalFaceSwin, directory: str | os.PathLike) -> Path:
    """Write ``model`` as base weights + adapter files + ``model_config.json``. Returns the folder."""
    from safetensors.torch import save_file

    from quality_lora.io import save_adapters

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    adapter = dict(getattr(model, "adapter_config", {"variant": "pretrained"}))
    config = dict(format_version=FORMAT_VERSION, architecture="petalface_swin",
                  size=getattr(model, "size", "custom"), arch=model.config, **adapter)
    base = base_state_dict(model)
    atomic_write(out / BASE_NAME, lambda p: save_file(base, p, metadata={"format": "pt", "library": "quality-lora"}))
    if VARIANTS[config["variant"]]:
        save_adapters(model, out, extra_config={"base_model": "petalface_swin", "variant": config["variant"]})
    atomic_write_text(out / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return out


def load_converted(directory: str | os.PathLike, fused_attn: bool = True) -> PetalFaceSwin:
    """Rebuild an eval-mode, PETALface-compatible model from a folder of :func:`save_converted`."""
    from safetensors.torch import load_file

    folder = Path(directory)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a converted PETALface folder: {CONFIG_NAME} is missing")
    try:
        config = json.loads(path.read_text())
        arch, variant = dict(config["arch"]), config["variant"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a valid model config ({err})") from err
    if variant not in VARIANTS:
        raise ValueError(f"{path}: unknown variant {variant!r}")
    with torch.device("meta"):
        model = petalface_swin("pretrained", size="base", **arch)
    base = load_file(str(folder / BASE_NAME))
    from quality_lora.models.checkpoint import compare_keys

    compare_keys(base, model.state_dict(), where=str(folder / BASE_NAME), what="the model in model_config.json")
    model.load_state_dict(base, strict=True, assign=True)
    model.size = config.get("size", "custom")
    if VARIANTS[variant]:
        from quality_lora.inject import inject_adapters
        from quality_lora.io import load_adapters

        inject_adapters(model, VARIANTS[variant], r=config["r"], scale=config["scale"], dropout=config["dropout"])
        load_adapters(model, folder)
    model.variant = variant
    model.adapter_config = {k: config[k] for k in ("variant", "r", "scale", "dropout") if k in config}
    return finish(model, fused_attn)


def save_petalface(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model`` as an original-format ``model.pt`` (a plain state dict, ``torch.save``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = export_petalface(model)
    atomic_write(path, lambda p: torch.save(sd, p))
    return path


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="quality-lora convert",
        description="Convert an original PETALface model.pt to base weights + adapter files "
                    "(or, with --to-petalface, a converted folder back to model.pt).")
    parser.add_argument("source", help="model.pt / .safetensors, or a converted folder with --to-petalface")
    parser.add_argument("output", help="output folder (or model.pt path with --to-petalface)")
    parser.add_argument("--to-petalface", action="store_true", help="write the original model.pt format")
    parser.add_argument("--scale", type=float, default=1.0, help="adapter output scale (original: 1)")
    args = parser.parse_args(argv)
    try:
        if args.to_petalface:
            path = save_petalface(load_converted(args.source), args.output)
            print(f"wrote {path} ({_mb(path.stat().st_size)})")
            return 0
        model = load_petalface(args.source, scale=args.scale)
        out = save_converted(model, args.output)
    except (OSError, ValueError, TypeError) as err:
        print(f"quality-lora convert: {err}", file=sys.stderr)
        return 1
    source = Path(args.source).stat().st_size
    base = (out / BASE_NAME).stat().st_size
    print(f"{args.source}: PETALface Swin size {model.size!r}, variant {model.variant!r}")
    print(f"wrote {out / BASE_NAME} ({_mb(base)}) and {out / CONFIG_NAME}")
    adapters = out / "adapter_model.safetensors"
    if adapters.is_file():
        size = adapters.stat().st_size
        print(f"adapters: {adapters} ({_mb(size)}) = {size / source:.2%} of {args.source} ({_mb(source)}); "
              f"{source / size:.0f}x smaller to share")
    return 0


if __name__ == "__main__":
    sys.exit(main())
