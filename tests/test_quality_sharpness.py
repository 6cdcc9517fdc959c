"""SharpnessScorer: resolution, JPEG and noise ordering on procedural natural-looking images."""
from __future__ import annotations

import functools
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from quality_lora.quality import SharpnessScorer, scorer_from_description


@functools.lru_cache(maxsize=32)
def shapes_image(seed: int, size: int = 112) -> torch.Tensor:
    """(3, size, size) in [0, 1]: gradient background, shaded shapes, a 1/f texture patch, thin lines, dots."""
    g = torch.Generator().manual_seed(seed)

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    angle = u(1) * 2 * math.pi
    t = (xx * torch.cos(angle) + yy * torch.sin(angle)).clamp(0, 1)
    img = u(3, 1, 1) * (1 - t) + u(3, 1, 1) * t
    f = torch.sqrt(torch.fft.fftfreq(size).view(-1, 1) ** 2 + torch.fft.fftfreq(size).view(1, -1) ** 2)
    f[0, 0] = 1
    spectrum = torch.randn(size, size, generator=g) + 1j * torch.randn(size, size, generator=g)
    texture = torch.fft.ifft2(spectrum / f).real
    texture = (texture - texture.mean()) / texture.std()
    for _ in range(8):
        cx, cy, rx, ry = u(4)
        rx, ry = 0.05 + 0.25 * rx, 0.05 + 0.25 * ry
        colour = u(3, 1, 1)
        if u(1) < 0.5:
            mask = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) < 1
        else:
            mask = ((xx - cx).abs() < rx) & ((yy - cy).abs() < ry)
        img = torch.where(mask, (colour * (0.85 + 0.15 * (yy - cy) / ry)).clamp(0, 1), img)
    cx, cy = 0.2 + 0.6 * u(2)
    mask = (((xx - cx) / 0.25) ** 2 + ((yy - cy) / 0.2) ** 2) < 1
    img = torch.where(mask, img + 0.12 * texture, img)
    for _ in range(4):
        a, b = u(2)
        theta = u(1) * math.pi
        dist = ((xx - a) * torch.sin(theta) - (yy - b) * torch.cos(theta)).abs()
        img = torch.where(dist < 0.006, u(3, 1, 1), img)
    for _ in range(12):
        a, b = u(2)
        img = torch.where(((xx - a) ** 2 + (yy - b) ** 2) < 0.012**2, u(3, 1, 1), img)
    return img.clamp(0, 1)


@functools.lru_cache(maxsize=32)
def dead_leaves(seed: int, size: int = 112, n: int = 400, supersample: int = 2) -> torch.Tensor:
    """(3, size, size): the dead-leaves model (occluding discs, radii ~ r^-3), anti-aliased; detail everywhere."""
    g = torch.Generator().manual_seed(seed)
    big = size * supersample
    yy, xx = torch.meshgrid(torch.linspace(0, 1, big), torch.linspace(0, 1, big), indexing="ij")
    img = torch.rand(3, 1, 1, generator=g).expand(3, big, big).clone()
    rmin, rmax = 0.01, 0.3
    radii = (rmin**-2 - torch.rand(n, generator=g) * (rmin**-2 - rmax**-2)) ** -0.5
    for r in radii:
        cx, cy = torch.rand(2, generator=g)
        colour = torch.rand(3, 1, 1, generator=g)
        # paint inside the disc's bounding box only: 20x faster than whole-image masks
        y0, y1 = max(0, int((cy - r) * big)), min(big, int((cy + r) * big) + 2)
        x0, x1 = max(0, int((cx - r) * big)), min(big, int((cx + r) * big) + 2)
        inside = ((xx[y0:y1, x0:x1] - cx) ** 2 + (yy[y0:y1, x0:x1] - cy) ** 2) < r**2
        img[:, y0:y1, x0:x1] = torch.where(inside, colour, img[:, y0:y1, x0:x1])
    return F.avg_pool2d(img[None], supersample)[0]


def down_up(img: torch.Tensor, px: int, mode: str = "bicubic") -> torch.Tensor:
    """Downsample (anti-aliased) to px x px and resize back to the original size."""
    size = img.shape[-1]
    small = F.interpolate(img[None], size=(px, px), mode=mode, antialias=True, align_corners=False)
    return F.interpolate(small, size=(size, size), mode=mode, align_corners=False)[0].clamp(0, 1)


def jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(out.copy()).permute(2, 0, 1)


