"""The run store and the loop skeleton (issue 14): one typed record that reads and writes the JSON
records as they are, one writer every unit goes through, one loader of a finished pretraining run,
and the helpers the three training loops share."""
import json
import math
import os
import signal

import pytest
import torch

from core import checkpoint, results
from core.device import grad_scaler
from core.distributed import StopFlag
from core.errors import Preempted, TrainingFailed, UserError
from core.eval import evaluate
from core.eval.context import Session
from core.eval.supervised import cosine_schedule, fit
from core.loop import Resumable, epoch_mean, stop_point
from core.targets import tokenizer
from core.train import pretrain

# Records as the suite wrote them before the typed record existed (abridged): a pretraining run
# (no parent), an evaluation (parent null for the scratch baseline), a tokenizer, an early failure.
OLD_RECORDS = [
    {"run_id": "pt-0123456789ab", "kind": "pretrain", "status": "done", "preset": "tiny",
     "config": {"model": {"mask_ratio": 0.75}}, "history": {"loss": [0.9, 0.5]}, "metrics": {"final_loss": 0.5},
     "checkpoint_dir": "/w/pt-0123456789ab", "last_checkpoint_sha256": "ab" * 32, "world_size": 1,
     "resumed_from": None, "progress": {"epoch": 2, "epochs": 2}, "torch_version": "2.5.1"},
    {"run_id": "scratch-0123456789ab", "kind": "scratch", "status": "failed", "parent": None,
     "reason": "non-finite training loss (nan) in epoch 0", "config": {}, "protocol_config": {"epochs": 2},
     "wall_time_s": 1.5},
    {"run_id": "tok-0123456789ab", "kind": "tokenizer", "status": "done", "tokenizer": {"vocab": 16},
     "history": {"loss": [0.1]}, "metrics": {"perplexity": 9.5}, "weights": "/w/cache/tok.pt"},
    {"run_id": "pt-feedfeedfeed", "started_at": "2026-01-01T00:00:00+0000", "status": "failed", "reason": "x"},
]


@pytest.mark.parametrize("old", OLD_RECORDS, ids=lambda r: r["run_id"])
def test_the_typed_record_reads_and_writes_todays_records_exactly(tmp_path, old):
    rec = results.RunRecord.from_dict(old)
    assert rec.run_id == old["run_id"] and rec.status == old["status"] and rec.to_dict() == old
    assert rec.done == (old["status"] == "done")
    if "parent" not in old:  # an absent field stays absent: not written as null
        assert "parent" not in rec.to_dict()
    results.write_record(str(tmp_path), rec)
    with open(results.record_path(str(tmp_path), old["run_id"])) as f:
        assert f.read() == json.dumps(old, indent=1, sort_keys=True)  # the file format of before
    assert results.read_record(str(tmp_path), old["run_id"]) == old


def test_finished_and_the_pretrain_loader_refuse_what_is_not_a_finished_pretraining_run(tmp_path):
    d = str(tmp_path)
    for rec in OLD_RECORDS:
        results.write_record(d, rec)
    assert results.finished(d, "pt-0123456789ab")["status"] == "done"
    assert results.finished(d, "scratch-0123456789ab") is None and results.finished(d, "pt-nothing") is None
    with pytest.raises(UserError, match="no run record for pt-nothing"):
        results.load_pretrain_run(d, "pt-nothing")
    with pytest.raises(UserError, match="tok-0123456789ab is a tokenizer record, not a pretraining run"):
        results.load_pretrain_run(d, "tok-0123456789ab")
    with pytest.raises(UserError, match="names no final checkpoint"):
        results.load_pretrain_run(d, "pt-0123456789ab")


def test_every_record_of_a_pretraining_its_tokenizer_and_an_evaluation_goes_through_one_writer(fast_cfg, monkeypatch):
    """A dvae_token pretraining (its tokenizer trained on the way) and a kNN evaluation of it: every
    record file holds exactly what results.write_record last wrote for it, and the tokenizer's record
    carries the preset and config of the run it was trained for (it had neither)."""
    cfg = fast_cfg("model.target=dvae_token", "model.dvae_epochs=1", "model.dvae_vocab=16", "model.dvae_width=8",
                   "data.synthetic_size=64", "pretrain.epochs=1", "pretrain.warmup_epochs=0")
    real, last = results.write_record, {}

    def counting(results_dir, record):
        rec = record.to_dict() if isinstance(record, results.RunRecord) else dict(record)
        last[rec["run_id"]] = json.loads(json.dumps(rec, default=results._json_default))
        return real(results_dir, record)
    monkeypatch.setattr(results, "write_record", counting)
    pt = pretrain(cfg, progress=False)
    ev = evaluate(cfg, "knn", progress=False)
    files = sorted(os.listdir(results.runs_dir(cfg.run.results_dir)))
    kinds = {results.read_record(cfg.run.results_dir, f[:-5])["kind"] for f in files}
    assert kinds == {"pretrain", "tokenizer", "knn"} and len(files) == 3
    for name in files:
        assert results.read_record(cfg.run.results_dir, name[:-5]) == last[name[:-5]], name
    [tok] = [r for r in last.values() if r["kind"] == "tokenizer"]
    assert tok["status"] == "done" and tok["preset"] == "tiny" and tok["config"] == pt["config"]
    assert ev["parent"] == pt["run_id"] and ev["status"] == "done"


# --------------------------------------------------------------------------- the loop skeleton

