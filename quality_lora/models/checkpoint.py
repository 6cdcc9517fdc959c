"""Read the original PETALface checkpoints, convert their keys to ours and back.

Original adapter layers (``backbones/lora_layers.py``) subclass ``nn.Linear`` and add
``trainable_lora_down/up`` (branch 1, weighted by 1 − α) and, for the two-branch layer,
``trainable_lora_down2/up2`` (branch 2, weighted by α). Ours wrap the base layer:

    <m>.weight / <m>.bias                      <->  <m>.base.weight / <m>.base.bias
    <m>.trainable_lora_down.weight  (r, in)    <->  <m>.lora_A rows [0, r)       (lq branch)
    <m>.trainable_lora_down2.weight (r, in)    <->  <m>.lora_A rows [r, 2r)      (hq branch)
    <m>.trainable_lora_up.weight    (out, r)   <->  <m>.lora_B columns [0, r)    (lq branch)
    <m>.trainable_lora_up2.weight   (out, r)   <->  <m>.lora_B columns [r, 2r)   (hq branch)

A single-branch layer maps ``down``/``up`` to ``lora_A``/``lora_B``. Every other key (including
the ``attn_mask`` and ``relative_position_index`` buffers) keeps its name, so the conversion is
a bijection and a round trip is bit-exact.
"""
from __future__ import annotations

import math
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from quality_lora.models.factory import SIZES, VARIANTS

DOWN, UP = "trainable_lora_down", "trainable_lora_up"
_ARCH_KEYS = ("img_size", "patch_size", "embed_dim", "depths", "num_heads", "window_size")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Load a state dict from ``.safetensors`` or a ``torch.save`` file, never running its code.

    ``.pt``/``.pth``/``.bin`` files are read with ``torch.load(weights_only=True)``, which refuses
    pickles that would import or call anything. A ``module.`` prefix (DDP) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused to load: the file is a pickle that needs code beyond plain tensors "
            f"(torch.load(weights_only=True) rejected it: {str(err).splitlines()[0]}). Only state "
            "dicts of tensors are read; re-save it as one (torch.save(model.state_dict(), ...))."
        ) from err
    except Exception as err:  # zip/pickle framing errors: not a torch file at all
        raise ValueError(f"{path}: not a PyTorch checkpoint ({type(err).__name__}: {err})") from err
    return as_state_dict(obj, where=str(path))


