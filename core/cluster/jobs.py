"""The jobs file (<results_dir>/sweeps/<preset>/jobs.json: which job runs which unit) and the state
of those jobs: SLURM's queue and accounting, or a local controller process."""
from __future__ import annotations

import getpass
import json
import os
import platform
import shutil
import subprocess

from submitit.core.utils import JobPaths, pickle_load
from submitit.slurm.slurm import SlurmInfoWatcher

from core.checkpoint import write_text
from core.cluster.settings import sweep_dir
from core.errors import UserError

# SLURM states of a job that may still run (anything else has ended).
LIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
        "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "PREEMPTED"}


def jobs_path(cfg) -> str:
    return os.path.join(sweep_dir(cfg), "jobs.json")


def load_jobs(cfg) -> dict:
    path = jobs_path(cfg)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return {"units": {}, "submissions": []}
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"jobs file {path} is unreadable: {e}") from None
    return data


def save_jobs(cfg, data: dict) -> None:
    path = jobs_path(cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_text(path, json.dumps(data, indent=1, sort_keys=True))


def job_states(entries: list[dict]) -> dict[str, str]:
    """{job id: state}. SLURM: slurmctld's queue says what is pending or running (sacct lags behind
    sbatch, and never lists an array task cancelled while pending); submitit's sacct reader says how
    the others ended. Local jobs: their controller process."""
    states = {}
    slurm = sorted({e["job_id"] for e in entries if e["cluster"] == "slurm"})
    if slurm:
        states.update(_slurm_states(slurm, {e["job_id"] for e in entries if e.get("cancelled_at")}))
    for e in entries:
        if e["cluster"] == "local":
            states[e["job_id"]] = _local_state(e)
        elif e["cluster"] == "debug":
            states[e["job_id"]] = e.get("state", "COMPLETED")
    return states


def _slurm_states(ids: list[str], cancelled: set) -> dict[str, str]:
    if not shutil.which("squeue"):
        return {jid: "UNKNOWN (no SLURM here)" for jid in ids}
    out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"], capture_output=True,
                         text=True, timeout=60)
    queued = dict(ln.split("|", 1) for ln in out.stdout.split() if "|" in ln) if out.returncode == 0 else {}
    states = {jid: queued[jid] for jid in ids if jid in queued}
    ended = [jid for jid in ids if jid not in queued]
    if ended and shutil.which("sacct"):
        watcher = SlurmInfoWatcher(delay_s=0)
        for jid in ended:
            watcher.register_job(jid)
        watcher.update()
        for jid in ended:
            states[jid] = watcher.get_state(jid, mode="cache").split()[0]  # "CANCELLED by 0" -> CANCELLED
    for jid in ended:
        if states.get(jid, "UNKNOWN") == "UNKNOWN":
            states[jid] = "CANCELLED" if jid in cancelled else ("UNKNOWN" if out.returncode else "ENDED")
    return states


def _local_state(entry: dict) -> str:
    """A local job is its controller process (pid = job id) on the submitting host."""
    if entry.get("host") != platform.node():
        return "UNKNOWN (other host)"
    try:
        with open(f"/proc/{int(entry['job_id'])}/cmdline", "rb") as f:
            if b"submitit" in f.read():
                return "RUNNING"
    except (OSError, ValueError):
        pass
    result = JobPaths(entry["job_dir"], entry["job_id"], 0).result_pickle
    if not result.exists():
        return "ENDED"  # killed without a result
    try:
        return "COMPLETED" if pickle_load(result)[0] == "success" else "FAILED"
    except Exception:  # noqa: BLE001 - an unreadable result is no result
        return "ENDED"


def live_jobs(data: dict) -> dict[str, str]:
    """{run id: job id} of units whose job is queued or running."""
    entries = list(data["units"].values())
    states = job_states(entries) if entries else {}
    return {rid: e["job_id"] for rid, e in data["units"].items()
            if states.get(e["job_id"]) in LIVE}
