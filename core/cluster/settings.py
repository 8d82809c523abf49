"""The submit command's cluster settings: flags as overrides, the executor, resource checks, and the
sweep's folders (job logs, the jobs file), checked writable before anything is submitted."""
from __future__ import annotations

import os
import shutil
import tempfile

from core.errors import UserError

# CLI flag -> cluster.<key>
FLAGS = {"cluster": "executor", "partition": "partition", "account": "account", "qos": "qos",
         "constraint": "constraint", "nodes": "nodes", "gpus_per_node": "gpus_per_node",
         "tasks_per_node": "tasks_per_node", "cpus_per_task": "cpus_per_task", "mem": "mem", "time": "time",
         "array_parallelism": "array_parallelism", "signal_delay": "signal_delay_s", "job_dir": "job_dir"}


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
