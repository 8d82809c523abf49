"""The reconstruction targets' names (paper Table 1d), so core.config checks model.target without
importing the torch classes. core.targets.TARGETS maps each to its class (tests/test_targets.py
checks the two agree)."""
from __future__ import annotations

TARGET_NAMES = ("pixel", "norm_pixel", "pca", "dvae_token", "hog")
