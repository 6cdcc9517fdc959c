from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from quality_lora.losses import (
    ArcFace,
    CombinedMarginLoss,
    CosFace,
    PartialFC,
    margin_loss_from_name,
    margin_warmup_factor,
)


def _cosines(n: int = 6, c: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    cos = torch.rand(n, c) * 2 - 1
    labels = torch.randint(0, c, (n,))
    return cos, labels


def test_cosface_matches_formula() -> None:
    cos, labels = _cosines()
    out = CosFace(s=64.0, m=0.4)(cos, labels)
    expected = cos.clone()
    expected[torch.arange(6), labels] -= 0.4
    torch.testing.assert_close(out, 64.0 * expected)


def test_arcface_matches_formula_and_guard() -> None:
    m, s = 0.5, 64.0
    # Target cosines on both sides of the guard cos(pi - m).
    cos = torch.tensor([[0.9, 0.1], [0.2, -0.3], [-0.95, 0.4], [-0.99, 0.0]])
    labels = torch.tensor([0, 0, 0, 0])
    out = ArcFace(s=s, m=m)(cos, labels)
    theta = torch.acos(cos[:, 0])
    guard = math.cos(math.pi - m)
    target = torch.where(cos[:, 0] > guard, torch.cos(theta + m), cos[:, 0] - math.sin(math.pi - m) * m)
    assert bool((cos[:, 0] <= guard).any()) and bool((cos[:, 0] > guard).any())
    torch.testing.assert_close(out[:, 0], s * target)
    torch.testing.assert_close(out[:, 1], s * cos[:, 1])


def test_arcface_easy_margin() -> None:
    cos = torch.tensor([[0.5, 0.0], [-0.5, 0.0]])
    out = ArcFace(s=1.0, m=0.5, easy_margin=True)(cos, torch.tensor([0, 0]))
    torch.testing.assert_close(out[0, 0], torch.cos(torch.acos(torch.tensor(0.5)) + 0.5))
    torch.testing.assert_close(out[1, 0], torch.tensor(-0.5))


def test_combined_margin_is_arc_then_cos() -> None:
    cos, labels = _cosines()
    out = CombinedMarginLoss(32.0, 1.0, 0.3, 0.2)(cos, labels)
    t = cos[torch.arange(6), labels]
    arc = torch.where(t > math.cos(math.pi - 0.3), torch.cos(torch.acos(t) + 0.3), t - math.sin(math.pi - 0.3) * 0.3)
    expected = arc - 0.2
    torch.testing.assert_close(out[torch.arange(6), labels], 32.0 * expected)


def test_arcface_finite_at_extreme_angles() -> None:
    cos = torch.tensor([[-1.0, 0.0], [-0.99999, 0.0], [1.0, 0.0], [0.999999, 0.1], [-1.0000001, 1.0000001]],
                       requires_grad=True)
    out = ArcFace()(cos, torch.zeros(5, dtype=torch.long))
    loss = F.cross_entropy(out, torch.zeros(5, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(out).all() and torch.isfinite(cos.grad).all()


def test_ignored_rows_get_no_margin_and_input_untouched() -> None:
    cos, _ = _cosines()
    before = cos.clone()
    out = CosFace(s=2.0)(cos, torch.full((6,), -1))
    torch.testing.assert_close(out, 2.0 * cos)
    assert torch.equal(cos, before)


def test_margin_warmup() -> None:
    loss = CosFace(s=1.0, m=0.4)
    cos = torch.tensor([[0.5, 0.1]])
    loss.margin_factor = margin_warmup_factor(0, 10, start=0.5)
    assert loss(cos, torch.tensor([0]))[0, 0].item() == pytest.approx(0.3)
    loss.margin_factor = margin_warmup_factor(5, 10, start=0.5)
    assert loss(cos, torch.tensor([0]))[0, 0].item() == pytest.approx(0.5 - 0.4 * 0.75)
    assert margin_warmup_factor(10, 10) == 1.0 and margin_warmup_factor(3, 0) == 1.0


def test_bad_margin_arguments() -> None:
    with pytest.raises(ValueError, match="m1"):
        CombinedMarginLoss(64, 1.35, 0.0, 0.0)
    with pytest.raises(ValueError, match="unknown margin loss 'sphere'"):
        margin_loss_from_name("sphere")
    with pytest.raises(ValueError, match="three values"):
        margin_loss_from_name("combined", margins=[1.0, 0.5])
    assert margin_loss_from_name("cosface").m3 == 0.4


def _reference_loss(emb: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, margin) -> torch.Tensor:
    cos = F.normalize(emb) @ F.normalize(weight).t()
    return F.cross_entropy(margin(cos, labels), labels)


def test_partial_fc_single_process_is_full_softmax() -> None:
    head = PartialFC(ArcFace(s=16.0), embedding_size=8, num_classes=11)
    emb, labels = torch.randn(7, 8), torch.randint(0, 11, (7,))
    torch.testing.assert_close(head(emb, labels), _reference_loss(emb, head.weight, labels, head.margin_loss))


def test_partial_fc_sampling_keeps_positives() -> None:
    head = PartialFC(CosFace(s=8.0), embedding_size=4, num_classes=40, sample_rate=0.25)
    emb, labels = torch.randn(12, 4, requires_grad=True), torch.tensor([3, 3, 17, 39, 0, 5, 5, 6, 7, 8, 9, 10])
    loss = head(emb, labels)
    loss.backward()
    touched = head.weight.grad.abs().sum(dim=1) > 0
    # Every positive centre takes part; 10 distinct positives > int(0.25 * 40), so exactly those.
    assert set(touched.nonzero().flatten().tolist()) == set(labels.tolist())
    # The loss is the full softmax restricted to the kept centres.
    index = labels.unique()
    remapped = torch.searchsorted(index, labels)
    ref = _reference_loss(emb.detach(), head.weight.detach()[index], remapped, head.margin_loss)
    torch.testing.assert_close(loss.detach(), ref)


def test_partial_fc_sampling_adds_negatives() -> None:
    head = PartialFC(CosFace(s=8.0), embedding_size=4, num_classes=100, sample_rate=0.3)
    loss = head(torch.randn(4, 4), torch.tensor([1, 2, 2, 99]))
    loss.backward()
    touched = set((head.weight.grad.abs().sum(dim=1) > 0).nonzero().flatten().tolist())
    assert {1, 2, 99} <= touched and len(touched) == 30


def test_partial_fc_bad_labels() -> None:
    head = PartialFC(CosFace(), embedding_size=4, num_classes=10)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 10\).*\[10, 12\]"):
        head(torch.randn(3, 4), torch.tensor([1, 10, 12]))
    with pytest.raises(ValueError, match=r"labels must be in"):
        head(torch.randn(1, 4), torch.tensor([-1]))
    with pytest.raises(ValueError, match="embeddings"):
        head(torch.randn(3, 5), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(CosFace(), 4, 10, sample_rate=0.0)


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        backbone = torch.nn.Linear(6, 4)
        full_weight = torch.randn(9, 4)
        images, labels = torch.randn(8, 6), torch.randint(0, 9, (8,))
        head = PartialFC(ArcFace(s=16.0), embedding_size=4, num_classes=9)
        head.set_full_weight(full_weight)
        ddp = torch.nn.parallel.DistributedDataParallel(backbone)
        per = images.shape[0] // world
        mine = slice(rank * per, (rank + 1) * per)
        loss = head(ddp(images[mine]), labels[mine])
        loss.backward()
        gathered = head.full_weight()
        grads = [torch.empty(9 // world + 1, 4) for _ in range(world)]
        padded = torch.cat([head.weight.grad, torch.zeros(9 // world + 1 - head.num_local, 4)])
        dist.all_gather(grads, padded)
        sizes = [9 // world + int(r < 9 % world) for r in range(world)]
        head_grad = torch.cat([g[:n] for g, n in zip(grads, sizes)])
        if rank == 0:
            torch.save({"loss": loss.detach(), "head_grad": head_grad, "weight": gathered,
                        "backbone_grad": backbone.weight.grad}, Path(out_dir) / "dist.pt")
    finally:
        dist.destroy_process_group()


def test_partial_fc_two_processes_equals_single(tmp_path: Path) -> None:
    mp.start_processes(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    got = torch.load(tmp_path / "dist.pt", weights_only=True)

    torch.manual_seed(0)
    backbone = torch.nn.Linear(6, 4)
    full_weight = torch.randn(9, 4)
    images, labels = torch.randn(8, 6), torch.randint(0, 9, (8,))
    head = PartialFC(ArcFace(s=16.0), embedding_size=4, num_classes=9)
    head.set_full_weight(full_weight)
    loss = head(backbone(images), labels)
    loss.backward()
    torch.testing.assert_close(got["weight"], full_weight)
    torch.testing.assert_close(got["loss"], loss.detach())
    torch.testing.assert_close(got["head_grad"], head.weight.grad)
    torch.testing.assert_close(got["backbone_grad"], backbone.weight.grad)
