"""The paper's qualitative claims that the ablations test, each with a verdict at this preset.

A claim is one or more comparisons inside one ablation: a weighted sum of variant means (a
difference, or a contrast of three), a relation it should satisfy, and the metric it is read on.
The verdict comes from the 95 % interval of that contrast over seeds (Welch's t,
core/report/intervals.py) and the RULES below. The claims, the rule and the margin were written
down before any multi-seed result was looked at; nothing here may be tuned toward a verdict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from core.ablation import follows_paper
from core.report.collect import METRICS, Results
from core.report.intervals import LEVEL, NAME as INTERVAL_NAME, contrast_ci
from core.report.paper import NO_FIGURE, PAPER_MODEL, load_reference

# Top-1 points within which two variants count as "on a par" (and a shortfall as "no worse").
MARGIN = 1.0
REPRODUCED, CONTRADICTED, INCONCLUSIVE = "reproduced", "contradicted", "inconclusive"
M = MARGIN
# relation -> (reproduced when, contradicted when), each a test of the contrast's interval [lo, hi]
# and the same test as the report prints it
RULES = {
    "better": ((lambda lo, hi: lo > 0, "lo > 0"), (lambda lo, hi: hi < 0, "hi < 0")),
    "no_worse": ((lambda lo, hi: lo > -M, f"lo > -{M:g}"), (lambda lo, hi: hi < -M, f"hi < -{M:g}")),
    "no_better": ((lambda lo, hi: hi < M, f"hi < {M:g}"), (lambda lo, hi: lo > M, f"lo > {M:g}")),
    "on_par": ((lambda lo, hi: -M < lo and hi < M, f"-{M:g} < lo and hi < {M:g}"),
               (lambda lo, hi: lo > M or hi < -M, f"lo > {M:g} or hi < -{M:g}")),
}


@dataclass(frozen=True)
class Comparison:
    ablation: str
    terms: tuple  # ((paper variant label, weight), ...): the contrast sum(w * mean)
    relation: str  # a key of RULES


@dataclass(frozen=True)
class Claim:
    text: str
    source: str  # where the paper shows it
    metric: str  # read at the paper preset
    comparisons: tuple
    small_metric: str = "knn_top1"  # small presets: the linear probe is saturated on digits (README)


def diff(ablation, a, b, relation="better") -> Comparison:
    return Comparison(ablation, ((a, 1.0), (b, -1.0)), relation)


CLAIMS = (
    Claim("A high masking ratio (75 %) beats a low (10 %) and a very high (90 %) one", "Figure 5",
          "linprobe_top1", (diff("mask_ratio", "0.75", "0.1"), diff("mask_ratio", "0.75", "0.9"))),
    Claim("Mask tokens in the decoder only match or beat mask tokens in the encoder (at a third of the FLOPs)",
          "Table 1c", "ft_top1", (diff("mask_token", "decoder_only", "encoder", "no_worse"),)),
    Claim("Pixel and normalised-pixel targets are on a par; dVAE tokens add nothing over normalised pixels",
          "Table 1d", "ft_top1", (diff("target", "norm_pixel", "pixel", "on_par"),
                                  diff("target", "dvae_token", "norm_pixel", "no_better"))),
    Claim("Random cropping helps; colour jitter hurts", "Table 1e", "ft_top1",
          (diff("augmentation", "crop_rand", "none"), diff("augmentation", "crop_rand", "crop_color_jitter"))),
    Claim("Longer schedules keep improving (100 -> 800 -> 1600 epochs)", "Figure 7", "linprobe_top1",
          (diff("epochs", "800", "100"), diff("epochs", "1600", "800"))),
    Claim("A deeper decoder (8 blocks) helps the linear probe over a 1-block one", "Table 1a", "linprobe_top1",
          (diff("decoder_depth", "8", "1"),)),
    Claim("Random sampling beats block-wise and grid sampling at 75 % masking", "Table 1f", "ft_top1",
          (diff("mask_sampling", "random@0.75", "block@0.75"), diff("mask_sampling", "random@0.75", "grid@0.75"))),
    # "most": one block closes more of the gap from the linear probe (0 blocks) to full fine-tuning
    # than it leaves open: (ft1 - ft0) - (ft_full - ft1) = 2 ft1 - ft0 - ft_full > 0
    Claim("Fine-tuning only the last block recovers most of what full fine-tuning gains over the linear probe",
          "Figure 9", "ft_top1", (Comparison("partial_finetune", (("1", 2.0), ("0", -1.0), ("24", -1.0)), "better"),),
          small_metric="ft_top1"),
)


def verdict(relation: str, lo: float, hi: float) -> str:
    (yes, _), (no, _) = RULES[relation]
    return REPRODUCED if yes(lo, hi) else CONTRADICTED if no(lo, hi) else INCONCLUSIVE


def metric_for(claim: Claim, preset: str) -> str:
    return claim.metric if follows_paper(preset) else claim.small_metric


def evaluate_claims(res: Results, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per claim: what the paper shows, ours per variant, each comparison's interval and the verdict."""
    paper = load_reference(res.preset) if paper is None else paper
    tier = paper.attrs.get("tier")
    v = res.values
    rows = []
    for claim in CLAIMS:
        metric = metric_for(claim, res.preset)
        parts, verdicts, ours, paper_parts = [], [], [], []
        for comp in claim.comparisons:
            groups = []
            for label, _ in comp.terms:
                sel = v[(v.ablation == comp.ablation) & (v.paper_variant == label) & (v.metric == metric)
                        & (v.state == "done") & v.value.notna()]
                groups.append(list(sel.sort_values("seed").value))
                ours.append(_group_text(label, groups[-1]))
            weights = [w for _, w in comp.terms]
            expr = _expr(comp)
            if comp.ablation not in res.ablations:
                parts.append(f"{expr}: not in this sweep")
                verdicts.append(INCONCLUSIVE)
            elif (ci := contrast_ci(groups, weights)) is None:
                have = min(len(g) for g in groups)
                parts.append(f"{expr}: needs >= 2 finished seeds per variant (has {have})")
                verdicts.append(INCONCLUSIVE)
            else:
                est, lo, hi = ci
                verdicts.append(verdict(comp.relation, lo, hi))
                parts.append(f"{expr} = {est:+.2f} [{lo:+.2f}, {hi:+.2f}]")
            paper_parts.append(_paper_text(paper, comp, claim.metric))
        final = (CONTRADICTED if CONTRADICTED in verdicts else
                 REPRODUCED if all(x == REPRODUCED for x in verdicts) else INCONCLUSIVE)
        rows.append({"claim": claim.text, "source": claim.source, "metric": metric,
                     "paper": "; ".join(paper_parts) + f" ({METRICS[claim.metric][0]}, "
                              + (f"published at tier {tier})" if tier else "ViT-L)"),
                     "ours": "; ".join(dict.fromkeys(ours)), "interval": "; ".join(parts),
                     "relations": ", ".join(c.relation for c in claim.comparisons), "verdict": final,
                     "verdicts": verdicts})
    return pd.DataFrame(rows)


