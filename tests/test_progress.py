"""Progress while training: the record updated every epoch (read here from a second thread while
the run trains), plain log lines, and TensorBoard event files read back with tensorboard's reader."""
import json
import os
import threading
import time

import pytest

from core import results
from core.progress import Progress, duration


def scalars(tb_dir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(tb_dir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_record_advances_mid_run_and_tensorboard_holds_the_curves(fast_cfg, capsys):
    from core.eval import evaluate
    from core.train import pretrain

    cfg = fast_cfg("pretrain.epochs=4", "pretrain.log_every=4", "eval.linprobe.epochs=2",
                   "eval.linprobe.warmup_epochs=0", "eval.linprobe.batch_size=64")
    path = results.record_path(cfg.run.results_dir, cfg.run_id())
    seen, stop = [], threading.Event()

    def watch():  # what `status` does: read the record while the run writes it
        while not stop.is_set():
            try:
                with open(path) as f:
                    rec = json.load(f)  # written atomically: never half a file
            except FileNotFoundError:
                continue
            if rec["status"] == "running" and rec.get("progress") and \
                    (not seen or seen[-1]["epoch"] != rec["progress"]["epoch"]):
                seen.append(rec["progress"])
            time.sleep(0.002)

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        rec = pretrain(cfg, progress=True)
    finally:
        stop.set()
        reader.join()
    assert rec["status"] == "done"
    epochs = [p["epoch"] for p in seen]
    assert epochs[:3] == [1, 2, 3] and epochs == sorted(epochs), epochs  # the 4th may be overwritten by 'done'
    first = seen[0]
    assert first["epochs"] == 4 and first["steps"] == 32 and first["step"] == 8
    assert first["loss"] == rec["history"]["loss"][0] and first["images_per_s"] > 0 and first["eta_s"] > 0
    assert first["elapsed_s"] > 0 and first["lr"] > 0 and first["eta_at"].endswith("+0000")

    out = capsys.readouterr().out.splitlines()  # plain lines a cluster user can tail, none of tqdm's
    step_lines = [ln for ln in out if f"pretrain {cfg.run_id()} epoch" in ln and " done " not in ln]
    done_lines = [ln for ln in out if f"pretrain {cfg.run_id()} epoch" in ln and " done " in ln]
    assert len(step_lines) == 32 // 4 and len(done_lines) == 4
    assert "epoch 1/4 step 4/32 loss " in step_lines[0] and " lr " in step_lines[0] and " img/s " in step_lines[0]
    assert " eta 0:00:" in step_lines[0] and "epoch 4/4 done step 32/32" in done_lines[-1]

    tb = scalars(rec["tensorboard_dir"])
    assert [s for s, _ in tb["train/loss"]] == [8, 16, 24, 32]
    assert [v for _, v in tb["train/loss"]] == pytest.approx(rec["history"]["loss"], rel=1e-6)
    assert [s for s, _ in tb["train/loss_step"]] == list(range(4, 33, 4)) and len(tb["train/lr"]) == 8
    assert all(v > 0 for _, v in tb["train/images_per_s"])

    ev = evaluate(cfg, "linprobe", progress=True)  # evaluation accuracy goes to TensorBoard too
    tb = scalars(ev["tensorboard_dir"])
    assert [v for _, v in tb["eval/val_top1"]] == pytest.approx(ev["history"]["val_top1"], rel=1e-6)
    assert len(tb["train/loss"]) == 2 and os.path.isabs(ev["tensorboard_dir"])
    assert f"{ev['run_id']} epoch 2/2 done" in capsys.readouterr().out


def test_resumed_run_continues_its_curve_without_duplicates(fast_cfg, monkeypatch):
    """A crash after the epoch-2 checkpoint, in epoch 4: the resumed session replaces what the first
    one wrote after step 16, and the curve is the record's history, each step once."""
    import core.train

    cfg = fast_cfg("pretrain.epochs=4", "pretrain.log_every=100", "pretrain.checkpoint_every=2")
    real, calls = core.train.make_mask, []

    def crash_in_fourth_epoch(*a, **k):
        calls.append(1)
        if len(calls) == 3 * 8 + 3:
            raise RuntimeError("node lost")
        return real(*a, **k)
    monkeypatch.setattr(core.train, "make_mask", crash_in_fourth_epoch)
    with pytest.raises(RuntimeError):
        core.train.pretrain(cfg, progress=False)
    assert [s for s, _ in scalars(results.read_record(cfg.run.results_dir, cfg.run_id())["tensorboard_dir"])
            ["train/loss"]] == [8, 16, 24]
    monkeypatch.setattr(core.train, "make_mask", real)
    rec = core.train.pretrain(cfg, progress=False)
    assert rec["resumed_from"].endswith("ckpt-000000016.pt")
    tb = scalars(rec["tensorboard_dir"])
    assert [s for s, _ in tb["train/loss"]] == [8, 16, 24, 32]
    assert [v for _, v in tb["train/loss"]] == pytest.approx(rec["history"]["loss"], rel=1e-6)


def test_eta_and_rate_use_this_sessions_steps():
    p = Progress("x", epochs=10, steps_per_epoch=10, images_per_step=32, step=40, elapsed_before=1000.0, log=False)
    p.t0 -= 20.0  # 20 s into this session
    assert p.rate(40) is None and p.eta_s(40) is None  # nothing measured yet
    assert p.rate(50) == pytest.approx(10 * 32 / 20, rel=1e-3)
    assert p.eta_s(50) == pytest.approx(50 * 20 / 10, rel=1e-3)  # 50 steps left at 2 s a step
    payload = p.epoch_end(4, 50, 0.5, 1e-3)
    assert payload["epoch"] == 5 and payload["elapsed_s"] == pytest.approx(1020.0, rel=1e-3)
    assert duration(100_000) == "1d 3:46:40" and duration(59.6) == "0:01:00" and duration(None) == "?"
