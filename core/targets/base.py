"""The interface every reconstruction target implements, the two pixel targets, and helpers the
targets in their own files share (a fitted artefact's cache, the token loss)."""
from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from core.checkpoint import load_file
from core.errors import CheckpointError, TrainingFailed
from core.model import ARCHS, patchify
from core.registry import TARGETS


class Target:
    name = ""  # set by @TARGETS.register

    def __init__(self, model_cfg, data_cfg):
        self.model_cfg, self.data_cfg = model_cfg, data_cfg
        self.patch_size = ARCHS[model_cfg.arch]["patch_size"]

    @property
    def dim(self) -> int:
        """Width of the decoder's prediction per patch."""
        raise NotImplementedError

    def prepare(self, dataset, cache_dir: str, device: torch.device, results_dir: str | None = None,
                run_cfg=None) -> None:
        """Fit or load whatever the target needs (a PCA basis, a tokenizer). Default: nothing.
        A job with its own run record (the dVAE tokenizer) writes it to results_dir (default: cache_dir);
        the record carries the preset and config of run_cfg, the run it is prepared for."""

    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        """Per-patch targets, (B, L, dim) (or (B, L) class indices), computed without gradients."""
        raise NotImplementedError

    def patch_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss per patch, (B, L). Default: mean squared error over the patch's values."""
        return ((pred.float() - target.float()) ** 2).mean(dim=-1)

    def loss(self, pred, target, mask, all_patches: bool = False) -> torch.Tensor:
        per_patch = self.patch_loss(pred, target)
        if all_patches:
            return per_patch.mean()
        m = mask.to(per_patch.dtype)
        return (per_patch * m).sum() / m.sum()

    def to_pixels(self, pred: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor | None:
        """Predicted patches as normalised pixels (B, L, p*p*3) for pictures, or None if the
        target is not pixels."""
        return None


@TARGETS.register("pixel", help="normalised pixels of each patch (the Table 1 baseline)")
class PixelTarget(Target):
    """Normalised image pixels of each patch (the Table 1 baseline)."""

    @property
    def dim(self):
        return self.patch_size ** 2 * 3

    @torch.no_grad()
    def __call__(self, imgs):
        return patchify(imgs, self.patch_size)

    def to_pixels(self, pred, imgs):
        return pred.float()


@TARGETS.register("norm_pixel", help="pixels normalised by each patch's own mean and variance")
class NormPixelTarget(PixelTarget):
    """Pixels normalised by each patch's own mean and variance (eps 1e-6), as in the paper's code
    (torch's default unbiased variance)."""

    @torch.no_grad()
    def __call__(self, imgs):
        x = patchify(imgs, self.patch_size).float()
        mean, var = x.mean(dim=-1, keepdim=True), x.var(dim=-1, keepdim=True)
        return (x - mean) / (var + 1e-6) ** 0.5

    def to_pixels(self, pred, imgs):
        # Un-normalise with the true patch statistics of the input image: an oracle for mean and
        # variance, which the model never predicts (the paper's Figure 3 pictures do the same).
        x = patchify(imgs, self.patch_size).float()
        mean, var = x.mean(dim=-1, keepdim=True), x.var(dim=-1, keepdim=True)
        return pred.float() * (var + 1e-6) ** 0.5 + mean


def load_cached(path: str, key: dict) -> dict | None:
    """A fitted artefact (PCA basis, tokenizer) cached at `path`, if it loads and was made for `key`;
    else None, and the caller fits it again: a damaged or stale cache file is never trusted."""
    try:
        blob = load_file(path)  # weights_only=True; missing, damaged or not a dict: CheckpointError
    except CheckpointError:
        return None
    return blob if blob.get("key") == key else None


def cross_entropy_patch_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per-patch cross-entropy for token targets: logits (B, L, V), tokens (B, L) -> (B, L)."""
    return F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(), reduction="none").view(tokens.shape)


def wait_s() -> float:
    """How long a rank waits for rank 0 to prepare an artifact: MAE_PREPARE_WAIT_S, default 4 h (a
    tokenizer on ImageNet). A bound, so a rank whose rank 0 died or never trains it stops with a
    message instead of waiting forever."""
    return float(os.environ.get("MAE_PREPARE_WAIT_S") or 4 * 3600)


def wait_for_rank0(found, what: str, hint: str, poll_s: float):
    """What `found()` returns once it is not None (it may raise to give up early: rank 0 failed);
    after wait_s() a one-line TrainingFailed naming `what` and `hint`, the command that prepares it."""
    limit, t0 = wait_s(), time.monotonic()
    while True:
        value = found()
        if value is not None:
            return value
        waited = time.monotonic() - t0
        if waited >= limit:
            raise TrainingFailed(f"{what}: waited {limit:.0f} s (MAE_PREPARE_WAIT_S) for rank 0 to prepare it; {hint}")
        time.sleep(min(poll_s, max(0.1, limit - waited)))


def wait_for_cached(path: str, key: dict, what: str, hint: str, poll_s: float = 10.0) -> dict:
    """The artifact rank 0 is making at `path` (load_cached), once it is there (wait_for_rank0)."""
    print(f"rank {os.environ.get('RANK')}: waiting up to {wait_s():.0f} s for rank 0 to prepare the {what} {path}",
          flush=True)
    return wait_for_rank0(lambda: load_cached(path, key), f"the {what} {path}", hint, poll_s)
