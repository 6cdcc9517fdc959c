"""Evaluation protocols: verification (.bin sets), TinyFace identification, IJB-B/C, IJB-S.

The metric functions take arrays and return dicts, so they work on embeddings from anywhere:

- :func:`verification_accuracy` (insightface's 10-fold accuracy and VAL@FAR),
- :func:`identification` (closed-set CMC, blockwise: never the full score matrix),
- :func:`tar_at_far` (IJB TAR at the nearest FAR),
- :func:`ijbs_identification` (IJB-S closed and open set).
"""
from __future__ import annotations

from .identification import identification
from .ijb import tar_at_far
from .ijbs import ijbs_identification, pool_templates
from .verification import verification_accuracy

__all__ = ["verification_accuracy", "identification", "tar_at_far", "ijbs_identification", "pool_templates"]
