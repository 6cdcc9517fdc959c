"""The demo's SynthFaces sets: pretraining pool, adaptation set and evaluation sets.

Every set is a pure function of the settings (SynthFaces images depend only on identity,
sample seed and sample index), each set with its own sample seed so no image is shared.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from quality_lora.data.synthfaces import SynthFaces, hash_uniform
from quality_lora.demo.settings import DemoSettings

# Sample seeds of the sets (any distinct numbers; fixed so a set never changes with the others).
_PRETRAIN, _ADAPT, _GALLERY, _PROBE_LR, _PROBE_HR, _VERIF = 101, 202, 303, 404, 505, 606


def make_faces(s: DemoSettings) -> SynthFaces:
    n = s.pretrain_ids + s.adapt_ids + s.eval_ids + s.distractor_ids
    return SynthFaces(num_identities=n, seed=s.seed, image_size=s.image_size, difficulty=s.difficulty,
                      identity_spread=s.identity_spread, lowres_size=s.lowres_size)


def to_input(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the model's input range [-1, 1] ((x − 0.5) / 0.5, as PETALface)."""
    return images01 * 2 - 1


def _render(faces: SynthFaces, ids: torch.Tensor, seed: int, lowres: torch.Tensor | bool = False) -> torch.Tensor:
    """Render ``ids`` (N,) with sample indices 0..N-1; ``lowres`` a bool or a (N,) mask. (N,3,H,W)."""
    idx = torch.arange(len(ids))
    out = faces.render(ids, seed, sample_index=idx)
    if isinstance(lowres, torch.Tensor) and bool(lowres.any()):
        out[lowres] = faces.render(ids[lowres], seed, lowres=True, sample_index=idx[lowres])
    elif lowres is True:
        out = faces.render(ids, seed, lowres=True, sample_index=idx)
    return out


@dataclass
class TrainSet:
    images: torch.Tensor   # (N, 3, H, W) in [0, 1]
    labels: torch.Tensor   # (N,) 0..num_classes-1
    lowres: torch.Tensor   # (N,) bool: degraded images
    num_classes: int


@dataclass
class EvalSets:
    gallery: torch.Tensor          # (G, 3, H, W): one HR image of every probe and distractor identity
    gallery_labels: torch.Tensor   # (G,) identity ids (distractors carry their own ids, never probed)
    probes_lr: torch.Tensor        # (P, 3, H, W) degraded probes
    probes_hr: torch.Tensor        # (P, 3, H, W) high-resolution probes (other samples)
    probe_labels: torch.Tensor     # (P,)
    pairs: torch.Tensor            # (2Q, 3, H, W) verification pairs, rows 2i and 2i+1
    issame: torch.Tensor           # (Q,) bool


def pretrain_set(faces: SynthFaces, s: DemoSettings) -> TrainSet:
    """``pretrain_per_id`` high-resolution images of each of the first ``pretrain_ids`` identities."""
    labels = torch.arange(s.pretrain_ids).repeat_interleave(s.pretrain_per_id)
    images = _render(faces, labels, s.seed * 1000 + _PRETRAIN)
    return TrainSet(images, labels, torch.zeros(len(labels), dtype=torch.bool), s.pretrain_ids)


def adapt_set(faces: SynthFaces, s: DemoSettings) -> TrainSet:
    """The small, mostly low-resolution training set on identities unseen in pretraining."""
    labels = torch.arange(s.adapt_ids).repeat_interleave(s.adapt_per_id)
    seed = s.seed * 1000 + _ADAPT
    low = hash_uniform(seed, 11, torch.arange(len(labels)), 1)[:, 0] < s.adapt_lowres_fraction
    images = _render(faces, labels + s.pretrain_ids, seed, low)
    return TrainSet(images, labels, low, s.adapt_ids)


def eval_sets(faces: SynthFaces, s: DemoSettings) -> EvalSets:
    """TinyFace-style gallery/probes and LFW-style verification pairs on held-out identities."""
    first = s.pretrain_ids + s.adapt_ids
    probe_ids = torch.arange(first, first + s.eval_ids)
    gallery_ids = torch.arange(first, first + s.eval_ids + s.distractor_ids)
    gallery = _render(faces, gallery_ids, s.seed * 1000 + _GALLERY)
    probe_labels = probe_ids.repeat_interleave(s.probes_per_id)
    probes_lr = _render(faces, probe_labels, s.seed * 1000 + _PROBE_LR, lowres=True)
    probes_hr = _render(faces, probe_labels, s.seed * 1000 + _PROBE_HR)
    # Pairs alternate genuine / impostor so every one of the 10 folds holds both kinds.
    q = s.verification_pairs
    u = hash_uniform(s.seed * 1000 + _VERIF, 12, torch.arange(q), 2)
    a = gallery_ids[(u[:, 0] * len(gallery_ids)).long()]
    shift = 1 + (u[:, 1] * (len(gallery_ids) - 1)).long()  # never 0: impostors differ
    b = gallery_ids[((a - first) + shift) % len(gallery_ids)]
    issame = torch.arange(q) % 2 == 0
    b = torch.where(issame, a, b)
    pairs = _render(faces, torch.stack([a, b], 1).flatten(), s.seed * 1000 + _VERIF)
    return EvalSets(gallery, gallery_ids, probes_lr, probes_hr, probe_labels, pairs, issame)
