"""Quickstart: gated adapters on a small timm ViT, trained a few steps, saved, reloaded.

Run: python examples/quickstart.py   (CPU, offline, about half a minute)
"""
from __future__ import annotations

import tempfile

import timm
import torch
import torch.nn.functional as F

import quality_lora as ql
from quality_lora.quality import AlphaMap, SharpnessScorer


def main() -> int:
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, patch_size=8, num_classes=10)
    ql.inject_adapters(model, {"attn.qkv": "gated", "head": "lora"}, r=8)
    trainable, total = ql.count_parameters(model)
    print(f"trainable {trainable:,} / {total:,} parameters ({100 * trainable / total:.2f}%)")

    # Generated images: half sharp, half blurred by down- and up-sampling (the low-quality domain).
    images = F.interpolate(torch.rand(64, 3, 8, 8), size=64, mode="nearest")  # sharp-edged blocks
    images[32:] = F.interpolate(F.interpolate(images[32:], size=12, mode="area"), size=64, mode="bilinear")
    labels = torch.randint(0, 10, (64,))
    scorer = SharpnessScorer()
    scores = scorer(images)
    alpha_map = AlphaMap.fit(scores[:32], scores[32:], higher_is_better=scorer.higher_is_better)
    alpha = alpha_map(scores)
    print(f"alpha: sharp {alpha[:32].mean():.2f}, blurred {alpha[32:].mean():.2f}")

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(10):
        batch = torch.randperm(64)[:16]
        loss = F.cross_entropy(model(images[batch], alpha=alpha[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.3f}")

    model.eval()
    with torch.no_grad():
        expected = model(images, alpha=alpha)
    with tempfile.TemporaryDirectory() as folder:
        ql.save_adapters(model, folder, alpha_map=alpha_map, scorer=scorer)
        torch.manual_seed(0)
        fresh = timm.create_model("vit_tiny_patch16_224", img_size=64, patch_size=8, num_classes=10).eval()
        ql.load_adapters(fresh, folder)
        with torch.no_grad():
            reloaded = fresh(images, alpha=alpha)
    same = torch.equal(expected, reloaded)
    print(f"saved and reloaded adapters: outputs {'match exactly' if same else 'DIFFER'}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
