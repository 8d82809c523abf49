import json
import os
import signal

import pytest
import torch

from core import checkpoint, results
from core.errors import Preempted, TrainingFailed
from core.train import ckpt_dir, pretrain


def final_weights(cfg):
    state, _ = checkpoint.latest(ckpt_dir(cfg))
    return state["model"]


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_pretrain_writes_record_and_checkpoint(fast_cfg):
    cfg = fast_cfg()
    rec = pretrain(cfg, progress=False)
    assert rec["status"] == "done" and rec["run_id"] == cfg.run_id()
    assert len(rec["history"]["loss"]) == 2
    assert rec["flops_per_image"] > 0 and rec["images_per_s"] > 0
    on_disk = results.read_record(cfg.run.results_dir, cfg.run_id())
    assert on_disk["status"] == "done" and on_disk["config"]["model"]["mask_ratio"] == 0.75
    assert on_disk["torch_version"] == torch.__version__
    state = checkpoint.load_file(rec["last_checkpoint"])
    assert isinstance(state["config"], dict) and state["global_step"] == 16  # 2 epochs x 8 steps
    # a finished run is not trained again
    mtime = os.path.getmtime(rec["last_checkpoint"])
    assert pretrain(cfg, progress=False)["status"] == "done"
    assert os.path.getmtime(rec["last_checkpoint"]) == mtime


def test_loss_decreases(fast_cfg):
    rec = pretrain(fast_cfg("pretrain.epochs=6", "pretrain.blr=1e-3"), progress=False)
    loss = rec["history"]["loss"]
    assert loss[-1] < 0.8 * loss[0]


def test_resume_from_an_epoch_checkpoint_is_bit_identical(fast_cfg, tmp_path):
    ref = fast_cfg("pretrain.epochs=3")
    pretrain(ref, progress=False)
    cfg = fast_cfg("pretrain.epochs=3", f"run.work_dir={tmp_path / 'w2'}", f"run.results_dir={tmp_path / 'r2'}")
    pretrain(cfg, progress=False)
    # simulate a crash after epoch 2: the newest checkpoint and the finished record are gone
    os.remove(checkpoint.list_checkpoints(ckpt_dir(cfg))[-1])
    os.remove(results.record_path(cfg.run.results_dir, cfg.run_id()))
    rec = pretrain(cfg, progress=False)
    assert rec["resumed_from"].endswith("ckpt-000000016.pt")
    assert_identical(final_weights(cfg), final_weights(ref))


@pytest.mark.parametrize("accum", [1, 2])
def test_stop_signal_mid_epoch_checkpoints_and_resumes_bit_identical(fast_cfg, tmp_path, monkeypatch, accum):
    ref = fast_cfg("pretrain.epochs=2", f"pretrain.accum_iter={accum}")
    pretrain(ref, progress=False)
    cfg = fast_cfg("pretrain.epochs=2", f"pretrain.accum_iter={accum}", f"run.work_dir={tmp_path / 'w2'}",
                   f"run.results_dir={tmp_path / 'r2'}")
    import core.train
    real, calls = core.train.make_mask, []

    def make_mask_then_signal(*a, **k):  # SIGUSR1 arrives during micro-step 11 (mid epoch 2)
        calls.append(1)
        if len(calls) == 11:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(*a, **k)
    monkeypatch.setattr(core.train, "make_mask", make_mask_then_signal)
    with pytest.raises(Preempted):
        pretrain(cfg, progress=False)
    rec = results.read_record(cfg.run.results_dir, cfg.run_id())
    assert rec["status"] == "preempted"
    state, _ = checkpoint.latest(ckpt_dir(cfg))
    assert 0 < state["global_step"] < 16 // accum and state["global_step"] % (8 // accum) != 0
    monkeypatch.setattr(core.train, "make_mask", real)
    assert pretrain(cfg, progress=False)["status"] == "done"
    assert_identical(final_weights(cfg), final_weights(ref))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(fast_cfg, monkeypatch):
    cfg = fast_cfg("pretrain.epochs=3")
    import core.targets.base
    real = core.targets.base.PixelTarget.__call__
    calls = []

    def poisoned(self, imgs):  # the loss goes NaN in epoch 2
        calls.append(1)
        t = real(self, imgs)
        return t * float("nan") if len(calls) > 10 else t
    monkeypatch.setattr(core.targets.base.PixelTarget, "__call__", poisoned)
    with pytest.raises(TrainingFailed, match="non-finite loss"):
        pretrain(cfg, progress=False)
    rec = results.read_record(cfg.run.results_dir, cfg.run_id())
    assert rec["status"] == "failed" and "non-finite" in rec["reason"]
    state, path = checkpoint.latest(ckpt_dir(cfg))
    assert state["global_step"] == 8 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_damaged_newest_checkpoint_falls_back_with_a_warning(fast_cfg):
    cfg = fast_cfg()
    pretrain(cfg, progress=False)
    newest = checkpoint.list_checkpoints(ckpt_dir(cfg))[-1]
    with open(newest, "r+b") as f:
        f.truncate(os.path.getsize(newest) // 2)
    with pytest.warns(UserWarning, match=os.path.basename(newest)):
        state, path = checkpoint.latest(ckpt_dir(cfg))
    assert path != newest and state["global_step"] == 8


def test_record_is_plain_json(fast_cfg):
    cfg = fast_cfg("pretrain.epochs=1")
    pretrain(cfg, progress=False)
    with open(results.record_path(cfg.run.results_dir, cfg.run_id())) as f:
        rec = json.load(f)
    for key in ("run_id", "config", "git_commit", "history", "metrics", "wall_time_s", "images_per_s",
                "flops_per_image", "torch_version", "device"):
        assert key in rec
    df = results.load_records(cfg.run.results_dir)
    assert list(df["run_id"]) == [cfg.run_id()] and "metric.final_loss" in df
