"""Cluster submission of a sweep through submitit: job arrays on SLURM (or local processes), job ids
kept in <results_dir>/sweeps/<preset>/jobs.json for `status` and `cancel`. docs/cluster.md has the
why of each choice.

Stages: a `prepare` array makes the artifacts pretraining runs read (the PCA basis, the in-suite
tokenizer: core.prepared), one task each; the pretraining runs that read one go into an array of
their own per artifact that starts once that artifact's task succeeded (afterok on it). Array 1 trains every
other unit that reads no pretraining run (pretraining, supervised from scratch); array 2 evaluates, its task i holding the evaluations of array 1's task i, with SLURM's
`aftercorr` dependency: each evaluation task starts when its own pretraining task succeeded, and
is cancelled (kill-on-invalid-dep) if that failed for good. Evaluations of runs already done, or
still in jobs of an earlier submission, go into an array of their own (no dependency, or afterok
on those jobs). A unit that is done, or queued or running in a job, is never submitted twice.
"""
from __future__ import annotations

import getpass
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache

import submitit
from submitit.core.utils import JobPaths, pickle_load
from submitit.slurm.slurm import SlurmInfoWatcher, _make_sbatch_string

from core import results
from core.ablation import select
from core.checkpoint import atomic_write
from core.cluster_checks import parse_time
from core.cluster_job import ClusterJob
from core.config import build_config
from core.data import build_dataset
from core.errors import UserError
from core.flops import encoder_forward_flops, mae_forward_flops
from core.model import ARCHS
from core.prepared import ARTIFACT_KINDS
from core.rehearsal import ensure_data
from core.sweep import make_plan
from core.targets import build_target

# Images per split where counting them would mean listing a million files: ImageNet-1k.
IMAGENET_IMAGES = {"train": 1_281_167, "val": 50_000}
# SLURM states of a job that may still run (anything else has ended).
LIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
        "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "PREEMPTED"}
# CLI flag -> cluster.<key>
FLAGS = {"cluster": "executor", "partition": "partition", "account": "account", "qos": "qos",
         "constraint": "constraint", "nodes": "nodes", "gpus_per_node": "gpus_per_node",
         "tasks_per_node": "tasks_per_node", "cpus_per_task": "cpus_per_task", "mem": "mem", "time": "time",
         "array_parallelism": "array_parallelism", "signal_delay": "signal_delay_s", "job_dir": "job_dir"}


# --------------------------------------------------------------------------- settings

def flag_overrides(args) -> list[str]:
    """The submit command's flags as cluster.* overrides (repr: an account named 1234 stays text)."""
    out = [f"cluster.{key}={getattr(args, flag)!r}" for flag, key in FLAGS.items()
           if getattr(args, flag, None) is not None]
    if getattr(args, "sbatch", None):
        out.append(f"cluster.sbatch={tuple(args.sbatch)!r}")
    return out


def resolve_executor(name: str, dry_run: bool = False) -> str:
    if name == "auto":
        return "slurm" if shutil.which("sbatch") else "local"
    if name == "slurm" and not shutil.which("sbatch") and not dry_run:
        raise UserError("--cluster slurm but sbatch is not on PATH (use --cluster local, or run on a login node)")
    return name


def check_resources(cfg, executor: str) -> None:
    cl = cfg.cluster  # nodes >= 1 is checked with the config
    if cl.gpus_per_node < 1 and cfg.run.device != "cpu":
        raise UserError(f"--gpus-per-node must be >= 1, got {cl.gpus_per_node} (CPU-only jobs: run.device=cpu)")
    if executor in ("local", "debug") and cl.nodes != 1:
        raise UserError(f"--cluster {executor} runs on this machine: use --nodes 1, got {cl.nodes}")
    if executor == "debug" and tasks_per_node(cl) != 1:
        raise UserError("--cluster debug runs one process: use --tasks-per-node 1")


