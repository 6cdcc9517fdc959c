from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Two cores: more threads than that only makes the suite slower and the timings noisier.
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]


def _find_shared() -> Path:
    for candidate in (REPO / "shared", REPO.parent / "shared"):
        if (candidate / "fixtures").is_dir():
            return candidate
    raise FileNotFoundError(f"no shared/fixtures next to {REPO}")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ``shared/`` folder beside the checkout (fixtures from the original tools)."""
    return _find_shared()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
