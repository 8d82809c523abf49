"""Fault tests: a killed, signalled or starved run loses nothing it finished, and says what broke.

The other halves of the list live beside the code they guard: a non-finite loss in test_train.py
(test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint), a rerun of a finished sweep in
test_sweep.py (test_second_run_of_a_finished_sweep_trains_nothing), bad CLI input in test_cli.py.
"""
import errno
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from core import checkpoint, results
from core.errors import CheckpointError, DataError, UserError
from core.train import ckpt_dir, pretrain
from tests.conftest import FAST

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 32 optimizer steps an epoch, so a signal or a kill lands well inside an epoch
RUN = ["pretrain", "--quiet", "data.dataset=synthetic", "data.synthetic_size=1024", "pretrain.epochs=3",
       "pretrain.warmup_epochs=1", "pretrain.batch_size=32", "pretrain.checkpoint_every=1", "pretrain.log_every=4"]
STEPS_PER_EPOCH = 32


def cli(tmp, *extra):
    return [sys.executable, os.path.join(ROOT, "run_all.py"), *RUN, f"run.results_dir={tmp}/results",
            f"run.work_dir={tmp}/work", *extra]


def run_id(tmp):
    from core.config import build_config
    return build_config("tiny", RUN[2:] + [f"run.results_dir={tmp}/results", f"run.work_dir={tmp}/work"]).run_id()


def weights(tmp):
    state, _ = checkpoint.latest(os.path.join(tmp, "work", run_id(tmp)))
    return state["global_step"], state["model"]


