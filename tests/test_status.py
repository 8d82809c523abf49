"""A status that never hides a failure: every way a unit ends leaves its status and reason in its
record, however early; `status` shows them, running units' progress, evaluations of a failed
pretraining as 'not run', and tells cancelled from preempted from the requeue limit."""
import os
import platform

import numpy as np
import pytest

import run_all
from core import results
from core.ablation import Ablation
from core.config import build_config
from core.errors import DataError, UserError
from core.sweep import make_plan, run_plan, unit_status, unit_statuses
from tests.conftest import FAST

EVAL_FAST = ["eval.knn.k=5"]
TWO = Ablation(name="two", source="extra", title="a sweep of two", baseline="pixel",
               variants={"pixel": {}, "dvae": {"model.target": "dvae_token"}}, small_evals=("knn",))


def record(cfg, rid=None):
    return results.read_record(cfg.run.results_dir, rid or cfg.run_id())


# --------------------------------------------------------------------------- final status, however early

def test_failure_before_the_loop_leaves_a_failed_record(fast_cfg, monkeypatch):
    """The target failing to prepare (here the PCA fit): there was no record at all before."""
    import core.train

    cfg = fast_cfg("model.target=pca")

    def broken(*a, **k):
        raise np.linalg.LinAlgError("SVD did not converge")
    monkeypatch.setattr(core.train, "build_target", lambda *a: type("T", (), {"prepare": broken})())
    with pytest.raises(np.linalg.LinAlgError):
        core.train.pretrain(cfg, progress=False)
    rec = record(cfg)
    assert rec["status"] == "failed" and rec["kind"] == "pretrain" and rec["config"] == cfg.to_dict()
    assert rec["reason"] == "LinAlgError: SVD did not converge"


def test_a_missing_dvae_path_is_bad_input_alone_and_a_failed_unit_in_a_sweep(dirs, capsys):
    """`pretrain` alone: one line, nothing written. In a sweep (what a cluster job runs): the
    variant's record says why."""
    from core.train import pretrain

    code = run_all.main(["pretrain", "--quiet", *FAST, *dirs, "model.target=dvae_token",
                         "model.dvae_path=/nowhere/encoder.pkl"])
    assert code == 2 and "model.dvae_path=/nowhere/encoder.pkl does not exist" in capsys.readouterr().err
    overrides = FAST + dirs + EVAL_FAST + ["model.dvae_path=/nowhere/encoder.pkl"]
    cfg = build_config("tiny", overrides)
    assert not os.path.exists(results.runs_dir(cfg.run.results_dir))
    plan = make_plan([TWO], "tiny", overrides=overrides)
    dvae_unit = plan.pretrains[1]

    def only_dvae_trains(c, **k):
        return pretrain(c, **k) if c.model.target == "dvae_token" else {"status": "done"}
    with pytest.raises(UserError):
        run_plan(plan, pretrain_fn=only_dvae_trains, eval_fn=lambda *a, **k: {"status": "done"}, log=lambda *a: None)
    rec = record(cfg, dvae_unit.run_id)
    assert rec["status"] == "failed" and rec["reason"].startswith("model.dvae_path=/nowhere/encoder.pkl does not exist")


@pytest.mark.parametrize("exc, status, reason", [
    (DataError("image /x.jpg is unreadable"), "failed", "image /x.jpg is unreadable"),
    (ValueError("a bug"), "failed", "ValueError: a bug"),
    (KeyboardInterrupt(), "cancelled", "interrupted (Ctrl-C)"),
])
def test_every_exception_mid_run_ends_the_record(fast_cfg, monkeypatch, exc, status, reason):
    """Only TrainingFailed and CheckpointError were recorded; a DataError (data.on_corrupt=error),
    a bug or Ctrl-C left 'running'. The exception itself still reaches the caller."""
    import core.train

    cfg = fast_cfg()
    real, calls = core.train.make_mask, []

    def fail_in_second_epoch(*a, **k):
        calls.append(1)
        if len(calls) == 8 + 2:
            raise exc
        return real(*a, **k)
    monkeypatch.setattr(core.train, "make_mask", fail_in_second_epoch)
    with pytest.raises(type(exc)):
        core.train.pretrain(cfg, progress=False)
    rec = record(cfg)
    assert rec["status"] == status and rec["reason"] == reason
    assert len(rec["history"]["loss"]) == 1 and rec["progress"]["epoch"] == 1  # what it did is kept


