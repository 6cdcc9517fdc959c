"""``load_petalface``: a ready model from an original PETALface checkpoint (file, dict or Hub)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

from quality_lora.models.checkpoint import (
    as_state_dict,
    compare_keys,
    detect_architecture,
    detect_rank,
    detect_variant,
    export_petalface,
    original_adapters,
    read_state_dict,
    size_name,
    to_ours,
)
from quality_lora.models.factory import (
    DEFAULT_DROPOUT,
    DEFAULT_R,
    DEFAULT_SCALE,
    SIZES,
    VARIANTS,
    petalface_swin,
)
from quality_lora.models.swin import PetalFaceSwin

HUB_REPO = "kartiknarayan/PETALface"
Source = Union[str, os.PathLike, Mapping[str, Tensor], tuple[str, str]]
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def _offline() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE once, when it is imported.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def hub_checkpoint(repo_id: str, name: str, cache_dir: str | os.PathLike | None = None,
                   revision: str | None = None) -> Path:
    """Local path of ``<name>/model.pt`` (or ``name`` itself if it is a file name) in a Hub repo.

    ``repo_id`` may also be a local folder laid out like the repo. Uses the huggingface_hub cache;
    with ``HF_HUB_OFFLINE=1`` only the cache is read. Raises ``FileNotFoundError`` saying how to
    get a file that is not there.
    """
    filename = name if name.endswith(_CHECKPOINT_SUFFIXES) else f"{name}/model.pt"
    if Path(repo_id).is_dir():
        path = Path(repo_id) / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (local folder {repo_id} used as the Hub repo)")
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    cache = str(cache_dir) if cache_dir is not None else _cache_dir()
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache,
                                    local_files_only=_offline()))
    except LocalEntryNotFoundError as err:
        where = cache or "the default Hugging Face cache"
        why = "HF_HUB_OFFLINE is set" if _offline() else "the Hub could not be reached"
        raise FileNotFoundError(
            f"{repo_id}/{filename} is not in {where} and {why}. Get it on a machine with internet "
            f"access: `huggingface-cli download {repo_id} {filename}` (then copy the cache, or set "
            f"HF_HOME to it), or pass the local path of model.pt to load_petalface.") from err
    except (EntryNotFoundError, RepositoryNotFoundError) as err:
        raise FileNotFoundError(f"{repo_id}: no file {filename!r} on the Hub ({type(err).__name__})") from err


def _state_dict_of(source: Source, cache_dir: str | os.PathLike | None) -> dict[str, Tensor]:
    if isinstance(source, Mapping):
        return as_state_dict(source, where="state dict")
    if isinstance(source, tuple):
        if len(source) != 2 or not all(isinstance(s, str) for s in source):
            raise TypeError(f"a Hub source is (repo_id, checkpoint_name), got {source!r}")
        return read_state_dict(hub_checkpoint(source[0], source[1], cache_dir))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            if not (path / "model.pt").is_file():
                raise FileNotFoundError(f"folder {path} has no model.pt (for a converted folder use load_converted)")
            path = path / "model.pt"
        return read_state_dict(path)
    raise TypeError(f"source must be a path, a state dict or (repo_id, name), got {type(source).__name__}")


def build_for_checkpoint(sd: Mapping[str, Tensor], variant: str | None = None, size: str | None = None,
                         scale: float = DEFAULT_SCALE, dropout: float = DEFAULT_DROPOUT,
                         device: str | torch.device = "meta", **kwargs: Any) -> tuple[PetalFaceSwin, dict[str, str]]:
    """The model an original state dict fits (on ``device``) and the checkpoint's adapter layers.

    Raises ``ValueError`` naming the keys/shapes that differ from what ``size``/``variant`` need.
    """
    adapters = original_adapters(sd)
    found = detect_variant(adapters)
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
    if variant is not None and variant != found and found != "pretrained":
        raise ValueError(f"the checkpoint holds {found!r} adapters but variant={variant!r} was asked for "
                         f"(leave variant=None to use the checkpoint's)")
    arch = detect_architecture(sd)
    if size is not None:
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
        arch = {k: v for k, v in arch.items() if k not in SIZES[size]}
    name = size or size_name(arch) or "base"
    with torch.device(device):
        model = petalface_swin(found, size=name, r=detect_rank(sd) or DEFAULT_R, scale=scale,
                               dropout=dropout, **{**arch, **kwargs})
    model.size = size or size_name(arch) or "custom"
    expected = {k: v for k, v in export_petalface(model).items()}
    what = f"PETALface Swin size {model.size!r}, variant {found!r}"
    compare_keys(sd, expected, where="checkpoint", what=what)
    return model, adapters


def load_petalface(source: Source, variant: str | None = None, size: str | None = None,
                   r: int | None = None, scale: float = DEFAULT_SCALE, dropout: float = DEFAULT_DROPOUT,
                   cache_dir: str | os.PathLike | None = None, fused_attn: bool = True) -> PetalFaceSwin:
    """An eval-mode PETALface Swin with the weights of an original checkpoint.

    Args:
        source: a ``model.pt`` / ``.safetensors`` path, a folder holding ``model.pt``, a state dict,
            or ``(repo_id, name)`` for ``<name>/model.pt`` in a Hub repo, e.g.
            ``("kartiknarayan/PETALface", "swin_cosface_webface4m_tinyface")``.
        variant: None to take the checkpoint's (detected from its keys); a ``pretrained``
            checkpoint may be given ``"lora"``/``"petalface"`` to add fresh adapters for training.
        size: None to detect the architecture from the shapes; a :data:`SIZES` key to insist on one.
        r: rank of fresh adapters (a checkpoint's own adapters fix it; a differing ``r`` is an error).
        scale: adapter output scale (not stored by the original; 1).
        dropout: adapter training dropout (not stored by the original; 0.1).

    Returns a model in PETALface-compatible mode: ``model(images, alpha=a)`` with images
    (B, 3, 120, 120) in [-1, 1] and ``a`` (B,) or (B, 1), unclipped as the original's, gives
    (B, 512) embeddings. ``.pt`` files are read with ``torch.load(weights_only=True)`` only.
    """
    sd = _state_dict_of(source, cache_dir)
    model, adapters = build_for_checkpoint(sd, variant, size, scale, dropout)
    rank = detect_rank(sd)
    if r is not None and rank is not None and r != rank:
        raise ValueError(f"r={r} was asked for but the checkpoint's adapters have rank {rank}")
    # The model was built on the meta device: assign the checkpoint's tensors instead of
    # initialising ~215M parameters only to overwrite them.
    model.load_state_dict(to_ours(sd, adapters), strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"checkpoint left tensors unset: {left[:10]}")
    if variant is not None and VARIANTS[variant] and not adapters:
        from quality_lora.inject import inject_adapters

        inject_adapters(model, VARIANTS[variant], r=r or DEFAULT_R, scale=scale, dropout=dropout)
        model.variant = variant
        model.adapter_config = dict(variant=variant, r=r or DEFAULT_R, scale=scale, dropout=dropout)
    return finish(model, fused_attn)


def finish(model: PetalFaceSwin, fused_attn: bool = True) -> PetalFaceSwin:
    """Eval mode, attention path, and PETALface-compatible alpha when the model has adapters."""
    from quality_lora.gate import alpha_states, set_petalface_compatible

    model.set_fused_attn(fused_attn)
    if alpha_states(model):
        set_petalface_compatible(model, True)
    return model.eval()
