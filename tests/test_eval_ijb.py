from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from quality_lora.evaluation import tar_at_far
from quality_lora.evaluation.ijb import (ARCFACE_REF, align_face, read_ijb_meta, similarity_transform,
                                         template_features)
from quality_lora.evaluation.protocols import evaluate_ijb

COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (40, 60, 220)}


class MeanColour(torch.nn.Module):
    """Embedding = mean colour of the centre of the crop (flip-invariant, so sums are exact)."""

    def forward(self, x):
        return x[:, :, 40:72, 40:72].mean(dim=(2, 3)) + 1.0


def _write_ijb(root: Path, target: str = "ijbc", drop: tuple[str, ...] = ()) -> None:
    # templates 10, 11 -> identity 1; 20 -> identity 2; 30 -> identity 3. Landmarks: the arcface
    # points scaled by 1.5 and shifted by (10, 5) inside a 200x200 image.
    rows = [("a.jpg", 10, 100, 1), ("b.jpg", 10, 101, 1), ("c.jpg", 11, 102, 1),
            ("d.jpg", 20, 200, 2), ("e.jpg", 20, 200, 2), ("f.jpg", 30, 300, 3)]
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    lmk = ARCFACE_REF * 1.5 + np.array([10, 5])
    with open(root / "meta" / f"{target}_face_tid_mid.txt", "w") as f:
        f.writelines(f"{n} {t} {m}\n" for n, t, m, _ in rows)
    with open(root / "meta" / f"{target}_name_5pts_score.txt", "w") as f:
        for n, *_ in rows:
            f.write(n + " " + " ".join(f"{v:.4f}" for v in lmk.reshape(-1)) + " 0.9\n")
    with open(root / "meta" / f"{target}_template_pair_label.txt", "w") as f:
        f.write("10 11 1\n10 20 0\n11 30 0\n20 30 0\n")
    for n, _, _, ident in rows:
        if n not in drop:
            Image.new("RGB", (200, 200), COLOURS[ident]).save(root / "loose_crop" / n, quality=100)


def test_meta_parsing_and_end_to_end(tmp_path):
    _write_ijb(tmp_path)
    meta = read_ijb_meta(tmp_path, "IJBC")
    assert meta.names[:2] == ["a.jpg", "b.jpg"] and meta.landmarks.shape == (6, 5, 2)
    np.testing.assert_array_equal(meta.pairs, [[10, 11], [10, 20], [11, 30], [20, 30]])
    res = evaluate_ijb(MeanColour(), tmp_path, "IJBC", batch_size=4)
    # the genuine pair (same colour) scores 1, every impostor less: TAR = 1 at every FAR
    assert res["tar_at_far"] == {f: 1.0 for f in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)}
    assert res["n_pairs"] == 4 and res["n_missing_images"] == 0


def test_missing_images_counted_and_threshold(tmp_path):
    _write_ijb(tmp_path, drop=("b.jpg",))
    with pytest.raises(FileNotFoundError, match=r"1 of 6 images .* first: \['b.jpg'\]"):
        evaluate_ijb(MeanColour(), tmp_path, "IJBC")
    res = evaluate_ijb(MeanColour(), tmp_path, "IJBC", max_missing=0.2)
    assert res["n_missing_images"] == 1 and res["n_images"] == 5


def test_nan_embedding_names_the_image(tmp_path):
    _write_ijb(tmp_path)

    class NaNForGreen(MeanColour):
        def forward(self, x):
            out = super().forward(x)
            out[x[:, 1, 56, 56] > 0.5] = float("nan")
            return out

    with pytest.raises(ValueError, match="image d.jpg is not finite"):
        evaluate_ijb(NaNForGreen(), tmp_path, "IJBC")


def test_bad_meta_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="ijbb_face_tid_mid.txt"):
        read_ijb_meta(tmp_path, "IJBB")
    _write_ijb(tmp_path)
    path = tmp_path / "meta" / "ijbc_name_5pts_score.txt"
    lines = path.read_text().splitlines()
    lines[2] = "c.jpg 1.0 2.0 oops"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"ijbc_name_5pts_score.txt:3: expected"):
        read_ijb_meta(tmp_path, "IJBC")
    lines[2] = "zzz.jpg " + " ".join(["1"] * 11)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="different images .* entry 3"):
        read_ijb_meta(tmp_path, "IJBC")
    _write_ijb(tmp_path / "p")
    (tmp_path / "p" / "meta" / "ijbc_template_pair_label.txt").write_text("10 11 1\n10 x 0\n")
    with pytest.raises(ValueError, match="template_pair_label.txt:2"):
        read_ijb_meta(tmp_path / "p", "IJBC")


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, size=(5, 2))
    ang, s, t = 0.3, 1.7, np.array([5.0, -3.0])
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = s * src @ r.T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], s * r, atol=1e-10)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


def test_alignment_puts_landmarks_on_reference_points():
    # dots at the landmarks of a face rotated by 20 degrees and scaled by 1.4
    ang = np.deg2rad(20)
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    lmk = (ARCFACE_REF - 56) @ r.T * 1.4 + np.array([90, 80])
    img = torch.zeros(3, 170, 180)
    for x, y in np.round(lmk).astype(int):
        img[:, y - 1:y + 2, x - 1:x + 2] = 1.0
    out = align_face(img, np.round(lmk), 112)
    assert out.shape == (3, 112, 112)
    for x, y in ARCFACE_REF:
        xi, yi = int(round(x)), int(round(y))
        patch = out[0, yi - 3:yi + 4, xi - 3:xi + 4]
        py, px = np.unravel_index(int(patch.argmax()), patch.shape)
        assert abs(yi - 3 + py - y) <= 1.5 and abs(xi - 3 + px - x) <= 1.5
        assert float(patch.max()) > 0.5


def test_template_pooling_against_hand_computation():
    feats = np.array([[1.0, 0], [3.0, 0], [0, 2.0], [0, 5.0]])
    uniq, t = template_features(feats, templates=[7, 7, 7, 9], medias=[1, 1, 2, 3])
    # template 7: media 1 mean (2, 0) + media 2 (0, 2) = (2, 2) -> unit; template 9: (0, 1)
    np.testing.assert_array_equal(uniq, [7, 9])
    np.testing.assert_allclose(t, [[2 ** -0.5, 2 ** -0.5], [0, 1]])


def test_tar_at_far_closed_form_and_tie_rule():
    genuine = [1.0] * 5 + [0.2] * 5
    impostor = np.linspace(0, 0.9, 1000)
    scores = np.concatenate([genuine, impostor])
    labels = np.r_[np.ones(10), np.zeros(1000)]
    res = tar_at_far(scores, labels)
    # the ROC has two points at FPR 0 (TPR 0 and 0.5); the nearest-FPR rule takes the higher TPR
    assert res == {f: 0.5 for f in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)}
    with pytest.raises(ValueError, match="both genuine"):
        tar_at_far([0.1, 0.2], [1, 1])