def test_evaluation_failing_on_its_data_is_recorded(fast_cfg, monkeypatch):
    import core.eval
    from core.eval import eval_run_id, evaluate
    from core.train import pretrain

    cfg = fast_cfg("pretrain.epochs=1", "pretrain.warmup_epochs=0")
    pretrain(cfg, progress=False)

    def unreadable(cfg):
        raise DataError("the val split is unreadable")
    monkeypatch.setattr(core.eval, "eval_data", unreadable)
    with pytest.raises(DataError):
        evaluate(cfg, "knn", progress=False)
    rec = record(cfg, eval_run_id(cfg, "knn"))
    assert rec["status"] == "failed" and rec["reason"] == "the val split is unreadable" and rec["parent"] == cfg.run_id()


def test_tokenizer_failure_is_recorded_for_the_tokenizer_and_its_run(fast_cfg, monkeypatch):
    from core.targets import tokenizer
    from core.train import pretrain

    cfg = fast_cfg("model.target=dvae_token", "model.dvae_epochs=1")

    def broken(*a, **k):
        raise RuntimeError("CUDA error: out of memory")
    monkeypatch.setattr(tokenizer, "_train", broken)
    with pytest.raises(RuntimeError):
        pretrain(cfg, progress=False)
    [tok] = [r for r in results.iter_records(cfg.run.results_dir) if r.get("kind") == "tokenizer"]
    assert tok["status"] == "failed" and tok["reason"] == "RuntimeError: CUDA error: out of memory"
    assert record(cfg)["status"] == "failed" and record(cfg)["reason"] == tok["reason"]


def test_tokenizer_record_shows_progress_while_it_trains(fast_cfg):
    from core.targets import dvae

    cfg = fast_cfg("model.target=dvae_token", "model.dvae_epochs=2")
    writes = []
    real = results.write_record
    try:
        results.write_record = lambda d, rec: writes.append(dict(rec)) or real(d, rec)
        rec = dvae.tokenizer_job(cfg, progress=False)
    finally:
        results.write_record = real
    running = [w for w in writes if w["status"] == "running"]
    assert [w["progress"]["epoch"] for w in running] == [1, 2] and running[0]["progress"]["epochs"] == 2
    assert rec["status"] == "done" and record(cfg, rec["run_id"])["status"] == "done"


def test_a_sweep_records_a_unit_failing_before_it_starts_and_skips_its_evaluations(dirs, capsys):
    """`run` in the background: the missing dataset is in the record and `status`, not only in a log."""
    overrides = FAST + dirs + EVAL_FAST + ["data.dataset=imagefolder", "data.path=/nonexistent/imagenet"]
    plan = make_plan([TWO], "tiny", overrides=overrides)
    with pytest.raises(DataError):
        run_plan(plan, progress=False, log=lambda *a: None)
    cfg = build_config("tiny", overrides)
    first, dvae_run = plan.artifacts[0], plan.pretrains[1]  # the dvae variant's tokenizer runs first
    assert first.kind == "tokenizer" and dvae_run.needs == first.run_id
    assert record(cfg, first.run_id)["reason"] == "dataset path /nonexistent/imagenet does not exist"
    statuses = unit_statuses(plan, cfg.run.results_dir)
    assert statuses[dvae_run.run_id].state == "not run"
    evals = [s for s in statuses.values() if s.unit.parent == dvae_run.run_id]
    assert evals and all(s.state == "not run" and s.reason == f"parent not run: {dvae_run.run_id}" for s in evals)
    lines = []
    run_all.print_status(plan, cfg, out=lines.append)
    assert f"  failed tokenizer {first.run_id} (two/dvae): dataset path /nonexistent/imagenet does not exist" in lines
    assert f"  not run pretrain {dvae_run.run_id} (two/dvae): tokenizer failed: {first.run_id}" in lines
    assert f"  not run knn {evals[0].unit.run_id} (two/dvae): parent not run: {dvae_run.run_id}" in lines


