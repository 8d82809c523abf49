"""`run --jobs N`: independent units on worker processes write the records a serial run writes, and
torch's thread count follows the CPUs this process may use."""
import json
import os
import subprocess
import sys

import torch

from core import checkpoint, device
from tests.conftest import FAST, ROOT


def run_sweep(tmp_path, name, jobs):
    out = tmp_path / name
    # one thread per run in both: the thread count changes float summation order (core.device)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, os.path.join(ROOT, "run_all.py"), "run", "mask_token", "--quiet", "--jobs", str(jobs),
           *FAST, f"run.results_dir={out / 'results'}", f"run.work_dir={out / 'work'}"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    recs = {}
    for f in sorted((out / "results" / "runs").glob("*.json")):
        rec = json.loads(f.read_text())
        recs[rec["run_id"]] = rec
    return p.stdout, recs


def test_two_jobs_write_what_one_job_writes(tmp_path):
    log1, serial = run_sweep(tmp_path, "serial", 1)
    log2, parallel = run_sweep(tmp_path, "parallel", 2)
    assert "2 units at a time, 1 thread(s) each" in log2
    assert set(serial) == set(parallel) and len(serial) == 6  # 2 pretraining runs, 2 x (linprobe, knn)
    for rid, a in serial.items():
        b = parallel[rid]
        assert a["status"] == b["status"] == "done" and a["torch_threads"] == b["torch_threads"] == 1
        assert a["metrics"] == b["metrics"], rid
        assert a["history"] == b["history"], rid
        if a["kind"] == "pretrain":  # the weights, bit for bit
            wa = checkpoint.load_file(a["last_checkpoint"])["model"]
            wb = checkpoint.load_file(b["last_checkpoint"])["model"]
            assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), rid
    # an evaluation never starts before its pretraining run finished
    for rid, rec in parallel.items():
        if rec.get("parent"):
            assert rec["started_at"] >= parallel[rec["parent"]]["finished_at"], rid


def test_threads_follow_affinity_and_the_job_allocation(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert device.usable_cpus() == 6  # the affinity mask, not the 64 cores of the node
    assert device.thread_count(share=2) == 3 and device.thread_count(share=4) == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert device.usable_cpus() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # an explicit setting wins
    assert device.thread_count(share=4) == 2
    before = torch.get_num_threads()
    try:
        assert device.configure_threads() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_bad_jobs_is_one_line():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "run_all.py"), "run", "mask_token", "--jobs", "0"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "--jobs" in p.stderr
