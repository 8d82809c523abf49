"""Pretraining step throughput and efficiency: images/s, ms/step and achieved / matmul-peak FLOP/s.

One step is what the training loop does per optimizer step (forward, loss, backward, fused AdamW)
at mask ratio 0.75 with the paper's 8 x 512 decoder (the tiny preset keeps its 2 x 64), on random
images already on the device. FLOPs are forward + backward counted directly by
torch.utils.flop_counter (core.flops.mae_train_flops, ~2.99x the forward); the optimizer's
elementwise work is not counted. The peak is a large square matmul in the same dtype, measured
in the same process before and after the steps (bench/matmul.py); the larger of the two is used,
so that a machine that got busier or quieter meanwhile does not flatter the step.

    python bench/pretrain_step.py                                   # CPU: tiny, ViT-B, ViT-L x fp32, bf16
    python bench/pretrain_step.py --models vit_base_patch16 --precision bf16 --batch 32 --steps 5
    python bench/pretrain_step.py --device cuda --models vit_large_patch16 --batch 256 --compile both
    python bench/pretrain_step.py --device cuda --presets in1k_vitb in100_vits cifar_vitt   # each tier's baseline
"""
from __future__ import annotations

import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import torch  # noqa: E402
from matmul import default_n, matmul_flops  # noqa: E402

CPU_BATCH = {"vit_tiny_patch4": 32, "vit_small_patch16": 32, "vit_base_patch16": 32, "vit_large_patch16": 8,
             "vit_huge_patch14": 4}
GPU_BATCH = {"vit_tiny_patch4": 1024, "vit_small_patch16": 256, "vit_base_patch16": 256,
             "vit_large_patch16": 256, "vit_huge_patch14": 128}


def measure(arch: str, batch: int, precision: str, device: torch.device, compile: bool, steps: int, warmup: int,
            quick: bool, img_size: int | None = None, cfg=None) -> dict:
    cfg = cfg or common.model_config(arch, img_size=img_size)
    flops_img = common.train_flops_per_image(cfg)
    row = {"model": common.SHORT.get(arch, arch), "arch": arch, "precision": precision, "batch": batch,
           "compile": compile, "steps": steps, "warmup": warmup, "mask_ratio": cfg.model.mask_ratio,
           "decoder": f"{cfg.model.decoder_depth}x{cfg.model.decoder_embed_dim}", "img_size": cfg.model.img_size,
           "quick": quick, "train_gflops_per_image": flops_img / 1e9}
    step = None
    try:
        step = common.Step(cfg, batch, precision, device, compile=compile)
        row["fused_attn"] = bool(getattr(step.model.blocks[0].attn, "fused_attn", False))
        times = common.time_it(step, device, steps, warmup)
        if device.type == "cuda":
            row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    except Exception as e:  # one failed setting (OOM, a compiler error) must not lose the others
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        if not common.is_oom(e):
            traceback.print_exc()
        return row
    finally:
        if step is not None:
            step.close()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
    sec = common.median(times)
    achieved = flops_img * batch / sec
    row.update(ms_per_step=sec * 1e3, ms_min=min(times) * 1e3, times_ms=[round(t * 1e3, 1) for t in times],
               images_per_s=batch / sec, achieved_tflops=achieved / 1e12)
    if times.cpu:  # CPU seconds per step: the contention-free figure of a one-thread run
        row.update(cpu_ms_per_step=common.median(times.cpu) * 1e3, cpu_times_ms=[round(t * 1e3, 1) for t in times.cpu])
    return row