def _expr(comp: Comparison) -> str:
    out = ""
    for label, w in comp.terms:
        sign = "-" if w < 0 else "+"
        mag = "" if abs(w) == 1 else f"{abs(w):g}·"
        out += (f" {sign} " if out else ("-" if w < 0 else "")) + f"{mag}{label}"
    return f"Δ({out})"


def _group_text(label: str, values: list) -> str:
    if not values:
        return f"{label}: —"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{label}: {mean:.2f} (n=1)"
    std = math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1))
    return f"{label}: {mean:.2f} ± {std:.2f} (n={len(values)})"


def _paper_text(paper: pd.DataFrame, comp: Comparison, metric: str) -> str:
    total = 0.0
    for label, w in comp.terms:
        row = paper[(paper.ablation == comp.ablation) & (paper.variant == label) & (paper.metric == metric)
                    & (paper.model == PAPER_MODEL)]
        if not len(row):
            return f"{_expr(comp)}: not in the paper"
        if math.isnan(row.value.iloc[0]):  # a tier without a published number for this variant
            return f"{_expr(comp)}: {NO_FIGURE}"
        total += w * float(row.value.iloc[0])
    return f"{_expr(comp)} = {total:+.1f}"


def rule_text() -> list[str]:
    lines = [f"- Interval: {INTERVAL_NAME} of each contrast of variant means over seeds (variants as independent "
             f"groups); it needs at least two finished seeds per variant, else the claim is inconclusive.",
             f"- Verdict of a comparison, from its interval [lo, hi] in top-1 points (margin {MARGIN:g}):"]
    names = {"better": "better (A > B)", "no_worse": "no worse (A >= B - margin)",
             "no_better": "no better (A <= B + margin)", "on_par": "on a par (|A - B| < margin)"}
    for rel, ((_, yes), (_, no)) in RULES.items():
        lines.append(f"  - {names[rel]}: reproduced if {yes}; contradicted if {no}; else inconclusive.")
    lines.append("- A claim is contradicted if any of its comparisons is, reproduced if all are, else inconclusive.")
    lines.append("- Small presets read every claim on kNN top-1 (the linear probe is saturated on digits) except "
                 "Figure 9's, which is read on fine-tuning top-1; the paper preset reads the paper's metric.")
    return lines


def claims_markdown(df: pd.DataFrame, preset: str) -> str:
    head = ["claim", "paper", f"ours ({preset}, mean ± std)", f"{LEVEL:.0%} interval of Δ", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in df.itertuples():
        lines.append("| " + " | ".join([f"{r.claim} ({r.source}; {r.metric})", r.paper, r.ours, r.interval,
                                        f"**{r.verdict}**"]) + " |")
    return "\n".join(lines + [""] + rule_text()) + "\n"
