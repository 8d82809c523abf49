"""Device and numeric precision: which device a run uses and how it autocasts."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os

import torch

from core.errors import ConfigError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("run.device=cuda but no CUDA device is available; use run.device=cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, cgroups, a SLURM step), capped by
    the job's allocation (SLURM_CPUS_PER_TASK); never the machine's core count."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        n = min(n, int(slurm))
    return max(n, 1)


def thread_count(share: int = 1) -> int:
    """This process's share of the usable CPUs when `share` processes split them, unless
    OMP_NUM_THREADS says how many."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else max(1, usable_cpus() // max(share, 1))


def configure_threads(share: int = 1) -> int:
    """Give torch thread_count(share) threads. Threads beyond the CPUs a process may use wait for
    each other: a 2-epoch tiny run took 17.5 s on one thread and 581 s on two while the other core
    was busy. The count changes the float summation order, so runs compare bit for bit only at
    equal counts (records say which: `torch_threads`)."""
    n = thread_count(share)
    torch.set_num_threads(n)
    return n


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """avx512_bf16 / AMX: there a bf16 matmul ran about 4x faster than fp32 (bench/matmul.py, one
    thread, n=4096: 0.43 vs 0.11 TFLOP/s)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """CPU training: let glibc reuse big freed blocks instead of handing them back to the kernel.

    glibc serves big allocations (above a threshold that grows to at most 32 MiB) with a fresh
    mmap and unmaps them when freed, so every step page-faults its largest activations in again:
    ViT-B/16 at batch 8 took 120k page faults and 0.12-0.18 s of kernel time per step, and none
    after the second step with this (the process keeps 0.5 GB more, 3.1 instead of 2.6 GB; a
    ViT-B step 6 % less CPU time, docs/performance.md). jemalloc and tcmalloc, which PyTorch's CPU
    performance guide advises, behave the same way. glibc only, elsewhere a no-op; returns
    whether it applied."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>; blocks over 1 GiB are still mmapped
    return bool(mallopt(m_mmap_threshold, 2 ** 30)) and bool(mallopt(m_trim_threshold, 2 ** 31 - 1))


def cpu_attention(model, device: torch.device, precision: str) -> bool:
    """On the CPU in bf16, run timm's plain attention (two batched matmuls and a softmax) instead of
    PyTorch's fused CPU flash kernel, which is slow in bf16 at MAE's short sequences (50 and 197
    tokens): one step of ViT-B/16 at batch 32 took 5.8 instead of 7.1 s of CPU time, the tiny
    preset's (batch 128) 0.20 instead of 0.55 s, one thread each (docs/performance.md). In fp32
    both paths ran equally fast; GPUs keep the fused kernel. Returns whether it switched."""
    if device.type != "cpu" or precision != "bf16":
        return False
    for m in model.modules():
        if hasattr(m, "fused_attn"):  # timm's Attention decides per module at call time
            m.fused_attn = False
    return True


# precision=auto on the CPU is bf16 wherever the processor has native bf16, at every model size.
# With cpu_attention()'s plain attention even the tiny preset (128 wide, batch 32) pretrains in
# 22.5 instead of 31.8 s (same loss to 3 digits); ViT-B/16 and ViT-L/16 steps run 3.4x faster
# (docs/performance.md). Earlier, with the fused attention kernel, bf16 lost below 192 wide.
def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(precision: str, device: torch.device):
    """bf16 needs no loss scaling; fp16 is paired with a GradScaler by the caller."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device):
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
