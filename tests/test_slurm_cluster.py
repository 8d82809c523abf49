"""Tests of the throw-away SLURM test cluster itself (tests/slurm_cluster.py):
batch jobs, submitit, scancel and requeue, all checked through real
accounting (sacct). Skipped without SLURM/root unless MAE_REQUIRE_SLURM=1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Import as tests.* (one module object shared with any pytest_plugins use),
# even when pytest put only tests/ on sys.path (plain `pytest`, no __init__.py).
try:
    import tests.slurm_fixture  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
try:
    from tests.slurm_cluster import SlurmCluster, available, wait_until
    from tests.slurm_fixture import slurm_cluster  # noqa: F401  (fixture)
except ImportError:  # another "tests" package shadows ours
    from slurm_cluster import SlurmCluster, available, wait_until
    from slurm_fixture import slurm_cluster  # noqa: F401


def _run(*args, env=None, check=True, timeout=30) -> str:
    cp = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
    if check and cp.returncode != 0:
        raise AssertionError("%s failed (rc=%d): %s %s" % (args, cp.returncode, cp.stdout, cp.stderr))
    return cp.stdout


def _sbatch(tmp_path: Path, script: str, *opts: str, env=None) -> str:
    path = tmp_path / "job.sh"
    path.write_text("#!/bin/bash\n" + script + "\n")
    out = _run("sbatch", "--parsable", "--chdir=%s" % tmp_path,
               "--output=%s" % (tmp_path / "slurm-%j.out"), *opts, str(path), env=env)
    return out.strip().split(";")[0]


def _sacct_state(job_id: str, env=None, duplicates=False) -> list[str]:
    """States of the job allocation (no steps); all records with duplicates."""
    args = ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id]
    if duplicates:
        args.insert(1, "-D")
    return [s for s in _run(*args, env=env, check=False).splitlines() if s]


def _wait(what, predicate, timeout, cluster=None, interval=0.25):
    return wait_until(what, predicate, timeout, cluster.logs if cluster is not None else (lambda: ""), interval)


def _wait_state(job_id, prefix, timeout, cluster, env=None):
    # A job is absent from sacct for a moment after sbatch, hence the polling.
    def check():
        states = _sacct_state(job_id, env=env)
        return states and states[-1].startswith(prefix) and states[-1]
    return _wait("job %s to be %s in sacct" % (job_id, prefix), check, timeout, cluster)


def _squeue_state(job_id, env=None) -> str:
    return _run("squeue", "-h", "-j", job_id, "-o", "%T", env=env, check=False).strip()


def test_available_reports_reason():
    ok, reason = available()
    assert isinstance(ok, bool) and isinstance(reason, str)
    assert ok or reason


def test_sbatch_completes(slurm_cluster, tmp_path):
    print("cluster started in %.1fs: %s" % (slurm_cluster.start_time_s, slurm_cluster.timings))
    assert os.environ["SLURM_CONF"] == slurm_cluster.env["SLURM_CONF"]
    job_id = _sbatch(tmp_path, "echo hello from $SLURM_JOB_ID")
    _wait_state(job_id, "COMPLETED", 30, slurm_cluster)
    assert (tmp_path / ("slurm-%s.out" % job_id)).read_text().strip() == "hello from %s" % job_id


def test_submitit_job_returns_value(slurm_cluster, tmp_path):
    submitit = pytest.importorskip("submitit")

    def add(a, b):  # local function: cloudpickled by value, no test import needed in the job
        return a + b

    executor = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="slurm")
    executor.update_parameters(timeout_min=2, slurm_partition=slurm_cluster.partition,
                               cpus_per_task=1)
    job = executor.submit(add, 2, 3)
    _wait("submitit job %s" % job.job_id, job.done, 45, slurm_cluster)
    assert job.result() == 5
    # submitit reads states through sacct: must be real, not UNKNOWN.
    _wait("submitit to read COMPLETED",
          lambda: job.watcher.get_state(job.job_id, mode="force") == "COMPLETED", 20, slurm_cluster)


def test_scancel_shows_cancelled(slurm_cluster, tmp_path):
    job_id = _sbatch(tmp_path, "sleep 300")
    _wait("job %s running" % job_id, lambda: _squeue_state(job_id) == "RUNNING", 20, slurm_cluster)
    _run("scancel", job_id)
    state = _wait_state(job_id, "CANCELLED", 20, slurm_cluster)
    assert state.startswith("CANCELLED")  # reads "CANCELLED by 0"


def test_requeue_running_job(slurm_cluster, tmp_path):
    marker = tmp_path / "runs.txt"
    # First run waits to be requeued; the second (SLURM_RESTART_COUNT=1) exits.
    script = (
        'echo "run ${SLURM_RESTART_COUNT:-0}" >> %s\n'
        'if [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ]; then exit 0; fi\n'
        "sleep 300" % marker
    )
    job_id = _sbatch(tmp_path, script, "--requeue")
    _wait("first run of job %s" % job_id, lambda: marker.exists() and _squeue_state(job_id) == "RUNNING",
          20, slurm_cluster)
    _run("scontrol", "requeue", job_id)
    # A requeued job may start again only once its credential expired
    # (cred_expire=10 in the cluster's slurm.conf).
    _wait_state(job_id, "COMPLETED", 40, slurm_cluster)
    assert marker.read_text().split("\n")[:2] == ["run 0", "run 1"]
    assert "REQUEUED" in _sacct_state(job_id, duplicates=True)


def test_second_cluster_alongside_and_clean_stop(slurm_cluster, tmp_path):
    """A second cluster runs next to the session one (own ports, socket, DB)
    and stop() leaves none of its processes behind."""
    cluster = SlurmCluster(tmp_path / "c2")
    try:
        cluster.start()
        env = {**os.environ, **cluster.env}
        job_id = _sbatch(tmp_path, "sleep 300", env=env)
        _wait("job running on 2nd cluster", lambda: _squeue_state(job_id, env=env) == "RUNNING",
              20, cluster)
        pids = [p.pid for p in cluster._procs.values()]
    finally:
        cluster.stop()
    for pid in pids:
        assert not Path("/proc/%d" % pid).exists() or \
            Path("/proc/%d/stat" % pid).read_text().split(") ")[1].startswith("Z")
    # The session cluster is unaffected.
    assert "idle" in _run("sinfo", "-h", "-o", "%T") or "mix" in _run("sinfo", "-h", "-o", "%T")
