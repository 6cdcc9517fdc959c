"""Adapter files: ``adapter_config.json`` + ``adapter_model.safetensors``, locally and on the Hub.

Only adapter tensors are written (a few MB for a 215M-parameter Swin). Tensors are stored as
``<layer name>.lora_A`` / ``<layer name>.lora_B`` in the layer's dtype, so a round trip is
bit-exact. Nothing is ever executed from a file: safetensors and JSON only.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quality_lora import __version__
from quality_lora._atomic import atomic_write, atomic_write_text
from quality_lora.gate import is_petalface_compatible, set_petalface_compatible
from quality_lora.inject import adapter_layers, inject_adapters

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "FORMAT_VERSION",
    "save_adapters",
    "load_adapters",
    "read_adapter_config",
    "push_adapters",
    "adapter_state_dict",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1


def _describe(obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj
    for method in ("to_dict", "describe"):
        if hasattr(obj, method):
            return getattr(obj, method)()
    raise TypeError(f"cannot describe {type(obj).__name__} in adapter_config.json (needs to_dict() or describe())")


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<layer>.lora_A": (branches·r, in), "<layer>.lora_B": (out, branches·r)}`` on CPU."""
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in adapter_layers(model).items():
        tensors[f"{name}.lora_A"] = layer.lora_A.detach().cpu().contiguous()
        tensors[f"{name}.lora_B"] = layer.lora_B.detach().cpu().contiguous()
    return tensors


def _config(model: nn.Module, alpha_map: Any, scorer: Any, extra: dict[str, Any] | None) -> dict[str, Any]:
    layers = adapter_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no adapters to save: call inject_adapters(model, ...) first")
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        # Lets peft's PeftModel.from_pretrained read the folder too (after `import quality_lora.peft`).
        "peft_type": "QUALITY_LORA",
        "library": "quality-lora",
        "library_version": __version__,
        "base_model_class": type(model).__name__,
        "petalface_compatible": is_petalface_compatible(model),
        "layers": {
            name: {
                "kind": layer.kind,
                "r": layer.r,
                "scale": layer.scale,
                "dropout": layer.dropout_p,
                "in_features": layer.in_features,
                "out_features": layer.out_features,
            }
            for name, layer in layers.items()
        },
        "alpha_map": _describe(alpha_map),
        "scorer": _describe(scorer),
    }
    if extra:
        config.update(extra)
    return config


