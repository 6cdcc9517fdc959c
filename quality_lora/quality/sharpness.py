"""A weight-free quality scorer: effective resolution and noise as one information measure."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from quality_lora.quality.base import check_images

# ITU-R BT.601 luma weights: detail and noise are judged on luminance, as JPEG and the eye do.
_LUMA = (0.299, 0.587, 0.114)
_NOISE_BLOCK = 8
_NOISE_QUANTILE = 0.1
# For white noise the 10 % quantile of the 8x8 block means of the second-difference energy is
# 0.755 sigma^2 (measured on 64-224 px images, spread < 3 %); dividing by it makes the
# estimate unbiased, so ``noise_sigma`` reads in the images' own units.
_NOISE_QUANTILE_BIAS = 0.755


class SharpnessScorer:
    """Effective-resolution and noise score, in bits per pixel; higher is better.

    The score is the Shannon capacity of the image seen as a Gaussian channel,
    ``mean_f ½·log2(1 + S(f) / N)``, averaged over the image's 2-D frequencies ``f``:

    1. Luminance, mean removed, times a Hann window (so the image border does not leak a cross
       of false high-frequency power), then the power spectrum, averaged in ``bands``
       log-spaced radial bands from 2 cycles per image to the spectrum's corner.
    2. Noise variance ``σ²``: second differences along x and y (zero on flat areas and linear
       ramps, ``6σ²`` per direction on white noise) averaged in 8x8 blocks; the 10 % quantile
       of the blocks is taken, because faces and most photos have some smooth blocks where
       that energy is noise alone, while edges and texture only raise the upper quantiles.
    3. Signal power per band ``S = max(P − σ², 0)`` and noise ``N = σ² + noise_floor``.

    Why this form: a lower resolution removes the power above its cut-off frequency, so those
    bands add nothing (16 < 24 < 32 < 64 px < native, strictly); noise raises the high bands'
    power, which fools a plain high-frequency-energy measure, but here it raises ``N`` in every
    band and so lowers the score; JPEG removes fine detail and scores lower (its block edges add
    a little high-frequency power back, so mild JPEG, quality ≥ 75, may score within a few
    percent of the original either way). ``noise_floor`` (default 3e-5, σ ≈ 1.4 grey levels)
    is the noise assumed of a clean image; it bounds the bits a clean band can add.
    Low contrast also scores lower (less signal at the same noise), as it should for recognition.

    Cost: two small convolutions and one FFT per image, vectorised over the batch on the images'
    device: about 3 ms for 8 × 120 px images on one CPU core, under 1 % of a forward of the
    214M-parameter PETALface Swin on the same batch. Inputs are ``(B, 3, H, W)`` or
    ``(B, 1, H, W)`` floats, nominally in [0, 1]; any range works (the score of a ×2 scaled
    image is that of more contrast), which keeps PETALface's legacy [-1, 1] scoring usable.
    """

    name = "sharpness"
    higher_is_better = True

    def __init__(self, noise_floor: float = 3e-5, bands: int = 24) -> None:
        if not (isinstance(noise_floor, (int, float)) and math.isfinite(noise_floor) and noise_floor > 0):
            raise ValueError(f"SharpnessScorer: noise_floor must be a finite float > 0, got {noise_floor!r}")
        if not (isinstance(bands, int) and 2 <= bands <= 256):
            raise ValueError(f"SharpnessScorer: bands must be an int in [2, 256], got {bands!r}")
        self.noise_floor = float(noise_floor)
        self.bands = bands
        self._bins: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def describe(self) -> dict[str, Any]:
        """JSON-able ``{"name": "sharpness", "params": {...}}`` for adapter configs."""
        return {"name": self.name, "params": {"noise_floor": self.noise_floor, "bands": self.bands}}

    def __repr__(self) -> str:
        return f"SharpnessScorer(noise_floor={self.noise_floor}, bands={self.bands})"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Scores, shape ``(B,)`` float32 on the images' device, for images ``(B, C, H, W)``."""
        luma = self._luma(images)
        noise_var = self._noise_variance(luma)
        power = self._band_power(luma)  # (B, bands)
        signal = (power - noise_var[:, None]).clamp(min=0)
        snr = signal / (noise_var[:, None] + self.noise_floor)
        _, counts, total = self._bin_index(luma.shape[-2], luma.shape[-1], luma.device)
        return 0.5 * (torch.log2(1 + snr) * counts).sum(1) / total

    def noise_sigma(self, images: torch.Tensor) -> torch.Tensor:
        """The noise standard deviation the score assumed, ``(B,)``, in luminance units."""
        return self._noise_variance(self._luma(images)).sqrt()

    def _luma(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, "SharpnessScorer")
        if min(images.shape[-2:]) < 16:
            raise ValueError(f"SharpnessScorer: images must be at least 16x16 px, got {tuple(images.shape[-2:])}")
        x = images.float()  # FFTs are not implemented for half precision on every device
        if x.shape[1] == 1:
            return x
        weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * weights).sum(1, keepdim=True)

    def _noise_variance(self, luma: torch.Tensor) -> torch.Tensor:
        kernel = torch.tensor([1.0, -2.0, 1.0], dtype=luma.dtype, device=luma.device)
        dx = F.conv2d(luma, kernel.view(1, 1, 1, 3))[..., 1:-1, :]  # both cropped to (H-2, W-2)
        dy = F.conv2d(luma, kernel.view(1, 1, 3, 1))[..., :, 1:-1]
        energy = (dx * dx + dy * dy) / 12  # = sigma^2 on white noise
        blocks = F.avg_pool2d(energy, _NOISE_BLOCK, stride=_NOISE_BLOCK // 2).flatten(1)
        k = max(1, round(_NOISE_QUANTILE * blocks.shape[1]))
        return blocks.kthvalue(k, dim=1).values / _NOISE_QUANTILE_BIAS

    def _band_power(self, luma: torch.Tensor) -> torch.Tensor:
        h, w = luma.shape[-2:]
        window = torch.outer(
            torch.hann_window(h, periodic=False, dtype=luma.dtype, device=luma.device),
            torch.hann_window(w, periodic=False, dtype=luma.dtype, device=luma.device),
        )
        centred = (luma[:, 0] - luma.mean((1, 2, 3)).view(-1, 1, 1)) * window
        # Normalised by the window's energy so white noise of variance s^2 has power s^2 per bin.
        power = torch.fft.fft2(centred).abs().square().flatten(1) / window.square().sum()
        index, counts, _ = self._bin_index(h, w, luma.device)
        keep = index >= 0
        sums = torch.zeros(luma.shape[0], self.bands, dtype=power.dtype, device=power.device)
        sums.index_add_(1, index[keep], power[:, keep])
        return sums / counts.clamp(min=1)

    def _bin_index(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Band of each FFT bin (-1: below 2 cycles per image, left out), bins per band, total."""
        key = (h, w, str(device))
        if key not in self._bins:
            fy = torch.fft.fftfreq(h, device=device).view(-1, 1)
            fx = torch.fft.fftfreq(w, device=device).view(1, -1)
            radius = (fx.square() + fy.square()).sqrt().flatten()
            f_min, f_max = 2.0 / min(h, w), math.sqrt(0.5) * (1 + 1e-6)
            edges = torch.logspace(math.log10(f_min), math.log10(f_max), self.bands + 1, device=device)
            index = torch.bucketize(radius, edges, right=True) - 1
            index = torch.where((index >= 0) & (index < self.bands), index, torch.full_like(index, -1))
            counts = torch.bincount(index[index >= 0], minlength=self.bands).float()
            self._bins[key] = (index, counts, counts.sum())
        return self._bins[key]
