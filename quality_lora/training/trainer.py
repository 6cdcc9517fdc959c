"""The training loop shared by ``quality-lora train``, the recipes and the offline demo."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from quality_lora.losses import margin_warmup_factor
from quality_lora.training.batches import AlphaCache, BatchPlan, batch_stream
from quality_lora.training.checkpoint import (
    FORMAT,
    atomic_save,
    checkpoint_path,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from quality_lora.training.config import TrainConfig
from quality_lora.training.logger import MetricLogger, progress_bar

AlphaFn = Callable[[torch.Tensor], torch.Tensor]
EvalFn = Callable[[nn.Module, int], "dict[str, float] | None"]
_ADAPTER_PARAMS = ("lora_A", "lora_B")


class PolyWarmup:
    """LR factor for optimizer step ``i`` (0-based): linear warmup ``(i+1)/W`` over ``W`` steps,
    then polynomial decay ``(1 − (i − W)/(T − W))^power`` to 0 at ``T``."""

    def __init__(self, warmup: int, total: int, power: float = 1.0) -> None:
        self.warmup, self.total, self.power = warmup, total, power

    def __call__(self, i: int) -> float:
        if i < self.warmup:
            return (i + 1) / self.warmup
        span = max(self.total - self.warmup, 1)
        return max(0.0, 1.0 - (i - self.warmup) / span) ** self.power


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        import os

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _is_adapter_param(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in _ADAPTER_PARAMS


class Trainer:
    """Train ``model`` (images → embeddings) with ``head`` (embeddings, labels → loss).

    ``method`` (from the config) decides what is trained: ``full`` trains every model parameter;
    ``lora`` / ``petalface`` train only the adapter parameters (inject them first with
    :func:`quality_lora.inject_adapters`); the head is always trained. For ``petalface`` each
    sample's alpha comes from the data (a third item / tensor) or from ``alpha_fn(images) -> (B,)``,
    which is called once per image and cached when ``config.cache_alpha``.

    Inside ``torch.distributed`` (``torchrun``) the model is wrapped in DDP and each rank takes its
    slice of every global batch; the head should be a :class:`~quality_lora.losses.PartialFC`
    created after the process group.

    Example (tensors in memory)::

        trainer = Trainer(model, head, TrainConfig(method="petalface", steps=150, lr=2e-3))
        losses = trainer.fit(TensorDataset(images, labels, alpha))
    """

    def __init__(self, model: nn.Module, head: nn.Module, config: TrainConfig, *,
                 alpha_fn: AlphaFn | None = None, eval_fn: EvalFn | None = None,
                 device: torch.device | str | None = None) -> None:
        self.config = config
        self.rank, self.world_size = _world()
        self.device = torch.device(device) if device is not None else resolve_device(config.device)
        self.model = model.to(self.device)
        self.head = head.to(self.device)
        self.alpha_fn, self.eval_fn = alpha_fn, eval_fn
        self._setup_trainable()
        # The frozen base is not in the checkpoint; its hash is, so a resume onto other base
        # weights fails loudly instead of training adapters for the wrong model.
        self.base_hash = base_state_hash(self.model) if config.method != "full" else None
        self.gated = config.method == "petalface"
        self.net: nn.Module = self.model
        if self.world_size > 1 and self.model_params:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        self.optimizer = self._make_optimizer()
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp and self.device.type == "cuda")
        self.step = 0
        self.history: list[float] = []
        self.alpha_cache: AlphaCache | None = None
        self.logger: MetricLogger | None = None
        self._total: int | None = None

    # ----------------------------------------------------------------- setup
    def _setup_trainable(self) -> None:
        method = self.config.method
        named = list(self.model.named_parameters())
        if method == "full":
            for _, p in named:
                p.requires_grad_(True)
        else:
            from quality_lora.inject import adapter_layers
            from quality_lora.layers import QualityGatedLoRA

            layers = adapter_layers(self.model)
            if not layers:
                raise ValueError(f"method={method!r}: the model has no adapters; call "
                                 "quality_lora.inject_adapters(model, ...) first (or use method='full')")
            gated = [n for n, m in layers.items() if isinstance(m, QualityGatedLoRA)]
            if method == "lora" and gated:
                raise ValueError(f"method='lora': the model has gated adapters ({gated[0]}, ...); "
                                 "use method='petalface'")
            if method == "petalface" and not gated:
                raise ValueError("method='petalface': the model has no gated (QualityGatedLoRA) adapters")
            for name, p in named:
                p.requires_grad_(_is_adapter_param(name))
        for p in self.head.parameters():
            p.requires_grad_(True)
        self.model_params = [p for _, p in named if p.requires_grad]

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        groups = [{"params": self.model_params}, {"params": list(self.head.parameters())}]
        groups = [g for g in groups if g["params"]]
        if c.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        return torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)

    def total_steps(self, num_samples: int | None) -> int:
        """Optimizer steps of the whole schedule (``steps``, or ``epochs`` over ``num_samples``)."""
        c = self.config
        if c.steps is not None:
            return c.steps
        if num_samples is None:
            raise ValueError("config: 'steps' is needed when the data have no length")
        per_epoch = num_samples // (c.batch_size * self.world_size * c.grad_accum)
        return max(1, int(per_epoch * c.epochs))

    def _warmup_steps(self, total: int, num_samples: int | None) -> int:
        c = self.config
        if c.warmup_steps is not None:
            return c.warmup_steps
        if c.steps is not None or num_samples is None:
            return int(total * c.warmup_epochs / c.epochs) if c.epochs else 0
        return int(num_samples // (c.batch_size * self.world_size * c.grad_accum) * c.warmup_epochs)

    def _ensure_scheduler(self, total: int, num_samples: int | None) -> None:
        if self.scheduler is None:
            warm = self._warmup_steps(total, num_samples)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, PolyWarmup(warm, total, self.config.lr_power))
            self._total = total

    def _train_mode(self) -> None:
        self.model.train()
        self.head.train()
        if self.config.method != "full" and self.config.freeze_norm_stats:
            # Frozen base: keep its normalisation statistics too, so alpha-independent
            # behaviour of the base model is exactly preserved.
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    # ------------------------------------------------------------------ loop
    def fit(self, data: Dataset | DataLoader, steps: int | None = None) -> list[float]:
        """Train until optimizer step ``steps`` (default: the end of the schedule).

        Args:
            data: a map-style ``Dataset`` with items ``(image, label)`` or ``(image, label, alpha)``
                (a ``TensorDataset`` of such tensors is indexed directly, without workers), or a
                ``DataLoader`` yielding such batches (then alpha is not cached and a resume
                restarts the loader instead of continuing at the same sample).
        Returns:
            the loss of every optimizer step so far (including those before a resume).
        """
        c = self.config
        num_samples = len(data.dataset) if isinstance(data, DataLoader) else len(data)  # type: ignore[arg-type]
        total = self.total_steps(num_samples)
        self._ensure_scheduler(total, num_samples)
        stop = total if steps is None else steps
        if stop > total:
            raise ValueError(f"fit(steps={stop}): beyond the schedule's {total} steps (config 'steps'/'epochs')")
        if isinstance(data, DataLoader):
            stream: Iterable[tuple[torch.Tensor, ...]] = self._loader_stream(data)
        else:
            plan = BatchPlan(num_samples, c.batch_size, c.seed, self.rank, self.world_size)
            stream = batch_stream(data, plan, self.step * c.grad_accum, c.num_workers,
                                  pin_memory=self.device.type == "cuda")
            if self.gated and self.alpha_fn is not None and c.cache_alpha and self.alpha_cache is None:
                self.alpha_cache = AlphaCache(num_samples, self.alpha_fn)
        if self.rank == 0 and self.logger is None:
            self.logger = MetricLogger(c.output, c.log)
        bar = progress_bar(stop, self.step, c.progress and self.rank == 0)
        batches = iter(stream)
        seen, start = 0, time.perf_counter()
        try:
            while self.step < stop:
                loss, images = self._optimizer_step(batches)
                self.history.append(loss)
                self.step += 1
                seen += images * self.world_size
                self._after_step(loss, seen / (time.perf_counter() - start), bar)
        finally:
            if bar is not None:
                bar.close()
        if c.output is not None:
            self.save_checkpoint()
        return self.history

    def _loader_stream(self, loader: DataLoader) -> Iterable[tuple[torch.Tensor, ...]]:
        while True:
            for batch in loader:
                yield (None, *batch)

    def _alpha(self, indices: torch.Tensor | None, images: torch.Tensor,
               extra: list[torch.Tensor]) -> torch.Tensor | None:
        if not self.gated:
            return None
        if extra:
            return extra[0].to(self.device).float().reshape(-1)
        if self.alpha_fn is None:
            raise ValueError("method='petalface' needs per-sample alpha: give the data a third item "
                             "(alpha) or pass alpha_fn / set a 'scorer' in the config")
        if self.alpha_cache is not None and indices is not None:
            return self.alpha_cache(indices, images)
        with torch.no_grad():
            return self.alpha_fn(images).reshape(-1).float()

    def _optimizer_step(self, batches: Iterable) -> tuple[float, int]:
        c = self.config
        factor = margin_warmup_factor(self.step, c.margin_warmup_steps, c.margin_warmup_start)
        margin = getattr(self.head, "margin_loss", None)
        if margin is not None and hasattr(margin, "margin_factor"):
            margin.margin_factor = factor
        self._train_mode()
        total_loss, images_seen = 0.0, 0
        for micro in range(c.grad_accum):
            indices, images, labels, *extra = next(batches)  # type: ignore[call-overload]
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            alpha = self._alpha(indices, images, extra)
            last = micro == c.grad_accum - 1
            sync = self.net.no_sync() if (not last and self.net is not self.model) else contextlib.nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=c.amp):
                    emb = self.net(images, alpha=alpha) if alpha is not None else self.net(images)
                loss = self.head(emb.float(), labels)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"step {self.step}: loss is {loss.item()}")
                self.scaler.scale(loss / c.grad_accum).backward()
            total_loss += loss.item()
            images_seen += images.shape[0]
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        if c.clip_grad_norm and self.model_params:
            # As insightface: the backbone's gradients only (the head's may be sharded over ranks).
            torch.nn.utils.clip_grad_norm_(self.model_params, c.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        assert self.scheduler is not None
        self.scheduler.step()
        return total_loss / c.grad_accum, images_seen

    def _after_step(self, loss: float, images_per_s: float, bar: Any) -> None:
        c = self.config
        lr = self.optimizer.param_groups[0]["lr"]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.1f}")
        metrics: dict[str, float] = {}
        if self.logger is not None and (self.step % max(c.log_every, 1) == 0 or self.step == self._total):
            metrics.update({"loss": loss, "lr": lr, "images_per_s": images_per_s})
        if self.eval_fn is not None and c.eval_every and self.step % c.eval_every == 0:
            metrics.update(self.evaluate())
        if metrics and self.logger is not None:
            self.logger.log(self.step, metrics)
        if c.output is not None and c.save_every and self.step % c.save_every == 0:
            self.save_checkpoint()

    def evaluate(self) -> dict[str, float]:
        """Run ``eval_fn(model, step)`` (rank 0 only) with the model in eval mode."""
        if self.eval_fn is None or self.rank != 0:
            return {}
        self.model.eval()
        try:
            with torch.no_grad():
                result = self.eval_fn(self.model, self.step) or {}
        finally:
            self._train_mode()
        return {f"eval/{k}" if "/" not in k else k: float(v) for k, v in result.items()}

    # ------------------------------------------------------------ checkpoints
    def model_state(self) -> dict[str, torch.Tensor]:
        """What the checkpoint keeps of the model: adapters only, or everything for ``full``."""
        state = self.model.state_dict()
        if self.config.method == "full":
            return state
        return {k: v for k, v in state.items() if _is_adapter_param(k)}

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write model (adapters) + head + optimizer + scheduler + scaler + RNG + step, atomically."""
        if path is None:
            if self.config.output is None:
                raise ValueError("save_checkpoint: no path given and config 'output' is not set")
            path = checkpoint_path(self.config.output, self.rank, self.world_size)
        ckpt = {
            "format": FORMAT, "step": self.step, "config": self.config.to_dict(),
            "world_size": self.world_size, "rank": self.rank, "history": list(self.history),
            "base_hash": self.base_hash,
            "model": self.model_state(), "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "alpha": self.alpha_cache.values if self.alpha_cache is not None else None,
        }
        atomic_save(ckpt, path)
        return Path(path)

    def resume(self, path: str | Path | None = None) -> int:
        """Load a checkpoint of the same config (else ValueError listing the differing keys).

        ``path`` may be the file or the output folder (default: ``config.output``). Returns the step.
        """
        path = Path(path) if path is not None else Path(self.config.output or ".")
        if path.is_dir():
            path = checkpoint_path(path, self.rank, self.world_size)
        ckpt = load_checkpoint(path)
        diff = self.config.differences(ckpt["config"])
        if diff:
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"{path}: checkpoint was written with another config ({shown}); "
                             "resume with the same config or start a new output folder")
        if ckpt["world_size"] != self.world_size:
            raise ValueError(f"{path}: written by {ckpt['world_size']} processes, resuming with {self.world_size}")
        if ckpt["base_hash"] != self.base_hash:
            raise ValueError(f"{path}: the model's frozen base weights differ from those the checkpoint "
                             "was trained on (load the same pretrained weights before resuming)")
        missing = self.model.load_state_dict(ckpt["model"], strict=False)
        if missing.unexpected_keys:
            raise ValueError(f"{path}: model keys not in this model: {missing.unexpected_keys[:5]}")
        self.head.load_state_dict(ckpt["head"])
        if ckpt["scheduler"] is not None:
            # Scheduler first: creating it writes the lr of step 0 into the optimizer, which
            # loading the optimizer state then overwrites with the saved lr.
            self._ensure_scheduler(ckpt["scheduler"]["lr_lambdas"][0]["total"], None)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["scheduler"] is not None:
            assert self.scheduler is not None
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt["alpha"] is not None and self.alpha_fn is not None:
            self.alpha_cache = AlphaCache(ckpt["alpha"].numel(), self.alpha_fn)
            self.alpha_cache.values = ckpt["alpha"].clone()
        set_rng_state(ckpt["rng"])
        self.step = int(ckpt["step"])
        self.history = [float(x) for x in ckpt["history"]]
        return self.step


def base_state_hash(model: nn.Module) -> str:
    """SHA-256 over every non-adapter parameter and buffer (the frozen base), for integrity checks."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if _is_adapter_param(name):
            continue
        h.update(name.encode())
        h.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


__all__ = ["Trainer", "PolyWarmup", "base_state_hash", "resolve_device"]