def save_adapters(
    model: nn.Module,
    directory: str | os.PathLike[str],
    alpha_map: Any = None,
    scorer: Any = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write ``directory/adapter_config.json`` and ``directory/adapter_model.safetensors``.

    ``alpha_map`` and ``scorer`` (objects with ``to_dict()``/``describe()``) are recorded in the
    config so a loader can rebuild the same gate. Each file is written to a temporary name and
    renamed, so an interrupted save never leaves a half-written file in place. Returns the path.
    """
    from safetensors.torch import save_file

    out = Path(directory)
    config = _config(model, alpha_map, scorer, extra_config)
    tensors = adapter_state_dict(model)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata={"format": "pt", "library": "quality-lora"}))
    atomic_write_text(out / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def _resolve(source: str | os.PathLike[str], revision: str | None) -> Path:
    """A local folder, or a Hub repo id fetched (or found in the cache) through huggingface_hub."""
    path = Path(source)
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{path} is a file; load_adapters expects the folder holding {CONFIG_NAME}")
    repo_id = str(source)
    if not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", repo_id):
        raise FileNotFoundError(f"{repo_id!r} is neither a local folder nor a Hub repo id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, "README.md"]))
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"adapters {repo_id!r} (revision {revision or 'main'}) are not in the local Hugging Face cache and the Hub "
            "cannot be reached (HF_HUB_OFFLINE is set or there is no network). Download them once with "
            f"`huggingface-cli download {repo_id}` on a machine with network, copy the cache (HF_HOME), or pass "
            "a local folder"
        ) from err


def read_adapter_config(source: str | os.PathLike[str], revision: str | None = None) -> dict[str, Any]:
    """Parse and check ``adapter_config.json`` of a folder or Hub repo."""
    folder = _resolve(source, revision)
    return _read_config(folder / CONFIG_NAME)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not an adapter folder written by save_adapters")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(config, dict) or "layers" not in config or not isinstance(config["layers"], dict):
        raise ValueError(f"{path}: no 'layers' table; not a quality-lora adapter config")
    version = config.get("format_version")
    if not isinstance(version, int):
        raise ValueError(f"{path}: 'format_version' must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: adapter format version {version} was written by a newer quality-lora "
            f"({config.get('library_version', '?')}); this one ({__version__}) reads up to version {FORMAT_VERSION}. "
            "Upgrade quality-lora"
        )
    for name, spec in config["layers"].items():
        missing = {"kind", "r", "scale", "dropout"} - set(spec)
        if missing:
            raise ValueError(f"{path}: layer {name!r} lacks {sorted(missing)}")
    return config


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupted?): {err}") from err


def _inject_missing(model: nn.Module, layers: dict[str, dict[str, Any]]) -> None:
    present = adapter_layers(model)
    modules = dict(model.named_modules())
    groups: dict[tuple[int, float, float], dict[str, str]] = {}
    for name, spec in layers.items():
        if name in present:
            layer = present[name]
            if layer.kind != spec["kind"] or layer.r != spec["r"]:
                raise ValueError(
                    f"layer {name!r} already has a {layer.kind} adapter of rank {layer.r}; the file holds "
                    f"{spec['kind']} rank {spec['r']}"
                )
            continue
        if name not in modules:
            raise ValueError(f"the model has no layer {name!r} that the adapter file targets")
        key = (int(spec["r"]), float(spec["scale"]), float(spec["dropout"]))
        groups.setdefault(key, {})["re:" + re.escape(name)] = spec["kind"]
    for (r, scale, dropout), targets in groups.items():
        inject_adapters(model, targets, r=r, scale=scale, dropout=dropout)


def load_adapters(
    model: nn.Module,
    source: str | os.PathLike[str],
    revision: str | None = None,
    strict: bool = True,
) -> nn.Module:
    """Load adapters saved by :func:`save_adapters` into ``model``, injecting them where needed.

    ``source`` is a local folder or a Hub repo id (downloaded or read from the cache through
    huggingface_hub; ``revision`` picks a branch, tag or commit). Every tensor is checked for
    its key and shape before anything is copied, so a mismatch leaves the model unchanged
    apart from injected (still zero-initialised) adapters. With ``strict`` (default) the model
    must not hold adapters the file lacks. Returns ``model``.
    """
    folder = _resolve(source, revision)
    config = _read_config(folder / CONFIG_NAME)
    tensors = _load_tensors(folder / WEIGHTS_NAME)
    layers: dict[str, dict[str, Any]] = config["layers"]
    expected = {f"{n}.lora_{p}" for n in layers for p in "AB"}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(f"{folder / WEIGHTS_NAME}: keys do not match {CONFIG_NAME}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    modules = dict(model.named_modules())
    for name, spec in layers.items():
        module = modules.get(name)
        base = getattr(module, "base", module)
        if base is None:
            raise ValueError(f"the model has no layer {name!r} that the adapter file targets")
        if not isinstance(base, nn.Linear):
            raise ValueError(f"layer {name!r} is a {type(base).__name__}, the adapter file expects nn.Linear")
        branches = 2 if spec["kind"] == "gated" else 1
        want_a = (branches * spec["r"], base.in_features)
        want_b = (base.out_features, branches * spec["r"])
        got_a, got_b = tuple(tensors[f"{name}.lora_A"].shape), tuple(tensors[f"{name}.lora_B"].shape)
        if got_a != want_a or got_b != want_b:
            raise ValueError(
                f"layer {name!r}: the file's adapter shapes lora_A {got_a}, lora_B {got_b} do not fit the model's "
                f"layer ({base.in_features} -> {base.out_features}, expected {want_a}, {want_b})"
            )
    if strict:
        extra = sorted(set(adapter_layers(model)) - set(layers))
        if extra:
            raise ValueError(f"the model has adapters the file lacks: {extra[:8]} (pass strict=False to keep them)")
    _inject_missing(model, layers)
    present = adapter_layers(model)
    with torch.no_grad():
        for name in layers:
            present[name].lora_A.copy_(tensors[f"{name}.lora_A"])
            present[name].lora_B.copy_(tensors[f"{name}.lora_B"])
    if config.get("petalface_compatible"):
        set_petalface_compatible(model, True)
    return model


MODEL_CARD = """---
library_name: quality-lora
tags:
- quality-lora
- petalface
- face-recognition
- lora
---
# {repo_id}

Quality-gated LoRA adapters (PETALface) made with
[quality-lora](https://pypi.org/project/quality-lora/) {version}: {summary}.

```python
import quality_lora as ql
model = ...  # the base model these adapters were trained on ({base})
ql.load_adapters(model, "{repo_id}")
embedding = model(images, alpha=alpha)   # alpha in [0, 1] per sample: 1 = high quality
```

Alpha map: `{alpha_map}`. Scorer: `{scorer}`.

Method: Narayan et al., *PETALface: Parameter Efficient Transfer Learning for Low-resolution
Face Recognition*, WACV 2025.
"""


def push_adapters(
    model: nn.Module,
    repo_id: str,
    alpha_map: Any = None,
    scorer: Any = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload quality-lora adapters",
    revision: str | None = None,
) -> str:
    """Upload the adapters (config, safetensors, a generated model card) to a Hub repo.

    Creates the repo if needed. Returns the commit URL reported by huggingface_hub.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_adapters(model, tmp, alpha_map=alpha_map, scorer=scorer)
        config = json.loads((folder / CONFIG_NAME).read_text())
        kinds: dict[str, int] = {}
        for spec in config["layers"].values():
            kinds[spec["kind"]] = kinds.get(spec["kind"], 0) + 1
        summary = ", ".join(f"{n} {k} layers" for k, n in sorted(kinds.items()))
        card = MODEL_CARD.format(
            repo_id=repo_id, version=__version__, summary=summary, base=config["base_model_class"],
            alpha_map=json.dumps(config["alpha_map"]), scorer=json.dumps(config["scorer"]),
        )
        (folder / "README.md").write_text(card)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, revision=revision)
    return str(getattr(info, "commit_url", info))
