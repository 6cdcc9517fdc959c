"""SynthFaces: procedural face-like identities for demos and tests (no download, no weights).

An identity is a fixed vector of geometry and appearance parameters (outline, eyes, brows, nose,
mouth, ears, skin and hair tone, plus fine marks: freckles, moles, a scar, skin and hair texture,
iris rings). A sample of an identity varies pose, yaw, expression, lighting, background and colour
balance. Images are drawn as soft signed-distance shapes on a posed coordinate grid, the whole
batch at once (no per-image loop); the fine marks are stamped through the same pose as small
stencils. Marks, iris rings, brow strands and skin grain are one to three pixels wide at full size
and vanish at 12-24 px, as real fine facial detail does, while outline, hair and colours survive.
Low-resolution versions use the toolkit's ``quality_lora.data.degrade_batch``.

Randomness comes from a counter-based hash of (seed, stream, index, parameter) rather than a
stateful generator, so an identity is the same whatever ``num_identities`` is, and an image
depends only on (identity, ``sample_seed``, its sample index), not on the rest of the batch.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

__all__ = ["SynthFaces", "SynthFacesDataset"]

_MASK32 = 0xFFFFFFFF
# Identity parameters, each a uniform draw in [0, 1) mapped to a range at render time.
_ID = {n: i for i, n in enumerate((
    "face_w", "face_h", "jaw", "skin_tone", "skin_hue", "hair_col", "hair_amt", "hair_top",
    "hair_side", "hair_len", "hairline", "hair_tex_f", "hair_tex_a", "eye_dx", "eye_y",
    "eye_size", "eye_aspect", "eye_tilt", "iris_col", "iris_f", "iris_ph", "brow_gap",
    "brow_thick", "brow_len", "brow_curve", "brow_tilt", "brow_dark", "brow_tex_f", "nose_len",
    "nose_w", "mouth_y", "mouth_w", "lip_thick", "mouth_curve", "lip_red", "ear_size",
    "freckles", "moles", "scar", "tex_f", "tex_a", "tex_amp",
))}
# Per-sample nuisance parameters.
_NU = {n: i for i, n in enumerate((
    "rot", "scale", "tx", "ty", "yaw", "smile", "open", "brow_up", "eye_open", "gaze",
    "light_a", "light_s", "bg_r", "bg_g", "bg_b", "bg_gx", "bg_gy", "bg_f", "bg_ph",
    "gain_r", "gain_g", "gain_b", "bright", "noise", "noise_idx", "cloth", "cloth_v",
))}
_FRECKLES, _MOLES, _SCAR_PTS = 40, 3, 12
_HAIR = torch.tensor([[0.06, 0.05, 0.04], [0.25, 0.15, 0.08], [0.45, 0.30, 0.15],
                      [0.80, 0.65, 0.40], [0.55, 0.22, 0.08], [0.62, 0.62, 0.62]])
_IRIS = torch.tensor([[0.30, 0.17, 0.07], [0.20, 0.40, 0.65], [0.25, 0.45, 0.25],
                      [0.45, 0.45, 0.50], [0.15, 0.09, 0.05]])
_SKIN_DARK, _SKIN_LIGHT = torch.tensor([0.30, 0.18, 0.11]), torch.tensor([0.96, 0.80, 0.68])


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # lowbias32-style avalanche; both multipliers are < 2**31 so int64 products never overflow.
    x = x & _MASK32
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _MASK32
    x = ((x ^ (x >> 15)) * 0x1B873593) & _MASK32
    return x ^ (x >> 16)


def hash_uniform(seed: int, stream: int, index: torch.Tensor, count: int) -> torch.Tensor:
    """Uniform [0, 1) numbers, a pure function of (seed, stream, index, column).

    index: LongTensor (N,) -> FloatTensor (N, count). Same inputs give bit-identical output on
    any machine and batch layout (integer arithmetic only until the final scaling).
    """
    base = _mix32(torch.tensor((seed * 0x9E3779B1 + stream * 0x85EBCA77) & _MASK32))
    h = _mix32(base ^ _mix32(index.long().reshape(-1, 1) + 0x632BE5AB))
    h = _mix32(h + torch.arange(count, dtype=torch.long) * 0x27D4EB2F)
    return (h >> 8).float() / float(1 << 24)


def _fill(sdf: torch.Tensor, edge: torch.Tensor | float) -> torch.Tensor:
    """Anti-aliased coverage of the region sdf < 0 (a linear ramp one pixel wide)."""
    return (0.5 - sdf / edge).clamp_(0.0, 1.0)


def _lerp(img: torch.Tensor, colour: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """img (N,3,H,W) blended in place towards colour (N,3,1,1) or (N,3,H,W) where mask (N,H,W)
    is 1 (torch.lerp with a broadcast end point is ~3x slower on CPU)."""
    return img.add_(mask.unsqueeze(1) * (colour - img))


def _degrade(images: torch.Tensor, seed: int, index: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The toolkit's low-resolution degradation (``degrade_batch``: shrink to ``size`` px, blur,
    noise, JPEG, resize back), one image at a time so that image j's random draws depend only
    on (seed, index[j]) and not on the rest of the batch. images: (N,3,H,W) in [0,1]."""
    from .degrade import degrade_batch

    seeds = (hash_uniform(seed, 101, index, 2) * float(1 << 24)).long()
    out = torch.empty_like(images)
    for j in range(len(images)):  # JPEG is per image in degrade_batch anyway
        g = torch.Generator().manual_seed(int(seeds[j, 0]) << 24 | int(seeds[j, 1]))
        out[j] = degrade_batch(images[j:j + 1], g, min_size=size[0], max_size=size[1])[0]
    return out


