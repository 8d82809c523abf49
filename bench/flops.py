"""FLOPs per image (paper Table 1c): mask tokens in the encoder vs decoder-only, and the decoder's
share of the computation per token (paper section 3: "<10% computation per token vs. the encoder").

Counted by torch.utils.flop_counter on the meta device (no memory, no time), a multiply-add as 2
FLOPs; matmuls, the patch convolution and attention are counted, elementwise ops are not.

    python bench/flops.py                                  # ViT-L/16, 8 x 512 decoder (the paper's)
    python bench/flops.py --models vit_base_patch16 vit_large_patch16 vit_huge_patch14
"""
from __future__ import annotations

import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

PAPER_CSV = os.path.join(common.ROOT, "results", "paper", "paper_reference.csv")
# Paper section 4.1: the default 8 x 512 decoder "has only 9% FLOPs per token vs. ViT-L (24 blocks, 1024-d)".
PAPER_DECODER_SHARE = 0.09


def paper_value(source: str, variant: str, metric: str, model: str = "vit_large_patch16") -> float | None:
    """A number from the paper's tables, as listed in results/paper/paper_reference.csv."""
    try:
        with open(PAPER_CSV, newline="") as f:
            for row in csv.DictReader(f):
                if (row["source"], row["model"], row["variant"], row["metric"]) == (source, model, variant, metric):
                    return float(row["value"])
    except OSError:
        pass
    return None


def count(arch: str, decoder_depth: int | None = None, img_size: int | None = None) -> dict:
    from core.flops import mae_flops_breakdown, mae_train_flops
    from core.targets import build_target

    out = {}
    for placement, in_encoder in (("decoder_only", False), ("encoder", True)):
        cfg = common.model_config(arch, decoder_depth=decoder_depth, mask_token_in_encoder=in_encoder,
                                  img_size=img_size)
        dim = build_target(cfg.model, cfg.data).dim
        b = mae_flops_breakdown(cfg.model, dim)
        out[placement] = {"forward": b["total"], "train": mae_train_flops(cfg.model, dim), "breakdown": b}
    m = cfg.model
    b = out["decoder_only"]["breakdown"]
    enc_tok, dec_tok = b["encoder_blocks"] / b["encoder_tokens"], b["decoder_blocks"] / b["decoder_tokens"]
    return {"model": common.SHORT.get(arch, arch), "arch": arch, "img_size": m.img_size,
            "decoder": f"{m.decoder_depth}x{m.decoder_embed_dim}", "mask_ratio": m.mask_ratio,
            "gflops_decoder_only": out["decoder_only"]["forward"] / 1e9,
            "gflops_encoder": out["encoder"]["forward"] / 1e9,
            "ratio": out["encoder"]["forward"] / out["decoder_only"]["forward"],
            "train_gflops_decoder_only": out["decoder_only"]["train"] / 1e9,
            "train_gflops_encoder": out["encoder"]["train"] / 1e9,
            "train_ratio": out["encoder"]["train"] / out["decoder_only"]["train"],
            "decoder_share_per_token": dec_tok / enc_tok,
            "decoder_share_of_total": b["decoder_blocks"] / b["total"],
            "encoder_tokens": b["encoder_tokens"], "decoder_tokens": b["decoder_tokens"]}


def main(argv=None) -> int:
    p = common.base_parser(__doc__)
    p.add_argument("--models", nargs="+", default=None, help="encoder archs (default vit_large_patch16)")
    p.add_argument("--decoder-depth", type=int, default=None, help="default 8 (the tiny arch: 2)")
    args = p.parse_args(argv)
    from core.model import ARCHS
    models = args.models or (["vit_tiny_patch4"] if args.quick else ["vit_large_patch16"])
    for m in models:
        if m not in ARCHS:
            raise common.UserError(f"unknown model {m!r}; choose from {', '.join(sorted(ARCHS))}")
    import torch
    env = common.environment(torch.device("cpu"))
    env["device"] = "meta"
    paper_ratio = paper_value("table1c", "encoder", "flops_ratio")
    rows = []
    for arch in models:
        r = count(arch, args.decoder_depth)
        paper = arch == "vit_large_patch16" and r["decoder"] == "8x512"  # the paper's setting only
        rows.append({**env, "bench": "flops", "quick": args.quick, **r,
                     "paper_ratio": paper_ratio if paper else None,
                     "paper_decoder_share_per_token": PAPER_DECODER_SHARE if paper else None})
    common.print_table(rows, [("model", "model"), ("decoder", "decoder"),
                              ("gflops_decoder_only", "GFLOP/img decoder-only"),
                              ("gflops_encoder", "GFLOP/img mask tokens in encoder"), ("ratio", "ratio"),
                              ("paper_ratio", "paper"), ("train_ratio", "ratio (fwd+bwd)"),
                              ("decoder_share_per_token", "decoder/encoder per token"),
                              ("paper_decoder_share_per_token", "paper")],
                       title="forward FLOPs per image, torch.utils.flop_counter (multiply-add = 2)")
    if not args.no_record:
        print("records:", common.append_records(args.out_dir, "flops", rows))
    return 0


if __name__ == "__main__":
    common.run_main(main)
