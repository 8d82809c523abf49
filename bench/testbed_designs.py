"""Candidate digit-scene designs against docs/testbed.md's criteria (issue 24): for each design and
seed, the suite's own pretraining and linear probe (run_all.py, in process), a linear probe of a
fresh never-trained encoder (eval linprobe --init) and logistic regression on raw pixels.

PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/testbed_designs.py DESIGN [SEEDS...] [key=value ...]
Prints one JSON line per seed and one for the design; the runs' records go under $TESTBED_DIR
(default /tmp/testbed), one folder per design and overrides, never into results/.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

import core.scenes as S
import run_all
from core.config import build_config
from core.archs import ARCHS
from core.model import MAE

# The generator's constants as first written (core/scenes.py, design A); every design below changes these,
# so each reads the same whatever core/scenes.py's defaults (design M) are.
V1 = dict(GLYPH_SIDE=(8, 20), FRAGMENTS=4, FRAGMENT_SIDE=(3, 6), TEXTURE=64, NOISE=24, BG_MAX=256, POLARITY="any",
          LIFT=96, GREY=False, TRAIN_SCENES=1440, VAL_SCENES_PER_GLYPH=6)
# generator constants (core/scenes.py) of each design; the config overrides of each design
DESIGNS = {
    "A": (V1, []),  # scenes v1 as first written: any polarity, 4 fragments, 8..20 px glyph
    "B": ({**V1, **dict(POLARITY="light", BG_MAX=128, LIFT=96, FRAGMENTS=2, FRAGMENT_SIDE=(3, 5), GLYPH_SIDE=(12, 20),
               TEXTURE=32, NOISE=16)}, []),
    "C": ({**V1, **dict(POLARITY="light", BG_MAX=128, LIFT=96, FRAGMENTS=0, GLYPH_SIDE=(12, 20), TEXTURE=32, NOISE=16)}, []),
    # plain backgrounds: a flat colour, no texture or noise
    "D": ({**V1, **dict(FRAGMENTS=0, GLYPH_SIDE=(12, 24), TEXTURE=0, NOISE=0)}, []),
    "E": ({**V1, **dict(FRAGMENTS=2, FRAGMENT_SIDE=(3, 5), GLYPH_SIDE=(12, 24), TEXTURE=0, NOISE=0)}, []),
    "F": ({**V1, **dict(POLARITY="light", BG_MAX=128, LIFT=96, FRAGMENTS=0, GLYPH_SIDE=(12, 24), TEXTURE=0, NOISE=0)}, []),
    # large glyphs, a few pixels of jitter, random colours of either polarity
    "H": ({**V1, **dict(FRAGMENTS=0, GLYPH_SIDE=(24, 28), TEXTURE=0, NOISE=0)}, []),
    "I": ({**V1, **dict(FRAGMENTS=2, FRAGMENT_SIDE=(3, 5), GLYPH_SIDE=(24, 28), TEXTURE=32, NOISE=16)}, []),
    # which nuisance stops it: colour (J: lighter glyph, small jitter) or position (K: grey, full jitter)
    "J": ({**V1, **dict(POLARITY="light", BG_MAX=128, LIFT=96, FRAGMENTS=0, GLYPH_SIDE=(24, 28), TEXTURE=0, NOISE=0)}, []),
    "K": ({**V1, **dict(POLARITY="light", BG_MAX=1, LIFT=255, FRAGMENTS=0, GLYPH_SIDE=(12, 24), TEXTURE=0, NOISE=0)}, []),
    # grey: position alone (L), a narrower scale range (M), either polarity with a little jitter (N)
    "L": ({**V1, **dict(POLARITY="light", BG_MAX=1, LIFT=255, FRAGMENTS=0, GLYPH_SIDE=(24, 24), TEXTURE=0, NOISE=0)}, []),
    "M": ({**V1, **dict(POLARITY="light", BG_MAX=1, LIFT=255, FRAGMENTS=0, GLYPH_SIDE=(16, 24), TEXTURE=0, NOISE=0)}, []),
    "N": ({**V1, **dict(GREY=True, POLARITY="any", BG_MAX=256, LIFT=96, FRAGMENTS=0, GLYPH_SIDE=(24, 28), TEXTURE=0, NOISE=0)}, []),
    # M with 4x the scenes an epoch (run with pretrain.epochs=4 for the same steps)
    "M4": ({**V1, **dict(POLARITY="light", BG_MAX=1, LIFT=255, FRAGMENTS=0, GLYPH_SIDE=(16, 24), TEXTURE=0, NOISE=0,
                TRAIN_SCENES=5760)}, []),
}


def raw_pixel_lr(size: int) -> float:
    from sklearn.linear_model import LogisticRegression  # only here
    from sklearn.preprocessing import StandardScaler

    x, y, _ = S.scenes("train", size)
    xv, yv, _ = S.scenes("val", size)
    x, xv = (a.reshape(len(a), -1).astype(np.float32) / 255 for a in (x, xv))
    sc = StandardScaler().fit(x)
    best = 0.0
    for c in (0.001, 0.01, 0.1):  # the best of three regularisations, read on val: generous to pixels
        m = LogisticRegression(C=c, max_iter=500).fit(sc.transform(x), y)
        best = max(best, m.score(sc.transform(xv), yv))
    return 100 * best


def top1(results: str, kind: str, before: set) -> float:
    runs = os.path.join(results, "runs")
    new = [f for f in os.listdir(runs) if f.startswith(kind) and f not in before]
    rec = json.load(open(os.path.join(runs, sorted(new)[-1])))
    return rec["metrics"]["top1"]


def main(argv):
    design, rest = argv[0], argv[1:]
    seeds = [int(a) for a in rest if a.isdigit()] or [0]
    extra = [a for a in rest if not a.isdigit()]
    consts, overrides = DESIGNS[design]
    for k, v in consts.items():
        setattr(S, k, v)
    S.scenes.cache_clear()
    tag = design + "".join("_" + e for e in extra)  # records of one design and overrides together
    root = os.path.join(os.environ.get("TESTBED_DIR", "/tmp/testbed"), tag)
    results, work = os.path.join(root, "results"), os.path.join(root, "work")
    base = ["--preset", "scenes", "--quiet", f"run.results_dir={results}", f"run.work_dir={work}", *overrides, *extra]
    cfg = build_config("scenes", base[3:])
    torch.set_num_threads(1)
    out = {"design": design, "extra": extra, "raw_lr": raw_pixel_lr(cfg.model.img_size)}
    os.makedirs(os.path.join(results, "runs"), exist_ok=True)
    for seed in seeds:
        row = {}
        t = time.time()
        assert run_all.main(["pretrain", *base, f"pretrain.seed={seed}"]) == 0
        row["pretrain_s"] = time.time() - t
        for pool in ("cls", "avg"):
            before = set(os.listdir(os.path.join(results, "runs")))
            t = time.time()
            assert run_all.main(["eval", "linprobe", *base, f"pretrain.seed={seed}", f"eval.linprobe.pool={pool}"]) == 0
            row[f"lp_{pool}_s"] = time.time() - t
            row[f"mae_lp_{pool}"] = top1(results, "linprobe", before)
            torch.manual_seed(seed)
            init = os.path.join(root, f"random-{seed}.pt")
            ps = ARCHS[cfg.model.arch]["patch_size"]  # the weights pretraining of this seed starts from
            torch.save({"model": MAE(cfg.model, ps * ps * 3).state_dict()}, init)
            before = set(os.listdir(os.path.join(results, "runs")))
            assert run_all.main(["eval", "linprobe", *base, "--init", init, f"eval.linprobe.pool={pool}"]) == 0
            row[f"rand_lp_{pool}"] = top1(results, "linprobe", before)
        out[seed] = row
        print(json.dumps({"design": design, "seed": seed, "raw_lr": out["raw_lr"], **row}), flush=True)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