# --------------------------------------------------------------------------- cluster jobs

class FakeJobEnv:
    job_id = "4242_1"

    class paths:
        stdout, stderr = "/jobs/4242_1_0_log.out", "/jobs/4242_1_0_log.err"


def test_a_job_failing_before_its_units_start_records_them_all(fast_cfg, monkeypatch):
    """An import error on the node: raised before pretrain() could build a record."""
    from core.cluster import job as cluster_job
    from core.sweep import Unit

    cfgs = [fast_cfg(), fast_cfg("model.mask_ratio=0.5")]
    units = [Unit("pretrain", c.run_id(), c) for c in cfgs]
    monkeypatch.setattr(cluster_job.submitit, "JobEnvironment", FakeJobEnv)
    for name in results.JOB_ENV.values():
        monkeypatch.delenv(name, raising=False)

    def broken_node(self, job):
        raise ImportError("libcudnn.so.9: cannot open shared object file")
    monkeypatch.setattr(cluster_job.ClusterJob, "_run", broken_node)
    with pytest.raises(ImportError):
        cluster_job.ClusterJob("tiny", units)()
    for c in cfgs:
        rec = record(c)
        assert rec["status"] == "failed" and rec["reason"] == "ImportError: libcudnn.so.9: cannot open shared object file"
        assert rec["job_id"] == "4242_1" and rec["job_stdout"] == "/jobs/4242_1_0_log.out"
        assert rec["job_stderr"] == "/jobs/4242_1_0_log.err" and rec["kind"] == "pretrain"


def test_requeue_limit_turns_preempted_into_failed(fast_cfg, monkeypatch):
    from core.cluster import job as cluster_job
    from core.sweep import Unit

    cfg = fast_cfg()
    results.write_record(cfg.run.results_dir, {"run_id": cfg.run_id(), "kind": "pretrain", "status": "preempted",
                                               "reason": "signal 12", "history": {"loss": [1.0]}})
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    job = cluster_job.ClusterJob("tiny", [Unit("pretrain", cfg.run_id(), cfg)], max_requeues=3)
    assert job.checkpoint() is None
    rec = record(cfg)
    assert rec["status"] == "failed" and rec["reason"].startswith("requeue limit reached (3): cluster.max_requeues=3")
    assert rec["history"] == {"loss": [1.0]}
    assert unit_status(rec, {"job_id": "7", "state": "FAILED", "live": False})[0] == "failed"


def job(state, live=False, **kw):
    return {"job_id": "77_0", "state": state, "live": live, "log": "/jobs/77_0_0_log.out", **kw}


