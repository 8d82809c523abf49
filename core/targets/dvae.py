"""dVAE token target (paper Table 1d, BEiT's target): the tokenizer's code of each patch.

Two tokenizers:
- the in-suite discrete VAE (default; the model core.targets.dvae_model, its training job with its
  own run record core.targets.tokenizer);
- OpenAI's DALL-E encoder from a local `encoder.pkl` (model.dvae_path; core.targets.dalle).
"""
from __future__ import annotations

import torch

from core.model import patchify
from core.registry import TARGETS, Param
from core.settings import ATLEAST1, Free, Range
from core.targets.base import Target, cross_entropy_patch_loss
from core.targets.dalle import LOGIT_LAPLACE_EPS, check_dvae_path, load_dalle_encoder
from core.targets.dvae_model import resize, token_grid
from core.targets.tokenizer import prepare_tokenizer, tokenizer_job

# `run_all.py tokenizer` and the sweep plan import the job from here; train checks DALL-E's file here
__all__ = ["DVAETokenTarget", "check_dvae_path", "tokenizer_job"]


def _trained(model: dict) -> bool:
    """Whether the in-suite tokenizer is trained (not with DALL-E's file): its settings count only then."""
    return not model.get("dvae_path")


@TARGETS.register("dvae_token", help="the tokens of a discrete VAE (BEiT's target)",
                  quick={"model.dvae_vocab": 32, "model.dvae_width": 8, "model.dvae_epochs": 1}, params=[
    Param("model.dvae_vocab", 8192, Range(2), "dvae_token target: tokenizer vocabulary", "Table 1d", applies=_trained),
    Param("model.dvae_width", 128, ATLEAST1, "dvae_token target: conv width of the in-suite tokenizer",
          applies=_trained),
    Param("model.dvae_epochs", 10, ATLEAST1, "dvae_token target: training epochs of the in-suite tokenizer",
          applies=_trained),
    Param("model.dvae_path", "", Free("a path"), "dvae_token target: DALL-E encoder.pkl instead of the in-suite "
          "tokenizer")])
class DVAETokenTarget(Target):
    """Target = the tokenizer's argmax code per patch, (B, L) long; head = vocabulary logits;
    loss = cross-entropy on the masked patches."""

    def __init__(self, model_cfg, data_cfg):
        super().__init__(model_cfg, data_cfg)
        self.grid, self.view = token_grid(model_cfg, self.patch_size)
        self.tokenizer = self.dalle = None
        self.vocab = model_cfg.dvae_vocab
        self.record = None

    @property
    def dim(self):
        return self.vocab

    def prepare(self, dataset, cache_dir, device, results_dir=None, progress=False, run_cfg=None):
        if self.model_cfg.dvae_path:
            self.dalle = load_dalle_encoder(self.model_cfg.dvae_path).to(device)
            self.vocab = self.dalle.vocab
        else:
            self.tokenizer, self.record = prepare_tokenizer(dataset, self.model_cfg, self.data_cfg, self.patch_size,
                                                            cache_dir, device, results_dir, progress, run_cfg)
        self.mean = torch.tensor(self.data_cfg.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.data_cfg.std, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, imgs):
        if self.dalle is not None:
            x = (imgs.float() * self.std + self.mean).clamp(0, 1)  # back to [0, 1] pixels
            x = (1 - 2 * LOGIT_LAPLACE_EPS) * resize(x, self.view) + LOGIT_LAPLACE_EPS
            logits = self.dalle(x)
        else:
            logits = self.tokenizer.encoder(resize(imgs, self.view))
        assert logits.shape[-1] == self.grid, (logits.shape, self.grid)  # one token per patch
        return logits.argmax(dim=1).flatten(1)  # (B, L) in patchify's row-major order

    def patch_loss(self, pred, target):
        return cross_entropy_patch_loss(pred, target)

    @torch.no_grad()
    def to_pixels(self, pred, imgs):
        """The in-suite tokenizer decodes the predicted codes back into a picture."""
        if self.tokenizer is None:
            return None
        tokens = pred.argmax(dim=-1).view(-1, self.grid, self.grid)
        return patchify(resize(self.tokenizer.decode(tokens), imgs.shape[-1]), self.patch_size)
