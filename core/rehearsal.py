"""The rehearsal of the paper sweep (README "Before you submit: rehearse"): its data and its summary.

The rehearsal presets (core/presets.py: REHEARSAL, REHEARSAL_OF, SCALED) run the paper preset's plan,
or a tier's, unit for unit at miniature size, through the same launchers: torchrun for `run --rehearse`, SLURM arrays for
`submit --rehearse`. This module writes the small ImageFolder of real JPEG files it trains on and
sums up how every unit ended.
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from core import results
from core.checkpoint import atomic_write, write_text
from core.presets import TIER_OF, is_rehearsal
from core.sweep import unit_state

# 4 classes x (4 train + 2 val) images: the 16 of a training batch, a val split every rank sees
CLASSES, PER_CLASS = 4, {"train": 4, "val": 2}
SIZES = ((80, 80), (96, 72), (72, 88))  # width, height: resize and crop see non-square images
MANIFEST = "rehearsal.json"


def write_imagefolder(root: str, seed: int = 0) -> int:
    """root/{train,val}/class_k/*.jpg: oriented colour gratings, one orientation and hue per class,
    with noise. Written once (a manifest marks a complete folder); returns the images written."""
    if os.path.exists(os.path.join(root, MANIFEST)):
        return 0
    rng = np.random.default_rng(seed)
    n = 0
    for split, per_class in PER_CLASS.items():
        for k in range(CLASSES):
            folder = os.path.join(root, split, f"class_{k}")
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                w, h = SIZES[(i + k) % len(SIZES)]
                yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
                angle = np.pi * k / CLASSES
                wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 0.35 + rng.uniform(0, 2 * np.pi))
                hue = np.roll(np.array([0.9, 0.5, 0.2], dtype=np.float32), k)
                img = 0.5 + 0.4 * wave[..., None] * hue + 0.08 * rng.standard_normal((h, w, 3))
                pil = Image.fromarray((img.clip(0, 1) * 255).astype(np.uint8))
                # atomic: every torchrun rank may write the folder, and a reader sees whole files only
                atomic_write(os.path.join(folder, f"{split}_{k}_{i}.jpg"),
                             lambda tmp: pil.save(tmp, format="JPEG", quality=90))
                n += 1

    write_text(os.path.join(root, MANIFEST), json.dumps({"classes": CLASSES, "per_class": PER_CLASS, "seed": seed}))
    return n


def ensure_data(cfg, log=print) -> None:
    """The rehearsal's ImageFolder at cfg.data.path, written if not there yet (rehearsals only)."""
    if not is_rehearsal(cfg.run.preset):
        return
    n = write_imagefolder(cfg.data.path)
    if n:
        log(f"rehearsal data: {n} JPEG images in {cfg.data.path}")


# --------------------------------------------------------------------------- outcome and summary

def outcome_path(cfg) -> str:
    return os.path.join(cfg.run.results_dir, "sweeps", cfg.run.preset, "rehearsal.json")


def save_outcome(cfg, status: dict, reasons: dict) -> None:
    """What the runner saw of each unit, for the summary the launching process prints."""
    blob = json.dumps({rid: {"status": st, "reason": reasons.get(rid)} for rid, st in status.items()}, indent=1)
    path = outcome_path(cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text(path, blob)


def load_outcome(cfg) -> dict:
    try:
        with open(outcome_path(cfg)) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return {}


def unit_outcomes(plan, cfg, outcome: dict) -> dict[str, tuple[str, str | None]]:
    """{run id: (state, reason)}: the runner's word where it has one, else the unit's record."""
    out = {}
    for rid, unit in plan.units.items():
        seen = outcome.get(rid)
        rec = results.read_record(cfg.run.results_dir, rid)
        if seen:
            out[rid] = (seen["status"], seen.get("reason") or (rec or {}).get("reason"))
        else:
            state = unit_state(rec)
            out[rid] = ("not run" if state == "pending" else state, (rec or {}).get("reason"))
    return out


def cell_keys(plan) -> set:
    """(ablation, variant, seed) of the plan's unavailable cells."""
    return {(c.ablation, c.variant, c.seed) for c in plan.unavailable}


def summary_lines(plan, cfg, outcome: dict, wall_s: float, how: str,
                  expected: frozenset = frozenset()) -> tuple[list[str], bool]:
    """The closing screen: units done, failed (with their reason), skipped, and the wall time;
    and whether every unit is done and every unavailable variant is one the tier itself cannot
    build (`expected`, cell_keys of the tier's plan: Figure 9's 24 blocks in a 12-block ViT-B)."""
    states = unit_outcomes(plan, cfg, outcome)
    kinds: dict[str, int] = {}
    for u in plan.units.values():
        kinds[u.kind] = kinds.get(u.kind, 0) + 1
    counts: dict[str, int] = {}
    for state, _ in states.values():
        counts[state] = counts.get(state, 0) + 1
    lines = [f"rehearsal of the {TIER_OF.get(plan.preset, plan.preset)} plan: {len(plan.units)} units ("
             + ", ".join(f"{n} {k}" for k, n in kinds.items()) + f") of {len({a for u in plan.units.values() for a, _, _ in u.users})} "
             f"ablations, {how}",
             "  " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "failed", "skipped"))
             + "".join(f", {n} {s}" for s, n in sorted(counts.items()) if s not in ("done", "failed", "skipped"))]
    for rid, (state, reason) in states.items():
        if state != "done":
            unit = plan.units[rid]
            who = ", ".join(sorted({f"{a}/{v}" for a, v, _ in unit.users}))
            text = " ".join(str(reason).split())[:160] if reason else ""
            lines.append(f"  {state} {unit.kind} {rid} ({who})" + (f": {text}" if text else ""))
    for cell in plan.unavailable:
        mirrored = " (unavailable in the tier too)" if (cell.ablation, cell.variant, cell.seed) in expected else ""
        lines.append(f"  unavailable {cell.ablation}/{cell.variant}{mirrored}: {cell.unavailable}")
    lines.append(f"  wall time {wall_s / 60:.1f} min; records in {os.path.join(cfg.run.results_dir, 'runs')}")
    return lines, counts.get("done", 0) == len(plan.units) and cell_keys(plan) <= set(expected)
