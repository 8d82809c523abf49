"""HOG target (MaskFeat, Wei et al. 2022; NOT in the MAE paper): histograms of oriented gradients
of each patch.

Per colour channel: Sobel gradients (reflect padding), 9 unsigned orientation bins over [0, 180)
degrees with hard assignment weighted by gradient magnitude, summed over 2 x 2 cells per patch (8 px
cells in 16 px patches, as MaskFeat), then the patch's 3 x 4 x 9 = 108 values are L2-normalised.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from core.errors import ConfigError
from core.registry import TARGETS
from core.targets.base import Target

BINS = 9
CELLS = 2  # cells per patch side
SOBEL = torch.tensor([[[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]])  # d/dx (columns)
SOBEL = torch.stack([SOBEL, SOBEL.transpose(1, 2)])  # (2, 1, 3, 3): d/dx, d/dy (rows, downwards)


def orientation_histograms(imgs: torch.Tensor, cell: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, BINS, H / cell, W / cell): magnitude-weighted orientation counts."""
    b, c, h, w = imgs.shape
    x = F.pad(imgs.float().reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="reflect")
    g = F.conv2d(x, SOBEL.to(x.device))
    gx, gy = g[:, 0], g[:, 1]
    angle = torch.atan2(gy, gx) % math.pi  # unsigned: a gradient and its opposite share a bin
    bins = (angle / (math.pi / BINS)).floor().long().clamp_(0, BINS - 1)
    hist = torch.zeros(b * c, BINS, h, w, device=imgs.device).scatter_(1, bins.unsqueeze(1),
                                                                       torch.hypot(gx, gy).unsqueeze(1))
    hist = F.avg_pool2d(hist, cell, divisor_override=1)  # sum over each cell
    return hist.view(b, c, BINS, h // cell, w // cell)


@TARGETS.register("hog", help="histograms of oriented gradients (MaskFeat; not in the MAE paper)")
class HOGTarget(Target):

    def __init__(self, model_cfg, data_cfg):
        super().__init__(model_cfg, data_cfg)
        if self.patch_size % CELLS:
            raise ConfigError(f"model.target=hog needs an even patch size ({CELLS} x {CELLS} cells), "
                              f"got {self.patch_size}")
        self.cell = self.patch_size // CELLS

    @property
    def dim(self):
        return 3 * CELLS * CELLS * BINS

    @torch.no_grad()
    def __call__(self, imgs):
        hist = orientation_histograms(imgs, self.cell)  # (B, C, BINS, gh * CELLS, gw * CELLS)
        b, c, _, h, w = hist.shape
        hist = hist.view(b, c, BINS, h // CELLS, CELLS, w // CELLS, CELLS)
        x = hist.permute(0, 3, 5, 1, 4, 6, 2).reshape(b, (h // CELLS) * (w // CELLS), self.dim)
        return F.normalize(x, dim=-1, eps=1e-6)  # patches in patchify's row-major order
