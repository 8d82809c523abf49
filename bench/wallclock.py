"""Wall-clock speed-up of the asymmetric design (paper Table 2): pretraining step time with mask
tokens in the encoder vs decoder-only, decoder depth 8 and 1.

Variants are named `mask_token_placement@decoder_depth` as the table2 rows of
results/paper/paper_reference.csv: encoder@8 (the baseline), decoder_only@8, decoder_only@1.
A step is what the training loop does per optimizer step: `--accum` micro-batches of `--batch`
images (forward, loss, backward) and one fused AdamW step. The paper trains at batch 4096, where
the optimizer's share of a step is negligible; on a CPU the micro-batch must be small, so
accumulation keeps the optimizer's share of the step near the paper's regime. Variants are
measured in interleaved rounds (a fresh model each) so that load from other processes spreads
over all of them; ms_per_step is the median of every timed step of a variant.

    python bench/wallclock.py                      # CPU: ViT-L/16, bf16, batch 8 x accum 4
    python bench/wallclock.py --device cuda --models vit_large_patch16 vit_huge_patch14 --batch 64
"""
from __future__ import annotations

import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import torch  # noqa: E402
from flops import paper_value  # noqa: E402

VARIANTS = {"encoder@8": (True, 8), "decoder_only@8": (False, 8), "decoder_only@1": (False, 1)}
BASELINE = "encoder@8"


def measure_variant(arch, variant, args, device, img_size=None) -> tuple[list[float], list[float], str | None]:
    in_encoder, depth = VARIANTS[variant]
    cfg = common.model_config(arch, decoder_depth=depth, mask_token_in_encoder=in_encoder, img_size=img_size)
    step = None
    try:
        step = common.Step(cfg, args.batch_size, args.precision_, device, compile=args.compile, accum=args.accum)
        t = common.time_it(step, device, args.steps_, args.warmup_ + (2 if args.compile else 0))
        return list(t), t.cpu, None
    except Exception as e:  # an OOM or compiler error loses this variant, not the table
        if not common.is_oom(e):
            traceback.print_exc()
        return [], [], f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    finally:
        if step is not None:
            step.close()


def main(argv=None) -> int:
    p = common.base_parser(__doc__)
    p.add_argument("--models", nargs="+", default=None,
                   help="encoder archs (default vit_large_patch16; on cuda also vit_huge_patch14)")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "fp16"), help="default bf16")
    p.add_argument("--batch", type=int, default=None, help="micro-batch per forward (default 8 cpu, 64 cuda)")
    p.add_argument("--accum", type=int, default=None, help="micro-batches per optimizer step (default 4 cpu, 1 cuda)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 2 cpu, 10 cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per round (default 1 cpu, 3 cuda)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved rounds over the variants (default 2 cpu, 1 cuda)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    args = p.parse_args(argv)
    device = common.setup(args)
    gpu = device.type == "cuda"
    from core.model import ARCHS
    models = args.models or (["vit_tiny_patch4"] if args.quick else
                             ["vit_large_patch16", "vit_huge_patch14"] if gpu else ["vit_large_patch16"])
    for m in models:
        if m not in ARCHS:
            raise common.UserError(f"unknown model {m!r}; choose from {', '.join(sorted(ARCHS))}")
    args.precision_ = args.precision or "bf16"
    args.batch_size = args.batch or (4 if args.quick else 64 if gpu else 8)
    args.accum = args.accum or (1 if args.quick or gpu else 4)
    args.steps_ = args.steps or (1 if args.quick else 10 if gpu else 2)
    args.warmup_ = args.warmup if args.warmup is not None else (1 if args.quick or not gpu else 3)
    rounds = args.rounds or (1 if args.quick or gpu else 2)
    for name in ("batch_size", "accum", "steps_"):
        if getattr(args, name) < 1:
            raise common.UserError(f"--{name.rstrip('_').replace('batch_size', 'batch')} must be >= 1")
    if gpu:
        torch.backends.cudnn.benchmark = True

    env = common.environment(device)
    rows = []
    for arch in models:
        img_size = 32 if arch == "vit_tiny_patch4" else None
        times = {v: [] for v in VARIANTS}
        cpu = {v: [] for v in VARIANTS}
        errors = {}
        for r in range(rounds):
            for variant in VARIANTS:
                if variant in errors:
                    continue
                t, c, err = measure_variant(arch, variant, args, device, img_size)
                times[variant] += t
                cpu[variant] += c
                if err:
                    errors[variant] = err
                print(f"  {common.SHORT.get(arch, arch)} {variant} round {r + 1}/{rounds}: "
                      + (err or " ".join(f"{x * 1e3:.0f}" for x in t) + " ms/step"), flush=True)
        base = common.median(times[BASELINE]) if times[BASELINE] else None
        base_cpu = common.median(cpu[BASELINE]) if cpu[BASELINE] else None
        for variant in VARIANTS:
            sec = common.median(times[variant]) if times[variant] else None
            csec = common.median(cpu[variant]) if cpu[variant] else None
            rows.append({**env, "bench": "wallclock", "quick": args.quick, "model": arch,
                         "model_name": common.SHORT.get(arch, arch), "variant": variant,
                         "ms_per_step": sec * 1e3 if sec else None,
                         "speedup": base / sec if (base and sec) else None,
                         "paper_speedup": (1.0 if variant == BASELINE else
                                           paper_value("table2", variant, "speedup", arch)),
                         "precision": args.precision_, "batch": args.batch_size * args.accum,
                         "micro_batch": args.batch_size, "accum": args.accum, "compile": args.compile,
                         "steps": len(times[variant]), "rounds": rounds,
                         "times_ms": [round(x * 1e3) for x in times[variant]], "error": errors.get(variant),
                         # CPU seconds of this process: with one thread, what a machine of its own would take
                         "cpu_ms_per_step": csec * 1e3 if csec else None,
                         "speedup_cpu_time": base_cpu / csec if (base_cpu and csec) else None})
    common.print_table(rows, [("model_name", "model"), ("variant", "variant"), ("ms_per_step", "ms/step"),
                              ("speedup", "speed-up"), ("paper_speedup", "paper"), ("cpu_ms_per_step", "CPU ms/step"),
                              ("speedup_cpu_time", "speed-up (CPU time)"), ("precision", "dtype"),
                              ("batch", "batch"), ("accum", "accum"), ("error", "error")],
                       title=f"Table 2 on {env.get('gpu') or env['cpu']} ({env['threads']} threads), torch "
                             f"{env['torch']}, load before {env['load_avg']}, after {common.load_average()}")
    if not args.no_record:
        print("records:", common.append_records(args.out_dir, "wallclock", rows))
    return 1 if all(r["ms_per_step"] is None for r in rows) else 0


if __name__ == "__main__":
    common.run_main(main)
