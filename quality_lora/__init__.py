"""quality-lora: quality-gated low-rank adaptation (PETALface) for any PyTorch backbone."""
from __future__ import annotations

__version__ = "0.1.0"
