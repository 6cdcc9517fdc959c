"""Deterministic batching: which samples each rank sees at every micro-step, and their alpha.

The order depends only on (seed, epoch), and a global batch of ``batch_size · world_size``
samples is cut into per-rank slices, so a run on W processes sees exactly the global batches of a
one-process run with W× the batch size, and a resumed run picks up at the same sample.
"""
from __future__ import annotations

import random
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset


class BatchPlan:
    """Micro-batch ``k`` (counted from the start of training) → this rank's dataset indices.

    Each epoch is a fresh permutation (``torch.randperm`` seeded by ``seed + epoch``); the
    incomplete last global batch of an epoch is dropped, as insightface does.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = num_samples // self.global_batch
        if self.batches_per_epoch < 1:
            raise ValueError(f"dataset has {num_samples} samples, fewer than one global batch "
                             f"(batch_size {batch_size} x {world_size} processes)")
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.num_samples, generator=g)
        return self._perm

    def indices(self, micro_step: int) -> tuple[int, torch.Tensor]:
        """(epoch, this rank's (batch_size,) sample indices) for micro-batch ``micro_step``."""
        epoch, k = divmod(micro_step, self.batches_per_epoch)
        start = k * self.global_batch + self.rank * self.batch_size
        return epoch, self._permutation(epoch)[start:start + self.batch_size]


class PlanSampler:
    """Endless batch sampler for ``DataLoader(batch_sampler=...)``: lists of (epoch, index) keys."""

    def __init__(self, plan: BatchPlan, start: int) -> None:
        self.plan, self.start = plan, start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        k = self.start
        while True:
            epoch, idx = self.plan.indices(k)
            yield [(epoch, int(i)) for i in idx]
            k += 1


class IndexedDataset(Dataset):
    """Wraps a map-style dataset: key ``(epoch, index)`` → ``(index, *dataset[index])``.

    Random transforms run under an RNG seeded by (seed, epoch, index), so an image gets the same
    augmentation whichever worker loads it and whether or not the run was resumed; the caller's
    RNG state is restored afterwards.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, ...]:
        epoch, index = key
        seed = (self.seed * 1_000_003 + epoch) * 1_000_003 + index
        states = torch.get_rng_state(), random.getstate(), np.random.get_state()
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            item = self.dataset[index]
        finally:
            torch.set_rng_state(states[0])
            random.setstate(states[1])
            np.random.set_state(states[2])
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise ValueError(f"dataset item {index}: expected (image, label) or (image, label, alpha), "
                             f"got {type(item).__name__}")
        return (index, *item)


def batch_stream(dataset: Dataset, plan: BatchPlan, start: int, num_workers: int = 0,
                 pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
    """Endless ``(indices, images, labels[, alpha])`` batches from micro-step ``start`` on.

    A ``TensorDataset`` is indexed directly (no DataLoader: tensors already in memory);
    anything else goes through a ``DataLoader`` over :class:`IndexedDataset`.
    """
    if isinstance(dataset, TensorDataset):
        tensors = dataset.tensors
        if len(tensors) not in (2, 3):
            raise ValueError(f"TensorDataset: expected (images, labels) or (images, labels, alpha), "
                             f"got {len(tensors)} tensors")
        k = start
        while True:
            _, idx = plan.indices(k)
            yield (idx, *(t[idx] for t in tensors))
            k += 1
    from torch.utils.data import DataLoader

    loader = DataLoader(IndexedDataset(dataset, plan.seed), batch_sampler=PlanSampler(plan, start),
                        num_workers=num_workers, pin_memory=pin_memory,
                        persistent_workers=num_workers > 0,
                        # Worker seeds from their own generator: creating the loader must not
                        # advance the global RNG, or a resumed run would drift from an unbroken one.
                        generator=torch.Generator().manual_seed(plan.seed))
    for batch in loader:
        yield tuple(torch.as_tensor(b) if not isinstance(b, torch.Tensor) else b for b in batch)


class AlphaCache:
    """Per-sample alpha, computed once per dataset index by ``alpha_fn`` (static data)."""

    def __init__(self, num_samples: int, alpha_fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.values = torch.full((num_samples,), float("nan"))
        self.alpha_fn = alpha_fn
        self.computed = 0

    @torch.no_grad()
    def __call__(self, indices: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(B,) alpha for ``images`` (B, 3, H, W) with dataset ``indices`` (B,)."""
        indices = indices.cpu()
        missing = torch.isnan(self.values[indices])
        if bool(missing.any()):
            new = self.alpha_fn(images[missing.to(images.device)]).reshape(-1).float().cpu()
            self.values[indices[missing]] = new
            self.computed += int(missing.sum())
        return self.values[indices].to(images.device)
