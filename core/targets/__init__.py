"""Reconstruction targets (paper Table 1d): small classes with one interface.

A target turns a batch of normalised images into per-patch targets, says how wide the decoder's
prediction head must be, and scores predictions on the masked patches. Add one by subclassing
`Target` (core/targets/base.py) with `@TARGETS.register(name, params=[...])` on the class, in its own
file here or in a plugin (docs/extending.md): the registry (core.registry) is the one list.
"""
from __future__ import annotations

from core.registry import TARGETS
# each module registers its target; in this order (Table 1d's, then HOG) `list` and `config` show them
from core.targets import pca  # noqa: F401
from core.targets import dvae  # noqa: F401
from core.targets import hog  # noqa: F401
from core.targets.base import Target

__all__ = ["TARGETS", "Target", "build_target"]


def build_target(model_cfg, data_cfg) -> Target:
    return TARGETS[model_cfg.target](model_cfg, data_cfg)
