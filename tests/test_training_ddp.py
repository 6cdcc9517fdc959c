"""Two gloo processes on CPU (DDP + sharded PartialFC) give the one-process result on the same global batch."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_training import NUM_CLASSES, TinyNet, make_data

from quality_lora.inject import inject_adapters
from quality_lora.losses import ArcFace, PartialFC
from quality_lora.training import TrainConfig, Trainer

STEPS = 5


def _run(batch_size: int, output: Path | None) -> tuple[list[float], dict[str, torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    model = inject_adapters(TinyNet(), ["fc1", "fc2"], r=4, gated=True)
    head = PartialFC(ArcFace(s=16.0, m=0.3), embedding_size=16, num_classes=NUM_CLASSES)
    head.set_full_weight(torch.randn(NUM_CLASSES, 16, generator=torch.Generator().manual_seed(3)))
    # SGD without clipping: unlike AdamW or a clipped norm, sensitive to a wrong gradient scale.
    config = TrainConfig(method="petalface", optimizer="sgd", steps=STEPS, batch_size=batch_size, lr=0.1,
                         warmup_steps=1, clip_grad_norm=None, margin_warmup_steps=2, progress=False,
                         log="none", num_workers=0, output=str(output) if output else None)
    trainer = Trainer(model, head, config, device="cpu")
    losses = trainer.fit(make_data())
    adapters = {k: v.clone() for k, v in trainer.model_state().items()}
    return losses, adapters, head.full_weight()


def _worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    try:
        losses, adapters, weight = _run(batch_size=8 // world, output=Path(tmp) / "out")
        if rank == 0:
            torch.save({"losses": torch.tensor(losses), "adapters": adapters, "weight": weight},
                       Path(tmp) / "result.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path: Path) -> None:
    mp.start_processes(_worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    got = torch.load(tmp_path / "result.pt", weights_only=True)
    losses, adapters, weight = _run(batch_size=8, output=None)
    torch.testing.assert_close(got["losses"], torch.tensor(losses))
    for name, value in adapters.items():
        torch.testing.assert_close(got["adapters"][name], value, msg=name)
    torch.testing.assert_close(got["weight"], weight)
    # Each rank wrote its own shard of the head with the optimizer state.
    written = sorted(p.name for p in (tmp_path / "out").glob("checkpoint*"))
    assert written == ["checkpoint_rank0.pt", "checkpoint_rank1.pt"]