def tasks_per_node(cl) -> int:
    return cl.tasks_per_node or max(cl.gpus_per_node, 1)


def sweep_dir(cfg) -> str:
    return os.path.join(cfg.run.results_dir, "sweeps", cfg.run.preset)


def job_dir(cfg) -> str:
    return os.path.abspath(cfg.cluster.job_dir or os.path.join(sweep_dir(cfg), "jobs"))


def check_writable(folder: str, what: str) -> None:
    """Fail before anything is created or submitted (root passes os.access: mkdir then tells)."""
    path = probe = os.path.abspath(folder)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{what} {path} is not writable: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path} is not writable: no write permission in {probe}")


def make_folder(folder: str, what: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"{what} {os.path.abspath(folder)} is not writable: {e.strerror or e}") from None


# --------------------------------------------------------------------------- estimates

def images(cfg, split: str) -> int:
    if cfg.data.dataset == "imagefolder":
        return IMAGENET_IMAGES[split]
    return len(build_dataset(cfg.data, split, cfg.model.img_size))


@lru_cache(maxsize=None)
def _mae_flops(model_cfg, data_cfg) -> int:
    return mae_forward_flops(model_cfg, build_target(model_cfg, data_cfg).dim)


@lru_cache(maxsize=None)
def _encoder_flops(arch: str, img_size: int) -> int:
    return encoder_forward_flops(arch, img_size)


def unit_flops(unit) -> float | None:
    """Training FLOPs of one unit: forward FLOPs per image x passes x images x epochs, a backward
    pass counted as two forwards. None for a protocol this does not know."""
    cfg, e = unit.cfg, unit.cfg.eval
    if unit.kind == "pretrain":
        return 3.0 * _mae_flops(cfg.model, cfg.data) * images(cfg, "train") * cfg.pretrain.epochs
    enc = _encoder_flops(cfg.model.arch, cfg.model.img_size)
    train, val = images(cfg, "train"), images(cfg, "val")
    if unit.kind == "knn":  # one forward pass over both splits
        return float(enc * (train + val))
    if unit.kind == "linprobe":  # frozen encoder: forward only
        return float(enc * (train * e.linprobe.epochs + val))
    if unit.kind in ("finetune", "scratch"):
        epochs = e.finetune.epochs if unit.kind == "finetune" else e.scratch.epochs
        return float(enc * (3 * train * epochs + val))
    if unit.kind == "partial":  # backward through the last k blocks only
        k, depth = e.finetune.blocks or 0, ARCHS[cfg.model.arch]["depth"]
        return float(enc * ((1 + 2 * k / depth) * train * e.finetune.epochs + val))
    return None


def gpu_hours(flops: float, tflops: float) -> float:
    return flops / (tflops * 1e12) / 3600


# --------------------------------------------------------------------------- jobs file

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
    blob = json.dumps(data, indent=1, sort_keys=True)

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(blob)
    atomic_write(path, write)


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


# --------------------------------------------------------------------------- arrays

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


# --------------------------------------------------------------------------- submit

def submit(names: list[str], preset: str, seeds: int, overrides: list[str], *, dry_run: bool = False,
           log=print) -> list[Array]:
    """`run_all.py submit`: every check that needs no plan first, so bad input costs nothing."""
    cfg = build_config(preset, overrides)
    executor = prepare(cfg, dry_run)
    if not dry_run:  # the rehearsal's JPEG folder, on the filesystem the jobs share, before the plan:
        ensure_data(cfg, log)  # run ids hold the dataset's fingerprint
    plan = make_plan(select(names), preset, seeds, overrides)
    return submit_plan(plan, cfg, executor, dry_run=dry_run, log=log)


