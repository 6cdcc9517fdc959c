"""IJB-S identification: surveillance-to-single, -to-booking and -to-surveillance.

Follows the PFE-derived tester used by AdaFace and PETALface (``validation_lq/PFE/ijbs.py``):
- a template's feature is the mean of its images' features, L2-normalised (``average_fuse``);
  the image features are the model's raw embeddings (AdaFace's ``pre_norm_vector_add_cos``:
  unit direction times norm), ``weighting="norm"``.
- closed set: probes against the union of galleries G1 and G2, rank-1/5/10;
- open set: TPIR at FPIR 1 % and 10 % for each gallery separately, then averaged. The
  thresholds come from the highest score of each non-mate probe (a probe whose subject is not in
  that gallery), sorted high to low, at index ``int(n_nonmate * fpir) - 1`` (or just above the
  highest when that count is 0); a mate probe succeeds when its mate scores >= the threshold and
  ranks first.

PETALface deviation: its swin model returns the raw embedding ``f`` (no separate norm), and its
script then multiplies by ``||f||`` again, so each image enters the template mean as
``f * ||f||`` = unit direction times norm squared. ``weighting="norm_squared"`` reproduces that;
``"unit"`` averages unit vectors (PFE's ``mean_cos``).

The real IJB-S protocol folder is not redistributable; :func:`read_ijbs_protocol` reads the CSV
layout that the PFE tester reads (documented in docs/evaluation.md). Everything else takes arrays.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .identification import scan

WEIGHTINGS = ("norm", "unit", "norm_squared")
PROTOCOLS = {
    "surveillance_to_single": ("surveillance_probe", "single_g1", "single_g2"),
    "surveillance_to_booking": ("surveillance_probe", "booking_g1", "booking_g2"),
    "surveillance_to_surveillance": ("video_probe", "video_g1", "video_g2"),
}


def pool_templates(features: np.ndarray, template_ids, weighting: str = "norm") -> tuple[np.ndarray, np.ndarray]:
    """Template features: mean of the (weighted) image features, then L2-normalised.

    Args:
        features: (N, D) raw image embeddings (after flip fusion, if any).
        template_ids: (N,) template id of each image.
        weighting: ``"norm"`` (raw features: AdaFace), ``"unit"`` (unit vectors) or
            ``"norm_squared"`` (unit vector times squared norm: PETALface's script).
    Returns:
        (unique_ids (T,), feats (T, D) float64, unit rows; a template whose mean is zero stays 0).
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    f = np.asarray(features, dtype=np.float64)
    tid = np.asarray(template_ids).reshape(-1)
    if f.ndim != 2 or f.shape[0] != tid.shape[0]:
        raise ValueError(f"features {f.shape} and template_ids ({tid.shape[0]},) do not match")
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    if weighting == "unit":
        f = f / np.maximum(norms, 1e-12)
    elif weighting == "norm_squared":
        f = f * norms
    uniq, inv = np.unique(tid, return_inverse=True)
    sums = np.zeros((len(uniq), f.shape[1]))
    np.add.at(sums, inv, f)
    means = sums / np.bincount(inv, minlength=len(uniq))[:, None]
    out = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return uniq, out


def _open_set(res, fpirs) -> np.ndarray:
    nonmate = res.max_nonmate[~res.has_mate]
    if nonmate.size == 0:
        raise ValueError("open-set identification needs at least one non-mate probe for this gallery")
    ordered = np.sort(nonmate)[::-1]
    counts = (len(ordered) * np.asarray(fpirs)).astype(np.int32)
    thresholds = [ordered[0] + 1e-8 if c == 0 else ordered[c - 1] for c in counts]
    first = res.n_above[res.has_mate] == 0
    gt = res.best_mate[res.has_mate]
    return np.array([np.mean((gt >= t) & first) for t in thresholds])


def ijbs_identification(probe_feats, probe_subjects, gallery1_feats, gallery1_subjects, gallery2_feats,
                        gallery2_subjects, ranks=(1, 5, 10), fpirs=(0.01, 0.1)) -> dict:
    """Closed-set rank-k over G1+G2 and open-set TPIR@FPIR averaged over G1 and G2.

    All inputs are template features (T, D) with subject ids (T,). Returns a dict with
    ``rank_<k>`` and ``tpir_at_fpir_<fpir>`` (fractions), plus ``cmc`` and probe counts.
    """
    g_feats = np.concatenate([np.asarray(gallery1_feats), np.asarray(gallery2_feats)])
    g_subj = np.concatenate([np.asarray(gallery1_subjects).reshape(-1), np.asarray(gallery2_subjects).reshape(-1)])
    closed = scan(probe_feats, probe_subjects, g_feats, g_subj)
    rank = closed.n_above[closed.has_mate] + 1
    if rank.size == 0:
        raise ValueError("no probe subject occurs in gallery G1 or G2")
    cmc = np.cumsum(np.bincount(rank - 1, minlength=len(g_subj))) / rank.size
    out: dict = {f"rank_{k}": float(cmc[min(k, len(cmc)) - 1]) for k in ranks}
    tpir = np.mean([_open_set(scan(probe_feats, probe_subjects, g, s), fpirs)
                    for g, s in ((gallery1_feats, gallery1_subjects), (gallery2_feats, gallery2_subjects))], axis=0)
    out.update({f"tpir_at_fpir_{f:g}": float(v) for f, v in zip(fpirs, tpir)})
    out.update(cmc=cmc, n_probes=int(rank.size), n_unmatched_probes=int((~closed.has_mate).sum()))
    return out


@dataclass
class Template:
    subject: int
    media: list[str] = field(default_factory=list)   # video names ("videos/4012.mp4") or image files


@dataclass
class IJBSProtocol:
    """Template lists per role: ``surveillance_probe``, ``video_probe``, ``single_g1/g2``,
    ``booking_g1/g2``, ``video_g1/g2`` (see :data:`PROTOCOLS`)."""

    templates: dict[str, list[Template]]

    def assign(self, image_subjects, image_media) -> dict[str, np.ndarray]:
        """Template index (within each role, -1 = not used) of every image.

        image_subjects: (N,) subject id of each image; image_media: (N,) the video name or image
        file the image belongs to (the PFE tester derives both from the crop's path).
        """
        subj = np.asarray(image_subjects).reshape(-1)
        media = np.asarray(image_media).reshape(-1)
        key_to_row = {}
        for i, (s, m) in enumerate(zip(subj.tolist(), media.tolist())):
            key_to_row.setdefault((int(s), str(m)), []).append(i)
        out = {}
        for role, temps in self.templates.items():
            idx = np.full(len(subj), -1, dtype=np.int64)
            for t, tmpl in enumerate(temps):
                for m in tmpl.media:
                    idx[key_to_row.get((tmpl.subject, m), [])] = t
            out[role] = idx
        return out


def _rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise FileNotFoundError(f"IJB-S protocol file missing: {path}")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [r for r in rows[1:] if r]  # the first line is a header


def _subject(path: Path, line: int, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path}:{line}: subject id {value!r} is not an integer") from None


def read_ijbs_protocol(folder: str | Path) -> IJBSProtocol:
    """Read the IJB-S CSV protocol folder in the layout the PFE tester reads.

    ``ijbs_metadata.csv`` (subject, file, ...; video rows' file starts with ``videos``),
    ``ijbs_surveillance_to_single-booking_probe.csv`` and ``ijbs_surveillance_to_surveillance_probe.csv``
    (one video name per line), and ``galleries/ijbs_surveillance_to_{single,booking,surveillance}_g{1,2}.csv``
    (``_, subject, file``). Probe templates are one per (subject, video) pair in the metadata;
    single-image gallery templates one per row; booking gallery templates one per subject.
    """
    root = Path(folder)
    meta = root / "ijbs_metadata.csv"
    videos = sorted({(_subject(meta, i + 2, r[0]), r[1]) for i, r in enumerate(_rows(meta))
                     if len(r) > 1 and r[1].startswith("videos")})
    templates: dict[str, list[Template]] = {}
    for role, name in (("surveillance_probe", "ijbs_surveillance_to_single-booking_probe.csv"),
                       ("video_probe", "ijbs_surveillance_to_surveillance_probe.csv")):
        wanted = {r[0].strip() for r in _rows(root / name)}
        templates[role] = [Template(s, [v]) for s, v in videos if v in wanted]
    for g in ("g1", "g2"):
        path = root / "galleries" / f"ijbs_surveillance_to_single_{g}.csv"
        templates[f"single_{g}"] = [Template(_subject(path, i + 2, r[1]), [r[2]]) for i, r in enumerate(_rows(path))]
        path = root / "galleries" / f"ijbs_surveillance_to_booking_{g}.csv"
        by_subject: dict[int, list[str]] = {}
        for i, r in enumerate(_rows(path)):
            by_subject.setdefault(_subject(path, i + 2, r[1]), []).append(r[2])
        templates[f"booking_{g}"] = [Template(s, m) for s, m in sorted(by_subject.items())]
        path = root / "galleries" / f"ijbs_surveillance_to_surveillance_{g}.csv"
        pairs = sorted({(_subject(path, i + 2, r[1]), r[2]) for i, r in enumerate(_rows(path))})
        templates[f"video_{g}"] = [Template(s, [v]) for s, v in pairs]
    return IJBSProtocol(templates)


def evaluate_ijbs(features: np.ndarray, image_subjects, image_media, protocol: IJBSProtocol,
                  weighting: str = "norm", protocols=tuple(PROTOCOLS)) -> dict[str, dict]:
    """Pool image features (N, D) into each role's templates and run the chosen protocols.

    Templates with no image get a zero feature (as the PFE tester), so they score 0 against all.
    """
    f = np.asarray(features, dtype=np.float64)
    assign = protocol.assign(image_subjects, image_media)
    feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def role_feats(role: str) -> tuple[np.ndarray, np.ndarray]:
        if role not in feats:
            temps = protocol.templates[role]
            t = np.zeros((len(temps), f.shape[1]))
            used = assign[role] >= 0
            if used.any():
                ids, pooled = pool_templates(f[used], assign[role][used], weighting)
                t[ids] = pooled
            feats[role] = t, np.array([x.subject for x in temps])
        return feats[role]

    results = {}
    for name in protocols:
        if name not in PROTOCOLS:
            raise ValueError(f"unknown IJB-S protocol {name!r}; choose from {tuple(PROTOCOLS)}")
        p, g1, g2 = (role_feats(r) for r in PROTOCOLS[name])
        results[name] = ijbs_identification(p[0], p[1], g1[0], g1[1], g2[0], g2[1])
    return results
