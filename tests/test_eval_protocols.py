"""Model-level protocols on data written in the real on-disk layouts, the embedding cache, the
plots and the ``quality-lora eval`` command."""
from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from quality_lora.evaluation.embed import Embeddings, embed_images
from quality_lora.evaluation.plots import plot_cmc, plot_quality_hist, plot_roc
from quality_lora.evaluation.protocols import evaluate_tinyface, evaluate_verification_bin


def _jpeg(colour, size=24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def _colour(i: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(i)
    return tuple(int(v) for v in rng.integers(0, 256, 3))


class MeanColour(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.mean(dim=(2, 3)) + 2.0


class Gated(MeanColour):
    """Flip-sensitive toy QualityGatedModel: score = left-half mean - right-half mean."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def score_alpha(self, x):
        w = x.shape[-1] // 2
        s = x[..., :w].mean(dim=(1, 2, 3)) - x[..., w:].mean(dim=(1, 2, 3))
        return s, torch.sigmoid(s)

    def forward(self, x):
        _, alpha = self.score_alpha(x)
        self.seen.append(alpha)
        return super().forward(x) * (1 + alpha[:, None])


def test_each_flipped_image_gets_its_own_alpha():
    x = torch.zeros(2, 3, 8, 8)
    x[..., :4] = 1.0          # bright left half: flipping changes the score's sign
    m = Gated()
    e = embed_images(m, [x], progress=False)
    a, a_flip = m.seen
    assert torch.allclose(a, torch.sigmoid(torch.tensor(1.0))) and torch.allclose(a_flip, torch.sigmoid(torch.tensor(-1.0)))
    assert torch.allclose(e.alphas, a) and e.scores.shape == (2,)
    assert not torch.allclose(e.emb, e.emb_flip)


def test_flip_fusions():
    e = Embeddings(torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert torch.allclose(e.fused("normalized_sum"), torch.tensor([[2 ** -0.5, 2 ** -0.5]]))
    assert torch.allclose(e.fused("raw_sum"), torch.tensor([[3.0, 1.0]]) / 10 ** 0.5)
    with pytest.raises(ValueError, match="fusion must be"):
        e.fused("concat")


def _write_bin(path, n_pairs=20, mismatch=False):
    imgs, same = [], []
    for k in range(n_pairs):
        genuine = k % 2 == 0
        imgs += [_jpeg(_colour(2 * k)), _jpeg(_colour(2 * k) if genuine else _colour(2 * k + 1))]
        same.append(genuine)
    if mismatch:
        same = same[:-1]
    with open(path, "wb") as f:
        pickle.dump((imgs, same), f, protocol=2)


def test_verification_bin_end_to_end_and_cache(tmp_path):
    path = tmp_path / "toy.bin"
    _write_bin(path)
    m = MeanColour()
    res = evaluate_verification_bin(m, path, size=24, batch_size=8, cache_dir=tmp_path / "cache")
    assert res["accuracy_mean"] == 1.0 and res["n_pairs"] == 20
    calls = m.calls
    assert calls == 2 * 5   # 40 images / batch 8, image + mirror
    again = evaluate_verification_bin(m, path, size=24, batch_size=8, cache_dir=tmp_path / "cache")
    assert m.calls == calls and again["accuracy_mean"] == 1.0   # served from the cache
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1


def test_bin_with_wrong_issame_length(tmp_path):
    path = tmp_path / "bad.bin"
    _write_bin(path, mismatch=True)
    with pytest.raises(ValueError, match="40 images for 19 pairs"):
        evaluate_verification_bin(MeanColour(), path, size=24)


def test_nan_embedding_names_the_image(tmp_path):
    path = tmp_path / "toy.bin"
    _write_bin(path)

    class NaNModel(MeanColour):
        def forward(self, x):
            out = super().forward(x)
            out[(x[:, 0, 0, 0] - (_colour(6)[0] / 127.5 - 1)).abs() < 1e-3] = float("nan")
            return out

    with pytest.raises(ValueError, match=r"toy.bin image 6 is not finite"):
        evaluate_verification_bin(NaNModel(), path, size=24)


def _write_tinyface(root):
    # 6 identities; probes are the identity's colour, gallery match too (first 5 identities),
    # identity 5's gallery image is a different colour, distractors far away colours.
    for sub in ("Probe", "Gallery_Match", "Gallery_Distractor"):
        (root / sub).mkdir(parents=True)
    for ident in range(6):
        col = (40 * ident + 10, 200 - 30 * ident, 100)
        Image.new("RGB", (24, 24), col).save(root / "Probe" / f"{ident}_1.png")
        g = col if ident < 5 else (255, 255, 255)
        Image.new("RGB", (24, 24), g).save(root / "Gallery_Match" / f"{ident}_2.png")
    for d in range(8):
        Image.new("RGB", (24, 24), (0, 0, 30 * d)).save(root / "Gallery_Distractor" / f"{d}.png")


def test_tinyface_end_to_end(tmp_path):
    _write_tinyface(tmp_path)
    res = evaluate_tinyface(Gated(), tmp_path, size=24, batch_size=5)
    assert res["n_probes"] == 6 and len(res["cmc"]) == 14
    assert res["rank_1"] == pytest.approx(5 / 6)       # identity 5's mate is the white image
    assert res["rank_20"] == 1.0
    q = res["quality"]
    assert q["gallery"]["scores"].shape == (14,) and q["probe"]["alphas"].shape == (6,)


def test_plots_write_pngs(tmp_path):
    p1 = plot_cmc({"a": np.linspace(0.5, 1, 30), "b": np.linspace(0.2, 1, 30)}, tmp_path / "cmc.png")
    p2 = plot_roc({"a": (np.array([0, 1e-5, 1e-3, 1]), np.array([0, 0.5, 0.8, 1]))}, tmp_path / "roc.png")
    p3 = plot_quality_hist(np.random.rand(50) + 1, np.random.rand(40), 1.0, tmp_path / "q.png",
                           alphas=(np.random.rand(50), np.random.rand(40)))
    for p in (p1, p2, p3):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_end_to_end(tmp_path, shared_dir, capsys):
    from quality_lora.evaluation.cli import main

    ref = shared_dir / "fixtures" / "petalface_reference"
    bin_path = tmp_path / "toy.bin"
    _write_bin(bin_path)
    _write_tinyface(tmp_path / "tf")
    out = tmp_path / "out"
    argv = ["--model", f"pre={ref / 'tiny_pretrained.safetensors'}", "--model", f"petal={ref / 'tiny_petalface.safetensors'}",
            "--scorer", "sharpness", "--threshold", "0.3", "--bin", str(bin_path), "--tinyface", str(tmp_path / "tf"),
            "--out", str(out), "--batch-size", "16", "--device", "cpu"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "toy:acc" in table and "tinyface:rank_1" in table and table.splitlines()[2].startswith("pre")
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"pre", "petal"}
    assert 0 <= summary["petal"]["tinyface"]["rank_1"] <= 1
    for png in ("cmc_tinyface.png", "roc_toy.png", "quality_tinyface_petal.png"):
        assert (out / png).is_file()
    assert main(["--model", "x", "--bin", str(bin_path)]) == 2


def test_cli_loads_converted_folder_like_the_original_checkpoint(tmp_path, shared_dir):
    from quality_lora.evaluation.cli import load_model
    from quality_lora.models.convert import main as convert_main

    pt = shared_dir / "fixtures" / "petalface_reference" / "tiny_petalface_model.pt"
    assert convert_main([str(pt), str(tmp_path / "converted")]) == 0
    images = torch.rand(2, 3, 120, 120) * 2 - 1
    alpha = torch.tensor([0.2, 0.9])
    original = load_model(str(pt), "cpu")
    converted = load_model(str(tmp_path / "converted"), "cpu")
    with torch.no_grad():
        torch.testing.assert_close(converted(images, alpha=alpha), original(images, alpha=alpha))
