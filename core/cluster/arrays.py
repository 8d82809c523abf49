"""A plan's units as job arrays with SLURM dependencies, their sbatch settings and script, and
SLURM's own check of those settings (`sbatch --test-only`)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from submitit.slurm.slurm import _make_sbatch_string

from core.cluster.checks import parse_time
from core.cluster.settings import tasks_per_node
from core.errors import UserError
from core.prepared import ARTIFACT_KINDS


@dataclass
class Array:
    stage: str  # prepare | pretrain | eval | all (local: the whole plan in one job)
    tasks: list  # per task: the units it runs, in order
    after: object = None  # None, an Array (aftercorr on it, or afterok: see task) or a list of job ids (afterok)
    job_ids: list = field(default_factory=list)
    state: str = ""  # debug executor only: how it ended
    task: int | None = None  # after an Array: once this one task of it succeeded (afterok on it)

    def dependency(self) -> str | None:
        if isinstance(self.after, Array):
            ids = self.after.job_ids
            if not ids:
                return None
            if self.task is not None:
                return f"afterok:{ids[self.task]}"
            if len(ids) == 1 and "_" not in ids[0]:  # a one-task array is submitted as a plain job
                return f"afterok:{ids[0]}"
            return f"aftercorr:{ids[0].split('_')[0]}"
        if self.after:
            return "afterok:" + ":".join(sorted(set(self.after)))
        return None


def build_arrays(plan, todo: list, live: dict[str, str], executor: str) -> list[Array]:
    if executor != "slurm":  # no dependencies here: one job runs the plan in order, as `run` does
        return [Array("all", [todo])] if todo else []
    artifacts = [u for u in todo if u.kind in ARTIFACT_KINDS]
    made_here = {u.run_id for u in artifacts}
    roots = [u for u in todo if not u.parent and u.kind not in ARTIFACT_KINDS]
    groups: dict[str, list] = {}
    for u in todo:
        if u.parent:
            groups.setdefault(u.parent, []).append(u)
    arrays = []

    def pretrain_array(units: list, after=None, task: int | None = None) -> None:
        # roots with evaluations first, so that eval task i is the evaluations of root task i
        units.sort(key=lambda u: u.run_id not in groups)
        first = Array("pretrain", [[u] for u in units], after, task=task)
        arrays.append(first)
        chained = [groups.pop(u.run_id) for u in units if u.run_id in groups]
        if chained:
            arrays.append(Array("eval", chained, after=first))

    free = [u for u in roots if u.needs not in made_here and u.needs not in live]  # artifact done or none
    if free:
        pretrain_array(free)
    if artifacts:
        prep = Array("prepare", [[u] for u in artifacts])
        arrays.insert(0, prep)
        for i, art in enumerate(artifacts):
            users = [u for u in roots if u.needs == art.run_id]
            if users:
                pretrain_array(users, prep, task=i)
    queued = [u for u in roots if u.needs in live and u.needs not in made_here]  # in an earlier submission
    if queued:
        pretrain_array(queued, [live[u.needs] for u in queued])
    waiting = [p for p in groups if p in live]
    if waiting:
        arrays.append(Array("eval", [groups.pop(p) for p in waiting], after=[live[p] for p in waiting]))
    if groups:  # their pretraining run is done
        arrays.append(Array("eval", list(groups.values())))
    return arrays


def slurm_parameters(cfg, stage: str, n_tasks: int, dependency: str | None = None) -> dict:
    """sbatch settings in submitit's SlurmExecutor names (the same dict prints the dry run)."""
    cl = cfg.cluster
    p = {"job_name": f"mae-{cfg.run.preset}-{stage}", "time": parse_time(cl.time), "nodes": cl.nodes,
         "ntasks_per_node": tasks_per_node(cl), "cpus_per_task": cl.cpus_per_task,
         "signal_delay_s": cl.signal_delay_s, "array_parallelism": cl.array_parallelism}
    if cl.gpus_per_node:
        p["gpus_per_node"] = cl.gpus_per_node
    for key in ("partition", "account", "qos", "constraint", "mem"):
        if getattr(cl, key):
            p[key] = getattr(cl, key)
    extra = {"requeue": True}  # scontrol requeue needs it where the site's JobRequeue=0
    if dependency:
        extra.update({"dependency": dependency, "kill-on-invalid-dep": "yes"})
    for item in cl.sbatch:
        key, value = item.split("=", 1)
        extra[key] = value if value != "" else True
    p["additional_parameters"] = extra
    return p


def sbatch_text(cfg, folder: str, params: dict, n_tasks: int) -> str:
    """The batch script submitit would write (its own generator, so the dry run cannot drift)."""
    python = cfg.cluster.python or shlex.quote(sys.executable)
    command = f"{python} -u -m submitit.core._submit {shlex.quote(folder)}"
    return _make_sbatch_string(command=command, folder=folder, map_count=n_tasks if n_tasks > 1 else None,
                               **params)


# sbatch's words for "there is no cluster to ask", as opposed to a cluster refusing the settings
UNREACHABLE = re.compile(r"Could not establish a configuration source|Unable to contact slurm controller|"
                         r"Connection refused|Unable to establish controller", re.I)


def preflight(text: str, dry_run: bool = False, log=print) -> None:
    """`sbatch --test-only`: SLURM checks partition, account, QOS, constraint, GPUs and time limit
    without creating a job. Its complaint becomes one line."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write(text)
    try:
        out = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=60)
    finally:
        os.remove(f.name)
    if out.returncode != 0:
        lines = [re.sub(r"^sbatch: (error: )?", "", ln).strip() for ln in out.stderr.splitlines() if ln.strip()]
        text = "; ".join(lines) or "sbatch --test-only failed"
        if dry_run and UNREACHABLE.search(text):  # sbatch installed, no cluster: still show the plan
            log(f"note: no SLURM controller answered, so the settings are not checked ({text[:160]})")
            return
        raise UserError(f"SLURM rejects the job settings: {text}")
