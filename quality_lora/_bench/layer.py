"""Layer benchmark at PETALface's qkv shapes: base alone, literal formula, fused gated layer, peft LoRA.

Goals (2-core CPU): forward+backward ≤ 1.08× the frozen base alone and ≤ 0.65× the literal
two-branch formula; forward ≤ 1.15× the base alone.
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from quality_lora._bench.timing import interleaved_medians
from quality_lora.layers import QualityGatedLoRA

SHAPES = {"petalface-qkv": (256, 25, 384, 1152), "vit-qkv": (64, 64, 768, 2304)}


class LiteralTwoBranch(nn.Module):
    """The original's computation: four Linear calls on (1 − α)·x and α·x."""

    def __init__(self, base: nn.Linear, r: int) -> None:
        super().__init__()
        self.base = base
        self.down1, self.up1 = nn.Linear(base.in_features, r, bias=False), nn.Linear(r, base.out_features, bias=False)
        self.down2, self.up2 = nn.Linear(base.in_features, r, bias=False), nn.Linear(r, base.out_features, bias=False)

    def forward(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        a = alpha.view(-1, *([1] * (x.dim() - 1)))
        return self.base(x) + self.up1(self.down1((1 - a) * x)) + self.up2(self.down2(a * x))


def _peft_lora(base: nn.Linear, r: int) -> nn.Module | None:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        return None
    holder = nn.Sequential()
    holder.add_module("qkv", copy.deepcopy(base))
    return get_peft_model(holder, LoraConfig(r=r, lora_alpha=r, target_modules=["qkv"])).base_model.model.qkv


def bench_shape(rows: int, tokens: int, dim_in: int, dim_out: int, r: int, rounds: int) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    base = nn.Linear(dim_in, dim_out).requires_grad_(False)
    gated = QualityGatedLoRA(copy.deepcopy(base), r=r)
    with torch.no_grad():
        gated.lora_B.normal_()
    literal = LiteralTwoBranch(copy.deepcopy(base), r)
    literal.base.requires_grad_(False)
    peft_layer = _peft_lora(base, r)
    x = torch.randn(rows, tokens, dim_in, requires_grad=True)
    alpha = torch.rand(rows)
    grad = torch.randn(rows, tokens, dim_out)
    candidates: dict[str, nn.Module] = {"base": base, "literal": literal, "gated": gated}
    calls = {
        "base": lambda: base(x),
        "literal": lambda: literal(x, alpha),
        "gated": lambda: gated(x, alpha),
    }
    if peft_layer is not None:
        candidates["peft-lora"] = peft_layer
        calls["peft-lora"] = lambda: peft_layer(x)

    def fwd(call):
        def run() -> None:
            with torch.no_grad():
                call()
        return run

    def fwd_bwd(call):
        def run() -> None:
            x.grad = None
            call().backward(grad)
        return run

    forward = interleaved_medians({k: fwd(c) for k, c in calls.items()}, rounds=rounds)
    both = interleaved_medians({k: fwd_bwd(c) for k, c in calls.items()}, rounds=rounds)
    return {"forward": forward, "forward+backward": both}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quality-lora bench layer", description=__doc__)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--shape", choices=sorted(SHAPES), action="append", help="default: all")
    parser.add_argument("--rows-divisor", type=int, default=1, help="fewer rows, for a smoke test")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, r={args.r}; median times, ratios vs base")
    for name in args.shape or list(SHAPES):
        rows, tokens, dim_in, dim_out = SHAPES[name]
        rows = max(1, rows // args.rows_divisor)
        results = bench_shape(rows, tokens, dim_in, dim_out, args.r, args.rounds)
        print(f"\n{name}: x {rows}x{tokens}x{dim_in} -> {dim_out}")
        for mode, times in results.items():
            ref = times["base"]
            cells = "  ".join(f"{k} {t * 1e3:7.2f} ms ({t / ref:.3f}x)" for k, t in times.items())
            print(f"  {mode:17s} {cells}")
            print(f"  {'':17s} gated / literal = {times['gated'] / times['literal']:.3f}")
    return 0
