"""IJB-B / IJB-C 1:1 template verification (insightface ``arcface_torch/eval_ijbc.py`` layout).

Folder layout (``root``)::

    meta/<t>_face_tid_mid.txt         "image_name template_id media_id" per image
    meta/<t>_name_5pts_score.txt      "image_name x1 y1 ... x5 y5 face_score" (same order)
    meta/<t>_template_pair_label.txt  "template_1 template_2 label" per pair (8-16 M lines)
    loose_crop/<image_name>

with ``<t>`` = ``ijbb`` or ``ijbc``. Procedure: align each crop to 112 px with a similarity
transform from its 5 landmarks to the arcface reference points; feature = emb(image) +
emb(flipped image) (raw, norms kept) times the face score; media feature = mean over the media's
images; template = sum of its media features, L2-normalised; score = cosine of the two
templates; TAR at each FAR from sklearn's ``roc_curve`` at the nearest FPR (insightface's
``argmin |fpr - far|``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# arcface_torch's reference landmarks for a 112x112 crop (x shifted by 8 from the 96x112 set).
ARCFACE_REF = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class IJBMeta:
    names: list[str]             # (N,) image file names under loose_crop/
    landmarks: np.ndarray        # (N, 5, 2) float32
    face_scores: np.ndarray      # (N,) float32
    templates: np.ndarray        # (N,) int64
    medias: np.ndarray           # (N,) int64
    pairs: np.ndarray            # (M, 2) int64 template ids
    labels: np.ndarray           # (M,) int8, 1 = same identity


def _meta_file(root: Path, target: str, suffix: str) -> Path:
    path = root / "meta" / f"{target.lower()}_{suffix}"
    if not path.is_file():
        raise FileNotFoundError(f"IJB meta file missing: {path}")
    return path


def read_ijb_meta(root: str | Path, target: str = "IJBC") -> IJBMeta:
    """Parse the three meta files of ``root`` for ``target`` ("IJBB" or "IJBC")."""
    if target.upper() not in ("IJBB", "IJBC"):
        raise ValueError(f"target must be 'IJBB' or 'IJBC', got {target!r}")
    root = Path(root)
    tid_path = _meta_file(root, target, "face_tid_mid.txt")
    lmk_path = _meta_file(root, target, "name_5pts_score.txt")
    pair_path = _meta_file(root, target, "template_pair_label.txt")

    names, templates, medias = [], [], []
    with open(tid_path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) != 3:
                    raise ValueError
                templates.append(int(parts[1]))
                medias.append(int(parts[2]))
            except ValueError:
                raise ValueError(f"{tid_path}:{n}: expected 'name template_id media_id', got {line.strip()!r}") from None
            names.append(parts[0])
    lmk_names, lmks, scores = [], [], []
    with open(lmk_path) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) != 12:
                    raise ValueError
                vals = [float(x) for x in parts[1:]]
            except ValueError:
                raise ValueError(f"{lmk_path}:{n}: expected 'name x1 y1 ... x5 y5 score' (12 fields), "
                                 f"got {line.strip()[:120]!r}") from None
            lmk_names.append(parts[0])
            lmks.append(vals[:10])
            scores.append(vals[10])
    if lmk_names != names:
        bad = next((i for i, (a, b) in enumerate(zip(names, lmk_names)) if a != b), min(len(names), len(lmk_names)))
        raise ValueError(f"{lmk_path} and {tid_path} list different images (first difference at entry {bad + 1}; "
                         f"{len(lmk_names)} vs {len(names)} entries)")
    pairs, labels = read_pair_list(pair_path)
    return IJBMeta(names, np.asarray(lmks, dtype=np.float32).reshape(-1, 5, 2), np.asarray(scores, dtype=np.float32),
                   np.asarray(templates, dtype=np.int64), np.asarray(medias, dtype=np.int64), pairs, labels)


def read_pair_list(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``t1 t2 label`` lines -> ((M, 2) int64, (M,) int8). Parsed in C by ``np.fromstring``
    (IJB-C has 15.7 M lines: a Python loop or ``np.loadtxt`` takes minutes)."""
    path = Path(path)
    text = path.read_bytes().decode("ascii", errors="replace")
    n_lines = sum(1 for line in text.splitlines() if line.strip())
    try:
        vals = np.fromstring(text, dtype=np.int64, sep=" ") if text.strip() else np.zeros(0, np.int64)
    except ValueError:   # numpy >= 2.? raises on unparsable text; older versions stop early
        vals = np.zeros(0, np.int64)
    if vals.size != 3 * n_lines:
        for n, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if parts and (len(parts) != 3 or not all(p.lstrip("-").isdigit() for p in parts)):
                raise ValueError(f"{path}:{n}: expected 'template_1 template_2 label', got {line.strip()!r}")
        raise ValueError(f"{path}: could not parse {n_lines} pair lines")
    vals = vals.reshape(-1, 3)
    if not np.isin(vals[:, 2], (0, 1)).all():
        n = int(np.flatnonzero(~np.isin(vals[:, 2], (0, 1)))[0]) + 1
        raise ValueError(f"{path}: pair {n} has label {vals[n - 1, 2]}, expected 0 or 1")
    return vals[:, :2].copy(), vals[:, 2].astype(np.int8)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst.

    Umeyama (1991), the estimate skimage's ``SimilarityTransform.estimate`` computes; written
    here because skimage is not a dependency (and OpenCV neither). src, dst: (K, 2). Returns the
    (2, 3) matrix M with ``dst ~ M @ [x, y, 1]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise ValueError(f"landmarks must be (K, 2) arrays of equal shape, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(cov) < 0:
        e[1, 1] = -1
    rot = u @ e @ vt
    var_s = (s ** 2).sum() / len(src)
    if var_s == 0:
        raise ValueError("degenerate landmarks: all points coincide")
    scale = (sig * np.diag(e)).sum() / var_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def align_face(image: torch.Tensor, landmarks: np.ndarray, size: int = 112) -> torch.Tensor:
    """Warp ``image`` (C, H, W) float so ``landmarks`` (5, 2, pixel x/y) land on the arcface points.

    Bilinear sampling with zero padding, pixel centres at integer coordinates, i.e. what
    ``cv2.warpAffine(img, M, (size, size), borderValue=0)`` computes; done with torch
    ``grid_sample`` because OpenCV is not a dependency. Returns (C, size, size).
    """
    ref = ARCFACE_REF * (size / 112.0)
    m = similarity_transform(landmarks, ref)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]          # output pixel -> input pixel
    ys, xs = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    src_x = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    src_y = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    h, w = image.shape[-2:]
    # align_corners=True: -1 and +1 are the centres of the first and last pixel.
    grid = np.stack([2 * src_x / max(w - 1, 1) - 1, 2 * src_y / max(h - 1, 1) - 1], axis=-1)
    grid_t = torch.as_tensor(grid, dtype=torch.float32)[None]
    out = torch.nn.functional.grid_sample(image[None].float(), grid_t, mode="bilinear",
                                          padding_mode="zeros", align_corners=True)
    return out[0]


