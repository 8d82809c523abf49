"""Markdown tables of the benchmark records in a folder (for the README and docs/performance.md).

    python bench/summary.py results/bench                      # every record
    python bench/summary.py $OUT --since 1764358000            # records of one gpu_check run
    python bench/summary.py /path/from/gpu --merge-into results/bench   # append them to the repo's files
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

NAMES = ("matmul", "flops", "pretrain_step", "wallclock")


def load(folder: str, name: str, since: float | None = None) -> list[dict]:
    path = os.path.join(folder, f"{name}.json")
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            recs = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise common.UserError(f"benchmark record file {path} is unreadable: {e}") from None
    if since is not None:
        recs = [r for r in recs if r.get("unix_time", float("-inf")) >= since]
    return recs


def fmt(v, spec=".3g"):
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def table(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def where(r: dict) -> str:
    return r.get("gpu") or f"{r.get('cpu')} ({r.get('threads')} thr)"


def summary(folder: str, since: float | None = None) -> str:
    parts = []
    mm = load(folder, "matmul", since)
    if mm:
        parts.append("Matmul peak (square bf16/fp32 product, median):\n\n" + table(
            ["date", "device", "dtype", "n", "TFLOP/s"],
            [[r["date"][:10], where(r), r["precision"], str(r["n"]), fmt(r["tflops"])] for r in mm]))
    st = load(folder, "pretrain_step", since)
    if st:
        parts.append("Pretraining step (forward + backward + AdamW, mask ratio 0.75):\n\n" + table(
            ["date", "device", "model", "decoder", "dtype", "batch", "compile", "ms/step", "img/s", "TFLOP/s",
             "efficiency", "CPU ms/step", "efficiency (CPU time)", "load"],
            [[r["date"][:10], where(r), r["model"], r.get("decoder", "-"), r["precision"], str(r["batch"]),
              "on" if r.get("compile") else "off", fmt(r.get("ms_per_step"), ".0f"), fmt(r.get("images_per_s")),
              fmt(r.get("achieved_tflops")), fmt(r.get("efficiency"), ".0%") if r.get("efficiency") else
              (r.get("error") or "-"), fmt(r.get("cpu_ms_per_step"), ".0f"),
              fmt(r.get("efficiency_cpu_time"), ".0%"), fmt((r.get("load_avg") or [None])[0])] for r in st]))
    fl = load(folder, "flops", since)
    if fl:
        parts.append("FLOPs per image (Table 1c), forward, torch.utils.flop_counter:\n\n" + table(
            ["model", "decoder", "GFLOPs decoder-only", "GFLOPs mask tokens in encoder", "ratio", "paper",
             "decoder/encoder per token", "paper"],
            [[r["model"], r["decoder"], fmt(r["gflops_decoder_only"]), fmt(r["gflops_encoder"]), fmt(r["ratio"]),
              fmt(r.get("paper_ratio")), fmt(r["decoder_share_per_token"], ".1%"),
              fmt(r.get("paper_decoder_share_per_token"), ".0%")] for r in fl]))
    wc = load(folder, "wallclock", since)
    if wc:
        parts.append("Table 2, step time with mask tokens in the encoder vs decoder-only:\n\n" + table(
            ["date", "device", "model", "variant", "dtype", "batch", "ms/step", "speed-up", "paper", "CPU ms/step",
             "speed-up (CPU time)", "load"],
            [[r["date"][:10], where(r), r.get("model_name", r["model"]), r["variant"], r["precision"],
              f"{r['micro_batch']}x{r['accum']}" if r.get("accum", 1) > 1 else str(r["batch"]),
              fmt(r.get("ms_per_step"), ".0f"), fmt(r.get("speedup"), ".2f") + ("x" if r.get("speedup") else ""),
              fmt(r.get("paper_speedup"), ".1f") + ("x" if r.get("paper_speedup") else ""),
              fmt(r.get("cpu_ms_per_step"), ".0f"),
              fmt(r.get("speedup_cpu_time"), ".2f") + ("x" if r.get("speedup_cpu_time") else ""),
              fmt((r.get("load_avg") or [None])[0])] for r in wc]))
    return "\n\n".join(parts) if parts else "(no benchmark records)"


def main(argv=None) -> int:
    p = common.Parser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="folder holding matmul.json, flops.json, pretrain_step.json, wallclock.json")
    p.add_argument("--since", type=float, default=None, help="only records from this Unix time on")
    p.add_argument("--merge-into", default=None, help="append the selected records to the files in this folder")
    args = p.parse_args(argv)
    if not os.path.isdir(args.folder):
        raise common.UserError(f"{args.folder} is not a folder")
    print(summary(args.folder, args.since))
    if args.merge_into:
        for name in NAMES:
            recs = load(args.folder, name, args.since)
            if recs:
                print(f"merged {len(recs)} record(s) into", common.append_records(args.merge_into, name, recs))
    return 0


if __name__ == "__main__":
    common.run_main(main)
