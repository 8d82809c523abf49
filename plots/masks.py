"""The mask-sampling picture of the paper's Figure 6: every registered mask strategy (random, block-wise
and grid, and any a plugin adds) on one image, drawn by core.masking exactly as pretraining draws them."""
from __future__ import annotations

import torch

from core.masking import make_mask
from core.model import ARCHS, patchify, unpatchify
from core.registry import MASKS
from plots.reconstruction import _grey, to_display, validation_images
from plots.style import figure

def panels() -> list[tuple[str, float]]:
    """Figure 6's panels, (strategy, ratio): each registered strategy at the ratio it registered to be
    shown at (the paper's: random 75%, block 50%, grid 75%)."""
    return [(e.name, e.extra.get("figure_ratio", 0.75)) for e in MASKS.entries()]


def mask_sampling_figure(cfg, index: int = 0, seed: int = 0):
    """One validation image of the preset's dataset, unmasked and under each strategy of panels()."""
    img = validation_images(cfg, index + 1)[index:index + 1]
    p = ARCHS[cfg.model.arch]["patch_size"]
    grid = cfg.model.img_size // p
    patches = patchify(img, p)
    shown = [("original", img)]
    fig, axes = figure(len(panels()) + 1, width=2.0, height=2.2)
    for strategy, ratio in panels():
        mask = make_mask(strategy, 1, grid, ratio, torch.Generator().manual_seed(seed)).unsqueeze(-1).float()
        shown.append((f"{strategy} {ratio:.0%}", unpatchify(patches * (1 - mask) + _grey(cfg, patches) * mask, p)))
    for ax, (title, x) in zip(axes[0], shown):
        ax.imshow(to_display(x, cfg)[0].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.suptitle(f"Figure 6: mask sampling on a {grid}x{grid} patch grid ({cfg.data.dataset})")
    fig.tight_layout()
    return fig