def template_features(img_feats: np.ndarray, templates, medias) -> tuple[np.ndarray, np.ndarray]:
    """Template = sum over its media of the mean image feature per media, L2-normalised.

    img_feats: (N, D) (already flip-fused and multiplied by the face score); templates, medias:
    (N,). Returns (unique_templates (T,), feats (T, D) float64; an all-zero template stays 0).
    """
    f = np.asarray(img_feats, dtype=np.float64)
    t = np.asarray(templates).reshape(-1)
    m = np.asarray(medias).reshape(-1)
    if f.ndim != 2 or not (len(f) == len(t) == len(m)):
        raise ValueError(f"img_feats {f.shape}, templates ({len(t)},) and medias ({len(m)},) do not match")
    uniq_t, t_inv = np.unique(t, return_inverse=True)
    tm, tm_inv = np.unique(np.stack([t_inv, m], 1), axis=0, return_inverse=True)
    tm_inv = tm_inv.reshape(-1)
    media_sum = np.zeros((len(tm), f.shape[1]))
    np.add.at(media_sum, tm_inv, f)
    media_mean = media_sum / np.bincount(tm_inv, minlength=len(tm))[:, None]
    feats = np.zeros((len(uniq_t), f.shape[1]))
    np.add.at(feats, tm[:, 0], media_mean)
    feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    return uniq_t, feats


def pair_scores(template_feats: np.ndarray, unique_templates: np.ndarray, pairs: np.ndarray,
                chunk: int = 1_000_000, progress: bool = False) -> np.ndarray:
    """Cosine score of each template pair (M, 2) -> (M,) float32, ``chunk`` pairs at a time."""
    pairs = np.asarray(pairs)
    pos = np.searchsorted(unique_templates, pairs)
    pos = np.clip(pos, 0, len(unique_templates) - 1)
    missing = unique_templates[pos] != pairs
    if missing.any():
        r, c = np.argwhere(missing)[0]
        raise ValueError(f"pair {r + 1} names template {pairs[r, c]}, which has no image in the meta file "
                         f"({int(missing.any(1).sum())} pairs affected)")
    feats = torch.as_tensor(template_feats, dtype=torch.float32)
    out = np.empty(len(pairs), dtype=np.float32)
    starts = range(0, len(pairs), chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="IJB pair scores", unit="chunk")
    for a in starts:
        p = torch.as_tensor(pos[a:a + chunk])
        out[a:a + chunk] = (feats[p[:, 0]] * feats[p[:, 1]]).sum(1).numpy()
    return out


def roc(scores, is_genuine) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) from sklearn's ``roc_curve`` (increasing fpr)."""
    try:
        from sklearn.metrics import roc_curve
    except ImportError as e:
        raise ImportError("IJB evaluation needs scikit-learn: pip install scikit-learn") from e
    labels = np.asarray(is_genuine).astype(int).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(labels) != len(s):
        raise ValueError(f"scores has {len(s)} entries but is_genuine has {len(labels)}")
    if labels.min(initial=1) == labels.max(initial=0):
        raise ValueError("is_genuine must contain both genuine (1) and impostor (0) pairs")
    if not np.isfinite(s).all():
        raise ValueError(f"score {int(np.flatnonzero(~np.isfinite(s))[0])} is not finite")
    fpr, tpr, _ = roc_curve(labels, s)
    return fpr, tpr


def tar_at_far(scores, is_genuine, fars=FARS) -> dict[float, float]:
    """TAR at each FAR: the TPR of the ROC point whose FPR is nearest (insightface's table).

    scores: (M,) similarity (higher = same); is_genuine: (M,) bool/0-1. Ties in |fpr - far| go to
    the highest-TPR point, as insightface's ``min`` over the flipped ROC.
    """
    fpr, tpr = roc(scores, is_genuine)
    fpr, tpr = fpr[::-1], tpr[::-1]
    return {float(far): float(tpr[int(np.argmin(np.abs(fpr - far)))]) for far in fars}
