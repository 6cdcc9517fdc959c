"""Image decoding and the face transform: RGB, resize, optional degradation, flip, normalise."""
from __future__ import annotations

import io
from typing import Callable, Sequence

import numpy as np
import torch

_INTERPOLATIONS = ("bicubic", "bilinear", "area", "nearest", "lanczos")


class CorruptImageError(ValueError):
    """Image bytes that do not decode; the message names the file and record key or path."""


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, where: str = "image"):
    """Decode JPEG/PNG (any format PIL reads) bytes to an RGB ``PIL.Image``.

    Raises :class:`CorruptImageError` naming ``where`` for bytes that are not an image or are
    truncated (PIL refuses truncated JPEGs by default; we never turn that off, so a cut file
    cannot pass as an image with a grey bottom half).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(data, np.ndarray):
        data = data.tobytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as e:
        raise CorruptImageError(f"{where}: cannot decode image ({len(data)} bytes): {e}") from e


def load_image(path, where: str | None = None):
    """Read and decode an image file to RGB ``PIL.Image`` (errors name the path)."""
    with open(path, "rb") as f:
        data = f.read()
    return decode_image(data, where or str(path))


def _pil_to_float(img) -> torch.Tensor:
    """RGB ``PIL.Image`` -> contiguous float tensor ``(3, H, W)`` in ``[0, 255]``."""
    arr = np.array(img, dtype=np.uint8)  # a writable copy: torch refuses read-only buffers
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    u8 = torch.from_numpy(arr).permute(2, 0, 1)
    # One pass converts and makes it contiguous (a plain .float() would keep HWC strides).
    return torch.empty(u8.shape, dtype=torch.float32).copy_(u8)


def pil_to_tensor01(img) -> torch.Tensor:
    """RGB ``PIL.Image`` -> float tensor ``(3, H, W)`` in ``[0, 1]``."""
    return _pil_to_float(img).div_(255.0)


def _pil_filter(name: str):
    from PIL import Image

    table = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "area": Image.BOX,
             "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}
    if name not in table:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {name!r}")
    return table[name]


def _as_triple(v: float | Sequence[float], name: str) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.float32).reshape(-1)
    if t.numel() == 1:
        t = t.repeat(3)
    if t.numel() != 3:
        raise ValueError(f"{name} must be one number or three (R, G, B), got {v!r}")
    return t.view(3, 1, 1)


class FaceTransform:
    """Decoded face image -> normalised tensor ``(3, size, size)``.

    Steps: RGB, resize to ``size`` (skipped when already that size), optional ``degradation``
    (a callable on a ``(3, H, W)`` tensor in ``[0, 1]``, e.g. :class:`Degradation`), random
    horizontal flip with probability ``flip``, then ``(x - mean) / std``. Defaults match the
    insightface/PETALface pipelines (mean = std = 0.5, so the output is in ``[-1, 1]``).

    Accepts a ``PIL.Image``, a uint8 ``(H, W, 3)`` array, or a float ``(3, H, W)`` tensor in
    ``[0, 1]``. ``generator`` (``torch.Generator``) makes the flip reproducible; without one the
    global torch RNG is used, which ``DataLoader`` seeds differently in every worker.
    """

    def __init__(self, size: int | None = 120, mean: float | Sequence[float] = 0.5,
                 std: float | Sequence[float] = 0.5, flip: float = 0.0,
                 interpolation: str = "bicubic",
                 degradation: Callable[..., torch.Tensor] | None = None,
                 generator: torch.Generator | None = None) -> None:
        if size is not None and int(size) <= 0:
            raise ValueError(f"size must be a positive number of pixels or None, got {size!r}")
        if not 0.0 <= flip <= 1.0:
            raise ValueError(f"flip is a probability in [0, 1], got {flip!r}")
        self.size = None if size is None else int(size)
        self.mean = _as_triple(mean, "mean")
        self.std = _as_triple(std, "std")
        if bool((self.std == 0).any()):
            raise ValueError(f"std must be non-zero, got {std!r}")
        # Normalising straight from [0, 255] saves a full pass over the image per sample.
        self._mean255, self._inv_std255 = self.mean * 255.0, 1.0 / (self.std * 255.0)
        self.flip = float(flip)
        self.interpolation = interpolation
        self._filter = _pil_filter(interpolation)
        self.degradation = degradation
        self.generator = generator

    def _resize_tensor(self, x: torch.Tensor) -> torch.Tensor:
        mode = {"area": "area", "nearest": "nearest", "bilinear": "bilinear"}.get(
            self.interpolation, "bicubic")
        kw = {} if mode in ("area", "nearest") else {"align_corners": False, "antialias": True}
        y = torch.nn.functional.interpolate(x[None], size=(self.size, self.size), mode=mode, **kw)
        return y[0].clamp_(0.0, 1.0)

    def _to_float(self, img) -> tuple[torch.Tensor, float]:
        """RGB + resize: ``(tensor (3, size, size), scale)`` with values in ``[0, scale]``."""
        if isinstance(img, torch.Tensor):
            if img.ndim != 3 or img.shape[0] != 3:
                raise ValueError(f"FaceTransform: tensor input must be (3, H, W), got {tuple(img.shape)}")
            x = img.float()
            if self.size is not None and tuple(x.shape[1:]) != (self.size, self.size):
                x = self._resize_tensor(x)
            return x, 1.0
        if isinstance(img, np.ndarray):
            from PIL import Image

            img = Image.fromarray(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        if self.size is not None and img.size != (self.size, self.size):
            img = img.resize((self.size, self.size), self._filter)
        return _pil_to_float(img), 255.0

    def to_tensor01(self, img) -> torch.Tensor:
        """RGB + resize only: ``(3, size, size)`` in ``[0, 1]`` (no flip, no normalisation)."""
        x, scale = self._to_float(img)
        return x.div_(scale) if scale != 1.0 else x

    def __call__(self, img) -> torch.Tensor:
        """Image -> ``(3, size, size)`` float, normalised."""
        x, scale = self._to_float(img)
        if self.degradation is not None:
            x = self.degradation(x.div_(scale) if scale != 1.0 else x)
            scale = 1.0
        if self.flip > 0 and float(torch.rand((), generator=self.generator)) < self.flip:
            x = x.flip(-1)
        if scale == 1.0:
            return (x - self.mean) / self.std
        return x.sub_(self._mean255).mul_(self._inv_std255)

    def __repr__(self) -> str:
        return (f"FaceTransform(size={self.size}, mean={self.mean.flatten().tolist()}, "
                f"std={self.std.flatten().tolist()}, flip={self.flip}, "
                f"interpolation={self.interpolation!r}, degradation={self.degradation!r})")
