"""``quality-lora train CONFIG.yaml``: one process, or one per GPU under ``torchrun``."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from quality_lora._atomic import atomic_write


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quality-lora train",
        description="Train PETALface adapters (or the full / LoRA baselines) from a YAML config. "
                    "Distributed: torchrun --nproc_per_node N $(which quality-lora) train CONFIG.yaml",
    )
    p.add_argument("config", help="YAML file whose keys are TrainConfig fields (see examples/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (value parsed as YAML); repeatable")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in the config's output folder")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop (and checkpoint) at this optimizer step instead of the end of the schedule")
    return p


def _init_distributed() -> bool:
    """Join the process group torchrun describes (NCCL on GPU, gloo on CPU); False when alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def run(config_path: str | Path, overrides: list[str] | None = None, resume: bool = False,
        stop_at: int | None = None) -> list[float]:
    """Build everything from the config and train; returns the loss history."""
    from quality_lora.training.build import (
        build_alpha,
        build_dataset,
        build_head,
        build_model,
        dataset_num_classes,
    )
    from quality_lora.training.config import TrainConfig
    from quality_lora.training.trainer import Trainer

    config = TrainConfig.from_yaml(config_path, overrides)
    started = _init_distributed()
    try:
        torch.manual_seed(config.seed)
        dataset = build_dataset(config)
        num_classes = dataset_num_classes(dataset, config)
        model = build_model(config)
        alpha_fn, scorer, alpha_map = build_alpha(config, dataset)
        head = build_head(config, num_classes)
        trainer = Trainer(model, head, config, alpha_fn=alpha_fn)
        if resume:
            if config.output is None:
                raise ValueError("--resume: config key 'output' is not set")
            trainer.resume(config.output)
        history = trainer.fit(dataset, steps=stop_at)
        if trainer.rank == 0 and config.output is not None:
            _export(trainer, scorer, alpha_map)
        return history
    finally:
        if started:
            dist.destroy_process_group()


def _export(trainer, scorer, alpha_map) -> None:  # type: ignore[no-untyped-def]
    """Final weights next to the checkpoint: adapter files, or the full model as safetensors."""
    out = Path(trainer.config.output)
    if trainer.config.method == "full":
        from safetensors.torch import save_file

        state = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
        atomic_write(out / "model.safetensors", lambda tmp: save_file(state, tmp))
    else:
        from quality_lora.io import save_adapters

        save_adapters(trainer.model, out / "adapters", alpha_map=alpha_map, scorer=scorer)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        history = run(args.config, args.overrides, args.resume, args.stop_at)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"quality-lora train: error: {e}", file=sys.stderr)
        return 2
    if history:
        print(f"done: {len(history)} steps, final loss {history[-1]:.4f}")
    return 0
