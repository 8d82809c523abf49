"""Shared pieces of the benchmarks: the measured pretraining step, timing, records and tables.

The step is the training loop's own (`core.train.forward_backward` + `optimizer_step`, fused
AdamW, autocast, the loop's mask sampler) on random images already on the device: data loading
is left out, so the numbers are the model's and the optimizer's alone.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from core.errors import UserError  # noqa: E402

DEFAULT_OUT = os.path.join(ROOT, "results", "bench")
SHORT = {"vit_tiny_patch4": "tiny", "vit_small_patch16": "ViT-S/16", "vit_base_patch16": "ViT-B/16",
         "vit_large_patch16": "ViT-L/16", "vit_huge_patch14": "ViT-H/14"}


# --------------------------------------------------------------------------- command line

class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as run_all.py
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def base_parser(doc: str) -> Parser:
    p = Parser(description=doc.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quick", action="store_true",
                   help="seconds-long smoke run on tiny models (tests); its records say quick=true")
    p.add_argument("--out-dir", default=os.environ.get("BENCH_OUT") or DEFAULT_OUT,
                   help="folder for the JSON records (default results/bench, or $BENCH_OUT)")
    p.add_argument("--no-record", action="store_true", help="print the table only")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, one per core)")
    return p


def setup(args) -> torch.device:
    """Device and thread count from the common arguments."""
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def run_main(main):
    """Bad input: one line and exit 2, as the suite's CLI."""
    try:
        sys.exit(main())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def resolve_device(name: str) -> torch.device:
    from core.device import resolve_device as core_resolve
    return core_resolve(name)


# --------------------------------------------------------------------------- environment

def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment(device: torch.device) -> dict:
    from core.results import git_commit

    env = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "unix_time": int(time.time()), "host": platform.node(),
           "cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "device": device.type, "load_avg": load_average(), "git_commit": git_commit()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- the step

def model_config(arch: str, *, decoder_depth: int | None = None, mask_token_in_encoder: bool = False,
                 img_size: int | None = None, mask_ratio: float = 0.75):
    """The paper's model (8 x 512 decoder, pixel target) with `arch` as encoder; the tiny arch
    gets the tiny preset's images (16 px) and 2 x 64 decoder unless told otherwise."""
    from core.config import build_config

    preset = "tiny" if arch == "vit_tiny_patch4" else "paper"
    over = [f"model.arch={arch}", f"model.mask_ratio={mask_ratio}",
            f"model.mask_token_in_encoder={mask_token_in_encoder}", "data.dataset=synthetic",
            "data.synthetic_size=4096"]  # no images are made: as large as the recipe's batch, which must fit
    if decoder_depth is not None:
        over.append(f"model.decoder_depth={decoder_depth}")
    if img_size is not None:
        over.append(f"model.img_size={img_size}")
    return build_config(preset, over)


class Step:
    """One optimizer step of MAE pretraining: `accum` micro-batches of `batch` images (forward,
    loss, backward each), then one AdamW step, as the loop does with pretrain.accum_iter."""

    def __init__(self, cfg, batch: int, precision: str, device: torch.device, compile: bool = False,
                 accum: int = 1):
        from core.device import cpu_attention, grad_scaler, keep_freed_memory
        from core.model import MAE
        from core.targets import build_target
        from core.train import build_optimizer

        self.cfg, self.batch, self.precision, self.device, self.accum = cfg, batch, precision, device, accum
        if device.type == "cpu":
            keep_freed_memory()  # as core.train.pretrain does
        self.target = build_target(cfg.model, cfg.data)
        torch.manual_seed(0)
        with torch.device(device):  # initialise on the device: a ViT-H inits in seconds, not a minute
            self.model = MAE(cfg.model, self.target.dim)
            self.imgs = torch.randn(batch, 3, cfg.model.img_size, cfg.model.img_size)
        self.model.train()
        cpu_attention(self.model, device, precision)  # as the training loop does
        self.optimizer = build_optimizer(self.model, cfg, device)
        self.scaler = grad_scaler(precision, device)
        self.step_fn = torch.compile(self.model) if compile else self.model
        self.micro_step = 0

    def __call__(self):
        from core.masking import make_mask
        from core.train import forward_backward, mask_generator, optimizer_step

        m = self.cfg.model
        for _ in range(self.accum):
            mask = make_mask(m.mask_strategy, self.batch, self.model.grid, m.mask_ratio,
                             mask_generator(0, self.micro_step, 0)).to(self.device, non_blocking=True)
            self.micro_step += 1
            loss = forward_backward(self.step_fn, self.target, self.imgs, mask, self.precision, self.device,
                                    self.scaler, self.accum, m.loss_on_all_patches)
        optimizer_step(self.model, self.optimizer, self.scaler)
        return loss

    def close(self):
        del self.model, self.optimizer, self.imgs, self.step_fn
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def train_flops_per_image(cfg) -> int:
    from core.flops import mae_train_flops
    from core.targets import build_target

    return mae_train_flops(cfg.model, build_target(cfg.model, cfg.data).dim)


class Timings(list):
    """Wall-clock seconds per call; `.cpu` holds this process's CPU seconds per call (CPU runs)."""
    cpu: list


def time_it(fn, device: torch.device, steps: int, warmup: int) -> Timings:
    """Seconds per call after `warmup` untimed calls; the device is synchronised around each.

    On the CPU the process's CPU time is kept too: with one thread it is the time the step
    would take on a machine of its own, since time spent waiting for a core shared with other
    processes is not counted (with several threads it also counts threads waiting for each other)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times, cpu = Timings(), []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    times.cpu = cpu if device.type == "cpu" else []
    return times


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


# --------------------------------------------------------------------------- records and tables

def append_records(out_dir: str, name: str, records: list[dict]) -> str:
    """Append to <out_dir>/<name>.json (a JSON list), written atomically. An unreadable file is
    never overwritten: the measurement is refused with one line naming it."""
    from core.checkpoint import write_text

    path = os.path.join(out_dir, f"{name}.json")
    try:
        os.makedirs(out_dir, exist_ok=True)
        old = []
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            if not isinstance(old, list):
                raise ValueError("not a JSON list")
        # one record a line: small files and readable diffs when they are committed
        write_text(path, "[\n" + ",\n".join(json.dumps(_round(r), sort_keys=False) for r in old + records) + "\n]\n")
    except (ValueError, json.JSONDecodeError) as e:
        raise UserError(f"benchmark record file {path} is unreadable ({e}); move it away to start a new one") from None
    except OSError as e:
        raise UserError(f"cannot write benchmark records to {path}: {e.strerror or e}") from None
    return path


def _round(obj):
    """Four significant figures are more than the timing noise; they keep the files small."""
    if isinstance(obj, float):
        return float(f"{obj:.4g}")
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v) for v in obj]
    return obj


def print_table(rows: list[dict], columns: list[tuple[str, str]], title: str = ""):
    """columns: (key, header). Floats are printed with 3 significant figures."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(columns)]
    if title:
        print(title)
    print("  ".join(h.ljust(w) for (_, h), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))
    sys.stdout.flush()
