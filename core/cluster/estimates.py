"""FLOPs and GPU-hours of a sweep's units, for `submit --dry-run` (docs/cluster.md)."""
from __future__ import annotations

from functools import lru_cache

from core.data import build_dataset
from core.flops import encoder_forward_flops, mae_forward_flops
from core.model import ARCHS
from core.targets import build_target

# Images per split where counting them would mean listing a million files: ImageNet-1k.
IMAGENET_IMAGES = {"train": 1_281_167, "val": 50_000}


def images(cfg, split: str) -> int:
    if cfg.data.dataset == "imagefolder":
        return IMAGENET_IMAGES[split]
    return len(build_dataset(cfg.data, split, cfg.model.img_size))


@lru_cache(maxsize=None)
def _mae_flops(model_cfg, data_cfg) -> int:
    return mae_forward_flops(model_cfg, build_target(model_cfg, data_cfg).dim)


@lru_cache(maxsize=None)
def _encoder_flops(arch: str, img_size: int) -> int:
    return encoder_forward_flops(arch, img_size)


def unit_flops(unit) -> float | None:
    """Training FLOPs of one unit: forward FLOPs per image x passes x images x epochs, a backward
    pass counted as two forwards. None for a protocol this does not know."""
    cfg, e = unit.cfg, unit.cfg.eval
    if unit.kind == "pretrain":
        return 3.0 * _mae_flops(cfg.model, cfg.data) * images(cfg, "train") * cfg.pretrain.epochs
    enc = _encoder_flops(cfg.model.arch, cfg.model.img_size)
    train, val = images(cfg, "train"), images(cfg, "val")
    if unit.kind == "knn":  # one forward pass over both splits
        return float(enc * (train + val))
    if unit.kind == "linprobe":  # frozen encoder: forward only
        return float(enc * (train * e.linprobe.epochs + val))
    if unit.kind in ("finetune", "scratch"):
        epochs = e.finetune.epochs if unit.kind == "finetune" else e.scratch.epochs
        return float(enc * (3 * train * epochs + val))
    if unit.kind == "partial":  # backward through the last k blocks only
        k, depth = e.finetune.blocks or 0, ARCHS[cfg.model.arch]["depth"]
        return float(enc * ((1 + 2 * k / depth) * train * e.finetune.epochs + val))
    return None


def gpu_hours(flops: float, tflops: float) -> float:
    return flops / (tflops * 1e12) / 3600
