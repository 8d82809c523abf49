"""Mask sampling strategies (paper Table 1f, Figure 6), registered in core.registry.MASKS.

Each returns a bool tensor (B, L), True = masked, with exactly `num_masked(L, ratio)` True per row,
drawn from an explicit torch.Generator so masks depend only on the seed (bit-identical resume).
A new strategy is one function with `@MASKS.register(name)`, here or in a plugin (docs/extending.md);
tests/test_masking.py checks every registered one. `figure_ratio`: the ratio Figure 6 shows it at.
"""
from __future__ import annotations

import math
import random

import torch

from core.archs import ARCHS
from core.mask_rules import check_grid, num_masked
from core.registry import MASKS


@MASKS.register("random", help="uniform random (the paper's)", figure_ratio=0.75)
def random_mask(batch: int, grid: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Uniform random masking: per-sample noise, argsort, mask the top `n`."""
    length = grid * grid
    noise = torch.rand(batch, length, generator=generator)
    order = torch.argsort(noise, dim=1)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask.scatter_(1, order[:, length - num_masked(length, ratio):], True)
    return mask


@MASKS.register("block", help="BEiT-style blocks", figure_ratio=0.5)
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


def _grid_fits(cfg) -> None:
    """Config time: the ratio and the patch grid admit a regular grid (ConfigError if not)."""
    check_grid(cfg.model.img_size // ARCHS[cfg.model.arch]["patch_size"], cfg.model.mask_ratio)


# per_sample=False: the same pattern for every image and seed (tests/test_masking.py)
@MASKS.register("grid", help="regular grid: one kept patch per s x s cell", check=_grid_fits, figure_ratio=0.75,
                per_sample=False)
def grid_mask(batch: int, grid: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Keep the top-left patch of every s x s cell (the same mask for every image, Figure 6 right)."""
    s = check_grid(grid, ratio)
    keep = torch.zeros(grid, grid, dtype=torch.bool)
    keep[::s, ::s] = True
    return (~keep).flatten().unsqueeze(0).expand(batch, -1).clone()


def make_mask(strategy: str, batch: int, grid: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    return MASKS[strategy](batch, grid, ratio, generator)
