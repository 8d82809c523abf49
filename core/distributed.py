"""Process-group set-up from the launcher's environment. torchrun sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT itself; inside a submitit job (SLURM or the local
executor) `export_launcher_env()` derives the same variables from submitit's JobEnvironment first,
so `init()` reads one set of variables whoever launched the process. A single process needs none.
"""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from core.errors import ConfigError, UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> DistInfo:
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    raw = [os.environ.get(n, d) for n, d in zip(names, ("0", "1", "0"))]
    try:
        info = DistInfo(*(int(v) for v in raw))
    except ValueError:
        raise UserError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got {', '.join(raw)}") from None
    if info.world < 1 or not 0 <= info.rank < info.world or info.local_rank < 0:
        raise UserError(f"RANK={info.rank}, WORLD_SIZE={info.world}, LOCAL_RANK={info.local_rank}: need "
                        f"0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return info


def master_port(job_id: str) -> int:
    """A port per job, so that jobs sharing a node (array tasks) do not collide: 20000-39999."""
    digits = "".join(c for c in str(job_id) if c.isdigit())
    return 20_000 + int(digits or 0) % 20_000


def submitit_env(job_env=None) -> dict[str, str]:
    """torchrun's variables for this task of a submitit job: rank, local rank and world size from
    submitit's JobEnvironment, the master on the job's first node."""
    if job_env is None:
        import submitit  # optional here: only a submitit job (core.cluster.job) passes no job_env
        job_env = submitit.JobEnvironment()
    nodes = max(job_env.num_nodes, 1)
    # one node: loopback, which resolves everywhere; several: the first host of the allocation
    addr = "127.0.0.1" if nodes == 1 else job_env.hostnames[0]
    return {"RANK": str(job_env.global_rank), "LOCAL_RANK": str(job_env.local_rank),
            "WORLD_SIZE": str(job_env.num_tasks), "LOCAL_WORLD_SIZE": str(job_env.num_tasks // nodes),
            "MASTER_ADDR": addr, "MASTER_PORT": str(master_port(job_env.raw_job_id))}


def export_launcher_env(job_env=None) -> DistInfo:
    """Inside a submitit job: set the variables init() reads. torchrun's, when it launched this
    process inside the job (RANK and WORLD_SIZE already set), win."""
    if not ("RANK" in os.environ and "WORLD_SIZE" in os.environ):
        os.environ.update(submitit_env(job_env))
    return from_env()


def init(device: torch.device) -> DistInfo:
    info = from_env()
    if info.world > 1 and not dist.is_initialized():
        missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(n)]
        if missing:
            raise UserError(f"WORLD_SIZE={info.world} but {' and '.join(missing)} not set: launch with torchrun "
                            f"or through run_all.py submit")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # NCCL between GPUs, gloo between CPU processes
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://",
                                rank=info.rank, world_size=info.world)
    return info


def split_batch(batch: int, world: int, accum: int = 1, key: str = "pretrain.batch_size",
                accum_key: str = "pretrain.accum_iter") -> int:
    """The per-process micro-batch of a global batch over `world` processes x `accum` micro-steps.
    A batch that does not split is refused, naming the nearest settings that do: flooring it would
    train on fewer images a step than the batch the lr was scaled for."""
    parts = world * accum
    if batch % parts == 0:
        return batch // parts
    below, above = batch - batch % parts, batch - batch % parts + parts
    sizes = f"{key}={below} or {above}" if below else f"{key}={above}"
    hint = ""
    if accum > 1 and batch % world == 0:  # or keep the batch and change the accumulation
        fits = [a for a in range(1, batch // world + 1) if batch // world % a == 0]
        near = [a for a in (max((a for a in fits if a < accum), default=None),
                            min((a for a in fits if a > accum), default=None)) if a is not None]
        hint = f", or {accum_key}={' or '.join(map(str, near))}"
    procs = f"{world} process{'es' if world > 1 else ''}"
    split = f"{procs} x {accum_key}={accum}" if accum > 1 else procs
    raise ConfigError(f"{key}={batch} does not split into equal micro-batches over {split}: "
                      f"use {sizes}{hint}")


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of `t` over every process, in place (a no-op in a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every process when it is true on any. A stop signal reaches the ranks at slightly
    different steps; all must stop at the same one, else a rank that stopped alone leaves the
    others waiting in their next all-reduce and no checkpoint is written."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# --------------------------------------------------------------------------- stop signals

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # SLURM: preemption / time limit warning


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (pretraining, evaluation and cluster jobs); a loop checkpoints at its
    next look (`stopping`: every few optimizer steps and at the end of an epoch) and stops."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)

    def __bool__(self):
        return self.signum is not None

    def stopping(self, device: torch.device) -> bool:
        """True on every process once any process got a signal (see any_rank): ask it at the same
        step on every rank."""
        return any_rank(bool(self), device)


def shutdown() -> None:
    """Tear the process group down before the interpreter exits: left to exit, gloo's threads can
    abort the process ("terminate called without an active exception") after its work is done."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier():
    if dist.is_initialized():
        dist.barrier()
