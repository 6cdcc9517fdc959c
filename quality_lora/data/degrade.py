"""Low-resolution degradation: down-sample, blur, noise, JPEG, resize back.

Used to augment training images and to make synthetic low-quality probes. Every random choice
comes from the generator passed in, so a seed gives the same images on every run.
"""
from __future__ import annotations

import functools
import io
import math
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

Range = Union[float, Sequence[float], None]
AnyGenerator = Union[torch.Generator, np.random.Generator, None]


def _as_range(v: Range, name: str, low: float, high: float | None = None) -> tuple[float, float] | None:
    if v is None:
        return None
    lo, hi = (float(v), float(v)) if isinstance(v, (int, float)) else tuple(map(float, v))
    if not (low <= lo <= hi) or (high is not None and hi > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be a number or a (low, high) range with values {bound}, "
                         f"got {v!r}")
    return lo, hi


def torch_generator(generator: AnyGenerator, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A ``torch.Generator`` from a torch or numpy generator (numpy: seeded from one draw)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, np.random.Generator):
        return torch.Generator(device=device).manual_seed(int(generator.integers(2**63 - 1)))
    raise TypeError(f"generator must be a torch.Generator or numpy.random.Generator, "
                    f"got {type(generator).__name__}")


def _uniform(n: int, rng: tuple[float, float], g: torch.Generator | None) -> torch.Tensor:
    dev = g.device if g is not None else "cpu"
    u = torch.rand(n, generator=g, device=dev).cpu()
    return rng[0] + (rng[1] - rng[0]) * u


@functools.lru_cache(maxsize=256)
def _resize_matrix(n_in: int, n_out: int, mode: str) -> torch.Tensor:
    """``(n_out, n_in)`` matrix doing one axis of ``F.interpolate`` (``mode``, no corners).

    Resizing is linear and separable, so two small matmuls reproduce ``F.interpolate``; on CPU
    they are ~10x faster than torch's bicubic kernel, which dominated degrade_batch's cost.
    """
    # Resize the identity along H only (W keeps its size, an exact copy): column j is then
    # the image of the j-th unit vector. (A width-1 input takes another code path in torch's
    # anti-aliased kernel and gives different weights, so the width must stay > 1.)
    eye = torch.eye(n_in, dtype=torch.float64)[None, None]
    aa = mode == "bilinear" and n_out < n_in
    m = F.interpolate(eye, size=(n_out, n_in), mode=mode, align_corners=False, antialias=aa)
    return m[0, 0].contiguous().float()


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``F.interpolate(x, size, mode)`` (anti-aliased when shrinking with bilinear) as matmuls."""
    mh = _resize_matrix(x.shape[-2], size[0], mode).to(x.device, x.dtype)
    mw = _resize_matrix(x.shape[-1], size[1], mode).to(x.device, x.dtype)
    return torch.matmul(torch.matmul(mh, x), mw.T)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of ``x`` ``(n, C, h, w)`` with its own ``sigma`` ``(n,)`` (separable)."""
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3.0 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    s = sigma.to(x.device, x.dtype).clamp_min(1e-3)[:, None]  # ~1e-3: a delta kernel
    k = torch.exp(-(t[None] ** 2) / (2 * s**2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*C, K)
    y = x.reshape(1, n * c, h, w)
    y = F.pad(y, (radius, radius, 0, 0), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)
    y = F.pad(y, (0, 0, radius, radius), mode="replicate")
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def _jpeg(x: torch.Tensor, quality: Sequence[int]) -> torch.Tensor:
    """JPEG round trip per image (PIL; tiny low-res images, so the loop is cheap)."""
    from PIL import Image

    u8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for img, q in zip(u8, quality, strict=True):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(q))
        buf.seek(0)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    y = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return y.to(x.device, x.dtype) / 255.0


