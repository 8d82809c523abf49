"""FLOPs per image, counted by torch.utils.flop_counter on the meta device (no memory, no time)."""
from __future__ import annotations

import functools

import torch
from torch.utils.flop_counter import FlopCounterMode

from core.masking import make_mask
from core.model import MAE, ViTEncoder


@functools.lru_cache(maxsize=256)  # a sweep counts each model once, not once per seed (~0.3 s each)
def mae_forward_flops(model_cfg, pred_dim: int) -> int:
    """Forward FLOPs of one pretraining image (encoder + decoder), counting a multiply-add as 2."""
    with torch.device("meta"):
        model = MAE(model_cfg, pred_dim)
        imgs = torch.empty(1, 3, model_cfg.img_size, model_cfg.img_size)
    grid = model.grid
    mask = make_mask("random", 1, grid, model_cfg.mask_ratio, torch.Generator().manual_seed(0)).to("meta")
    with FlopCounterMode(display=False) as counter:
        model(imgs, mask)
    return int(counter.get_total_flops())


def encoder_forward_flops(arch: str, img_size: int) -> int:
    """Forward FLOPs of the encoder on a whole image (what evaluation runs)."""
    with torch.device("meta"):
        enc = ViTEncoder(arch, img_size)
        imgs = torch.empty(1, 3, img_size, img_size)
    with FlopCounterMode(display=False) as counter:
        enc(imgs)
    return int(counter.get_total_flops())


def _meta_mae(model_cfg, pred_dim: int, batch: int = 1):
    with torch.device("meta"):
        model = MAE(model_cfg, pred_dim)
        imgs = torch.empty(batch, 3, model_cfg.img_size, model_cfg.img_size)
    mask = make_mask("random", batch, model.grid, model_cfg.mask_ratio, torch.Generator().manual_seed(0))
    return model, imgs, mask.to("meta")


def mae_train_flops(model_cfg, pred_dim: int) -> int:
    """Forward + backward FLOPs of one pretraining image, counted directly rather than taken as
    3x the forward: the patch projection needs no input gradient and the fixed position
    embeddings none at all, so the total comes out just under 3x (2.99x for ViT-L)."""
    model, imgs, mask = _meta_mae(model_cfg, pred_dim)
    with FlopCounterMode(display=False) as counter:
        model(imgs, mask).float().pow(2).mean().backward()  # the loss itself is a few elementwise ops
    return int(counter.get_total_flops())


def mae_flops_breakdown(model_cfg, pred_dim: int) -> dict:
    """Forward FLOPs of one image split into encoder blocks, decoder blocks and the rest, with the
    number of tokens each stack sees (cls included): the decoder's cost per token is the paper's
    "<10% computation per token vs. the encoder" (section 3)."""
    model, imgs, mask = _meta_mae(model_cfg, pred_dim)
    with FlopCounterMode(display=False) as counter:
        model(imgs, mask)
    per_module = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}

    def stack(name, depth):
        return sum(per_module.get(f"MAE.{name}.{i}", 0) for i in range(depth))

    total = int(counter.get_total_flops())
    enc, dec = stack("blocks", model.depth), stack("decoder_blocks", len(model.decoder_blocks))
    enc_tokens = 1 + (model.num_patches if model_cfg.mask_token_in_encoder else model.num_visible)
    return {"total": total, "encoder_blocks": enc, "decoder_blocks": dec, "other": total - enc - dec,
            "encoder_tokens": enc_tokens, "decoder_tokens": 1 + model.num_patches}