def prepare(cfg, dry_run: bool = False) -> str:
    """The executor to use, after checking the settings, the folders and (SLURM) the partition,
    account, QOS, constraint, GPUs and time limit with `sbatch --test-only`."""
    executor = resolve_executor(cfg.cluster.executor, dry_run)
    check_resources(cfg, executor)
    folders = ((sweep_dir(cfg), "sweep folder"), (job_dir(cfg), "job folder"))
    for folder, what in folders:
        check_writable(folder, what)
    if executor == "slurm" and shutil.which("sbatch"):
        preflight(sbatch_text(cfg, job_dir(cfg), slurm_parameters(cfg, "check", 1), 1), dry_run)
    if not dry_run:
        for folder, what in folders:
            make_folder(folder, what)
    return executor


def submit_plan(plan, cfg, executor: str, *, dry_run: bool = False, log=print) -> list[Array]:
    folder = job_dir(cfg)
    data = load_jobs(cfg)
    live = live_jobs(data)
    todo, done, queued = [], 0, 0
    for unit in plan.units.values():
        rec = results.read_record(cfg.run.results_dir, unit.run_id)
        if rec and rec.get("status") == "done":
            done += 1
        elif unit.run_id in live:
            queued += 1
            entry = data["units"][unit.run_id]  # keep a shared unit from being cancelled with one user
            entry["ablations"] = sorted(set(entry["ablations"]) | {a for a, _, _ in unit.users})
        else:
            todo.append(unit)
    for cell in plan.unavailable:
        log(f"unavailable: {cell.ablation}/{cell.variant} seed {cell.seed}: {cell.unavailable}")
    arrays = build_arrays(plan, todo, live, executor)
    log(f"{len(plan.units)} units at preset {plan.preset}: {done} done, {queued} already queued or running, "
        f"{len(todo)} to submit in {len(arrays)} {'array' if executor == 'slurm' else 'job'}(s) "
        f"({executor}; job folder {folder})")
    if executor == "slurm" and arrays and not shutil.which("sbatch"):
        log("sbatch is not on PATH: these settings are not checked by SLURM")
    describe(cfg, arrays, executor, log)
    if dry_run:
        log("dry run: nothing submitted")
        return arrays
    if not arrays:
        return arrays
    save_jobs(cfg, data)  # the merged ablations of queued units
    submission = {"submitted_at": results.now(), "cluster": executor, "job_dir": folder, "arrays": []}
    data["submissions"].append(submission)
    for a in arrays:
        run_array(cfg, a, executor, folder)
        for task, jid in zip(a.tasks, a.job_ids):
            for unit in task:
                data["units"][unit.run_id] = {
                    "job_id": jid, "stage": a.stage, "kind": unit.kind, "cluster": executor, "job_dir": folder,
                    "host": platform.node(), "submitted_at": submission["submitted_at"],
                    "ablations": sorted({ab for ab, _, _ in unit.users}),
                    **({"state": a.state} if executor == "debug" else {})}
        submission["arrays"].append({"stage": a.stage, "job_ids": a.job_ids, "dependency": a.dependency()})
        save_jobs(cfg, data)  # after each array: a later failure still leaves these cancellable
        log(f"submitted {a.stage}: {_ids(a.job_ids)}" + (f" (after {a.dependency()})" if a.dependency() else ""))
    return arrays


def _placeholder(a: Array) -> str | None:
    """The dependency as printed before the job ids exist."""
    if isinstance(a.after, Array):
        what = a.after.stage.upper()
        if a.task is not None:
            return f"afterok:{what}_JOB_ID" if len(a.after.tasks) == 1 else f"afterok:{what}_ARRAY_ID_{a.task}"
        return f"afterok:{what}_JOB_ID" if len(a.after.tasks) == 1 else f"aftercorr:{what}_ARRAY_ID"
    return a.dependency()


def _ids(ids: list[str]) -> str:
    if len(ids) > 1 and all("_" in i for i in ids):
        return f"{ids[0].split('_')[0]}_[0-{len(ids) - 1}]"
    return ", ".join(ids)


