"""The references a pretrained encoder must beat to show it learned something (docs/evaluation.md,
"Does pretraining learn?"): the linear probe and kNN of

- `pixels`: no model, the normalised image's pixels flattened into one feature vector;
- `random`: the encoder of the architecture as pretraining run `pretrain.seed` starts it, never trained.

Each is an evaluation whose parent is this source instead of a pretraining run; its id holds the
source, so the random encoder of seed 1 is another parent than that of seed 0.
"""
from __future__ import annotations

import torch
from torch import nn

from core.config import Config
from core.errors import UserError
from core.eval.weights import NOT_ENCODER
from core.archs import ARCHS
from core.model import initial_mae

PIXELS, RANDOM = "pixels", "random"
SOURCES = (PIXELS, RANDOM)
PROTOCOLS = ("linprobe", "knn")  # frozen features only: fine-tuning random weights is the scratch baseline


class PixelFeatures(nn.Module):
    """The 'encoder' of the pixel baseline: (B, 3, H, W) -> (B, 2, 3HW), the flattened image as the
    cls token and as the only patch token, so either pooling (cls, avg) reads the pixels."""

    def __init__(self, img_size: int):
        super().__init__()
        self.embed_dim = 3 * img_size * img_size

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        flat = imgs.flatten(1)
        return torch.stack([flat, flat], 1)


def parent(cfg: Config, source: str) -> str:
    """The parent an evaluation of `source` records: 'pixels' or 'init-random-seed<pretrain.seed>'."""
    return PIXELS if source == PIXELS else f"init-random-seed{cfg.pretrain.seed}"


def check(source: str, protocol: str) -> None:
    if source not in SOURCES:
        raise UserError(f"unknown feature source {source!r}; choose one of: {', '.join(SOURCES)}")
    if protocol not in PROTOCOLS:
        raise UserError(f"the {source} baseline is evaluated with {' or '.join(PROTOCOLS)}, not {protocol} "
                        f"(a randomly initialised model trained end to end is the scratch baseline)")


def features(cfg: Config, source: str):
    """What the evaluation reads: the pixel module, or the random encoder's state dict."""
    if source == PIXELS:
        return PixelFeatures(cfg.model.img_size)
    m = cfg.model
    # the prediction head's width leaves the encoder unchanged (core.model.MAE._init): any will do
    state = initial_mae(m, 3 * ARCHS[m.arch]["patch_size"] ** 2, cfg.pretrain.seed).state_dict()
    return {k: v for k, v in state.items() if not k.startswith(NOT_ENCODER)}
