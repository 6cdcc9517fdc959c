"""FaceTransform and the low-resolution degradation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from quality_lora.data import Degradation, FaceTransform, degrade, degrade_batch


def _face(h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    """A sharp-edged test pattern in [0, 1]: degradation visibly removes its detail."""
    g = torch.Generator().manual_seed(seed)
    base = (torch.rand(3, h // 8, w // 8, generator=g) > 0.5).float()
    return base.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, :h, :w]


def _high_freq_energy(x: torch.Tensor) -> float:
    return float((x[..., 1:] - x[..., :-1]).pow(2).mean())  # blur spreads edges: squares drop


def test_face_transform_pil_resize_normalise():
    img = Image.fromarray(np.full((50, 40, 3), (255, 0, 128), np.uint8))
    x = FaceTransform(size=120)(img)
    assert x.shape == (3, 120, 120) and x.is_contiguous()
    torch.testing.assert_close(x.mean(dim=(1, 2)), torch.tensor([1.0, -1.0, 128 / 127.5 - 1]),
                               atol=1e-3, rtol=0)
    # Same result from a uint8 HWC array and from a [0, 1] tensor at the target size.
    arr = np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    t = FaceTransform(size=120, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    a = t(arr)
    b = t(torch.from_numpy(arr).permute(2, 0, 1).float() / 255)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    gray = Image.fromarray(np.full((8, 8), 51, np.uint8), mode="L")
    assert FaceTransform(size=8, mean=0, std=1)(gray).sub(0.2).abs().max() < 1e-6


def test_face_transform_flip_is_seeded():
    img = torch.arange(12.0).reshape(1, 3, 4).expand(3, 3, 4) / 12
    t = FaceTransform(size=None, mean=0, std=1, flip=1.0)
    torch.testing.assert_close(t(img), img.flip(-1))
    flips = [bool((FaceTransform(size=None, mean=0, std=1, flip=0.5,
                                 generator=torch.Generator().manual_seed(s))(img) != img).any())
             for s in range(20)]
    assert 0 < sum(flips) < 20
    again = [bool((FaceTransform(size=None, mean=0, std=1, flip=0.5,
                                 generator=torch.Generator().manual_seed(s))(img) != img).any())
             for s in range(20)]
    assert flips == again


def test_face_transform_errors():
    with pytest.raises(ValueError, match="size must be a positive"):
        FaceTransform(size=0)
    with pytest.raises(ValueError, match="std must be non-zero"):
        FaceTransform(std=0)
    with pytest.raises(ValueError, match="mean must be one number or three"):
        FaceTransform(mean=(0.1, 0.2))
    with pytest.raises(ValueError, match="interpolation must be one of"):
        FaceTransform(interpolation="cubic")
    with pytest.raises(ValueError, match=r"tensor input must be \(3, H, W\)"):
        FaceTransform()(torch.zeros(1, 3, 8, 8))


def test_degrade_batch_shape_range_and_determinism():
    x = torch.stack([_face(seed=i) for i in range(4)])
    kw = dict(min_size=12, max_size=16)  # few size groups: fewer ops, a fast test
    y1 = degrade_batch(x, torch.Generator().manual_seed(3), **kw)
    y2 = degrade_batch(x, torch.Generator().manual_seed(3), **kw)
    y3 = degrade_batch(x, torch.Generator().manual_seed(4), **kw)
    assert y1.shape == x.shape and y1.dtype == x.dtype
    assert 0.0 <= float(y1.min()) and float(y1.max()) <= 1.0
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert not torch.equal(y1, y3)
    assert _high_freq_energy(y1) < 0.6 * _high_freq_energy(x)
    # numpy generators work too, and are as reproducible.
    z1 = degrade_batch(x, np.random.default_rng(5), **kw)
    torch.testing.assert_close(z1, degrade_batch(x, np.random.default_rng(5), **kw), rtol=0, atol=0)


def test_degrade_size_controls_detail():
    x = _face(96, 96)[None].repeat(2, 1, 1, 1)
    kw = dict(blur=None, noise=None, jpeg=None)
    small = degrade_batch(x, torch.Generator().manual_seed(0), min_size=8, max_size=8, **kw)
    large = degrade_batch(x, torch.Generator().manual_seed(0), min_size=64, max_size=64, **kw)
    assert _high_freq_energy(small) < _high_freq_energy(large) < _high_freq_energy(x)
    # With every step off and the size equal to the input, the image comes back unchanged.
    same = degrade_batch(x, None, min_size=96, max_size=96, **kw)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)


def test_degrade_batch_matches_per_image_calls_per_size_group():
    # A batch whose images all draw one size gives what each image gets alone at that size.
    x = torch.stack([_face(seed=i) for i in range(3)])
    kw = dict(min_size=20, max_size=20, blur=0.8, noise=None, jpeg=None)
    batch = degrade_batch(x, None, **kw)
    for i in range(3):
        torch.testing.assert_close(batch[i], degrade(x[i], None, **kw), atol=1e-5, rtol=0)


def test_degrade_each_step_and_non_square():
    x = _face(48, 64)[None]
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    noisy = degrade_batch(x, g(), min_size=40, max_size=40, blur=None, noise=0.2, jpeg=None)
    clean = degrade_batch(x, g(), min_size=40, max_size=40, blur=None, noise=None, jpeg=None)
    assert noisy.shape == (1, 3, 48, 64) and float((noisy - clean).abs().mean()) > 0.03
    jpg = degrade_batch(x, g(), min_size=40, max_size=40, blur=None, noise=None, jpeg=5)
    assert float((jpg - clean).abs().mean()) > 0.01
    blurred = degrade_batch(x, g(), min_size=40, max_size=40, blur=2.0, noise=None, jpeg=None)
    assert _high_freq_energy(blurred) < _high_freq_energy(clean)


def test_degrade_pil_and_transform():
    img = Image.fromarray((_face().permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    out = degrade(img, torch.Generator().manual_seed(0))
    assert isinstance(out, Image.Image) and out.size == img.size
    d = Degradation(min_size=10, max_size=10, generator=torch.Generator().manual_seed(0))
    t = FaceTransform(size=64, degradation=d)
    y = t(img)
    assert y.shape == (3, 64, 64) and -1 <= float(y.min()) and float(y.max()) <= 1
    never = Degradation(p=0.0)
    x = _face()
    assert never(x) is x
    assert d(x[None].repeat(2, 1, 1, 1)).shape == (2, 3, 64, 64)


def test_degrade_errors():
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"images01 must be \(B, 3, H, W\)"):
        degrade_batch(x[0])
    with pytest.raises(TypeError, match="float tensor"):
        degrade_batch((x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="min_size <= max_size"):
        degrade_batch(x, min_size=20, max_size=10)
    with pytest.raises(ValueError, match="jpeg must be"):
        degrade_batch(x, jpeg=(50, 120))
    with pytest.raises(ValueError, match="noise must be"):
        Degradation(noise=(-0.1, 0.1))
    with pytest.raises(ValueError, match="p is a probability"):
        Degradation(p=2)
    with pytest.raises(TypeError, match="generator must be"):
        degrade_batch(x, generator=42)
    with pytest.raises(ValueError, match="use degrade_batch"):
        degrade(x)


def test_matmul_resize_matches_interpolate():
    from quality_lora.data.degrade import _resize

    x = torch.rand(2, 3, 50, 40)
    for size, mode in [((13, 11), "bilinear"), ((50, 40), "bicubic"), ((120, 96), "bicubic")]:
        ref = torch.nn.functional.interpolate(x, size=size, mode=mode, align_corners=False,
                                              antialias=mode == "bilinear")
        torch.testing.assert_close(_resize(x, size, mode), ref, atol=1e-5, rtol=0)
