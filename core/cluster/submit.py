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

import math
import platform
import shutil

import submitit

from core import results
from core.ablation import select
from core.cluster.arrays import Array, build_arrays, preflight, sbatch_text, slurm_parameters
from core.cluster.checks import parse_time
from core.cluster.estimates import gpu_hours, grid_hours, tier_line, unit_flops
from core.cluster.job import ClusterJob
from core.cluster.jobs import live_jobs, load_jobs, save_jobs
from core.cluster.settings import check_resources, check_writable, job_dir, make_folder, resolve_executor, sweep_dir, \
    tasks_per_node
from core.config import build_config
from core.errors import UserError
from core.rehearsal import ensure_data
from core.sweep import make_plan


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
        if results.finished(cfg.run.results_dir, unit.run_id):
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
    describe_grid(cfg, plan, log)
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


def describe_grid(cfg, plan, log) -> None:
    """The tier this preset is and, on GPUs, what its whole grid costs: per ablation and the
    baseline alone, done or not (the `total` above counts the jobs still to submit)."""
    log(tier_line(cfg))
    if not cfg.cluster.nodes * cfg.cluster.gpus_per_node:
        return
    h = grid_hours(plan, cfg.cluster.sustained_tflops)
    log(f"whole grid of these ablations, done or not: {h['total']:,.1f} GPU-hours; the baseline alone: "
        f"{h['baseline_pretrain']:,.1f} (pretraining), {h['baseline']:,.1f} with its evaluations")
    log("  by ablation (a run several share counts in each): "
        + ", ".join(f"{name} {v:,.1f}" for name, v in h["by_ablation"].items()))
