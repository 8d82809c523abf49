"""The in-suite discrete VAE tokenizer (the dvae_token target's default, core.targets.dvae): a conv
encoder with 8x downsampling to vocabulary logits, a codebook and a mirrored conv decoder. Its
training job is core.targets.tokenizer.

Grid alignment: the tokenizer downsamples by 8 and must give one token per MAE patch, so it sees
the image resized to (img_size / patch_size) * 8 px: 112 px at 224 / 16 (as BEiT), 64 px at the tiny
preset's 32 / 4.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DOWN = 8  # tokenizer downsampling: one token per DOWN x DOWN pixels of its view


def token_grid(model_cfg, patch: int) -> tuple[int, int]:
    """(tokens per side, tokenizer view size in px): one token per MAE patch."""
    grid = model_cfg.img_size // patch
    return grid, grid * DOWN


def resize(imgs: torch.Tensor, size: int) -> torch.Tensor:
    if imgs.shape[-1] == size:
        return imgs.float()
    return F.interpolate(imgs.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 1))

    def forward(self, x):
        return x + self.body(x)


class DVAE(nn.Module):
    """Conv encoder (8x down: a stride-4 then a stride-2 conv) -> vocabulary logits; a codebook; a
    mirrored transposed-conv decoder. Deliberately light: the tiny preset's trains in seconds."""

    def __init__(self, vocab: int, width: int):
        super().__init__()
        w, e = width, 2 * width
        self.vocab = vocab
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 4, stride=4), nn.ReLU(),
            nn.Conv2d(w, e, 4, stride=2, padding=1), ResBlock(e), nn.ReLU(),
            nn.Conv2d(e, vocab, 1))
        self.codebook = nn.Parameter(torch.randn(vocab, e) / math.sqrt(e))
        self.decoder = nn.Sequential(
            nn.Conv2d(e, e, 1), ResBlock(e), nn.ReLU(),
            nn.ConvTranspose2d(e, w, 4, stride=2, padding=1), ResBlock(w), nn.ReLU(),
            nn.ConvTranspose2d(w, 3, 4, stride=4))

    def decode_soft(self, q: torch.Tensor) -> torch.Tensor:
        """q: (B, V, g, g) code probabilities -> image."""
        return self.decoder(torch.einsum("bvhw,ve->behw", q, self.codebook))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, g, g) long -> image."""
        return self.decoder(self.codebook[tokens].permute(0, 3, 1, 2))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).argmax(dim=1)
