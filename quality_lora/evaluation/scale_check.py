"""Time and peak memory of TinyFace-size identification on random features.

``python -m quality_lora.evaluation.scale_check [--probes 3728 --gallery 157871 --dim 512]``

Peak memory is the process's peak resident set (Linux ``VmHWM``), reset after the features are
made, so the figure is features + everything :func:`identification` allocates on top.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m quality_lora.evaluation.scale_check", description=__doc__.split("\n")[0])
    p.add_argument("--probes", type=int, default=3728)
    p.add_argument("--gallery", type=int, default=157871)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--probe-block", type=int, default=1024)
    p.add_argument("--gallery-block", type=int, default=32768)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = p.parse_args(argv)

    import torch

    from quality_lora.evaluation import identification

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    g_labels = np.full(args.gallery, -100)
    g_labels[: args.probes // 2] = np.arange(args.probes // 2)     # half the probes have a mate
    probes = gallery[: args.probes] + rng.standard_normal((args.probes, args.dim), dtype=np.float32)
    p_labels = np.arange(args.probes) % (args.probes // 2)
    feats_bytes = gallery.nbytes + probes.nbytes
    base = _vm("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")   # reset the peak (VmHWM) to the current RSS
    t0 = time.perf_counter()
    res = identification(probes, p_labels, gallery, g_labels, probe_block=args.probe_block,
                         gallery_block=args.gallery_block)
    dt = time.perf_counter() - t0
    peak = _vm("VmHWM")
    print(f"probes {args.probes} x gallery {args.gallery} x dim {args.dim}, threads {torch.get_num_threads()}, "
          f"blocks {args.probe_block}x{args.gallery_block}")
    print(f"time {dt:.1f} s; features {feats_bytes / 2**20:.0f} MiB; RSS before {base / 2**20:.0f} MiB; "
          f"peak RSS {peak / 2**20:.0f} MiB (+{(peak - base) / 2**20:.0f} MiB during identification); "
          f"a full score matrix would be {args.probes * args.gallery * 4 / 2**30:.1f} GiB")
    print(f"rank_1 {res['rank_1']:.4f} over {res['n_probes']} matched probes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
