"""One process at a time per run: a second runner waits for the run another holds, a crashed holder
leaves nothing stuck, and the same sweep started twice at once trains (and evaluates) each run once."""
import os
import signal
import subprocess
import sys
import textwrap
import time

from core import runlock


HOLDER = textwrap.dedent("""
    import sys, time
    from core import runlock
    with runlock.hold(sys.argv[1], "pt-x"):
        print("holding", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def start_holder(run_dir, seconds):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), str(seconds)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "holding"
    return p


def test_a_second_holder_waits_naming_the_first_and_a_killed_holder_leaves_nothing_stuck(tmp_path):
    holder = start_holder(tmp_path, 3)
    said, t0 = [], time.monotonic()
    with runlock.hold(str(tmp_path), "pt-x", log=said.append, poll_s=0.1):
        waited = time.monotonic() - t0
    holder.wait(timeout=30)
    assert waited > 1.0 and said == [f"run pt-x is held by {runlock.socket.gethostname()}:{holder.pid}; waiting for it"]
    crashed = start_holder(tmp_path, 60)
    crashed.send_signal(signal.SIGKILL)  # as if OOM-killed: the kernel drops its lock
    crashed.wait(timeout=30)
    said.clear()
    t0 = time.monotonic()
    with runlock.hold(str(tmp_path), "pt-x", log=said.append, poll_s=0.1):
        assert time.monotonic() - t0 < 1.0 and said == []


def test_the_marker_fallback_removes_a_dead_local_holders_marker(tmp_path, monkeypatch):
    import errno

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(runlock.fcntl, "lockf", no_locks)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run.lock.held").write_text(f"{runlock.socket.gethostname()}:{dead.stdout.strip()}")
    with runlock.hold(str(tmp_path), "pt-x", poll_s=0.1):
        assert (tmp_path / "run.lock.held").read_text() == runlock.me()
    assert not (tmp_path / "run.lock.held").exists()


SWEEP = textwrap.dedent("""
    import os, sys, time
    import core.eval, core.train
    from core.ablation import Ablation
    from core.sweep import make_plan, run_plan
    marks = sys.argv[1]

    def counted(fn, kind):
        def wrapper(*a, **k):
            run_id = a[0].run_id if kind == "pretrain" else a[2]
            open(os.path.join(marks, f"{{run_id}}.{{os.getpid()}}"), "w").close()
            # hold each unit 2 s: the runners start seconds apart (imports) and a tiny unit takes less
            # than a second, so without it the second could find every unit already done
            time.sleep(2)
            return fn(*a, **k)
        return wrapper
    core.train._Run.train = counted(core.train._Run.train, "pretrain")
    core.eval._run = counted(core.eval._run, "eval")
    abl = Ablation(name="twice", source="figure5", title="x", baseline="a", small_evals=("knn",),
                   variants={{"a": {{"model.mask_ratio": 0.75}}, "b": {{"model.mask_ratio": 0.5}}}})
    plan = make_plan([abl], "tiny", 1, sys.argv[2:])
    status = run_plan(plan, progress=False)
    assert set(status.values()) == {{"done"}}, status
    print(len(status), "done")
""")


def test_the_same_sweep_started_twice_at_once_runs_each_unit_once(tmp_path):
    from tests.conftest import FAST

    marks = tmp_path / "marks"
    marks.mkdir()
    args = [*FAST, "pretrain.epochs=1", "pretrain.warmup_epochs=0", "eval.knn.k=5", "model.img_size=16",
            "data.synthetic_size=64",
            f"run.results_dir={tmp_path / 'results'}", f"run.work_dir={tmp_path / 'work'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", SWEEP.format(), str(marks), *args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip().endswith("4 done"), err[-3000:]
    runs = sorted(name.split(".")[0] for name in os.listdir(marks))
    assert len(runs) == 4 and len(set(runs)) == 4, runs  # 2 pretraining runs + 2 kNN evaluations, once each
    assert "waiting for it" in outs[0][1] + outs[1][1]  # one runner met a run the other held
