"""``QualityLoraConfig``: the PEFT config of quality-gated LoRA.

The config doubles as a quality-lora adapter config: besides PEFT's fields it carries the
``layers`` table and ``format_version`` that :func:`quality_lora.load_adapters` reads, so one
``adapter_config.json`` serves both loaders.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from peft.config import PeftConfig

from quality_lora import __version__

__all__ = ["LAYER_KINDS", "QualityLoraConfig", "matches_target"]

LAYER_KINDS = ("gated", "lora")
_SUPPORTED_FORMAT = 1


def matches_target(targets: str | set[str] | list[str] | None, key: str) -> bool:
    """PEFT's target syntax: a string is a regex matched against the whole dotted name, a
    collection holds exact names or dotted suffixes."""
    if not targets:
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    return key in targets or any(key.endswith("." + t) for t in targets)


@dataclass
class QualityLoraConfig(PeftConfig):
    """Quality-gated LoRA as a PEFT method (peft type ``QUALITY_LORA``).

    Args:
        r: rank of each branch.
        scale: multiplier of the adapter output (PETALface uses 1.0).
        dropout: dropout on each branch's output, in training only.
        target_modules: ``nn.Linear`` layers to adapt: a list of names / dotted suffixes, or a
            regex string matched against the full name (PEFT's syntax). May be left out when
            ``layers`` lists the layers (configs written by ``quality_lora.save_adapters``).
        exclude_modules: layers to leave alone (same syntax).
        lora_modules: targeted layers that get one plain LoRA branch (no alpha) instead of the
            two gated ones, e.g. PETALface's final feature projection (same syntax).
        init_weights: True: A ~ N(0, 1/r), B = 0 (a new adapter is a no-op); False: B is drawn
            like A, so a new adapter changes the output (for tests).
        modules_to_save: extra modules trained in full and saved with the adapter.
        petalface_compatible: accept the original PETALface's unclipped alpha.
        layers: ``{name: {"kind", "r", "scale", "dropout", "in_features", "out_features"}}``;
            filled in when the adapter is injected, and when present it fixes each layer's kind,
            rank, scale and dropout on load.
        format_version, library, library_version, base_model_class, alpha_map, scorer: the
            quality-lora adapter-file fields (see ``quality_lora.io``).
    """

    r: int = field(default=8, metadata={"help": "Rank of each of the two branches"})
    scale: float = field(default=1.0, metadata={"help": "Multiplier of the adapter output"})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on each branch output (training only)"})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Names/suffixes of the nn.Linear layers to adapt, or a regex"}
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Names/suffixes or regex of layers not to adapt"}
    )
    lora_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Targeted layers that get one plain LoRA branch instead of two gated ones"}
    )
    init_weights: bool = field(default=True, metadata={"help": "PETALface init (B = 0) if True"})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules besides the adapters to train in full and save"}
    )
    petalface_compatible: bool = field(
        default=False, metadata={"help": "Accept the original PETALface's unclipped alpha"}
    )
    layers: dict[str, dict[str, Any]] = field(
        default_factory=dict, metadata={"help": "Per-layer kind/r/scale/dropout, filled in on injection"}
    )
    format_version: int = field(default=_SUPPORTED_FORMAT, metadata={"help": "quality-lora adapter format version"})
    library: str = field(default="quality-lora", metadata={"help": "Library that wrote the adapter"})
    library_version: str | None = field(default=None, metadata={"help": "quality-lora version"})
    base_model_class: str | None = field(default=None, metadata={"help": "Class name of the adapted model"})
    alpha_map: dict[str, Any] | None = field(default=None, metadata={"help": "How scores map to alpha"})
    scorer: dict[str, Any] | None = field(default=None, metadata={"help": "The quality scorer used"})

    def __post_init__(self) -> None:
        from quality_lora.peft.model import quality_lora_peft_type

        super().__post_init__()
        self.peft_type = quality_lora_peft_type()
        if self.library_version is None:
            self.library_version = __version__
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise ValueError(f"QualityLoraConfig: r must be a positive int, got {self.r!r}")
        if not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise ValueError(f"QualityLoraConfig: scale must be a finite number, got {self.scale!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"QualityLoraConfig: dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.format_version, int) or self.format_version > _SUPPORTED_FORMAT:
            raise ValueError(
                f"QualityLoraConfig: format_version {self.format_version!r} is not supported by quality-lora "
                f"{__version__} (reads up to {_SUPPORTED_FORMAT}); upgrade quality-lora"
            )
        self._check_layers()
        if self.target_modules is None:
            if not self.layers:
                raise ValueError("QualityLoraConfig: give target_modules (names, suffixes or a regex) or layers")
            # A config written by quality_lora.save_adapters names every layer exactly.
            self.target_modules = sorted(self.layers)
        for name in ("target_modules", "exclude_modules", "lora_modules"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                setattr(self, name, set(value))
            if isinstance(value, str):
                try:
                    re.compile(value)
                except re.error as err:
                    raise ValueError(f"QualityLoraConfig: {name}={value!r} is not a valid regex: {err}") from err

    def _check_layers(self) -> None:
        if not isinstance(self.layers, dict):
            raise TypeError(f"QualityLoraConfig: layers must be a dict of layer specs, got {type(self.layers).__name__}")
        for name, spec in self.layers.items():
            missing = {"kind", "r", "scale", "dropout"} - set(spec)
            if missing:
                raise ValueError(f"QualityLoraConfig: layers[{name!r}] lacks {sorted(missing)}")
            if spec["kind"] not in LAYER_KINDS:
                raise ValueError(f"QualityLoraConfig: layers[{name!r}] has kind {spec['kind']!r}, expected one of {LAYER_KINDS}")
            if not isinstance(spec["r"], int) or spec["r"] < 1:
                raise ValueError(f"QualityLoraConfig: layers[{name!r}] has rank {spec['r']!r}, expected a positive int")

    def layer_spec(self, name: str) -> dict[str, Any]:
        """Kind, rank, scale and dropout for the layer ``name``: from ``layers`` if it is listed."""
        if name in self.layers:
            spec = self.layers[name]
            return {"kind": spec["kind"], "r": int(spec["r"]), "scale": float(spec["scale"]), "dropout": float(spec["dropout"])}
        kind = "lora" if matches_target(self.lora_modules, name) else "gated"
        return {"kind": kind, "r": self.r, "scale": float(self.scale), "dropout": float(self.dropout)}