class SynthFaces:
    """A deterministic population of procedural face identities.

    Args:
        num_identities: how many identities (ids 0..num_identities-1).
        seed: identity parameters are a pure function of (seed, id).
        image_size: output height = width in pixels (32-256).
        difficulty: scales every nuisance (pose, yaw, expression, light, colour, noise); 0 gives
            frontal, evenly lit, neutral faces.
        identity_spread: scales how far identity parameters range around the average face;
            smaller makes identities more alike (harder).
        lowres_size: (min, max) side in pixels of the degraded images of ``render(lowres=True)``.
    """

    def __init__(self, num_identities: int = 1000, seed: int = 0, image_size: int = 112,
                 difficulty: float = 1.0, identity_spread: float = 1.0,
                 lowres_size: tuple[int, int] = (12, 24)) -> None:
        if num_identities < 1:
            raise ValueError(f"num_identities must be >= 1, got {num_identities}")
        if not 32 <= image_size <= 256:
            raise ValueError(f"image_size must be in [32, 256], got {image_size}")
        if difficulty < 0 or not 0 < identity_spread <= 1.5:
            raise ValueError(f"difficulty must be >= 0 and identity_spread in (0, 1.5], got "
                             f"{difficulty}, {identity_spread}")
        if not 4 <= lowres_size[0] <= lowres_size[1] <= image_size:
            raise ValueError(f"lowres_size must be (min, max) with 4 <= min <= max <= "
                             f"image_size, got {lowres_size}")
        self.num_identities, self.seed, self.image_size = num_identities, seed, image_size
        self.difficulty, self.identity_spread = float(difficulty), float(identity_spread)
        self.lowres_size = (int(lowres_size[0]), int(lowres_size[1]))
        ids = torch.arange(num_identities)
        self._id = hash_uniform(seed, 1, ids, len(_ID))
        # Fine marks: freckles on cheeks and nose, moles anywhere, one scar of _SCAR_PTS points.
        self._freckles = hash_uniform(seed, 2, ids, 3 * _FRECKLES).view(-1, _FRECKLES, 3)
        self._moles = hash_uniform(seed, 3, ids, 3 * _MOLES).view(-1, _MOLES, 3)
        noise = hash_uniform(seed, 4, torch.arange(16), 2 * 3 * image_size * image_size)
        noise = noise.view(16, 2, 3, image_size, image_size)
        # A small bank of sensor-noise frames (Box-Muller) reused with random flips: per-pixel
        # hashing of every image would cost as much as drawing the face.
        self._noise = torch.sqrt(-2 * torch.log1p(-noise[:, 0])) * torch.cos(2 * math.pi * noise[:, 1])
        t = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size * 2 - 1
        self._gy, self._gx = torch.meshgrid(t, t, indexing="ij")

    def _p(self, u: torch.Tensor, name: str, lo: float, hi: float) -> torch.Tensor:
        # Identity parameter `name` in [lo, hi], pulled towards the middle when spread < 1.
        v = 0.5 + (u[:, _ID[name]] - 0.5) * self.identity_spread
        return (lo + (hi - lo) * v).view(-1, 1, 1)

    def _marks(self, ids: torch.Tensor, u: torch.Tensor, pose: tuple[torch.Tensor, ...],
               fw: torch.Tensor, fh: torch.Tensor, shift: torch.Tensor, origin: tuple[int, int],
               shape: tuple[int, int]) -> torch.Tensor:
        """Fine identity marks drawn straight into image space: (N,3,h,w) coverage of freckles,
        moles and scar. Each mark is moved through the sample's pose and stamped as a small
        stencil (index_add), which costs far less than convolving or resampling a texture.
        The canvas is the crop of shape ``shape`` whose top-left pixel is ``origin``."""
        n, h = len(ids), self.image_size
        (r0, c0), (hc, wc) = origin, shape
        rot, scale, tx, ty = (t.view(-1, 1) for t in pose)
        fr, mo = self._freckles[ids], self._moles[ids]
        fwv, fhv = fw.view(-1, 1), fh.view(-1, 1)
        side = torch.where(fr[..., 2] < 0.5, -1.0, 1.0)
        fx = side * (0.08 + 0.45 * fr[..., 0]) * fwv
        fy = 0.03 + 0.3 * fr[..., 1] * fhv
        n_fr = (u[:, _ID["freckles"], None] - 0.45).clamp(min=0) / 0.55 * _FRECKLES
        on_fr = (torch.arange(_FRECKLES) < n_fr).float() * (0.6 + 0.4 * fr[..., 2])
        ang, rad = mo[..., 0] * 2 * math.pi, 0.8 * mo[..., 1].sqrt()
        mx, my = rad * torch.cos(ang) * fwv, rad * torch.sin(ang) * fhv * 0.8 + 0.08
        on_mo = (torch.arange(_MOLES) < u[:, _ID["moles"], None] * 3.0 - 0.6).float()
        a, at = u[:, _ID["scar"], None] * 2 * math.pi * 3, hash_uniform(self.seed, 5, ids, 2)
        t = torch.linspace(-1, 1, _SCAR_PTS) * 0.09
        sx = (at[:, :1] - 0.5) * 0.7 * fwv + t * torch.cos(a)
        sy = (at[:, 1:] - 0.5) * 0.6 + 0.1 + t * torch.sin(a)
        on_sc = (u[:, _ID["scar"], None] > 0.6).float().expand(-1, _SCAR_PTS)
        xf, yf = torch.cat([fx, mx, sx], 1), torch.cat([fy, my, sy], 1)
        w = torch.cat([on_fr, on_mo, on_sc], 1)
        ch = torch.cat([torch.zeros(_FRECKLES), torch.ones(_MOLES), torch.full((_SCAR_PTS,), 2.0)])
        size = torch.cat([torch.full((_FRECKLES,), 0.014), torch.full((_MOLES,), 0.028),
                          torch.full((_SCAR_PTS,), 0.009)])
        # Face -> image: undo the yaw slide, then rotate, scale and shift.
        depth = (1 - (xf / fwv) ** 2 - ((yf - 0.08) / fhv) ** 2).clamp(min=0).sqrt()
        xf = xf + shift.view(-1, 1) * depth
        gx = scale * (torch.cos(rot) * xf - torch.sin(rot) * yf) + tx
        gy = scale * (torch.sin(rot) * xf + torch.cos(rot) * yf) + ty
        px, py = (gx + 1) * h / 2 - 0.5 - c0, (gy + 1) * h / 2 - 0.5 - r0
        rpx = size * h / 2 * scale  # mark size in pixels, (N, P)
        r = math.ceil(float(rpx.max()) * 2.5) + 1
        off = torch.arange(-r, r + 1)
        ix = px.round().long().unsqueeze(-1) + off  # (N, P, K)
        iy = py.round().long().unsqueeze(-1) + off
        d2 = (ix.unsqueeze(-2) - px[..., None, None]) ** 2 + (iy.unsqueeze(-1) - py[..., None, None]) ** 2
        rr = rpx[..., None, None]
        gauss = torch.exp(-0.5 * d2 / rr**2)
        disc = (rr + 0.5 - d2.sqrt()).clamp(0, 1)
        kern = torch.where((ch == 1).view(1, -1, 1, 1), disc, gauss) * w[..., None, None]
        inside = ((ix >= 0) & (ix < wc)).unsqueeze(-2) & ((iy >= 0) & (iy < hc)).unsqueeze(-1)
        flat = ((torch.arange(n).view(-1, 1) * 3 + ch.long()).view(n, -1, 1, 1) * hc
                + iy.clamp(0, hc - 1).unsqueeze(-1)) * wc + ix.clamp(0, wc - 1).unsqueeze(-2)
        canvas = torch.zeros(n * 3 * hc * wc).index_add_(0, flat.flatten(), (kern * inside).flatten())
        return canvas.view(n, 3, hc, wc).clamp_(0, 1)

    def render(self, identity_ids: torch.Tensor, sample_seed: int, lowres: bool = False,
               sample_index: torch.Tensor | None = None) -> torch.Tensor:
        """Draw one sample of each listed identity.

        identity_ids: LongTensor (N,); sample_seed: int; lowres: degrade to ``lowres_size`` px
        (blur, noise, JPEG) and resize back; sample_index: LongTensor (N,) (default 0..N-1).
        Image j is a pure function of (identity_ids[j], sample_seed, sample_index[j]).
        Returns FloatTensor (N, 3, image_size, image_size) in [0, 1].
        """
        ids = torch.as_tensor(identity_ids).long().flatten()
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= self.num_identities):
            raise ValueError(f"identity_ids must be in [0, {self.num_identities}), got "
                             f"min {int(ids.min())} max {int(ids.max())}")
        idx = torch.arange(len(ids)) if sample_index is None else torch.as_tensor(sample_index).long().flatten()
        if idx.shape != ids.shape:
            raise ValueError(f"sample_index has {idx.numel()} entries, identity_ids {ids.numel()}")
        # Chunks of 32 keep each full-image intermediate (~1.6 MB at 112 px) in cache.
        img = torch.cat([self._draw(ids[i:i + 32], idx[i:i + 32], sample_seed)
                         for i in range(0, len(ids), 32)]) if len(ids) else \
            torch.zeros(0, 3, self.image_size, self.image_size)
        if lowres:
            img = _degrade(img, sample_seed, idx, self.lowres_size)
        return img

    def _crop(self) -> tuple[slice, slice]:
        """Rows and columns that can hold eyes, brows, nose, mouth or marks under any pose of
        this difficulty; the inner features are drawn only there (about 40 % of the pixels)."""
        d, h = self.difficulty, self.image_size
        smax, sin_r, t = 1.0 + 0.07 * d, math.sin(min(0.12 * d, 1.5)), 0.05 * d
        half = smax * (0.55 + 0.6 * sin_r) + t
        top, bottom = -smax * (0.36 + 0.55 * sin_r) - t, smax * (0.62 + 0.55 * sin_r) + t
        pix = lambda v: min(h, max(0, round((v + 1) / 2 * h)))
        return slice(pix(top), pix(bottom)), slice(pix(-half), pix(half))

    def _draw(self, ids: torch.Tensor, idx: torch.Tensor, sample_seed: int) -> torch.Tensor:
        n, h, d = len(ids), self.image_size, self.difficulty
        u = self._id[ids]
        v = hash_uniform(sample_seed, 7, idx, len(_NU))
        nu = {k: v[:, i].view(-1, 1, 1) for k, i in _NU.items()}
        c = lambda k: 2 * nu[k] - 1  # centred nuisance draw in [-1, 1)
        p = lambda k, lo, hi: self._p(u, k, lo, hi)
        # Pose: inverse affine from image to face coordinates.
        rot, scale = 0.12 * d * c("rot"), 1.0 + 0.07 * d * c("scale")
        tx, ty = 0.05 * d * c("tx"), 0.05 * d * c("ty")
        gx, gy = self._gx - tx, self._gy - ty
        cr, sr = torch.cos(rot) / scale, torch.sin(rot) / scale
        x, y = cr * gx + sr * gy, cr * gy - sr * gx
        e = 2.0 / h / scale  # one pixel in face units
        fw, fh, cy = p("face_w", 0.48, 0.62), p("face_h", 0.64, 0.80), 0.08
        ny = (y - cy) / fh
        # Colours.
        tone = p("skin_tone", 0.0, 1.0).view(-1, 1)
        skin = torch.lerp(_SKIN_DARK, _SKIN_LIGHT, tone)
        skin = skin * (1 + 0.08 * (p("skin_hue", -1, 1).view(-1, 1) * torch.tensor([1.0, 0.0, -1.0])))
        hair_i = (u[:, _ID["hair_col"]] * len(_HAIR)).long().clamp(max=len(_HAIR) - 1)
        hair = _HAIR[hair_i] * (0.8 + 0.4 * u[:, _ID["skin_hue"], None])
        skin, hair = skin.view(n, 3, 1, 1), hair.view(n, 3, 1, 1)
        # Background: colour, gradient and a soft stripe pattern.
        bg = torch.cat([nu["bg_r"], nu["bg_g"], nu["bg_b"]], 1).unsqueeze(-1) * 0.8 + 0.1
        ramp = c("bg_gx") * self._gx + c("bg_gy") * self._gy
        ramp = ramp + 0.5 * torch.sin((2 + 6 * nu["bg_f"]) * self._gx + 6.3 * nu["bg_ph"])
        img = bg + (0.15 * d * ramp).unsqueeze(1)
        cloth = torch.stack([nu["cloth"], nu["cloth_v"], 1 - nu["cloth"]], 1) * 0.6 + 0.1
        img = _lerp(img, cloth, _fill(0.95 + 0.15 * x * x - y, e))
        # Back hair (ellipse around the head, cut at the hair length), then neck and ears.
        amt = (p("hair_amt", -0.3, 1.3) > 0).float()
        hw, ht = fw + p("hair_side", 0.03, 0.14), fh + p("hair_top", 0.04, 0.16)
        hx2, hy2 = (x / hw) ** 2, ((y - cy) / ht) ** 2
        hair_sdf = (hx2 + ((y - cy + 0.03) / ht) ** 2).sqrt_().sub_(1).mul_(hw)
        back = _fill(hair_sdf, e) * _fill(y - cy - p("hair_len", -0.2, 0.9), e) * amt
        img = _lerp(img, hair, back)
        ax = x.abs()
        img = _lerp(img, skin * 0.85, _fill(ax - 0.55 * fw, e) * _fill(cy + 0.5 * fh - y, e))
        ey, ear_s = p("eye_y", -0.08, 0.06), p("ear_size", 0.09, 0.15)
        ear = ((((ax - fw) / (0.6 * ear_s)) ** 2 + ((y - ey - 0.06) / ear_s) ** 2).sqrt_() - 1)
        img = _lerp(img, skin * 0.9, _fill(ear * ear_s * 0.6, e))
        # Face outline: ellipse narrowing towards the jaw.
        wy = fw * (1 - p("jaw", 0.0, 0.3) * ny.clamp(min=0) ** 2)
        face = _fill((((x / wy) ** 2 + ny ** 2).sqrt_() - 1) * fw, e)
        img = _lerp(img, skin, face)
        rows, cols = self._crop()
        self._inner(img[:, :, rows, cols], x[:, rows, cols], y[:, rows, cols], face[:, rows, cols],
                    ids, u, nu, (rot, scale, tx, ty, e), skin, hair, (rows.start, cols.start))
        # Front hair: everything of the hair ellipse above the hairline, with strand texture.
        hl = cy - fh * (0.35 + 0.4 * p("hairline", 0, 1)) + 0.3 * x * x
        front = _fill(hair_sdf, e) * _fill(y - hl, e) * amt
        strand = 1 + 0.25 * torch.sin(p("hair_tex_f", 90.0, 180.0) * (x + p("hair_tex_a", -1, 1) * y))
        img = _lerp(img, hair * strand.unsqueeze(1), front)
        # Light: Lambertian on the head ellipsoid, then colour balance and sensor noise.
        la = 2 * math.pi * nu["light_a"]
        strength = 0.5 * d * nu["light_s"]
        hd = (1 - hx2 - hy2).clamp_(min=0).sqrt_()
        lam = (x * (torch.cos(la) * strength / hw) + (y - cy) * (torch.sin(la) * strength / ht)
               + hd * 0.2)
        fg = (face + back + front).clamp_(max=1)
        gain = 1 + 0.12 * d * torch.cat([c("gain_r"), c("gain_g"), c("gain_b")], 1).unsqueeze(-1)
        gain = gain * (1 + 0.2 * d * c("bright")).unsqueeze(1)
        img = img.mul_((1 + lam.clamp_(min=-0.6) * fg).unsqueeze(1)).mul_(gain)
        bank = self._noise[(nu["noise_idx"].flatten() * 16).long().clamp(max=15)]
        img = img.add_(bank * (0.02 * d * nu["noise"]).unsqueeze(1))
        return img.clamp_(0.0, 1.0)

    def _inner(self, img: torch.Tensor, x: torch.Tensor, y: torch.Tensor, face: torch.Tensor,
               ids: torch.Tensor, u: torch.Tensor, nu: dict[str, torch.Tensor],
               pose: tuple[torch.Tensor, ...], skin: torch.Tensor, hair: torch.Tensor,
               origin: tuple[int, int]) -> None:
        """Draw marks, skin grain, nose, eyes, brows and mouth in place on img (N,3,h,w), a crop
        whose face coordinates are x, y (N,h,w)."""
        n, d = len(ids), self.difficulty
        c = lambda k: 2 * nu[k] - 1
        p = lambda k, lo, hi: self._p(u, k, lo, hi)
        rot, scale, tx, ty, e = pose
        fw, fh, cy = p("face_w", 0.48, 0.62), p("face_h", 0.64, 0.80), 0.08
        depth = (1 - (x / fw) ** 2 - ((y - cy) / fh) ** 2).clamp_(min=0).sqrt_()
        # Yaw: inner features slide sideways with depth, as on a turning ellipsoid.
        shift = 0.35 * d * c("yaw") * fw
        xi = x - shift * depth
        ax = xi.abs()
        marks = self._marks(ids, u, (rot, scale, tx, ty), fw, fh, shift, origin, img.shape[-2:])
        f, th = p("tex_f", 140.0, 220.0), p("tex_a", 0.0, math.pi)
        cs, sn = torch.cos(th) * f, torch.sin(th) * f
        grain = torch.sin(xi * cs + y * sn) * torch.sin((xi * sn - y * cs) * 0.7 + 1.0)
        tone = (grain * p("tex_amp", 0.02, 0.08) - 0.4 * marks[:, 0] - 0.75 * marks[:, 1]) * face
        img.mul_((1 + tone).unsqueeze(1))
        _lerp(img, torch.tensor([0.85, 0.55, 0.55]).view(1, 3, 1, 1), 0.5 * marks[:, 2] * face)
        # Nose: side shading down the bridge, nostrils.
        ey, es = p("eye_y", -0.08, 0.06), p("eye_size", 0.085, 0.13)
        nl, nw = p("nose_len", 0.16, 0.28), p("nose_w", 0.05, 0.09)
        tip = ey + nl
        bridge = torch.exp(-((ax - 0.6 * nw) / (0.25 * nw)) ** 2) * _fill(ey - y, e)
        img.mul_((1 - 0.25 * bridge * _fill(y - tip, e) * face).unsqueeze(1))
        nostril = ((((ax - nw) / (0.45 * nw)) ** 2 + ((y - tip) / (0.25 * nw)) ** 2).sqrt_() - 1)
        _lerp(img, skin * 0.35, _fill(nostril * 0.25 * nw, e))
        # Eyes (mirrored about the face midline): sclera, ringed iris, pupil, lash line.
        tilt = p("eye_tilt", -0.2, 0.2)
        ct, st = torch.cos(tilt), torch.sin(tilt)
        lx, ly = ax - p("eye_dx", 0.17, 0.27), y - ey
        lx, ly = lx * ct - ly * st, lx * st + ly * ct
        eb = es * p("eye_aspect", 0.38, 0.62) * (1 - 0.35 * d * nu["eye_open"])
        sclera_d = ((lx / es) ** 2 + (ly / eb) ** 2).sqrt_().sub_(1).mul_(eb)
        sclera = _fill(sclera_d, e)
        _lerp(img, torch.tensor([0.93, 0.92, 0.90]).view(1, 3, 1, 1), sclera)
        ir = 0.5 * es
        r = ((lx - 0.15 * d * c("gaze") * es) ** 2 + ly ** 2).sqrt_()
        iris_i = (u[:, _ID["iris_col"]] * len(_IRIS)).long().clamp(max=len(_IRIS) - 1)
        rings = 1 + 0.35 * torch.sin(r * (p("iris_f", 6.0, 14.0) / ir) + p("iris_ph", 0, 6.3))
        _lerp(img, _IRIS[iris_i].view(n, 3, 1, 1) * rings.unsqueeze(1), _fill(r - ir, e) * sclera)
        _lerp(img, torch.zeros(1, 3, 1, 1), _fill(r - 0.4 * ir, e) * sclera)
        lash = _fill(sclera_d.abs_() - 0.6 * e, e) * (ly < 0.3 * eb).float()
        _lerp(img, hair * 0.4, lash)
        # Brows: tapered arcs with hair-strand texture, raised by expression.
        bl = p("brow_len", 0.09, 0.15)
        bx = ax - p("eye_dx", 0.17, 0.27) - 0.02
        by = y - (ey - p("brow_gap", 0.07, 0.12) - 0.04 * d * nu["brow_up"])
        yc = p("brow_curve", -0.02, 0.05) * (1 - (bx / bl) ** 2) + p("brow_tilt", -0.25, 0.25) * bx
        thick = p("brow_thick", 0.012, 0.03) * (0.95 - 0.25 * bx / bl)
        brow = _fill((by + yc).abs_() - thick, e) * _fill(bx.abs() - bl, e)
        strands = 1 + 0.3 * torch.sin(p("brow_tex_f", 120.0, 220.0) * (bx + 0.5 * by))
        _lerp(img, hair * (p("brow_dark", 0.45, 1.0) * strands).unsqueeze(1), brow)
        # Mouth: lip band curved by the smile, opened by expression.
        my, mw = p("mouth_y", 0.36, 0.46), p("mouth_w", 0.13, 0.23)
        mx2 = (xi / mw) ** 2
        band = (y - my + (p("mouth_curve", -0.02, 0.03) + 0.05 * d * nu["smile"]) * mx2).abs_()
        lt = p("lip_thick", 0.015, 0.035) * (1 - mx2).clamp_(min=0).sqrt_()
        inside = _fill(mx2 - 1, 2 * e / mw)
        red = (0.7 + 0.4 * p("lip_red", 0, 1)).unsqueeze(1)
        _lerp(img, skin * torch.tensor([0.75, 0.45, 0.45]).view(1, 3, 1, 1) * red,
              _fill(band - lt, e) * inside)
        _lerp(img, torch.full((1, 3, 1, 1), 0.12), _fill(band - lt * d * nu["open"] * 0.7, e) * inside)


