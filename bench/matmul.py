"""Measured matrix-multiply peak: the FLOP/s of a large square matmul on this device and dtype.

This is the ceiling the pretraining step's efficiency is measured against (bench/pretrain_step.py):
a step cannot beat the machine's own best matmul by much, so achieved / peak says how much of the
hardware the step uses.

    python bench/matmul.py                       # cpu fp32 and bf16, n=4096
    python bench/matmul.py --device cuda --n 8192
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import torch  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_flops(device: torch.device, precision: str, n: int, steps: int = 5, warmup: int = 2) -> dict:
    """FLOP/s of an (n x n) @ (n x n) product: median (and best) over `steps` timed products."""
    dtype = DTYPES[precision]
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)  # random data: zeros run faster on GPUs
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    out = torch.empty(n, n, device=device, dtype=dtype)
    times = common.time_it(lambda: torch.mm(a, b, out=out), device, steps, warmup)
    flops = 2 * n ** 3
    out = {"precision": precision, "n": n, "steps": steps, "tflops": flops / common.median(times) / 1e12,
           "tflops_best": flops / min(times) / 1e12, "ms": common.median(times) * 1e3}
    if times.cpu:  # per CPU second of this process: a one-thread run's peak with a core of its own
        out["tflops_cpu_time"] = flops / common.median(times.cpu) / 1e12
    return out


def default_n(device: torch.device, quick: bool) -> int:
    if quick:
        return 256
    return 8192 if device.type == "cuda" else 4096


def main(argv=None) -> int:
    p = common.base_parser(__doc__)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--n", type=int, default=None, help="matrix size (default 4096 on cpu, 8192 on cuda)")
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    device = common.setup(args)
    n = args.n or default_n(device, args.quick)
    env = common.environment(device)
    rows = []
    for prec in args.precision:
        r = matmul_flops(device, prec, n, steps=2 if args.quick else args.steps, warmup=1 if args.quick else 2)
        rows.append({**env, "bench": "matmul", "quick": args.quick, **r})
    common.print_table(rows, [("device", "device"), ("precision", "dtype"), ("n", "n"), ("ms", "ms"),
                              ("tflops", "TFLOP/s (median)"), ("tflops_best", "TFLOP/s (best)")],
                       title=f"matmul peak on {env.get('gpu') or env['cpu']}, torch {env['torch']}, "
                             f"load {env['load_avg']}")
    if not args.no_record:
        print("records:", common.append_records(args.out_dir, "matmul", rows))
    return 0


if __name__ == "__main__":
    common.run_main(main)
