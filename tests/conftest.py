"""Shared fixtures: every test writes into its own temporary results and work folders."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Fast settings for the unit tests: synthetic gratings, a couple of short epochs.
FAST = ["data.dataset=synthetic", "data.synthetic_size=256", "pretrain.epochs=2", "pretrain.warmup_epochs=1",
        "pretrain.batch_size=32", "pretrain.log_every=2", "pretrain.checkpoint_every=1"]


@pytest.fixture
def dirs(tmp_path):
    return [f"run.results_dir={tmp_path / 'results'}", f"run.work_dir={tmp_path / 'work'}"]


@pytest.fixture
def fast_cfg(dirs):
    from core.config import build_config

    def make(*overrides, preset="tiny"):
        return build_config(preset, FAST + dirs + list(overrides))
    return make
