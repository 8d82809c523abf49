"""Device and numeric precision: which device a run uses and how it autocasts."""
from __future__ import annotations

import contextlib
import functools

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


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """avx512_bf16 / AMX: there a bf16 matmul ran about 5x faster than fp32 (bench/matmul.py)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# Below this encoder width the matrices are too small for bf16 to pay for its casts on the CPU:
# tiny (128 wide) ran 134 ms/step in fp32 and slower in bf16; 192 wide 201 vs 176 ms; 384 wide
# 1040 vs 499 ms (batch 128, 2 cores, bench/pretrain_step.py).
CPU_BF16_MIN_WIDTH = 192


def resolve_precision(precision: str, device: torch.device, width: int = 1024) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() and width >= CPU_BF16_MIN_WIDTH else "fp32"


def autocast(precision: str, device: torch.device):
    """bf16 needs no loss scaling; fp16 is paired with a GradScaler by the caller."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device):
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
