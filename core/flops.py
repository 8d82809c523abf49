"""FLOPs per image, counted by torch.utils.flop_counter on the meta device (no memory, no time)."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def mae_forward_flops(model_cfg, pred_dim: int) -> int:
    """Forward FLOPs of one pretraining image (encoder + decoder), counting a multiply-add as 2."""
    from core.masking import make_mask
    from core.model import MAE

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
    from core.model import ViTEncoder

    with torch.device("meta"):
        enc = ViTEncoder(arch, img_size)
        imgs = torch.empty(1, 3, img_size, img_size)
    with FlopCounterMode(display=False) as counter:
        enc(imgs)
    return int(counter.get_total_flops())