def add_noise(img: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (img + sigma * torch.randn(img.shape, generator=g)).clamp(0, 1)


SEEDS = range(4)
SIZES = (16, 24, 32, 64)


def _ladder(img: torch.Tensor, mode: str) -> torch.Tensor:
    return torch.stack([down_up(img, px, mode) for px in SIZES] + [img])


@pytest.mark.parametrize("make", [shapes_image, dead_leaves])
@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_resolution_ladder_strictly_increasing(make, mode) -> None:
    scorer = SharpnessScorer()
    for seed in SEEDS:
        scores = scorer(_ladder(make(seed), mode))
        assert scores.shape == (5,) and scores.dtype == torch.float32
        # 16 < 24 < 32 < 64 px < native, each step at least 10 % up
        assert (scores[1:] > 1.1 * scores[:-1]).all(), (make.__name__, seed, scores.tolist())


@pytest.mark.parametrize("make", [shapes_image, dead_leaves])
def test_jpeg_and_noise_lower_the_score(make) -> None:
    scorer = SharpnessScorer()
    for seed in SEEDS:
        img = make(seed)
        jpegs = [jpeg(img, q) for q in (10, 30, 50)]
        noisy = [add_noise(img, s, seed) for s in (0.01, 0.02, 0.05, 0.1)]
        scores = scorer(torch.stack([img] + jpegs + noisy))
        clean, jpeg_scores, noise_scores = scores[0], scores[1:4], scores[4:]
        assert (jpeg_scores < clean).all(), (make.__name__, seed, scores.tolist())
        # noise raises high-frequency power but must lower the score, more noise lower still
        assert noise_scores[0] < clean and (noise_scores.diff() < 0).all(), (make.__name__, seed, scores.tolist())


def test_noise_after_downsampling_lowers_further() -> None:
    scorer = SharpnessScorer()
    img = down_up(shapes_image(7), 32)
    scores = scorer(torch.stack([img, add_noise(img, 0.02), add_noise(img, 0.05)]))
    assert scores[0] > scores[1] > scores[2]


def test_noise_sigma_estimate() -> None:
    scorer = SharpnessScorer()
    flat = torch.full((4, 1, 120, 120), 0.5)
    sigmas = torch.tensor([0.0, 0.01, 0.03, 0.1])
    noisy = flat + sigmas.view(-1, 1, 1, 1) * torch.randn(flat.shape, generator=torch.Generator().manual_seed(0))
    est = scorer.noise_sigma(noisy)
    assert est[0] == 0
    assert torch.allclose(est[1:], sigmas[1:], rtol=0.1), est.tolist()
    # a clean image with edges and texture has little noise in its smoothest blocks
    assert scorer.noise_sigma(shapes_image(0)[None]) < 0.003


def test_batch_independent_and_vectorised() -> None:
    scorer = SharpnessScorer()
    batch = torch.stack([shapes_image(s) for s in range(3)])
    one_by_one = torch.cat([scorer(batch[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(scorer(batch), one_by_one, rtol=1e-5, atol=1e-6)
    reordered = scorer(batch.flip(0)).flip(0)
    torch.testing.assert_close(reordered, one_by_one, rtol=1e-5, atol=1e-6)


def test_shapes_dtypes_and_grey() -> None:
    scorer = SharpnessScorer()
    img = shapes_image(1, size=120)
    rect = torch.stack([img[:, :, :96], img[:, :, 24:]])  # non-square, 120 x 96
    assert scorer(rect).shape == (2,)
    assert scorer(img[None].double()).dtype == torch.float32
    grey = (img * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    torch.testing.assert_close(scorer(grey[None]), scorer(img[None]), rtol=1e-5, atol=1e-6)
    constant = torch.full((2, 3, 64, 64), 0.3)
    assert torch.equal(scorer(constant), torch.zeros(2))


def test_describe_round_trip() -> None:
    scorer = SharpnessScorer(noise_floor=1e-4, bands=16)
    d = scorer.describe()
    assert d == {"name": "sharpness", "params": {"noise_floor": 1e-4, "bands": 16}}
    rebuilt = scorer_from_description(json.loads(json.dumps(d)))
    assert isinstance(rebuilt, SharpnessScorer) and rebuilt.describe() == d
    x = torch.stack([shapes_image(0), shapes_image(1)])
    assert torch.equal(rebuilt(x), scorer(x))


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(3, 32, 32), r"shape \(B, 3, H, W\)"),
        (torch.rand(1, 4, 32, 32), r"got \(1, 4, 32, 32\)"),
        (torch.randint(0, 255, (1, 3, 32, 32)), "float"),
        (torch.rand(1, 3, 12, 40), "at least 16x16"),
        (torch.rand(0, 3, 32, 32), "empty batch"),
    ],
)
def test_bad_images(bad, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        SharpnessScorer()(bad)


def test_bad_params_and_descriptions() -> None:
    with pytest.raises(ValueError, match="noise_floor"):
        SharpnessScorer(noise_floor=0)
    with pytest.raises(ValueError, match="bands"):
        SharpnessScorer(bands=1)
    with pytest.raises(ValueError, match="unknown scorer name 'nope'"):
        scorer_from_description({"name": "nope"})
    with pytest.raises(ValueError, match="bad params .*'sharpness'"):
        scorer_from_description({"name": "sharpness", "params": {"sigma": 1}})
    with pytest.raises(ValueError, match="'name' key"):
        scorer_from_description({"params": {}})
