"""`status` and `cancel` of the jobs `submit` started for a sweep."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from submitit.core.utils import JobPaths

from core.cluster.jobs import LIVE, job_states, jobs_path, load_jobs, save_jobs
from core.errors import UserError


def plan_jobs(plan, cfg) -> tuple[dict, dict[str, dict]]:
    """(jobs file, {job id: entry with the plan's run ids}) for the units of this plan."""
    data = load_jobs(cfg)
    jobs: dict[str, dict] = {}
    for rid, e in data["units"].items():
        if rid in plan.units:
            j = jobs.setdefault(e["job_id"], {**e, "run_ids": [], "ablations": set()})
            j["run_ids"].append(rid)
            j["ablations"] |= set(e["ablations"])
    return data, jobs


def unit_jobs(plan, cfg) -> tuple[dict[str, dict], dict[str, str]]:
    """({run id: its job as core.sweep.unit_status reads it}, {job id: state}) for this plan's
    units that `submit` sent to jobs (the newest job of each)."""
    data, jobs = plan_jobs(plan, cfg)
    states = job_states(list(jobs.values())) if jobs else {}
    out = {}
    for rid, e in data["units"].items():
        if rid in plan.units:
            state = states.get(e["job_id"], "UNKNOWN")
            out[rid] = {"job_id": e["job_id"], "state": state, "live": state in LIVE or state.startswith("UNKNOWN"),
                        "cancelled": bool(e.get("cancelled_at")),
                        "log": str(JobPaths(e["job_dir"], e["job_id"], 0).stdout)}
    return out, states


def status_lines(plan, cfg, states: dict[str, str] | None = None) -> list[str]:
    _, jobs = plan_jobs(plan, cfg)
    if not jobs:
        return []
    states = states if states is not None else job_states(list(jobs.values()))
    lines = [f"cluster jobs ({jobs_path(cfg)}):", f"  {'job':<14} {'stage':<9} {'state':<12} runs"]
    for jid, j in sorted(jobs.items(), key=lambda kv: (kv[1]["submitted_at"], _sort_key(kv[0]))):
        lines.append(f"  {jid:<14} {j['stage']:<9} {states.get(jid, 'UNKNOWN'):<12} {' '.join(j['run_ids'])}")
    return lines


def _sort_key(job_id: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"[_.]", job_id)]


def cancel(names: list[str], plan, cfg, log=print) -> list[str]:
    """Cancel the jobs of these ablations ('all' or none: every job of the sweep). A job that also
    runs units of other ablations is kept, and said so."""
    _, jobs = plan_jobs(plan, cfg)
    wanted = set(names) if names and names != ["all"] else None
    states = job_states(list(jobs.values())) if jobs else {}
    to_cancel, kept = [], []
    for jid, j in jobs.items():
        if states.get(jid) not in LIVE:
            continue
        if wanted is not None and not j["ablations"] <= wanted:
            kept.append(f"{jid} (also used by {', '.join(sorted(j['ablations'] - wanted))})")
            continue
        to_cancel.append(j)
    slurm = [j["job_id"] for j in to_cancel if j["cluster"] == "slurm"]
    if slurm:
        out = subprocess.run(["scancel", *slurm], capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise UserError(f"scancel failed: {' '.join(out.stderr.split())}")
    for j in to_cancel:
        if j["cluster"] == "local":  # its controller forwards SIGTERM: the loop saves and stops
            os.kill(int(j["job_id"]), signal.SIGTERM)
    ids = [j["job_id"] for j in to_cancel]
    if ids:  # sacct never lists an array task cancelled while pending: remember it
        data = load_jobs(cfg)
        for e in data["units"].values():
            if e["job_id"] in ids:
                e["cancelled_at"] = time.time()
        save_jobs(cfg, data)
    log(f"cancelled {len(ids)} job(s)" + (f": {' '.join(sorted(ids, key=_sort_key))}" if ids else ""))
    for line in kept:
        log(f"kept {line}")
    return ids