class SynthFacesDataset(Dataset):
    """``samples_per_identity`` images of each listed identity, rendered on the fly.

    Item i is (image (3,H,W), label): label is the position of its identity in ``identity_ids``
    (so labels are 0..len(identity_ids)-1, ready for a classifier). A fraction ``lowres_fraction``
    of items (a fixed, seeded subset) is degraded. ``__getitems__`` renders a whole batch at once,
    giving the same images as item-by-item access.
    """

    def __init__(self, faces: SynthFaces, identity_ids: torch.Tensor, samples_per_identity: int,
                 sample_seed: int = 0, lowres_fraction: float = 0.0) -> None:
        if samples_per_identity < 1 or not 0.0 <= lowres_fraction <= 1.0:
            raise ValueError(f"samples_per_identity must be >= 1 and lowres_fraction in [0, 1], "
                             f"got {samples_per_identity}, {lowres_fraction}")
        self.faces, self.ids = faces, torch.as_tensor(identity_ids).long().flatten()
        self.per_id, self.sample_seed = samples_per_identity, sample_seed
        n = len(self.ids) * samples_per_identity
        self.lowres = hash_uniform(sample_seed, 11, torch.arange(n), 1)[:, 0] < lowres_fraction

    def __len__(self) -> int:
        return len(self.ids) * self.per_id

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        idx = torch.as_tensor(indices).long()
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(f"index out of range for a dataset of {len(self)} items")
        labels = idx // self.per_id
        imgs = self.faces.render(self.ids[labels], self.sample_seed, sample_index=idx)
        low = self.lowres[idx]
        if bool(low.any()):
            imgs[low] = _degrade(imgs[low], self.sample_seed, idx[low], self.faces.lowres_size)
        return list(zip(imgs, labels.tolist()))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.__getitems__([int(i)])[0]
