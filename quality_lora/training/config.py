"""Training configuration: one flat dataclass, read from YAML with strict key checking."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

METHODS = ("full", "lora", "petalface")
OPTIMIZERS = ("adamw", "sgd")
LOSSES = ("arcface", "cosface", "combined")
LOGGERS = ("csv", "tensorboard", "none")
ALPHA_MODES = ("clipped", "petalface")

# Keys that do not change what is trained: a checkpoint written under other values still resumes.
RUN_ONLY_KEYS = frozenset({
    "output", "save_every", "log", "log_every", "progress", "eval_every", "num_workers", "device",
})


@dataclass
class TrainConfig:
    """Everything a training run needs; YAML keys are these field names.

    Only ``Trainer`` fields matter for programmatic use (model/data/scorer fields are read by
    ``quality-lora train``, which builds the model, data and scorer from them).
    """

    # --- what is trained
    method: str = "petalface"           # full | lora | petalface
    # --- model (CLI): "petalface_swin" or "timm:<name>"
    model: str = "petalface_swin"
    model_size: str = "base"
    model_kwargs: dict = field(default_factory=dict)
    pretrained: str | None = None       # base weights: a model.pt / .safetensors state dict
    embedding_size: int = 512
    target_modules: Any = None          # inject_adapters targets; None: the model's preset
    rank: int = 8
    lora_scale: float = 1.0
    lora_dropout: float = 0.1
    # --- data (CLI)
    train_data: str | None = None       # .rec file / folder with train.rec, or an image folder
    image_size: int = 120
    num_classes: int | None = None      # None: from the dataset
    num_workers: int = 2
    # --- loss and head
    loss: str = "cosface"               # arcface | cosface | combined
    margins: list | None = None         # [m1, m2, m3]; None: the paper's margins of `loss`
    logit_scale: float = 64.0           # s
    easy_margin: bool = False
    margin_warmup_steps: int = 0        # ramp the margin in over this many optimizer steps
    margin_warmup_start: float = 0.0    # margin multiplier at step 0
    sample_rate: float = 1.0            # PartialFC negative-centre sampling rate
    # --- optimisation
    optimizer: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.1
    momentum: float = 0.9
    batch_size: int = 8                 # per process
    grad_accum: int = 1
    epochs: float = 50.0
    warmup_epochs: float = 2.0
    steps: int | None = None            # total optimizer steps; overrides epochs
    warmup_steps: int | None = None     # overrides warmup_epochs
    lr_power: float = 1.0               # polynomial decay power
    clip_grad_norm: float | None = 5.0
    amp: bool = False                   # bf16 autocast on CPU, fp16 + GradScaler on CUDA
    seed: int = 19
    freeze_norm_stats: bool = True      # lora/petalface: base BatchNorm layers stay in eval mode
    # --- quality gate (petalface)
    scorer: str | None = None           # sharpness | brisque | cnniqa | ...; None: data carry alpha
    scorer_kwargs: dict = field(default_factory=dict)
    threshold: float | None = None      # score mapped to alpha 0.5
    alpha_mode: str = "clipped"         # clipped | petalface (the original's unclipped map)
    cache_alpha: bool = True            # score each image once (static data)
    # --- output and logging
    output: str | None = None
    save_every: int = 0                 # optimizer steps between checkpoints; 0: only at the end
    log: str = "csv"
    log_every: int = 10
    progress: bool = True
    eval_every: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the key for values out of range."""
        def choose(key: str, options: tuple[str, ...]) -> None:
            if getattr(self, key) not in options:
                raise ValueError(f"config key {key!r}: {getattr(self, key)!r} is not one of {list(options)}")

        choose("method", METHODS)
        choose("optimizer", OPTIMIZERS)
        choose("loss", LOSSES)
        choose("log", LOGGERS)
        choose("alpha_mode", ALPHA_MODES)
        positive = ["lr", "batch_size", "grad_accum", "logit_scale", "rank", "image_size", "embedding_size"]
        for key in positive:
            if not getattr(self, key) > 0:
                raise ValueError(f"config key {key!r}: must be > 0, got {getattr(self, key)!r}")
        for key in ("steps", "num_classes"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ValueError(f"config key {key!r}: must be >= 1, got {getattr(self, key)!r}")
        for key in ("warmup_steps", "margin_warmup_steps", "save_every", "eval_every", "num_workers",
                    "weight_decay", "epochs", "warmup_epochs"):
            value = getattr(self, key)
            if value is not None and (value < 0 or not math.isfinite(value)):
                raise ValueError(f"config key {key!r}: must be >= 0, got {value!r}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"config key 'sample_rate': must be in (0, 1], got {self.sample_rate}")
        if not 0.0 <= self.margin_warmup_start <= 1.0:
            raise ValueError(f"config key 'margin_warmup_start': must be in [0, 1], got {self.margin_warmup_start}")
        if self.steps is None and self.epochs <= 0:
            raise ValueError("config: set 'steps' or a positive 'epochs'")

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a mapping; unknown keys and wrongly typed values raise ValueError naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown config key(s) {unknown}; known keys: {sorted(known)}")
        hints = get_type_hints(cls)
        values = {key: _coerce(key, value, hints[key], source) for key, value in data.items()}
        try:
            return cls(**values)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> "TrainConfig":
        """Read a YAML file; ``overrides`` are ``key=value`` strings (values parsed as YAML)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of keys to values at the top level")
        for item in overrides or []:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"override {item!r}: expected key=value")
            data[key.strip()] = yaml.safe_load(value)
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def differences(self, other: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Keys (other than run-only ones) whose value differs from ``other``: key -> (other, self)."""
        mine = self.to_dict()
        keys = (set(mine) | set(other)) - RUN_ONLY_KEYS
        return {k: (other.get(k), mine.get(k)) for k in sorted(keys) if other.get(k) != mine.get(k)}


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """Check ``value`` against the field type (ints accepted for floats); error names the key."""
    if hint is Any:
        return value
    options = get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"{source}: config key {key!r} may not be null")
    for option in options:
        if option is type(None):
            continue
        base = get_origin(option) or option
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base is bool and isinstance(value, bool):
            return value
        if base in (str, dict, list) and isinstance(value, base):
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ValueError(f"{source}: config key {key!r} expects {names}, got {value!r}")
