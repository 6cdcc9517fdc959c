from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from quality_lora.inject import inject_adapters
from quality_lora.losses import CosFace, PartialFC
from quality_lora.training import PolyWarmup, TrainConfig, Trainer, base_state_hash, load_checkpoint
from quality_lora.training import checkpoint as ckpt_mod

NUM_CLASSES = 6


class TinyNet(nn.Module):
    """(B, 3, 8, 8) -> (B, 16): flatten -> fc1 -> GELU -> fc2 -> BatchNorm (as face heads end)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3 * 8 * 8, 32)
        self.fc2 = nn.Linear(32, 16)
        self.bn = nn.BatchNorm1d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc2(nn.functional.gelu(self.fc1(x.flatten(1)))))


def make_data(n: int = 48, alpha: bool = True) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(n) % NUM_CLASSES
    centres = torch.randn(NUM_CLASSES, 3, 8, 8, generator=g)
    images = centres[labels] + 0.5 * torch.randn(n, 3, 8, 8, generator=g)
    tensors = [images, labels] + ([torch.rand(n, generator=g)] if alpha else [])
    return TensorDataset(*tensors)


def make_trainer(method: str = "petalface", dropout: float = 0.0, sample_rate: float = 1.0, seed: int = 0,
                 **overrides) -> Trainer:
    torch.manual_seed(seed)
    model = TinyNet()
    if method != "full":
        inject_adapters(model, ["fc1", "fc2"], r=4, dropout=dropout, gated=method == "petalface")
    head = PartialFC(CosFace(s=16.0, m=0.2), embedding_size=16, num_classes=NUM_CLASSES, sample_rate=sample_rate)
    config = TrainConfig(**{"method": method, "steps": 6, "batch_size": 8, "lr": 1e-2, "warmup_steps": 1,
                            "progress": False, "log": "none", "num_workers": 0, **overrides})
    return Trainer(model, head, config, device="cpu")


def test_poly_warmup_schedule() -> None:
    f = PolyWarmup(warmup=2, total=6, power=1.0)
    assert [f(i) for i in range(7)] == pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])


def test_fit_learns_and_keeps_base_bit_identical() -> None:
    trainer = make_trainer(steps=40, batch_size=12, lr=2e-2)
    before = base_state_hash(trainer.model)
    losses = trainer.fit(make_data())
    assert len(losses) == 40 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert base_state_hash(trainer.model) == before
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == {"fc1.lora_A", "fc1.lora_B", "fc2.lora_A", "fc2.lora_B"}


def test_full_method_trains_everything() -> None:
    trainer = make_trainer("full")
    before = base_state_hash(trainer.model)
    trainer.fit(make_data(alpha=False))
    assert base_state_hash(trainer.model) != before
    assert all(p.requires_grad for p in trainer.model.parameters())


def test_method_and_model_must_agree() -> None:
    with pytest.raises(ValueError, match="no adapters"):
        Trainer(TinyNet(), PartialFC(CosFace(), 16, NUM_CLASSES), TrainConfig(method="lora", steps=1))
    model = inject_adapters(TinyNet(), ["fc1"], r=2, gated=False)
    with pytest.raises(ValueError, match="no gated"):
        Trainer(model, PartialFC(CosFace(), 16, NUM_CLASSES), TrainConfig(method="petalface", steps=1))
    trainer = make_trainer("petalface")
    with pytest.raises(ValueError, match="needs per-sample alpha"):
        trainer.fit(make_data(alpha=False))


def test_labels_outside_class_count() -> None:
    data = make_data(alpha=False)
    data.tensors[1][5] = NUM_CLASSES + 3
    with pytest.raises(ValueError, match=r"labels must be in \[0, 6\).*9"):
        make_trainer("lora", steps=12).fit(data)


def test_alpha_fn_runs_once_per_image() -> None:
    calls: list[int] = []

    def alpha_fn(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.shape[0])
        return images.mean(dim=(1, 2, 3)).sigmoid()

    trainer = make_trainer(steps=12)
    trainer.alpha_fn = alpha_fn
    trainer.fit(make_data(alpha=False))  # 12 steps x 8 = two passes over 48 images
    assert sum(calls) == 48 and trainer.alpha_cache is not None
    assert not torch.isnan(trainer.alpha_cache.values).any()


def test_grad_accumulation_equals_large_batch() -> None:
    big = make_trainer("lora", optimizer="sgd", batch_size=8, clip_grad_norm=None)
    small = make_trainer("lora", optimizer="sgd", batch_size=4, grad_accum=2, clip_grad_norm=None)
    data = make_data(alpha=False)
    torch.testing.assert_close(torch.tensor(big.fit(data)), torch.tensor(small.fit(data)))
    for (n, a), (_, b) in zip(big.model.named_parameters(), small.model.named_parameters()):
        torch.testing.assert_close(a, b, msg=n)


def test_resume_continues_exactly(tmp_path: Path) -> None:
    # Dropout and negative-centre sampling consume RNG; alpha comes from a cached alpha_fn.
    def alpha_fn(images: torch.Tensor) -> torch.Tensor:
        return images.std(dim=(1, 2, 3)).tanh()

    kwargs = dict(dropout=0.2, sample_rate=0.5, steps=8, save_every=0)
    data = make_data(alpha=False)
    full = make_trainer(output=str(tmp_path / "a"), **kwargs)
    full.alpha_fn = alpha_fn
    expected = full.fit(data)

    first = make_trainer(output=str(tmp_path / "b"), **kwargs)
    first.alpha_fn = alpha_fn
    first.fit(data, steps=3)
    second = make_trainer(output=str(tmp_path / "b"), **kwargs)
    torch.manual_seed(1234)  # whatever happens in between must not matter
    second.alpha_fn = alpha_fn
    assert second.resume() == 3
    assert second.fit(data) == expected
    for (n, a), (_, b) in zip(full.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), n
    assert torch.equal(full.head.weight, second.head.weight)


def test_resume_rejects_other_config(tmp_path: Path) -> None:
    trainer = make_trainer("lora", output=str(tmp_path))
    trainer.fit(make_data(alpha=False), steps=2)
    other = make_trainer("lora", output=str(tmp_path), lr=3e-3, progress=True)
    with pytest.raises(ValueError, match=r"another config \(lr: 0.01 -> 0.003\)"):
        other.resume()
    with pytest.raises(ValueError, match="frozen base weights differ"):
        make_trainer("lora", output=str(tmp_path), seed=5).resume()
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        other.resume(tmp_path / "missing.pt")


def test_checkpoint_write_failure_keeps_last_good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = make_trainer("lora", output=str(tmp_path))
    trainer.fit(make_data(alpha=False), steps=2)
    path = tmp_path / "checkpoint.pt"
    good = path.read_bytes()
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):  # writes half a file, then dies
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(100)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt_mod.torch, "save", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        trainer.fit(make_data(alpha=False), steps=4)
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert load_checkpoint(path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name) == ["checkpoint.pt"]
    path.write_bytes(good[:200])
    with pytest.raises(ValueError, match="not a readable training checkpoint"):
        load_checkpoint(path)


class AugmentedDataset(Dataset):
    """Random flip + noise in __getitem__ (uses the global RNGs), like a real transform."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image + 0.01 * torch.randn_like(image), int(label)


def test_dataset_path_resumes_exactly(tmp_path: Path) -> None:
    data = AugmentedDataset(make_data(alpha=False))
    expected = make_trainer("lora", dropout=0.1).fit(data)
    first = make_trainer("lora", dropout=0.1, output=str(tmp_path))
    first.fit(data, steps=2)
    second = make_trainer("lora", dropout=0.1, output=str(tmp_path))
    second.resume()
    assert second.fit(data) == expected


def test_amp_logging_and_eval_hook(tmp_path: Path) -> None:
    seen: list[int] = []

    def eval_fn(model: nn.Module, step: int) -> dict[str, float]:
        assert not model.training
        seen.append(step)
        return {"acc": 0.5}

    trainer = make_trainer(amp=True, log="csv", log_every=2, eval_every=3, output=str(tmp_path))
    trainer.eval_fn = eval_fn
    losses = trainer.fit(make_data())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert seen == [3, 6]
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == ["step", "loss", "lr", "images_per_s", "eval/acc"]
    assert [line.split(",")[0] for line in lines[1:]] == ["2", "3", "4", "6"]