@pytest.mark.parametrize("rec, j, want", [
    ({"status": "preempted", "reason": "signal 15"}, job("CANCELLED by 0"), ("cancelled", "job 77_0, log "
     "/jobs/77_0_0_log.out was cancelled (the run saved and stopped: signal 15)")),
    ({"status": "preempted", "reason": "signal 12"}, job("REQUEUED", live=True), ("preempted", "signal 12")),
    ({"status": "preempted", "reason": "signal 15"}, job("FAILED"),
     ("preempted", "signal 15; job 77_0, log /jobs/77_0_0_log.out ended FAILED: submit again to resume")),
    ({"status": "running"}, job("CANCELLED"), ("cancelled", "job 77_0, log /jobs/77_0_0_log.out was cancelled")),
    ({"status": "running"}, job("NODE_FAIL"),
     ("failed", "job 77_0, log /jobs/77_0_0_log.out ended NODE_FAIL while the unit ran")),
    (None, job("PENDING", live=True), ("pending", "job 77_0, log /jobs/77_0_0_log.out is PENDING")),
    (None, job("ENDED", cancelled=True),
     ("cancelled", "job 77_0, log /jobs/77_0_0_log.out was cancelled before the unit started")),
    (None, job("OUT_OF_MEMORY"),
     ("failed", "job 77_0, log /jobs/77_0_0_log.out ended OUT_OF_MEMORY before the unit started")),
    ({"status": "running", "host": platform.node(), "pid": 2 ** 22 + 7}, None,
     ("interrupted", "its process is gone: run the same command again to resume")),
    ({"status": "cancelled", "reason": "interrupted (Ctrl-C)"}, None, ("cancelled", "interrupted (Ctrl-C)")),
])
def test_unit_status_tells_cancelled_preempted_and_failed_apart(rec, j, want):
    assert unit_status(rec, j) == want


# --------------------------------------------------------------------------- the status screen

def test_status_shows_running_units_and_the_expected_finish(dirs):
    overrides = FAST + dirs + EVAL_FAST
    plan = make_plan([TWO], "tiny", overrides=overrides)
    cfg = build_config("tiny", overrides)
    pixel, dvae = plan.pretrains
    results.write_record(cfg.run.results_dir, {"run_id": pixel.run_id, "kind": "pretrain", "status": "done",
                                               "wall_time_s": 600.0})
    [tok] = plan.artifacts  # the dvae run's tokenizer unit: done before the run started
    results.write_record(cfg.run.results_dir, {"run_id": tok.run_id, "kind": "tokenizer", "status": "done",
                                               "wall_time_s": 20.0})
    from core.progress import clock
    results.write_record(cfg.run.results_dir, {
        "run_id": dvae.run_id, "kind": "pretrain", "status": "running", "job_id": "99_1",
        "progress": {"epoch": 3, "epochs": 10, "loss": 0.41234, "images_per_s": 812.4, "elapsed_s": 90.0,
                     "eta_s": 210.0, "eta_at": clock(210.0)}})
    lines = []
    run_all.print_status(plan, cfg, out=lines.append)
    [running] = [ln for ln in lines if ln.startswith("  running ")]
    assert running.startswith(f"  running pretrain {dvae.run_id} (two/dvae): epoch 3/10, loss 0.4123, 812 img/s, "
                              "ETA 0:03:")
    assert running.endswith("UTC), job 99_1")
    [finish] = [ln for ln in lines if ln.startswith("expected finish: ")]
    assert "in 0:03:" in finish and "2 unit(s) without an estimate yet" in finish  # the two kNN: none finished yet


def test_status_watch_refreshes_until_ctrl_c(dirs, capsys, monkeypatch):
    import time

    sleeps = []

    def sleep(s):
        sleeps.append(s)
        if len(sleeps) == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(time, "sleep", sleep)
    assert run_all.main(["status", "mask_token", *dirs, "--watch", "0.5"]) == 0
    out = capsys.readouterr()
    assert sleeps == [0.5, 0.5] and out.out.count("every 0.5 s, Ctrl-C to stop") == 2
    assert out.out.count("mask_token ") >= 2 and "Traceback" not in out.err and out.err == ""


def test_records_hold_absolute_paths_when_folders_are_relative(tmp_path, monkeypatch):
    from core.train import pretrain

    monkeypatch.chdir(tmp_path)
    cfg = build_config("tiny", FAST + ["run.results_dir=results", "run.work_dir=work", "pretrain.epochs=1",
                                       "pretrain.warmup_epochs=0"])
    rec = pretrain(cfg, progress=False)
    for key in ("last_checkpoint", "checkpoint_dir", "tensorboard_dir"):
        assert os.path.isabs(rec[key]) and os.path.exists(rec[key]), key
    assert rec["last_checkpoint"].startswith(str(tmp_path))