def assert_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in a process of its own like the interrupted ones."""
    tmp = tmp_path_factory.mktemp("reference")
    out = subprocess.run(cli(tmp), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    step, state = weights(tmp)
    assert step == 3 * STEPS_PER_EPOCH
    return state


def start_and_wait_for_first_checkpoint(tmp):
    proc = subprocess.Popen(cli(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckdir = os.path.join(tmp, "work", run_id(tmp))
    deadline = time.time() + 300
    while not checkpoint.list_checkpoints(ckdir):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    time.sleep(0.3)  # into the second epoch
    assert proc.poll() is None, "the run finished before it could be interrupted"
    return proc


def test_sigkill_mid_epoch_then_the_same_command_resumes_bit_identical(tmp_path, reference):
    proc = start_and_wait_for_first_checkpoint(tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    rec = results.read_record(str(tmp_path / "results"), run_id(tmp_path))
    assert rec["status"] == "running"  # a killed process writes nothing more
    step, _ = weights(tmp_path)
    assert step < 3 * STEPS_PER_EPOCH
    out = subprocess.run(cli(tmp_path), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rec = results.read_record(str(tmp_path / "results"), run_id(tmp_path))
    assert rec["status"] == "done" and rec["resumed_from"].endswith(checkpoint.NAME.format(step=step))
    assert_identical(weights(tmp_path)[1], reference)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signal_checkpoints_and_exits_asking_for_requeue(tmp_path, reference, sig):
    proc = start_and_wait_for_first_checkpoint(tmp_path)
    sent = time.time()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err[-2000:]  # core.errors.Preempted: the cluster job requeues on 3
    assert time.time() - sent < 10 and err.strip().startswith("preempted:")
    rec = results.read_record(str(tmp_path / "results"), run_id(tmp_path))
    assert rec["status"] == "preempted" and rec["reason"] == f"signal {int(sig)}"
    step, _ = weights(tmp_path)
    assert STEPS_PER_EPOCH < step < 3 * STEPS_PER_EPOCH and rec["last_checkpoint"].endswith(
        checkpoint.NAME.format(step=step))
    out = subprocess.run(cli(tmp_path), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert_identical(weights(tmp_path)[1], reference)


def test_truncated_newest_checkpoint_resumes_from_the_previous_one(fast_cfg, tmp_path):
    ref = fast_cfg("pretrain.epochs=3")
    pretrain(ref, progress=False)
    cfg = fast_cfg("pretrain.epochs=3", f"run.work_dir={tmp_path / 'w2'}", f"run.results_dir={tmp_path / 'r2'}")
    pretrain(cfg, progress=False)
    # a crash while the filesystem lost the tail of the newest checkpoint, before the record said done
    paths = checkpoint.list_checkpoints(ckpt_dir(cfg))
    with open(paths[-1], "r+b") as f:
        f.truncate(os.path.getsize(paths[-1]) - 1000)
    os.remove(results.record_path(cfg.run.results_dir, cfg.run_id()))
    with pytest.warns(UserWarning, match=os.path.basename(paths[-1])):
        rec = pretrain(cfg, progress=False)
    assert rec["status"] == "done" and rec["resumed_from"] == paths[-2]
    a, _ = checkpoint.latest(ckpt_dir(cfg))
    b, _ = checkpoint.latest(ckpt_dir(ref))
    assert_identical(a["model"], b["model"])


def _write_records(results_dir, i, rounds):
    for r in range(rounds):
        results.write_record(results_dir, {"run_id": f"pt-writer{i}", "status": "running", "round": r,
                                           "history": {"loss": list(range(200))}})
        results.write_record(results_dir, {"run_id": "pt-shared", "status": "running", "writer": i, "round": r,
                                           "history": {"loss": list(range(200))}})


def test_eight_processes_writing_records_at_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_records, args=(str(tmp_path), i, 25)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    names = sorted(os.listdir(tmp_path / "runs"))
    assert names == sorted([f"pt-writer{i}.json" for i in range(8)] + ["pt-shared.json"])  # no temp files left
    for name in names:
        with open(tmp_path / "runs" / name) as f:
            rec = json.load(f)  # every file is whole: one writer's complete record
        assert rec["history"] == {"loss": list(range(200))} and rec["round"] == 24 or name == "pt-shared.json"
    assert len(list(results.iter_records(str(tmp_path)))) == 9


def make_image_folder(root, n_per_class=24, size=40):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n_per_class):
                px = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(px).save(d / f"{i}.png")
    (root / "train" / "a" / "garbage.png").write_bytes(b"not an image at all")
    good = (root / "train" / "b" / "0.png").read_bytes()
    (root / "train" / "b" / "truncated.png").write_bytes(good[: len(good) // 3])
    return root


def test_corrupt_images_are_skipped_and_counted(fast_cfg, tmp_path):
    data = make_image_folder(tmp_path / "data")
    cfg = fast_cfg("data.dataset=imagefolder", f"data.path={data}", "pretrain.batch_size=10", "pretrain.epochs=2")
    rec = pretrain(cfg, progress=False)
    # 50 files, 5 batches of 10 an epoch: both bad files are met every epoch and never crash it
    assert rec["status"] == "done" and rec["images_skipped"] == 2 * 2
    assert rec["images_per_s"] > 0 and len(rec["history"]["loss"]) == 2


@pytest.mark.parametrize("workers", [0, 1])  # in a worker process PyTorch wraps the error in its own text
def test_corrupt_image_stops_the_run_naming_the_file_when_asked(tmp_path, workers):
    data = make_image_folder(tmp_path / "data")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "run_all.py"), "pretrain", "--quiet",
                          "--preset", "tiny", "data.dataset=imagefolder", f"data.path={data}", "data.on_corrupt=error",
                          f"data.num_workers={workers}",
                          "pretrain.batch_size=10", "pretrain.epochs=1", "pretrain.warmup_epochs=0",
                          f"run.results_dir={tmp_path}/results", f"run.work_dir={tmp_path}/work"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read image ") and "Caught" not in lines[0]
    assert "garbage.png" in lines[0] or "truncated.png" in lines[0]


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(fast_cfg, monkeypatch, capsys):
    import run_all
    cfg = fast_cfg("pretrain.epochs=3")
    args = [f"{k}={v}" for k, v in (("run.results_dir", cfg.run.results_dir), ("run.work_dir", cfg.run.work_dir))]
    base = ["pretrain", "--quiet", *FAST, *args]
    assert run_all.main(base + ["pretrain.epochs=1"]) == 0  # another finished run, whose files must not move
    other = fast_cfg("pretrain.epochs=1")
    other_files = {p: open(p, "rb").read() for p in checkpoint.list_checkpoints(ckpt_dir(other))}
    other_files[results.record_path(other.run.results_dir, other.run_id())] = open(
        results.record_path(other.run.results_dir, other.run_id()), "rb").read()
    real_save, calls = torch.save, []

    def save_until_disk_full(obj, f, *a, **k):  # the first checkpoint fits, the second half-writes
        calls.append(f)
        if len(calls) == 1:
            return real_save(obj, f, *a, **k)
        with open(f, "wb") as fh:
            fh.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", save_until_disk_full)
    assert run_all.main(base + ["pretrain.epochs=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write checkpoint" in err[0] and "No space left on device" in err[0]
    assert sorted(os.listdir(ckpt_dir(cfg))) == ["ckpt-000000008.pt", "run.lock"]  # no partial file
    assert checkpoint.load_file(os.path.join(ckpt_dir(cfg), "ckpt-000000008.pt"))["global_step"] == 8
    rec = results.read_record(cfg.run.results_dir, cfg.run_id())
    assert rec["status"] == "failed" and "No space left" in rec["reason"]
    for path, blob in other_files.items():
        assert open(path, "rb").read() == blob
    monkeypatch.setattr(torch, "save", real_save)  # space again: the run resumes from step 8 and ends
    assert run_all.main(base + ["pretrain.epochs=3"]) == 0
    assert results.read_record(cfg.run.results_dir, cfg.run_id())["resumed_from"].endswith("ckpt-000000008.pt")


def test_read_only_results_folder_is_one_line_and_changes_nothing(fast_cfg, monkeypatch, capsys):
    """Root ignores file modes (CI runs as root), so the refusal is the one a read-only mount gives."""
    import builtins

    import run_all
    cfg = fast_cfg("pretrain.epochs=1")
    results.write_record(cfg.run.results_dir, {"run_id": "pt-finished", "status": "done"})
    before = open(results.record_path(cfg.run.results_dir, "pt-finished"), "rb").read()
    real_open, runs = builtins.open, os.path.realpath(results.runs_dir(cfg.run.results_dir))

    def read_only_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and os.path.realpath(str(file)).startswith(runs):
            raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *a, **k)
    monkeypatch.setattr(builtins, "open", read_only_open)
    code = run_all.main(["pretrain", "--quiet", "data.dataset=synthetic", "data.synthetic_size=256",
                         "pretrain.epochs=1", "pretrain.warmup_epochs=0", "pretrain.batch_size=32",
                         f"run.results_dir={cfg.run.results_dir}",
                         f"run.work_dir={cfg.run.work_dir}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot write run record" in err[0] and "Read-only" in err[0]
    monkeypatch.setattr(builtins, "open", real_open)
    assert os.listdir(results.runs_dir(cfg.run.results_dir)) == ["pt-finished.json"]
    assert open(results.record_path(cfg.run.results_dir, "pt-finished"), "rb").read() == before


@pytest.mark.parametrize("bad", ["../escape", "../../etc/passwd", "/etc/passwd", "a/b", "..", "", ".hidden",
                                 "x" * 300, "pt-1\n2"])
def test_run_ids_cannot_leave_the_results_folder(tmp_path, bad):
    with pytest.raises(UserError, match="invalid run id"):
        results.record_path(str(tmp_path), bad)
    with pytest.raises(UserError):
        results.write_record(str(tmp_path), {"run_id": bad})
    assert not any(tmp_path.rglob("*"))


def test_every_torch_load_in_the_project_is_weights_only():
    """A pickle can run code when loaded; only weights_only=True refuses it (the DALL-E legacy file
    goes through core/targets/dalle.py's restricted unpickler instead)."""
    import ast
    offenders = []
    for folder in ("core", "plots", "bench", "ablations"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(dirpath, name)
                for node in ast.walk(ast.parse(open(path).read())):
                    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                            and node.func.attr == "load" and getattr(node.func.value, "id", "") == "torch"):
                        kws = {kw.arg: kw.value for kw in node.keywords}
                        ok = getattr(kws.get("weights_only"), "value", None) is True or getattr(
                            kws.get("pickle_module"), "id", "") == "_restricted_pickle"
                        if not ok:
                            offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert offenders == []


def test_a_pickle_that_runs_code_is_refused_as_a_checkpoint(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))
    path = tmp_path / "ckpt-000000001.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        checkpoint.load_file(str(path))
    assert not (tmp_path / "pwned").exists()


