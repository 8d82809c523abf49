"""The mask-sampling picture of the paper's Figure 6: random, block-wise and grid masks on one
image, drawn by core.masking exactly as pretraining draws them."""
from __future__ import annotations

import torch

from core.masking import make_mask
from core.model import ARCHS, patchify, unpatchify
from plots.reconstruction import _grey, to_display, validation_images
from plots.style import figure

# Figure 6's three panels: (strategy, ratio)
PANELS = (("random", 0.75), ("block", 0.5), ("grid", 0.75))


def mask_sampling_figure(cfg, index: int = 0, seed: int = 0):
    """One validation image of the preset's dataset, unmasked and under each strategy of PANELS."""
    img = validation_images(cfg, index + 1)[index:index + 1]
    p = ARCHS[cfg.model.arch]["patch_size"]
    grid = cfg.model.img_size // p
    patches = patchify(img, p)
    fig, axes = figure(len(PANELS) + 1, width=2.0, height=2.2)
    shown = [("original", img)]
    for strategy, ratio in PANELS:
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