def degrade_batch(images01: torch.Tensor, generator: AnyGenerator = None, min_size: int = 12,
                  max_size: int = 40, blur: Range = (0.0, 1.0), noise: Range = (0.0, 0.02),
                  jpeg: Range = (40, 95)) -> torch.Tensor:
    """Degrade a batch ``(B, 3, H, W)`` in ``[0, 1]`` to look low-resolution; same shape back.

    Per image: down-sample (anti-aliased) so the short side is a random size in
    ``[min_size, max_size]`` px, Gaussian blur with sigma drawn from ``blur`` (in low-res
    pixels), additive Gaussian noise with std drawn from ``noise`` (on the ``[0, 1]`` scale),
    a JPEG round trip at a quality drawn from ``jpeg``, then bicubic resize back to ``H×W``.
    ``None`` switches a step off; a number fixes it. Images sharing a size are processed
    together, so the cost is a handful of batched ops whatever ``B`` is (JPEG, done with PIL,
    is the one per-image step). Runs on the tensor's device; random numbers come only from
    ``generator`` (a ``torch.Generator`` or ``numpy.random.Generator``).
    """
    if images01.ndim != 4 or images01.shape[1] != 3:
        raise ValueError(f"degrade_batch: images01 must be (B, 3, H, W), got {tuple(images01.shape)}")
    if not images01.is_floating_point():
        raise TypeError(f"degrade_batch: images01 must be a float tensor in [0, 1], got {images01.dtype}")
    if not 1 <= int(min_size) <= int(max_size):
        raise ValueError(f"degrade_batch: need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    blur_r = _as_range(blur, "blur", 0.0)
    noise_r = _as_range(noise, "noise", 0.0)
    jpeg_r = _as_range(jpeg, "jpeg", 1, 100)
    b, _, h, w = images01.shape
    if b == 0:
        return images01.clone()
    g = torch_generator(generator, images01.device)
    dev = g.device if g is not None else "cpu"
    sizes = torch.randint(int(min_size), int(max_size) + 1, (b,), generator=g, device=dev).cpu()
    sizes = sizes.clamp_max(min(h, w))
    sigmas = _uniform(b, blur_r, g) if blur_r else None
    stds = _uniform(b, noise_r, g) if noise_r else None
    quality = _uniform(b, jpeg_r, g).round().int().tolist() if jpeg_r else None

    out = torch.empty_like(images01)
    for s in sorted(set(sizes.tolist())):
        sel = (sizes == s).nonzero().flatten()
        sel_dev = sel.to(images01.device)
        x = images01.index_select(0, sel_dev)
        lh, lw = (s, max(1, round(s * w / h))) if h <= w else (max(1, round(s * h / w)), s)
        x = _resize(x, (lh, lw), "bilinear")
        if sigmas is not None:
            x = _gaussian_blur(x, sigmas[sel])
        if stds is not None:
            z = torch.randn(x.shape, generator=g, device=dev).to(x.device, x.dtype)
            x = x + z * stds[sel].to(x.device, x.dtype)[:, None, None, None]
        x = x.clamp(0.0, 1.0)
        if quality is not None:
            x = _jpeg(x, [quality[i] for i in sel.tolist()])
        x = _resize(x, (h, w), "bicubic")
        out.index_copy_(0, sel_dev, x.clamp_(0.0, 1.0))
    return out


def degrade(image, generator: AnyGenerator = None, **kwargs):
    """Degrade one image: a ``(3, H, W)`` float tensor in ``[0, 1]`` or a ``PIL.Image``.

    Returns the same kind and size. ``kwargs`` are those of :func:`degrade_batch`.
    """
    if isinstance(image, torch.Tensor):
        if image.ndim != 3:
            raise ValueError(f"degrade: tensor must be (3, H, W), got {tuple(image.shape)}; "
                             "use degrade_batch for batches")
        return degrade_batch(image[None], generator, **kwargs)[0]
    from PIL import Image

    from .transforms import pil_to_tensor01

    if not isinstance(image, Image.Image):
        raise TypeError(f"degrade: expected a tensor or PIL.Image, got {type(image).__name__}")
    y = degrade_batch(pil_to_tensor01(image.convert("RGB"))[None], generator, **kwargs)[0]
    arr = (y * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr)


class Degradation:
    """Transform applying :func:`degrade_batch` with probability ``p`` (per call).

    Call on ``(3, H, W)`` or ``(B, 3, H, W)`` tensors in ``[0, 1]``; pass it to
    ``FaceTransform(degradation=...)`` to degrade training images before normalisation.
    Without ``generator`` the global torch RNG is used (``DataLoader`` seeds it per worker).
    """

    def __init__(self, min_size: int = 12, max_size: int = 40, blur: Range = (0.0, 1.0),
                 noise: Range = (0.0, 0.02), jpeg: Range = (40, 95), p: float = 1.0,
                 generator: AnyGenerator = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Degradation: p is a probability in [0, 1], got {p!r}")
        self.kwargs = dict(min_size=min_size, max_size=max_size, blur=blur, noise=noise, jpeg=jpeg)
        # Validate once here rather than on the first image.
        degrade_batch(torch.zeros(1, 3, 2, 2), torch.Generator().manual_seed(0), **self.kwargs)
        self.p = float(p)
        self.generator = torch_generator(generator)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        single = x.ndim == 3
        batch = x[None] if single else x
        if self.p < 1.0 and float(torch.rand((), generator=self.generator)) >= self.p:
            return x
        y = degrade_batch(batch, self.generator, **self.kwargs)
        return y[0] if single else y

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"Degradation({args}, p={self.p})"
