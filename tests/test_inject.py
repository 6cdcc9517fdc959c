"""inject_adapters, per-sample alpha through whole models, merge and removal."""
from __future__ import annotations

import copy
import threading
import warnings

import pytest
import timm
import torch
from torch import nn

import quality_lora as ql


def tiny_vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=0, depth=2).eval()


def tiny_swin() -> nn.Module:
    return timm.create_model(
        "swin_tiny_patch4_window7_224", img_size=56, num_classes=0, depths=(2, 2), num_heads=(3, 6),
        embed_dim=48, window_size=7,
    ).eval()


def randomise(model: nn.Module, std: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in ql.adapter_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * std)


@pytest.mark.parametrize("make, size", [(tiny_vit, 32), (tiny_swin, 56)])
def test_batched_equals_per_sample(make, size) -> None:
    model = ql.inject_adapters(make(), ["attn.qkv"], r=4)
    randomise(model)
    x = torch.randn(4, 3, size, size)
    alpha = torch.tensor([0.0, 0.3, 0.8, 1.0])
    batched = model(x, alpha=alpha)
    single = torch.cat([model(x[i : i + 1], alpha=alpha[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    # alpha matters: the hq and lq results differ
    assert not torch.allclose(model(x, alpha=torch.zeros(4)), model(x, alpha=torch.ones(4)))


def test_use_alpha_context_equals_keyword_and_nesting_restores() -> None:
    model = ql.inject_adapters(tiny_vit(), "attn.qkv", r=4)
    randomise(model)
    x = torch.randn(2, 3, 32, 32)
    a, b = torch.tensor([0.1, 0.9]), torch.tensor([[1.0], [0.0]])
    with ql.use_alpha(model, a):
        out_a = model(x)
        with ql.use_alpha(model, b):
            out_b = model(x)
        torch.testing.assert_close(model(x), out_a)
        torch.testing.assert_close(model(x, alpha=b), out_b)  # keyword overrides, then restores
        torch.testing.assert_close(model(x), out_a)
    torch.testing.assert_close(model(x, alpha=a), out_a)
    with pytest.raises(RuntimeError, match="without alpha"):
        model(x)


def test_failed_forward_leaves_no_alpha_behind() -> None:
    model = ql.inject_adapters(tiny_vit(), "attn.qkv", r=4)
    with pytest.raises(Exception):
        model(torch.randn(2, 3, 31, 31), alpha=torch.ones(2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model(torch.randn(2, 3, 32, 32), alpha=torch.tensor([2.0, 0.0]))
    with pytest.raises(RuntimeError, match="without alpha"):
        model(torch.randn(2, 3, 32, 32))


def test_threads_get_their_own_alpha() -> None:
    model = ql.inject_adapters(tiny_vit(), "attn.qkv", r=4)
    randomise(model, 0.5)
    x = torch.randn(2, 3, 32, 32)
    alphas = [torch.zeros(2), torch.ones(2)]
    expected = [model(x, alpha=a) for a in alphas]
    results: dict[int, list[torch.Tensor]] = {0: [], 1: []}
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        with ql.use_alpha(model, alphas[i]):
            barrier.wait()
            for _ in range(5):
                results[i].append(model(x))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for i in range(2):
        for out in results[i]:
            torch.testing.assert_close(out, expected[i])


def test_freezes_base_and_counts_parameters() -> None:
    model = tiny_vit()
    total_before = sum(p.numel() for p in model.parameters())
    ql.inject_adapters(model, "attn.qkv", r=4)
    trainable, total = ql.count_parameters(model)
    layers = ql.adapter_layers(model)
    assert len(layers) == 2
    assert trainable == sum(l.lora_A.numel() + l.lora_B.numel() for l in layers.values())
    assert total == total_before + trainable
    summary = ql.adapter_summary(model)
    assert summary.layers == {"blocks.0.attn.qkv": "gated", "blocks.1.attn.qkv": "gated"}
    assert "2 gated" in str(summary)


def test_target_kinds_regex_and_presets() -> None:
    model = ql.inject_adapters(tiny_vit(), {"attn.qkv": "gated", "re:blocks\\.1\\.mlp\\.fc2": "lora"}, r=2)
    kinds = {n: l.kind for n, l in ql.adapter_layers(model).items()}
    assert kinds == {"blocks.0.attn.qkv": "gated", "blocks.1.attn.qkv": "gated", "blocks.1.mlp.fc2": "lora"}
    attn = ql.adapter_layers(ql.inject_adapters(tiny_vit(), "attention", gated=False))
    assert set(attn) == {f"blocks.{i}.attn.{n}" for i in range(2) for n in ("qkv", "proj")}
    mlp = ql.adapter_layers(ql.inject_adapters(tiny_vit(), ["mlp"], exclude_modules=["fc1"]))
    assert set(mlp) == {"blocks.0.mlp.fc2", "blocks.1.mlp.fc2"}
    everything = ql.adapter_layers(ql.inject_adapters(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, num_classes=5), "all-linear"))
    assert "head" not in everything and len(everything) == 4


def test_bad_targets_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="Conv2d"):
        ql.inject_adapters(tiny_vit(), ["patch_embed.proj"])
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        ql.inject_adapters(tiny_vit(), ["attn.nothing"])
    with pytest.raises(ValueError, match="kind"):
        ql.inject_adapters(tiny_vit(), {"attn.qkv": "triple"})
    with pytest.raises(ValueError, match="regular expression"):
        ql.inject_adapters(tiny_vit(), ["re:(("])
    model = ql.inject_adapters(tiny_vit(), ["attn.qkv"])
    with pytest.raises(ValueError, match="already has"):
        ql.inject_adapters(model, ["attn.qkv"])


def test_refuses_layers_whose_weight_is_read_directly() -> None:
    mha = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match="MultiheadAttention"):
        ql.inject_adapters(mha, ["out_proj"])
    v2 = timm.create_model("swinv2_tiny_window8_256", img_size=64, window_size=4, num_classes=0, depths=(1, 1), num_heads=(2, 4), embed_dim=16)
    with pytest.raises(ValueError, match="qkv_bias_separate"):
        ql.inject_adapters(v2, ["attn.qkv"])


def test_warns_once_about_layers_never_called() -> None:
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True)
    model = nn.Sequential(layer, nn.Linear(16, 4)).eval()
    ql.inject_adapters(model, ["linear1", "1"], gated=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(torch.randn(2, 3, 16), alpha=torch.ones(2))
        model(torch.randn(2, 3, 16), alpha=torch.ones(2))
    relevant = [w for w in caught if "not called" in str(w.message)]
    assert len(relevant) <= 1
    if torch.backends.mha.get_fastpath_enabled():
        # linear1 is bypassed by the eval fast path only when the fast path is taken
        assert all("0.linear1" in str(w.message) for w in relevant)


def test_uncalled_warning_names_layer() -> None:
    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    model = ql.inject_adapters(Skips(), ["used", "unused"])
    with pytest.warns(RuntimeWarning, match="unused"):
        model(torch.randn(2, 4), alpha=torch.ones(2))


def test_merge_equals_fixed_alpha() -> None:
    model = ql.inject_adapters(tiny_swin(), {"attn.qkv": "gated", "mlp.fc2": "lora"}, r=4)
    randomise(model, 0.2)
    x = torch.randn(2, 3, 56, 56)
    for a in (0.0, 0.35, 1.0):
        merged = ql.merge_adapters(copy.deepcopy(model), alpha=a)
        assert not ql.adapter_layers(merged)
        assert all(type(m) is nn.Linear for n, m in merged.named_modules() if n.endswith(("qkv", "fc2")))
        torch.testing.assert_close(merged(x), model(x, alpha=torch.full((2,), a)), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ql.merge_adapters(copy.deepcopy(model), alpha=1.5)


def test_remove_restores_bit_identical_state_dict() -> None:
    model = tiny_swin()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks_before = (len(model._forward_pre_hooks), len(model._forward_hooks))
    ql.inject_adapters(model, ["attn.qkv", "mlp.fc1"], r=4)
    randomise(model)
    model(torch.randn(1, 3, 56, 56), alpha=torch.ones(1))
    ql.remove_adapters(model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert (len(model._forward_pre_hooks), len(model._forward_hooks)) == hooks_before
    with pytest.raises(TypeError):
        model(torch.randn(1, 3, 56, 56), alpha=torch.ones(1))  # the alpha keyword is gone with the hooks


def test_deepcopy_gets_its_own_alpha_state() -> None:
    model = ql.inject_adapters(tiny_vit(), "attn.qkv", r=4)
    randomise(model)
    clone = copy.deepcopy(model)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(clone(x, alpha=torch.ones(2)), model(x, alpha=torch.ones(2)))
    with ql.use_alpha(model, torch.ones(2)):
        with pytest.raises(RuntimeError, match="without alpha"):
            clone(x)


def test_petalface_compatible_mode_accepts_unclipped_alpha() -> None:
    model = ql.inject_adapters(tiny_vit(), "attn.qkv", r=4)
    randomise(model)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError):
        model(x, alpha=torch.tensor([1.4, 0.2]))
    ql.set_petalface_compatible(model)
    assert ql.is_petalface_compatible(model)
    out = model(x, alpha=torch.tensor([1.4, 0.2]))
    assert torch.isfinite(out).all()
    with pytest.raises(ValueError, match="NaN"):
        model(x, alpha=torch.tensor([float("nan"), 0.2]))


def test_use_alpha_on_a_model_without_adapters() -> None:
    with pytest.raises(ValueError, match="inject_adapters"):
        with ql.use_alpha(tiny_vit(), torch.ones(1)):
            pass