def test_dataset_errors_are_data_errors(tmp_path):
    from core.data import ImageFolderImages
    for path, needle in ((tmp_path / "nope", "does not exist"), (tmp_path, "holds no images")):
        with pytest.raises(DataError, match=needle):
            ImageFolderImages(str(path))


# --------------------------------------------------------------------------- issue 18: records say what is true

REQUIRE_MOUNT = os.environ.get("MAE_REQUIRE_MOUNT") == "1"  # CI (root): the tmpfs test must run


@pytest.fixture
def small_tmpfs(tmp_path):
    """A tmpfs of a given size (root only): a disk that really fills up, as torch.save meets it."""
    mounted = []

    def mount(size_bytes):
        d = tmp_path / f"tmpfs{len(mounted)}"
        d.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(d)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            reason = f"cannot mount a tmpfs here ({(out.stderr or 'not root').strip()[:120]})"
            if REQUIRE_MOUNT:
                pytest.fail(f"MAE_REQUIRE_MOUNT=1 but {reason}")
            pytest.skip(reason + "; set MAE_REQUIRE_MOUNT=1 to make this a failure")
        mounted.append(d)
        return d
    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_a_really_full_disk_while_checkpointing_is_one_line_and_a_failed_record(fast_cfg, small_tmpfs, capsys,
                                                                                 tmp_path):
    """torch.save reports ENOSPC as a RuntimeError (not OSError): it used to end in a 38-line traceback
    and a record left `running`."""
    import run_all
    probe = fast_cfg("pretrain.epochs=1")
    pretrain(probe, progress=False)
    size = os.path.getsize(checkpoint.list_checkpoints(ckpt_dir(probe))[0])
    work = small_tmpfs(int(size * 1.5))  # the first checkpoint fits, the second does not
    results_dir = tmp_path / "results_elsewhere"
    base = ["pretrain", "--quiet", *FAST, "pretrain.epochs=3", f"run.results_dir={results_dir}", f"run.work_dir={work}"]
    assert run_all.main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write checkpoint") and "MiB free" in err[0], err
    cfg = fast_cfg("pretrain.epochs=3", f"run.results_dir={results_dir}", f"run.work_dir={work}")
    rec = results.read_record(str(results_dir), cfg.run_id())
    assert rec["status"] == "failed" and "cannot write checkpoint" in rec["reason"]
    assert sorted(os.listdir(ckpt_dir(cfg))) == ["ckpt-000000008.pt", "run.lock"]  # no partial file
    assert checkpoint.load_file(os.path.join(ckpt_dir(cfg), "ckpt-000000008.pt"))["global_step"] == 8


