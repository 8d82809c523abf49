"""FLOPs and GPU-hours of a sweep's units, for `submit --dry-run` (docs/cluster.md)."""
from __future__ import annotations

from functools import lru_cache

from core.data import build_dataset
from core.flops import encoder_forward_flops, mae_forward_flops
from core.model import ARCHS
from core.presets import IMAGES, TIER_NAMES, TIER_OF, TIERS
from core.targets import build_target

# Images per split where counting them would mean listing a million files: ImageNet-1k, unless the
# preset is a tier with a dataset of its own (core/presets.py IMAGES: ImageNet-100, CIFAR).
IMAGENET_IMAGES = IMAGES["paper"]


def images(cfg, split: str) -> int:
    if cfg.data.dataset == "imagefolder":
        return IMAGES.get(cfg.run.preset, IMAGENET_IMAGES)[split]
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


def grid_hours(plan, tflops: float) -> dict:
    """GPU-hours of the whole plan, done or not: `total`, `by_ablation` (a unit several ablations
    share counts in each), and the baseline alone: its pretraining (`baseline_pretrain`) and with
    that run's evaluations (`baseline`)."""
    hours = {rid: gpu_hours(unit_flops(u) or 0.0, tflops) for rid, u in plan.units.items()}
    by_ablation = dict.fromkeys((c.ablation for c in plan.cells), 0.0)  # in the plan's order
    for rid, unit in plan.units.items():
        for name in {a for a, _, _ in unit.users}:
            by_ablation[name] += hours[rid]
    base = next((c for c in plan.cells if c.is_baseline and c.pretrain_id and not c.unavailable), None)
    evals = list(base.eval_ids.values()) + [i for ch in base.eval_choices.values() for i in ch.values()] if base else []
    return {"total": sum(hours.values()), "by_ablation": by_ablation,
            "baseline_pretrain": hours[base.pretrain_id] if base else 0.0,
            "baseline": (hours[base.pretrain_id] + sum(hours[i] for i in set(evals))) if base else 0.0}


def tier_line(cfg) -> str:
    """Which tier a preset is, or rehearses: its encoder, data, image size and baseline epochs."""
    preset = cfg.run.preset
    tier = TIER_OF.get(preset, preset)
    if tier not in TIER_NAMES:
        return f"preset {preset} is not one of the tiers ({', '.join(TIERS)}; docs/tiers.md)"
    encoder, data = TIER_NAMES[tier]
    where = f"tier {tier} ({TIERS.index(tier) + 1} of {len(TIERS)}: {' > '.join(TIERS)})"
    if preset != tier:
        return f"preset {preset}: the miniature rehearsal of {where}, {encoder} on {data} (docs/tiers.md)"
    return (f"{where}: {encoder} on {data} at {cfg.model.img_size} px, baseline {cfg.pretrain.epochs} pretraining "
            f"epochs (docs/tiers.md)")