def as_state_dict(obj: Any, where: str = "checkpoint") -> dict[str, Tensor]:
    """Check that ``obj`` is a mapping of str -> Tensor (unwrapping ``{"state_dict": ...}``)."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise TypeError(f"{where}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise TypeError(f"{where}: entry {key!r} is a {type(value).__name__}, not a tensor: not a state dict")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def original_adapters(sd: Mapping[str, Tensor]) -> dict[str, str]:
    """Adapter layers of an original state dict: module name -> "gated" | "lora"."""
    found: dict[str, str] = {}
    for key in sd:
        if key.endswith(f".{DOWN}.weight"):
            name = key[: -len(f".{DOWN}.weight")]
            found[name] = "gated" if f"{name}.{DOWN}2.weight" in sd else "lora"
    return found


def detect_variant(adapters: Mapping[str, str]) -> str:
    """Name the variant whose adapter placement matches ``adapters`` (module name -> kind).

    Only the kinds per target are compared here; that *every* targeted layer has its adapter is
    checked when the keys are compared with the model built for the variant.
    """
    targets = {t for spec in VARIANTS.values() for t in spec}
    signature = set()
    for name, kind in adapters.items():
        target = next((t for t in targets if name == t or name.endswith("." + t)), None)
        if target is None:
            raise ValueError(f"adapter on {name!r} ({kind}) is not where any PETALface variant puts one")
        signature.add((target, kind))
    for variant, spec in VARIANTS.items():
        if signature == set(spec.items()):
            return variant
    found = ", ".join(f"{t}: {k}" for t, k in sorted(signature))
    raise ValueError(f"adapter layout {{{found}}} matches no PETALface variant "
                     f"({', '.join(f'{v}: {s}' for v, s in VARIANTS.items())})")


def detect_architecture(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """Architecture arguments of :class:`PetalFaceSwin` read off the keys and shapes."""
    for key in ("patch_embed.proj.weight", "feature_layer.2.weight", "layers.0.blocks.0.attn.relative_position_bias_table"):
        if key not in sd:
            raise ValueError(f"not a PETALface Swin checkpoint: key {key!r} is missing")
    embed, _, patch, _ = sd["patch_embed.proj.weight"].shape
    stages = sorted({int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))})
    depths = [len({int(m.group(1)) for k in sd if (m := re.match(rf"layers\.{i}\.blocks\.(\d+)\.", k))}) for i in stages]
    heads = [sd[f"layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1] for i in stages]
    window = (math.isqrt(sd["layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]) + 1) // 2
    flat = sd["feature_layer.0.weight"].shape[0] if "feature_layer.0.weight" in sd else sd["feature_layer.2.weight"].shape[1]
    final_width = embed * 2 ** (len(stages) - 1)
    grid = math.isqrt(flat // final_width) * 2 ** (len(stages) - 1)
    fc1 = sd["layers.0.blocks.0.mlp.fc1.weight"].shape[0] if "layers.0.blocks.0.mlp.fc1.weight" in sd else 4 * embed
    return dict(img_size=grid * patch, patch_size=patch, embed_dim=embed, depths=tuple(depths),
                num_heads=tuple(heads), window_size=window, mlp_ratio=fc1 / embed,
                qkv_bias="layers.0.blocks.0.attn.qkv.bias" in sd, ape="absolute_pos_embed" in sd,
                num_features=sd["feature_layer.2.weight"].shape[0])


def size_name(arch: Mapping[str, Any]) -> str | None:
    """The :data:`SIZES` key with this architecture, or None for a custom one."""
    for name, spec in SIZES.items():
        if all(tuple(arch[k]) == tuple(spec[k]) if isinstance(spec[k], tuple) else arch[k] == spec[k] for k in _ARCH_KEYS):
            return name
    return None


def detect_rank(sd: Mapping[str, Tensor]) -> int | None:
    """Adapter rank of an original state dict (None when it has no adapters)."""
    ranks = {v.shape[0] for k, v in sd.items() if k.endswith(f".{DOWN}.weight") or k.endswith(f".{DOWN}2.weight")}
    if len(ranks) > 1:
        raise ValueError(f"adapters of different ranks {sorted(ranks)} in one checkpoint are not supported")
    return ranks.pop() if ranks else None


def to_ours(sd: Mapping[str, Tensor], adapters: Mapping[str, str]) -> dict[str, Tensor]:
    """Original keys -> our keys (see the module docstring); other keys pass through."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        name, _, leaf = key.rpartition(".")
        if name in adapters and leaf in ("weight", "bias"):
            out[f"{name}.base.{leaf}"] = value
            continue
        owner = name.rpartition(".")[0]
        if owner in adapters and leaf == "weight":
            continue  # adapter factors, fused below
        out[key] = value
    for name, kind in adapters.items():
        downs = [f"{name}.{DOWN}.weight"] + ([f"{name}.{DOWN}2.weight"] if kind == "gated" else [])
        ups = [f"{name}.{UP}.weight"] + ([f"{name}.{UP}2.weight"] if kind == "gated" else [])
        missing = [k for k in downs + ups if k not in sd]
        if missing:
            raise ValueError(f"adapter layer {name!r} ({kind}) is incomplete: missing {missing}")
        out[f"{name}.lora_A"] = torch.cat([sd[k] for k in downs], dim=0)
        out[f"{name}.lora_B"] = torch.cat([sd[k] for k in ups], dim=1)
    return out


def export_petalface(model: nn.Module) -> OrderedDict[str, Tensor]:
    """Our model's state dict with the original PETALface key names (for its evaluation scripts).

    Gated layers give ``trainable_lora_down/up`` (lq, weight 1 − α) and ``..._down2/up2`` (hq,
    weight α); LoRA layers give ``trainable_lora_down/up``. Order as the original modules.
    """
    from quality_lora.inject import adapter_layers

    layers = adapter_layers(model)
    sd = model.state_dict()
    out: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in sd.items():
        name = next((n for n in (key.rsplit(".", 1)[0], key.rsplit(".", 2)[0]) if n in layers), None)
        if name is None:
            out[key] = value.detach()
            continue
        if f"{name}.weight" in out:
            continue
        layer = layers[name]
        out[f"{name}.weight"] = sd[f"{name}.base.weight"].detach()
        if f"{name}.base.bias" in sd:
            out[f"{name}.bias"] = sd[f"{name}.base.bias"].detach()
        a, b, r = sd[f"{name}.lora_A"].detach(), sd[f"{name}.lora_B"].detach(), layer.r
        for branch, suffix in enumerate([""] + (["2"] if layer.kind == "gated" else [])):
            # clone: independent storage, so safetensors and torch.save write only these rows.
            out[f"{name}.{DOWN}{suffix}.weight"] = a[branch * r:(branch + 1) * r].clone()
            out[f"{name}.{UP}{suffix}.weight"] = b[:, branch * r:(branch + 1) * r].clone()
    return out


def compare_keys(got: Mapping[str, Tensor], expected: Mapping[str, Tensor], where: str, what: str) -> None:
    """Raise ``ValueError`` listing missing keys, unexpected keys and shape mismatches."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in expected if k in got and got[k].shape != expected[k].shape]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" ... (+{len(items) - 10} more)" if len(items) > 10 else ""
            parts.append(f"{len(items)} {title}: " + "; ".join(items[:10]) + more)
    raise ValueError(f"{where} does not fit {what}:\n  " + "\n  ".join(parts))
