"""The 120-px face Swin Transformer of PETALface (``swin_256new`` in the original code).

Built from timm building blocks (``PatchEmbed``, ``Mlp``, ``DropPath``, ``trunc_normal_``). The
window attention, block and patch merging are written here because PETALface's trained weights
depend on behaviour that timm's Swin does not have (and cannot switch off):

* the shifted-window attention mask is computed (and stored in the checkpoint) but never added to
  the logits, so shifted windows attend across the cyclic-shift seams (``apply_shift_mask``);
* the head flattens all final tokens (``5 x 5 x 4·embed`` for 120 px) into
  BatchNorm1d -> Dropout(0.25) -> Linear -> BatchNorm1d (``feature_layer``);
* an absolute position embedding is added after the patch embedding.

Parameter and buffer names equal the original ones, so a ``pretrained`` checkpoint loads as is;
adapters are added afterwards by :func:`quality_lora.inject.inject_adapters` (see ``factory.py``).
"""
from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_
from torch import nn

MERGE_ORDERS = ("petalface", "row_major")


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B·nW, window·window, C), batch outermost (sample b owns rows b·nW ...)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """(B·nW, window·window, C) -> (B, H, W, C); inverse of :func:`window_partition`."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window: int) -> torch.Tensor:
    """(window², window²) index into the (2·window − 1)² relative-position bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shift_attention_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """(nW, window², window²) mask with 0 inside a region and -100 across cyclic-shift seams."""
    img = torch.zeros(1, h, w, 1)
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in slices:
        for ws in slices:
            img[:, hs, ws, :] = label
            label += 1
    regions = window_partition(img, window).squeeze(-1)
    diff = regions.unsqueeze(1) - regions.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside (num_windows·B, N, C) windows, with relative position bias.

    ``fused_attn`` uses ``F.scaled_dot_product_attention`` (same result to ~1e-6, faster);
    ``False`` runs the original's explicit ``softmax(q·scale @ kᵀ + bias)`` path.
    """

    def __init__(self, dim: int, num_heads: int, window: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, fused_attn: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.window = dim, num_heads, window
        self.scale = (dim // num_heads) ** -0.5
        self.fused_attn = fused_attn
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        # Persistent because the original checkpoints hold it: keeps keys and round trips exact.
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _bias(self) -> torch.Tensor:
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)  # (heads, N, N)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B·nW, N, C); mask (nW, N, N) or None -> (B·nW, N, C)."""
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self._bias().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias.unsqueeze(0) + mask[None, :, None]).expand(bw // nw, -1, -1, -1, -1)
            bias = bias.reshape(bw, self.num_heads, n, n)
        if self.fused_attn:
            drop = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=drop)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias
            out = self.attn_drop(attn.softmax(dim=-1)) @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(bw, n, c)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP block on (B, H·W, C) tokens."""

    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window: int,
                 shift: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, apply_shift_mask: bool = False,
                 fused_attn: bool = True) -> None:
        super().__init__()
        self.resolution = resolution
        if min(resolution) <= window:
            # As the original (and Swin): one window covers the map, so there is nothing to shift.
            window, shift = min(resolution), 0
        if resolution[0] % window or resolution[1] % window:
            raise ValueError(f"stage resolution {resolution} is not divisible by window_size {window}")
        self.window, self.shift = window, shift
        self.apply_shift_mask = apply_shift_mask
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window, qkv_bias, attn_drop, drop, fused_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        # Stored even when unused: the published checkpoints contain it (one key per shifted block).
        mask = shift_attention_mask(*resolution, window, shift) if shift > 0 else None
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H·W, C) -> (B, H·W, C)."""
        h, w = self.resolution
        b, length, c = x.shape
        if length != h * w:
            raise ValueError(f"SwinBlock expects {h}x{w}={h * w} tokens, got {length}")
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        mask = self.attn_mask if self.apply_shift_mask else None
        y = window_reverse(self.attn(window_partition(y, self.window), mask), self.window, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """(B, H·W, C) -> (B, H/2·W/2, 2C): concatenate each 2x2 neighbourhood, LayerNorm, Linear.

    ``merge_order="petalface"`` concatenates ``[x[0::2,0::2], x[1::2,0::2], x[0::2,1::2],
    x[1::2,1::2]]`` (the original Swin order; the published weights need it); ``"row_major"``
    uses ``[(0,0), (0,1), (1,0), (1,1)]`` for models trained from scratch that want it.
    """

    def __init__(self, resolution: tuple[int, int], dim: int, merge_order: str = "petalface") -> None:
        super().__init__()
        if merge_order not in MERGE_ORDERS:
            raise ValueError(f"merge_order must be one of {MERGE_ORDERS}, got {merge_order!r}")
        if resolution[0] % 2 or resolution[1] % 2:
            raise ValueError(f"patch merging needs an even resolution, got {resolution}")
        self.resolution, self.merge_order = resolution, merge_order
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        offsets = ((0, 0), (1, 0), (0, 1), (1, 1))
        if self.merge_order == "row_major":
            offsets = ((0, 0), (0, 1), (1, 0), (1, 1))
        x = torch.cat([x[:, i::2, j::2, :] for i, j in offsets], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class SwinStage(nn.Module):
    """``depth`` blocks (every second one shifted by window // 2), then optional patch merging."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int,
                 window: int, drop_path: Sequence[float], downsample: bool, merge_order: str,
                 **block_kwargs: object) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, num_heads, window, 0 if i % 2 == 0 else window // 2,
                      drop_path=drop_path[i], **block_kwargs)  # type: ignore[arg-type]
            for i in range(depth))
        self.downsample = PatchMerging(resolution, dim, merge_order) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class PetalFaceSwin(nn.Module):
    """Face Swin Transformer: (B, 3, H, W) images in [-1, 1] -> (B, num_features) embeddings.

    Constraints: ``img_size % patch_size == 0``; the token grid ``img_size // patch_size`` must be
    divisible by ``2 ** (len(depths) - 1)`` (patch merging halves it); every stage resolution must
    be divisible by ``window_size`` or be at most ``window_size`` (then one window, no shift);
    each stage's width ``embed_dim · 2**i`` must be divisible by its ``num_heads[i]``.
    ``apply_shift_mask=False`` and ``merge_order="petalface"`` reproduce the published weights.
    """

    def __init__(self, img_size: int = 120, patch_size: int = 6, in_chans: int = 3,
                 embed_dim: int = 384, depths: Sequence[int] = (2, 18, 2),
                 num_heads: Sequence[int] = (8, 16, 16), window_size: int = 5,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.05, ape: bool = True,
                 num_features: int = 512, head_dropout: float = 0.25,
                 apply_shift_mask: bool = False, merge_order: str = "petalface",
                 fused_attn: bool = True) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        grid = img_size // patch_size
        if grid % 2 ** (len(depths) - 1):
            raise ValueError(f"token grid {grid} (img_size/patch_size) is not divisible by "
                             f"2**{len(depths) - 1} for {len(depths)} stages")
        self.config = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                           embed_dim=embed_dim, depths=list(depths), num_heads=list(num_heads),
                           window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                           ape=ape, num_features=num_features,
                           apply_shift_mask=apply_shift_mask, merge_order=merge_order)
        self.num_features = num_features
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, norm_layer=nn.LayerNorm)
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, grid * grid, embed_dim)) if ape else None
        if self.absolute_pos_embed is not None:
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        total = sum(depths)  # stochastic depth grows linearly (plain floats: works on the meta device)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            res = grid // 2 ** i
            start = sum(depths[:i])
            self.layers.append(SwinStage(
                embed_dim * 2 ** i, (res, res), depth, heads, window_size, dpr[start:start + depth],
                downsample=i < len(depths) - 1, merge_order=merge_order, mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                apply_shift_mask=apply_shift_mask, fused_attn=fused_attn))
        width = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(width)
        flat = width * (grid // 2 ** (len(depths) - 1)) ** 2  # = 100·embed for the 120-px model
        self.feature_layer = nn.Sequential(nn.BatchNorm1d(flat), nn.Dropout(head_dropout),
                                           nn.Linear(flat, num_features), nn.BatchNorm1d(num_features))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def set_fused_attn(self, enabled: bool) -> None:
        """Switch every window attention between SDPA and the original explicit-softmax path."""
        for m in self.modules():
            if isinstance(m, WindowAttention):
                m.fused_attn = enabled

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"absolute_pos_embed"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, tokens·width) flattened final tokens (before the head)."""
        x = self.patch_embed(x)
        if self.absolute_pos_embed is not None:
            x = x + self.absolute_pos_embed
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).flatten(1)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_layer(x)

    def forward(self, x: torch.Tensor, alpha: torch.Tensor | None = None) -> torch.Tensor:
        """images (B, 3, H, W); alpha (B,) or (B, 1) for gated adapters -> (B, num_features)."""
        with _alpha_context(self, alpha):
            return self.forward_head(self.forward_features(x))


def _alpha_context(model: nn.Module, alpha: torch.Tensor | None):
    # With adapters injected, gate.py's pre-hook has already taken alpha out of the keywords;
    # alpha arrives here only on direct forward() calls or on a model without adapters, which
    # (like the original's non-IQA models) has no use for it and ignores it.
    if alpha is None:
        return nullcontext()
    from quality_lora.gate import alpha_states, use_alpha

    return use_alpha(model, alpha) if alpha_states(model) else nullcontext()