def test_epoch_mean_is_the_mean_and_a_non_finite_one_fails_with_the_loops_words():
    assert epoch_mean(torch.tensor(6.0, dtype=torch.float64), 4, lambda v: "unused") == 1.5
    assert epoch_mean(torch.tensor(0.0), 0, lambda v: "unused") == 0.0  # no step: 0, not nan
    with pytest.raises(TrainingFailed, match=r"^non-finite loss \(nan\) in epoch 3$"):
        epoch_mean(torch.tensor(float("nan")), 2, lambda v: f"non-finite loss ({v}) in epoch 3")
    with pytest.raises(TrainingFailed, match=r"\(inf\)"):
        epoch_mean(torch.tensor(math.inf), 1, lambda v: f"non-finite ({v})", reduce=False)


def test_resumable_state_round_trips_named_state_dicts_and_values(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    saver = Resumable(str(tmp_path / "ck"), keep=1, model=model, optimizer=opt, ema=None)
    assert saver.latest() is None
    saver.save(1, step=1)
    path = saver.save(7, step=7, history=[0.5])
    assert sorted(os.listdir(tmp_path / "ck")) == [os.path.basename(path)]  # keep=1
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    state, found = Resumable(str(tmp_path / "ck"), model=fresh, optimizer=fresh_opt, ema=None).latest()
    values = Resumable(None, model=fresh, optimizer=fresh_opt, ema=None).load(state)
    assert found == path and values["step"] == 7 and values["history"] == [0.5] and values["ema"] is None
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    # ranks > 0 and runs without a folder save nothing
    assert Resumable(str(tmp_path / "other"), main=False, model=model).save(1) is None
    assert Resumable(None, model=model).save(1) is None and not (tmp_path / "other").exists()


def test_a_stop_signal_is_caught_in_core_distributed_and_a_stop_point_saves_then_raises():
    saved = []
    with StopFlag() as stop:
        stop_point(stop, torch.device("cpu"), "step 3", lambda: saved.append(1) or "/x/ckpt")
        assert saved == []  # no signal: nothing happens
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(Preempted, match=f"stopped by signal {int(signal.SIGUSR1)} at step 3; checkpoint /x/ckpt"):
            stop_point(stop, torch.device("cpu"), "step 3", lambda: saved.append(1) or "/x/ckpt")
    assert saved == [1]
    stop_point(None, torch.device("cpu"), "step 3")  # no flag: never stops


def test_fit_takes_its_session_explicitly(tmp_path):
    """Two evaluations' loops in one process, each with its own session (checkpoint folder): no
    module-global session decides where they save."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))

    class Loader:
        steps_per_epoch, batch_size = 2, 16

        def epoch(self, epoch, start_step=0):
            for s in range(start_step, 2):
                yield x[s * 16:(s + 1) * 16], y[s * 16:(s + 1) * 16], 0

    for name in ("a", "b"):
        model = torch.nn.Linear(4, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        hist = fit(model, opt, cosine_schedule(opt, 2, 0, 2), Loader(), epochs=2, criterion=torch.nn.CrossEntropyLoss(),
                   precision="fp32", device=torch.device("cpu"), scaler=grad_scaler("fp32", torch.device("cpu")),
                   seed=0, validators={"": lambda: (50.0, 100.0)}, progress=False,
                   ses=Session(ckpt_dir=str(tmp_path / name)))
        assert len(hist["loss"]) == 2 and os.listdir(tmp_path / name) == ["ckpt-000000004.pt"]


def test_a_stopped_tokenizer_resumes_to_the_weights_of_an_uninterrupted_one(fast_cfg, tmp_path, monkeypatch):
    """The tokenizer's loop on the skeleton too: SIGUSR1 in its first step stops it after that step
    with a checkpoint and a `preempted` record; the same job again resumes and ends with the
    weights and history of an uninterrupted training (it had no checkpoints: a stop lost it all)."""
    tok = ["model.target=dvae_token", "model.dvae_epochs=2", "model.dvae_vocab=16", "model.dvae_width=8",
           "data.synthetic_size=128"]  # 2 steps an epoch
    monkeypatch.setattr(tokenizer, "LOG_EVERY", 1)  # a look at the stop flag every step
    ref = tokenizer.tokenizer_job(fast_cfg(*tok), progress=False)
    cfg = fast_cfg(*tok, f"run.results_dir={tmp_path}/r2", f"run.work_dir={tmp_path}/w2")
    real, calls = tokenizer.resize, []

    def resize_then_signal(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(*a, **k)
    monkeypatch.setattr(tokenizer, "resize", resize_then_signal)
    with pytest.raises(Preempted, match=f"stopped by signal {int(signal.SIGUSR1)} at step 1 of tokenizer"):
        tokenizer.tokenizer_job(cfg, progress=False)
    rec = results.read_record(cfg.run.results_dir, ref["run_id"])
    assert rec["status"] == "preempted" and rec["reason"] == f"signal {int(signal.SIGUSR1)}"
    assert os.path.isfile(rec["last_checkpoint"]) and rec["config"] == cfg.to_dict()
    monkeypatch.setattr(tokenizer, "resize", real)
    done = tokenizer.tokenizer_job(cfg, progress=False)
    assert done["status"] == "done" and done["history"] == ref["history"]
    assert not os.path.exists(os.path.dirname(rec["last_checkpoint"]))  # the cached weights replace it
    a, b = checkpoint.load_file(done["weights"])["model"], checkpoint.load_file(ref["weights"])["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