def make_executor(cfg, executor: str, folder: str):
    cl = cfg.cluster
    if executor == "debug":
        return submitit.DebugExecutor(folder)
    cls = submitit.SlurmExecutor if executor == "slurm" else submitit.LocalExecutor
    # submitit's own time-out count must not stop a job before our bound does
    return cls(folder, max_num_timeout=cl.max_requeues, python=cl.python or None)


def run_array(cfg, a: Array, executor: str, folder: str) -> None:
    cl = cfg.cluster
    ex = make_executor(cfg, executor, folder)
    if executor == "slurm":
        ex.update_parameters(**slurm_parameters(cfg, a.stage, len(a.tasks), a.dependency()))
    elif executor == "local":
        ex.update_parameters(timeout_min=parse_time(cl.time), tasks_per_node=tasks_per_node(cl),
                             gpus_per_node=cl.gpus_per_node, signal_delay_s=cl.signal_delay_s)
    fns = [ClusterJob(cfg.run.preset, task, cl.max_requeues, cl.signal_delay_s) for task in a.tasks]
    try:
        jobs = ex.submit_array(fns)
    except Exception as e:  # noqa: BLE001 - submitit wraps sbatch's complaint in several types
        text = " ".join(str(e).split())
        raise UserError(f"submitting the {a.stage} jobs failed: {text[:500]}") from None
    a.job_ids = [str(j.job_id) for j in jobs]
    if executor == "debug":  # in this process, now (a failure opens pdb: that is what debug is for)
        try:
            for j in jobs:
                j.result()
            a.state = "COMPLETED"
        except Exception:  # noqa: BLE001
            a.state = "FAILED"
            raise


def describe(cfg, arrays: list[Array], executor: str, log) -> None:
    """Every job with its settings and its GPU-hour estimate (docs/cluster.md has the formula)."""
    cl = cfg.cluster
    gpus = cl.nodes * cl.gpus_per_node
    limit_h = parse_time(cl.time) / 60
    total = 0.0
    folder = job_dir(cfg)
    for i, a in enumerate(arrays, 1):
        dep = _placeholder(a)
        log(f"array {i}/{len(arrays)} [{a.stage}]: {len(a.tasks)} job(s)" + (f", after {dep}" if dep else ""))
        if executor == "slurm":
            text = sbatch_text(cfg, folder, slurm_parameters(cfg, a.stage, len(a.tasks), dep), len(a.tasks))
            for line in text.splitlines():
                if line.startswith("#SBATCH"):
                    log(f"  {line}")
        else:
            log(f"  {executor}: {tasks_per_node(cl)} process(es), {cl.gpus_per_node} GPU(s), time limit {cl.time}")
        for t, task in enumerate(a.tasks):
            flops = [unit_flops(u) for u in task]
            known = sum(f for f in flops if f is not None)
            hours = gpu_hours(known, cl.sustained_tflops)
            what = " + ".join(f"{u.kind} {u.run_id}" for u in task)
            users = sorted({f"{ab}/{v}" for u in task for ab, v, _ in u.users})
            if gpus:
                total += hours
                wall = hours / gpus
                note = f"{hours:,.1f} GPU-h ({wall:,.1f} h on {gpus} GPUs"
                segments = max(1, math.ceil(wall / limit_h))
                note += f", {segments - 1} requeue(s))" if segments > 1 else ")"
                if segments - 1 > cl.max_requeues:
                    note += f" NEEDS MORE THAN cluster.max_requeues={cl.max_requeues}"
            else:
                note = f"CPU job, {known:.3g} FLOPs"
            if None in flops:
                note += " (no estimate for some units)"
            log(f"  job {t}: {what} [{', '.join(users)}]: {note}")
    if gpus:
        log(f"total: {sum(len(a.tasks) for a in arrays)} job(s), {total:,.1f} GPU-hours at "
            f"{cl.sustained_tflops:g} TFLOP/s sustained per GPU (cluster.sustained_tflops)")


# --------------------------------------------------------------------------- status, cancel

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
