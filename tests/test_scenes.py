"""The digit scenes (core/scenes.py): pinned pixels, disjoint glyphs between the splits, balanced
classes, no global RNG touched, and the scenes preset end to end (pretraining, linear probe)."""
import hashlib
import random

import numpy as np
import pytest
import torch

import core.scenes as S
from core.config import KNOWN_SIZES, build_config
from core.data import build_dataset
from core.eval import evaluate
from core.train import pretrain

# sha256 of the images and labels: a change here is another dataset (core/scenes.py, VERSION)
PINNED = {"train": "b8911c156f748044", "val": "0c6f142e435401ca"}


def digest(split: str, size: int = 32) -> str:
    images, labels, _ = S.scenes(split, size)
    return hashlib.sha256(images.tobytes() + labels.astype(np.int64).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("split", ["train", "val"])
def test_the_same_pixels_for_the_same_seed(split):
    assert digest(split) == PINNED[split]
    first = S.scenes(split, 32)[0].copy()
    S.scenes.cache_clear()  # rendered again, not read back from the cache
    assert np.array_equal(S.scenes(split, 32)[0], first)


def test_splits_differ_and_share_no_glyph():
    from sklearn.datasets import load_digits  # the glyphs themselves, to compare pixel content

    train, val = S.scenes("train", 32), S.scenes("val", 32)
    assert not set(train[2]) & set(val[2])  # by glyph index
    glyphs = load_digits().images
    seen = {glyphs[i].tobytes() for i in set(train[2])}
    assert not any(glyphs[i].tobytes() in seen for i in set(val[2]))  # by the glyph's pixels
    # no val scene is a train scene; every val glyph is used, and 1440 of the 1442 train glyphs
    seen = {img.tobytes() for img in train[0]}
    assert not any(img.tobytes() in seen for img in val[0])
    split = S.split_glyphs(load_digits().target)
    assert set(val[2]) == set(split["val"]) and len(train[2]) == len(set(train[2])) == 1440
    assert set(train[2]) <= set(split["train"]) and len(split["train"]) == 1442


@pytest.mark.parametrize("split", ["train", "val"])
def test_shapes_labels_and_class_balance(split):
    images, labels, glyph = S.scenes(split, 32)
    n = KNOWN_SIZES["scenes"][split]
    assert images.shape == (n, 3, 32, 32) and images.dtype == np.uint8 and labels.shape == glyph.shape == (n,)
    from sklearn.datasets import load_digits
    assert np.array_equal(labels, load_digits().target[glyph])  # the label is the glyph's digit
    counts = np.bincount(labels, minlength=10)
    assert counts.min() >= 0.9 * n / 10 and counts.max() <= 1.1 * n / 10
    # the labelled glyph is drawn: every scene has glyph pixels on its background
    assert (images.reshape(n, -1).max(1) > images.reshape(n, -1).min(1)).all()
    ds = build_dataset(build_config("scenes").data, split, 32)
    assert len(ds) == n and torch.equal(ds.images, torch.from_numpy(images))


def test_generation_leaves_the_global_rngs_alone():
    torch.manual_seed(7), random.seed(7), np.random.seed(7)
    state = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    S.scenes.cache_clear()
    S.scenes("val", 16)  # rendered, not read from the cache
    assert torch.equal(torch.get_rng_state(), state[0]) and random.getstate() == state[1]
    assert np.array_equal(np.random.get_state()[1], state[2])


def test_scenes_preset_pretrains_and_probes(fast_cfg):
    """The scenes preset end to end for one short epoch: the suite's pretraining and linear probe
    read the scenes (2130 val images) through the usual data path."""
    cfg = fast_cfg("data.dataset=scenes", "pretrain.epochs=1", "pretrain.warmup_epochs=0",
                   "eval.linprobe.epochs=2", "eval.linprobe.warmup_epochs=0", preset="scenes")
    assert (cfg.model.img_size, cfg.model.arch) == (32, "vit_tiny_patch8")
    pt = pretrain(cfg, progress=False)
    assert pt["status"] == "done" and pt["config"]["data"]["dataset"] == "scenes"
    lin = evaluate(cfg, "linprobe", progress=False)
    assert lin["status"] == "done" and lin["parent"] == pt["run_id"] and 0 <= lin["metrics"]["top1"] <= 100


def test_the_scenes_preset_runs_under_two_process_ddp(tmp_path):
    """Pretraining, linear probe and kNN on digit scenes (and the raw-pixel and random-weight
    references) in one 2-process gloo group: every unit done, each record of world size 2."""
    from tests.ddp_units import run_plan_on_two_processes, scenes_plan

    overrides = ["pretrain.epochs=1", "pretrain.warmup_epochs=0", "eval.linprobe.epochs=2",
                 "eval.linprobe.warmup_epochs=1", f"run.results_dir={tmp_path / 'results'}",
                 f"run.work_dir={tmp_path / 'work'}"]
    plan = scenes_plan(overrides)
    assert len(plan.pretrains) == 1 and len(plan.units) == 7
    run_plan_on_two_processes("scenes", plan, overrides, tmp_path)