def test_divergence_before_any_checkpoint_says_none_was_written(fast_cfg, monkeypatch):
    from core.errors import TrainingFailed
    import core.targets.base

    cfg = fast_cfg("pretrain.epochs=3", "pretrain.checkpoint_every=2")
    real = core.targets.base.PixelTarget.__call__
    monkeypatch.setattr(core.targets.base.PixelTarget, "__call__", lambda self, imgs: real(self, imgs) * float("nan"))
    with pytest.raises(TrainingFailed) as e:
        pretrain(cfg, progress=False)
    assert "no checkpoint was written yet" in str(e.value) and checkpoint.list_checkpoints(ckpt_dir(cfg)) == []
    monkeypatch.undo()
    cfg2 = fast_cfg("pretrain.epochs=3", "pretrain.checkpoint_every=1", "pretrain.seed=1")
    calls = []

    def late_nan(self, imgs):
        calls.append(1)
        return real(self, imgs) * (float("nan") if len(calls) > 10 else 1.0)
    monkeypatch.setattr(core.targets.base.PixelTarget, "__call__", late_nan)
    with pytest.raises(TrainingFailed) as e:
        pretrain(cfg2, progress=False)
    newest = checkpoint.list_checkpoints(ckpt_dir(cfg2))[-1]
    assert f"the last good checkpoint is kept: {newest}" in str(e.value) and os.path.isfile(newest)


