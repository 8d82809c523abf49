"""Mask sampling strategies (paper Table 1f, Figure 6).

Each returns a bool tensor (B, L), True = masked, with exactly `num_masked(L, ratio)` True per row,
drawn from an explicit torch.Generator so masks depend only on the seed (bit-identical resume).
"""
from __future__ import annotations

import math
import random

import torch

from core.errors import ConfigError


def num_masked(num_patches: int, ratio: float) -> int:
    # as the paper's code: keep int(L * (1 - ratio)); at least one patch visible and one masked
    keep = min(max(int(num_patches * (1 - ratio)), 1), num_patches - 1)
    return num_patches - keep


def random_mask(batch: int, grid: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform random masking: per-sample noise, argsort, mask the top `n`."""
    length = grid * grid
    noise = torch.rand(batch, length, generator=generator)
    order = torch.argsort(noise, dim=1)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask.scatter_(1, order[:, length - num_masked(length, ratio):], True)
    return mask


def block_mask(batch: int, grid: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """BEiT-style block-wise masking: rectangles of random area and aspect ratio (0.3 to 1/0.3)
    until the count is reached; the last rectangle is cut to fit, so the count is exact."""
    length = grid * grid
    target = num_masked(length, ratio)
    min_block = max(1, round(length * 16 / 196))  # BEiT: 16 of 196 patches, scaled to the grid
    seeds = torch.randint(0, 2 ** 62, (batch,), generator=generator).tolist()
    return torch.stack([_one_block_mask(grid, target, min_block, random.Random(s)) for s in seeds])


def _one_block_mask(grid: int, target: int, min_block: int, rng: random.Random) -> torch.Tensor:
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    count, stalls = 0, 0
    log_aspect = (math.log(0.3), math.log(1 / 0.3))
    while count < target and stalls < 100:
        remaining = target - count
        area = rng.uniform(min(min_block, remaining), max(remaining, min_block))
        aspect = math.exp(rng.uniform(*log_aspect))
        h = min(grid, max(1, round(math.sqrt(area * aspect))))
        w = min(grid, max(1, round(math.sqrt(area / aspect))))
        top, left = rng.randint(0, grid - h), rng.randint(0, grid - w)
        cells = [(i, j) for i in range(top, top + h) for j in range(left, left + w) if not mask[i, j]]
        if not cells:
            stalls += 1
            continue
        for i, j in cells[:remaining]:  # cut the last block in raster order: exact count
            mask[i, j] = True
        count += min(len(cells), remaining)
    if count < target:  # pathological grids only: top up with random free cells
        free = (~mask).flatten().nonzero().flatten().tolist()
        for k in rng.sample(free, target - count):
            mask.view(-1)[k] = True
    return mask.flatten()


def grid_stride(ratio: float) -> int:
    """Regular grid sampling keeps one patch of every s x s cell: ratio = 1 - 1/s^2."""
    s = round(1 / math.sqrt(1 - ratio))
    if s < 2 or abs((1 - 1 / s ** 2) - ratio) > 1e-6:
        raise ConfigError(f"grid masking needs a ratio of 1 - 1/s^2 (0.75, 0.888..., 0.9375), got {ratio}")
    return s


def grid_mask(batch: int, grid: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Keep the top-left patch of every s x s cell (the same mask for every image, Figure 6 right)."""
    s = grid_stride(ratio)
    if grid % s:
        raise ConfigError(f"grid masking with stride {s} needs a patch grid divisible by {s}, got {grid}")
    keep = torch.zeros(grid, grid, dtype=torch.bool)
    keep[::s, ::s] = True
    if int(keep.sum()) != grid * grid - num_masked(grid * grid, ratio):
        raise ConfigError(f"grid masking at ratio {ratio} does not fit a {grid}x{grid} patch grid")
    return (~keep).flatten().unsqueeze(0).expand(batch, -1).clone()


STRATEGIES = {"random": random_mask, "block": block_mask, "grid": grid_mask}


def make_mask(strategy: str, batch: int, grid: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    return STRATEGIES[strategy](batch, grid, ratio, generator)
