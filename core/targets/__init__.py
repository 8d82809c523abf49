"""Reconstruction targets (paper Table 1d): small classes with one interface.

A target turns a batch of normalised images into per-patch targets, says how wide the decoder's
prediction head must be, and scores predictions on the masked patches. Add one by subclassing
`Target` (core/targets/base.py), registering it in TARGETS and naming it in core/target_names.py.
"""
from __future__ import annotations

from core.targets.base import NormPixelTarget, PixelTarget, Target
from core.targets.dvae import DVAETokenTarget
from core.targets.hog import HOGTarget
from core.targets.pca import PCATarget

TARGETS: dict[str, type[Target]] = {t.name: t for t in (PixelTarget, NormPixelTarget, PCATarget, DVAETokenTarget,
                                                        HOGTarget)}


def build_target(model_cfg, data_cfg) -> Target:
    return TARGETS[model_cfg.target](model_cfg, data_cfg)