def test_a_damaged_final_checkpoint_stops_evaluation_instead_of_using_an_older_one(fast_cfg, capsys):
    import run_all
    cfg = fast_cfg()
    rec = pretrain(cfg, progress=False)
    final = rec["last_checkpoint"]
    assert rec["last_checkpoint_sha256"] == checkpoint.sha256(final)
    assert len(checkpoint.list_checkpoints(ckpt_dir(cfg))) == 2  # an older one exists: it must not be used
    dirs = [f"run.results_dir={cfg.run.results_dir}", f"run.work_dir={cfg.run.work_dir}"]
    for damage in ("flip", "truncate", "delete"):
        if damage == "flip":  # still loads, other weights: only the checksum sees it
            state = checkpoint.load_file(final)
            key = next(iter(state["model"]))
            state["model"][key] = state["model"][key] + 1
            torch.save(state, final)
        elif damage == "truncate":
            with open(final, "r+b") as f:
                f.truncate(os.path.getsize(final) // 2)
        else:
            os.remove(final)
        assert run_all.main(["eval", "knn", "--quiet", *FAST, *dirs]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and os.path.basename(final) in err[0] and "an older one is not used" in err[0], err
    assert not [r for r in results.iter_records(cfg.run.results_dir) if r["kind"] == "knn"]  # no record written


def test_torch_warnings_never_reach_the_user_when_a_pickle_is_refused(tmp_path):
    import pickle
    import warnings

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": os.system}, f, protocol=4)  # protocol 4: torch warns in several lines
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
            checkpoint.load_file(str(path))
    assert [str(w.message) for w in seen] == []


def test_an_all_unreadable_dataset_stops_within_one_epoch(tmp_path, capsys):
    """It used to spin forever at step 0 (loss 0.0 appended each pass, the checkpoint rewritten)."""
    import run_all
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(12):
                (tmp_path / "data" / split / cls / f"{i}.png").write_bytes(b"not an image")
    args = ["pretrain", "--quiet", "--preset", "tiny", "data.dataset=imagefolder", f"data.path={tmp_path / 'data'}",
            "pretrain.epochs=3",
            "pretrain.warmup_epochs=0", "pretrain.batch_size=8", f"run.results_dir={tmp_path}/results",
            f"run.work_dir={tmp_path}/work"]
    t0 = time.monotonic()
    assert run_all.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "epoch 0 advanced no optimizer step: 24 images were unreadable" in err[0], err
    assert time.monotonic() - t0 < 120
    # a dataset with a quarter of its images unreadable: more than the stated 10%, one line too
    for i in range(12):
        for cls in ("a", "b"):
            (tmp_path / "data" / "train" / cls / f"{i}.png").unlink()
            if i < 9:
                from PIL import Image
                Image.new("RGB", (32, 32), (i * 20, 0, 0)).save(tmp_path / "data" / "train" / cls / f"{i}.png")
            else:
                (tmp_path / "data" / "train" / cls / f"{i}.png").write_bytes(b"broken")
    assert run_all.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 6 of 24 images as unreadable, more than 10%" in err[0], err


@pytest.mark.parametrize("broken", ["all_unreadable", "on_corrupt_error"])
def test_a_data_error_mid_run_leaves_a_failed_record_with_its_reason(tmp_path, broken):
    from core.config import build_config

    data = make_image_folder(tmp_path / "data") if broken == "on_corrupt_error" else tmp_path / "data"
    if broken == "all_unreadable":
        for cls in ("a", "b"):
            (data / "train" / cls).mkdir(parents=True)
            for i in range(12):
                (data / "train" / cls / f"{i}.png").write_bytes(b"not an image")
    cfg = build_config("tiny", ["data.dataset=imagefolder", f"data.path={data}", "pretrain.batch_size=8",
                                "pretrain.epochs=1", "pretrain.warmup_epochs=0", f"run.results_dir={tmp_path}/r",
                                f"run.work_dir={tmp_path}/w"] + (["data.on_corrupt=error"] if broken != "all_unreadable" else []))
    with pytest.raises(DataError):
        pretrain(cfg, progress=False)
    from core.fingerprint import resolve
    rec = results.read_record(cfg.run.results_dir, resolve(cfg).run_id())
    assert rec["status"] == "failed" and ("unreadable" in rec["reason"] or "cannot read image" in rec["reason"])


def test_valid_json_that_is_not_a_record_is_skipped_by_every_reader_with_one_line(tmp_path, capsys):
    import json

    import run_all
    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    bad = {"brackets.json": [], "null.json": None, "config-text.json": {"run_id": "pt-x", "config": "model.arch=vit"},
           "metrics-list.json": {"run_id": "linprobe-x", "kind": "linprobe", "metrics": [1, 2]},
           "no-id.json": {"status": "done"}}
    for name, obj in bad.items():
        (runs / name).write_text(json.dumps(obj))
    from core.ablation import select
    from core.sweep import make_plan
    planned = list(make_plan(select(["mask_ratio"]), "tiny", 1, [f"run.results_dir={tmp_path / 'results'}"]).units)
    by_id = {f"{planned[0]}.json": None, f"{planned[1]}.json": {"run_id": planned[1], "config": "text"}}
    for name, obj in by_id.items():  # status reads the records of the planned runs by name
        (runs / name).write_text(json.dumps(obj))
    where = [f"run.results_dir={tmp_path / 'results'}"]
    commands = [["status", "mask_ratio", *where], ["tables", "mask_ratio", "--out", str(tmp_path / "t"), *where],
                ["report", "mask_ratio", "--out", str(tmp_path / "r"), *where],
                ["compare", "mask_ratio/0.5", "--baseline", "mask_ratio", *where]]
    for cmd in commands:
        results._reported.clear()  # one line per file and process: each command is a process of its own
        code = run_all.main(cmd)
        err = capsys.readouterr().err
        assert "Traceback" not in err and code in (0, 2), (cmd, err)
        for name in [*([] if cmd[0] == "status" else bad), *by_id]:
            lines = [ln for ln in err.splitlines() if name in ln]
            assert len(lines) == 1 and lines[0].startswith("skipping ") and "not a run record" in lines[0], (cmd, err)
    assert results.record_problem({"run_id": "pt-1", "status": "done", "config": {}}) is None
    assert results.read_record(str(tmp_path / "results"), planned[0]) is None
