"""How many patches a mask ratio masks, and which grids regular grid masking fits: arithmetic only,
so core.config checks model.mask_strategy=grid without torch (core.masking draws the masks)."""
from __future__ import annotations

import math

from core.errors import ConfigError


def num_masked(num_patches: int, ratio: float) -> int:
    # as the paper's code: keep int(L * (1 - ratio)); at least one patch visible and one masked
    keep = min(max(int(num_patches * (1 - ratio)), 1), num_patches - 1)
    return num_patches - keep


def grid_stride(ratio: float) -> int:
    """Regular grid sampling keeps one patch of every s x s cell: ratio = 1 - 1/s^2."""
    s = round(1 / math.sqrt(1 - ratio))
    if s < 2 or abs((1 - 1 / s ** 2) - ratio) > 1e-6:
        raise ConfigError(f"grid masking needs a ratio of 1 - 1/s^2 (0.75, 0.888..., 0.9375), got {ratio}")
    return s


def check_grid(grid: int, ratio: float) -> int:
    """The stride of grid masking on a grid x grid patch grid; ConfigError if no grid fits."""
    s = grid_stride(ratio)
    if grid % s:
        raise ConfigError(f"grid masking with stride {s} needs a patch grid divisible by {s}, got {grid}")
    kept = len(range(0, grid, s)) ** 2
    if kept != grid * grid - num_masked(grid * grid, ratio):
        raise ConfigError(f"grid masking at ratio {ratio} does not fit a {grid}x{grid} patch grid")
    return s