def main(argv=None) -> int:
    p = common.base_parser(__doc__)
    p.add_argument("--models", nargs="+", default=None, help="encoder archs (default tiny, ViT-B/16, ViT-L/16)")
    p.add_argument("--precision", nargs="+", default=None, choices=("fp32", "bf16", "fp16"),
                   help="default fp32 bf16 on cpu, bf16 on cuda")
    p.add_argument("--batch", type=int, default=None, help="one batch size for every model (default per model)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 3 cpu, 40 for tiny; 10 cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 cpu, 20 for tiny; 3 cuda; +2 compiled)")
    p.add_argument("--compile", default=None, choices=("off", "on", "both"), help="default off on cpu, both on cuda")
    p.add_argument("--presets", nargs="+", default=None, metavar="PRESET",
                   help="instead of --models: each preset's baseline model (encoder, image size, decoder) at its "
                        "per-GPU batch (pretrain.batch_size / accum_iter / GPUs); docs/tiers.md")
    p.add_argument("--img-size", type=int, default=None, help="image size (default the model's preset: tiny 16, "
                   "paper 224)")
    args = p.parse_args(argv)
    device = common.setup(args)
    gpu = device.type == "cuda"
    from core.model import ARCHS
    models = args.models or (["vit_tiny_patch4"] if args.quick else
                             ["vit_tiny_patch4", "vit_base_patch16", "vit_large_patch16"])
    for m in models:
        if m not in ARCHS:
            raise common.UserError(f"unknown model {m!r}; choose from {', '.join(sorted(ARCHS))}")
    precisions = args.precision or (["bf16"] if gpu else ["fp32", "bf16"])
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile or ("both" if gpu else "off")]
    steps = args.steps or (2 if args.quick else 10 if gpu else 3)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3 if gpu else 1)
    if gpu:
        torch.backends.cudnn.benchmark = True  # the patch projection is a convolution

    env = common.environment(device)
    def peaks():
        return {prec: matmul_flops(device, prec, default_n(device, args.quick), steps=2 if args.quick else 5)
                for prec in precisions}
    before = peaks()
    rows = []
    runs = [(arch, None, None) for arch in models]
    if args.presets:  # the tiers' baselines: their own model settings and per-GPU batch
        from core.config import build_config
        runs = []
        for name in args.presets:
            cfg = build_config(name, ["data.dataset=synthetic", "data.synthetic_size=4096"])
            cl, p_ = cfg.cluster, cfg.pretrain
            runs.append((cfg.model.arch, cfg, p_.batch_size // p_.accum_iter // max(1, cl.nodes * cl.gpus_per_node)))
    for arch, preset_cfg, preset_batch in runs:
        batch = args.batch or (8 if args.quick else preset_batch or (GPU_BATCH if gpu else CPU_BATCH)[arch])
        for prec in precisions:
            for comp in compiles:
                n, w = steps, warmup + (2 if comp else 0)  # the first compiled calls compile
                if arch == "vit_tiny_patch4" and not (gpu or args.quick or args.steps or args.warmup is not None):
                    # tiny steps take tens of ms: oneDNN builds its bf16 kernels over the first ~10
                    # steps, and with 1 warm-up step bf16 read 194 instead of 21 ms/step (measured)
                    n, w = 40, 20
                row = measure(arch, batch, prec, device, comp, n, w, args.quick, args.img_size, preset_cfg)
                if preset_cfg is not None:
                    row["preset"] = preset_cfg.run.preset
                rows.append({**env, "bench": "pretrain_step", **row})
                print(f"  {row['model']} {prec} batch {batch} compile={comp}: "
                      + (f"{row['images_per_s']:.3g} img/s, {row['ms_per_step']:.0f} ms/step, "
                         f"{row['achieved_tflops']:.3g} TFLOP/s" if "error" not in row else row["error"])
                      + (f", peak memory {row['max_memory_gib']:.1f} GiB" if "max_memory_gib" in row else "")
                      + (f" [preset {row['preset']}]" if "preset" in row else ""), flush=True)
    after = peaks()
    for row in rows:
        b, a = before[row["precision"]]["tflops"], after[row["precision"]]["tflops"]
        row.update(matmul_peak_tflops=max(a, b), matmul_peak_before=b, matmul_peak_after=a)
        if "achieved_tflops" in row:
            row["efficiency"] = row["achieved_tflops"] / max(a, b)
        if "cpu_ms_per_step" in row:  # the same ratio in CPU time: robust to a shared machine with one thread
            peak_cpu = max(before[row["precision"]]["tflops_cpu_time"], after[row["precision"]]["tflops_cpu_time"])
            achieved_cpu = row["train_gflops_per_image"] * row["batch"] / row["cpu_ms_per_step"]  # TFLOP/s
            row["efficiency_cpu_time"] = achieved_cpu / peak_cpu
    common.print_table(rows, [("model", "model"), ("precision", "dtype"), ("batch", "batch"), ("compile", "compile"),
                              ("ms_per_step", "ms/step"), ("images_per_s", "img/s"),
                              ("train_gflops_per_image", "GFLOP/img (f+b)"), ("achieved_tflops", "TFLOP/s"),
                              ("matmul_peak_tflops", "matmul peak"), ("efficiency", "efficiency"),
                              ("cpu_ms_per_step", "CPU ms/step"), ("efficiency_cpu_time", "eff. (CPU time)"),
                              ("error", "error")],
                       title=f"pretraining step on {env.get('gpu') or env['cpu']} ({env['threads']} threads), "
                             f"torch {env['torch']}, load before {env['load_avg']}, after {common.load_average()}")
    if not args.no_record:
        print("records:", common.append_records(args.out_dir, "pretrain_step", rows))
    return 1 if all("error" in r for r in rows) else 0


if __name__ == "__main__":
    common.run_main(main)
