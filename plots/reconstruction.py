"""Reconstructions like the paper's Figures 2-3: for a few validation images of a pretrained run,
original | masked | reconstruction | reconstruction with the visible patches pasted back.

Normalised-pixel models (norm_pixel) predict each patch with its own mean and variance taken out.
To show them as pictures we put back the mean and variance of the same patch of the ORIGINAL image
(the target's `to_pixels`): an oracle the model never predicts, which the paper's pictures also use.
The caption says so. Targets that are not pixels (tokens, features) cannot be drawn and are skipped
with a note.
"""
from __future__ import annotations

import os

import torch

from core import checkpoint, results
from core.config import config_from_dict
from core.data import Transformed, build_dataset, eval_transform
from core.masking import make_mask
from core.model import MAE, patchify, unpatchify
from core.targets import Target, build_target
from plots.style import figure

MASK_GREY = 0.5  # masked patches drawn mid-grey


def load_pretrained(results_dir: str, run_id: str):
    """(config, model in eval mode, target, record) of a finished pretraining run's final checkpoint."""
    rec, state, path = results.load_pretrain_run(results_dir, run_id)  # exactly its final weights
    cfg = config_from_dict(state.get("config") or rec["config"])
    target = build_target(cfg.model, cfg.data)
    model = MAE(cfg.model, target.dim)
    model.load_state_dict(checkpoint.model_state(state, path))
    return cfg, model.eval(), target, rec


def draws_pixels(target) -> bool:
    return type(target).to_pixels is not Target.to_pixels


def validation_images(cfg, n: int) -> torch.Tensor:
    """The first n validation images, as evaluation sees them (normalised)."""
    data = build_dataset(cfg.data, "val", cfg.model.img_size)
    images = Transformed(data, eval_transform(cfg.model.img_size, cfg.data.mean, cfg.data.std))
    got = [images[(i, 0)] for i in range(min(n, len(images)))]
    return torch.stack([g[0] for g in got if g is not None])


def to_display(x: torch.Tensor, cfg) -> torch.Tensor:
    """Normalised (B, 3, H, W) -> [0, 1] for imshow."""
    mean = torch.tensor(cfg.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)


@torch.no_grad()
def reconstruct(cfg, model, target, imgs: torch.Tensor, seed: int = 0):
    """(masked, reconstruction, pasted) in display space, and the mask (B, L)."""
    p = model.patch_size
    mask = make_mask(cfg.model.mask_strategy, imgs.shape[0], model.grid, cfg.model.mask_ratio,
                     torch.Generator().manual_seed(seed))
    pred = model(imgs, mask)
    pixels = target.to_pixels(pred, imgs)  # normalised pixels (norm_pixel: with the true patch statistics)
    if pixels is None:
        return None, None, None, mask
    recon = unpatchify(pixels.float(), p)
    m = mask.unsqueeze(-1).float()
    orig_p = patchify(imgs, p)
    masked = unpatchify(orig_p * (1 - m) + _grey(cfg, orig_p) * m, p)
    pasted = unpatchify(orig_p * (1 - m) + pixels.float() * m, p)
    return to_display(masked, cfg), to_display(recon, cfg), to_display(pasted, cfg), mask


def _grey(cfg, patches):
    """MASK_GREY in display space, as normalised values in patch layout (row, column, channel)."""
    mean, std = torch.tensor(cfg.data.mean), torch.tensor(cfg.data.std)
    grey = (MASK_GREY - mean) / std  # per channel
    return grey.repeat(patches.shape[-1] // 3).view(1, 1, -1)


def reconstruction_figure(results_dir: str, run_id: str, n_images: int = 4, seed: int = 0):
    """(Figure or None, caption). None with the reason as caption for a target that is not pixels."""
    cfg, model, target, rec = load_pretrained(results_dir, run_id)
    if not draws_pixels(target):
        return None, f"{run_id}: target {cfg.model.target} predicts no pixels; no reconstruction to draw"
    if type(target).prepare is not Target.prepare:  # PCA basis, tokenizer: cached by pretraining
        # the cache lies beside the run's checkpoints (<work_dir>/cache), wherever this command runs
        cache = os.path.join(os.path.dirname(os.path.abspath(rec["checkpoint_dir"])), "cache")
        target.prepare(build_dataset(cfg.data, "train", cfg.model.img_size), cache, torch.device("cpu"))
    imgs = validation_images(cfg, n_images)
    masked, recon, pasted, _ = reconstruct(cfg, model, target, imgs, seed)
    if recon is None:
        return None, f"{run_id}: target {cfg.model.target} cannot be decoded to pixels here; no reconstruction"
    columns = (("original", to_display(imgs, cfg)), ("masked", masked), ("reconstruction", recon),
               ("reconstruction + visible", pasted))
    fig, axes = figure(len(columns), len(imgs), width=1.6, height=1.6)
    for r in range(len(imgs)):
        for c, (name, x) in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(x[r].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if r == 0:
                ax.set_title(name, fontsize=8)
    m = cfg.model
    caption = (f"{run_id}: {m.target} target, {m.mask_strategy} masking at {m.mask_ratio:.0%}, "
               f"{len(rec.get('history', {}).get('loss', []))} epochs (record status {rec.get('status')}); "
               f"validation images of {cfg.data.dataset}")
    if m.target == "norm_pixel":
        caption += ("; predictions un-normalised with each patch's true mean and variance from the original "
                    "image (an oracle the model never predicts, as in the paper's figures)")
    fig.suptitle(f"{m.target}, mask {m.mask_ratio:.0%}", fontsize=9)
    fig.tight_layout()
    return fig, caption
