"""``quality-lora bench layer|model|data|identification``: speed benchmarks that print ratios to a reference."""
from __future__ import annotations

import importlib
import sys

BENCHES = {"layer": "quality_lora._bench.layer", "model": "quality_lora._bench.model", "data": "quality_lora._bench.data",
           "identification": "quality_lora.evaluation.scale_check"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHES:
        print(f"usage: quality-lora bench {{{'|'.join(BENCHES)}}} [options]")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return int(importlib.import_module(BENCHES[argv[0]]).main(argv[1:]) or 0)
