"""Training checkpoints: written atomically, read with ``weights_only=True``, RNG state included."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quality_lora._atomic import atomic_write

FORMAT = 1


def checkpoint_path(output: str | Path, rank: int = 0, world_size: int = 1) -> Path:
    """``output/checkpoint.pt``, or ``output/checkpoint_rank<r>.pt`` per rank when distributed
    (each rank holds its own shard of the class centres)."""
    name = "checkpoint.pt" if world_size == 1 else f"checkpoint_rank{rank}.pt"
    return Path(output) / name


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``.

    A crash mid-write leaves the previous file at ``path`` untouched.
    """
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, write, fsync=True)


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors / plain Python values (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by the trainer; clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign files
        raise ValueError(f"{path}: not a readable training checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a quality-lora training checkpoint (format {FORMAT})")
    return ckpt
