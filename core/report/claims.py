"""The paper's qualitative claims that the ablations test, each with a verdict at this preset.

A claim is one or more comparisons, each a weighted sum of variant means (a difference, or a
contrast of three; a term of another ablation is written `ablation/variant`), a relation it should
satisfy, and the metric it is read on. The verdict comes from the 95 % interval of that contrast
over seeds (paired over seeds where the variants are, else Welch's t: core/report/intervals.py)
and the RULES below. The claims, the rule and the margin were written
down before any multi-seed result was looked at; nothing here may be tuned toward a verdict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from core.ablation import follows_paper
from core.report.collect import METRICS, Results, protocol_metric
from core.report.intervals import LEVEL, NAME as WELCH_NAME, PAIRED_NAME, best_ci
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
    terms: tuple  # ((paper variant label, weight), ...): the contrast sum(w * mean); 'abl/label': another ablation's
    relation: str  # a key of RULES
    # whether the terms' runs of one seed share that seed's randomness (initial weights, data order,
    # masks): then the interval is paired over seeds; False: Welch's t over independent groups
    paired: bool = True

    def term(self, label: str) -> tuple[str, str]:
        """(ablation, paper variant label) of one term."""
        return tuple(label.split("/", 1)) if "/" in label else (self.ablation, label)


@dataclass(frozen=True)
class Claim:
    text: str
    source: str  # where the paper shows it
    metric: str  # the paper's metric: read wherever the preset evaluates it (metric_for)
    comparisons: tuple


def diff(ablation, a, b, relation="better", paired=True) -> Comparison:
    return Comparison(ablation, ((a, 1.0), (b, -1.0)), relation, paired)


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
          "Figure 9", "ft_top1", (Comparison("partial_finetune", (("1", 2.0), ("0", -1.0), ("24", -1.0)), "better"),)),
    # Figure 9's full fine-tune rung is the baseline's fine-tuning at every preset (small presets plan
    # no other). Welch, not paired: the scratch ViT starts from no pretraining run, so it shares only
    # the fine-tune's eval.seed with MAE's seed, not its initial weights
    Claim("MAE pretraining then fine-tuning beats the same ViT trained from scratch with the supervised recipe",
          "Section 4", "ft_top1", (diff("scratch_baseline", "partial_finetune/24", "our_impl", paired=False),)),
)
# the paper's other metric, read where a preset does not evaluate a claim's own; kNN is never read
FALLBACK_METRIC = "linprobe_top1"


def verdict(relation: str, lo: float, hi: float) -> str:
    (yes, _), (no, _) = RULES[relation]
    return REPRODUCED if yes(lo, hi) else CONTRADICTED if no(lo, hi) else INCONCLUSIVE


def metric_for(claim: Claim, preset: str, ablations: dict | None = None) -> str:
    """The claim's own metric where every ablation it reads evaluates it at this preset (the presets
    that run the paper's plan always), else the linear probe (FALLBACK_METRIC)."""
    if follows_paper(preset) or ablations is None:
        return claim.metric
    names = {comp.term(label)[0] for comp in claim.comparisons for label, _ in comp.terms}
    evaluated = [{protocol_metric(p) for p in ablations[n].evals_for(preset)} for n in names if n in ablations]
    return claim.metric if all(claim.metric in e for e in evaluated) else FALLBACK_METRIC


def evaluate_claims(res: Results, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per claim: what the paper shows, ours per variant, each comparison's interval (and its
    half-width, `halfwidths`) and the verdict."""
    paper = load_reference(res.preset) if paper is None else paper
    tier = paper.attrs.get("tier")
    v = res.values
    rows = []
    for claim in CLAIMS:
        metric = metric_for(claim, res.preset, res.ablations)
        parts, verdicts, ours, paper_parts, halves, kinds = [], [], [], [], [], []
        for comp in claim.comparisons:
            groups = []
            for label, _ in comp.terms:
                abl, pv = comp.term(label)
                sel = v[(v.ablation == abl) & (v.paper_variant == pv) & (v.metric == metric)
                        & (v.state == "done") & v.value.notna()]
                groups.append(dict(zip(sel.seed.astype(int), sel.value.astype(float))))
                ours.append(_group_text(label, [groups[-1][k] for k in sorted(groups[-1])]))
            weights = [w for _, w in comp.terms]
            expr = _expr(comp)
            missing = sorted({comp.term(label)[0] for label, _ in comp.terms} - set(res.ablations))
            if missing:
                parts.append(f"{expr}: {', '.join(missing)} not in this sweep")
                verdicts.append(INCONCLUSIVE)
            elif (ci := best_ci(groups, weights, comp.paired)) is None:
                have = min(len(g) for g in groups)
                parts.append(f"{expr}: needs >= 2 finished seeds per variant (has {have})")
                verdicts.append(INCONCLUSIVE)
            else:
                est, lo, hi, name = ci
                verdicts.append(verdict(comp.relation, lo, hi))
                parts.append(f"{expr} = {est:+.2f} [{lo:+.2f}, {hi:+.2f}]" + ("" if name == PAIRED_NAME else " (Welch)"))
                halves.append((hi - lo) / 2)
                kinds.append("paired" if name == PAIRED_NAME else "Welch")
            paper_parts.append(_paper_text(paper, comp, claim.metric))
        final = (CONTRADICTED if CONTRADICTED in verdicts else
                 REPRODUCED if all(x == REPRODUCED for x in verdicts) else INCONCLUSIVE)
        rows.append({"claim": claim.text, "source": claim.source, "metric": metric,
                     "paper": "; ".join(paper_parts) + f" ({METRICS[claim.metric][0]}, "
                              + (f"published at tier {tier})" if tier else "ViT-L)"),
                     "ours": "; ".join(dict.fromkeys(ours)), "interval": "; ".join(parts),
                     "relations": ", ".join(c.relation for c in claim.comparisons), "verdict": final,
                     "verdicts": verdicts, "halfwidths": halves, "intervals": kinds})
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
        abl, pv = comp.term(label)
        row = paper[(paper.ablation == abl) & (paper.variant == pv) & (paper.metric == metric)
                    & (paper.model == PAPER_MODEL)]
        if not len(row):
            return f"{_expr(comp)}: not in the paper"
        if math.isnan(row.value.iloc[0]):  # a tier without a published number for this variant
            return f"{_expr(comp)}: {NO_FIGURE}"
        total += w * float(row.value.iloc[0])
    return f"{_expr(comp)} = {total:+.1f}"


def median_halfwidth(df: pd.DataFrame) -> float:
    """The median 95 % half-width over every contrast of the claims table that has an interval (NaN: none)."""
    halves = sorted(h for hs in df.halfwidths for h in hs)
    if not halves:
        return math.nan
    mid = len(halves) // 2
    return halves[mid] if len(halves) % 2 else (halves[mid - 1] + halves[mid]) / 2


def rule_text() -> list[str]:
    lines = [f"- Interval: the {PAIRED_NAME} when every term has the same finished seeds; else {WELCH_NAME} "
             f"over the variants as independent groups, marked (Welch). Paired is valid because the seeds are "
             f"independent draws and the variants of one seed share its initial encoder weights, data order and "
             f"mask stream (pretrain.seed) and its evaluation seed; the scratch baseline shares no pretraining "
             f"seed with MAE, so its claim is always Welch. Either needs two finished seeds per variant, else the "
             f"claim is inconclusive.",
             f"- Verdict of a comparison, from its interval [lo, hi] in top-1 points (margin {MARGIN:g}):"]
    names = {"better": "better (A > B)", "no_worse": "no worse (A >= B - margin)",
             "no_better": "no better (A <= B + margin)", "on_par": "on a par (|A - B| < margin)"}
    for rel, ((_, yes), (_, no)) in RULES.items():
        lines.append(f"  - {names[rel]}: reproduced if {yes}; contradicted if {no}; else inconclusive.")
    lines.append("- A claim is contradicted if any of its comparisons is, reproduced if all are, else inconclusive.")
    lines.append("- Metric: the paper's for that claim (linear probe or fine-tuning top-1) wherever the preset "
                 "evaluates it; a small preset whose plan does not fine-tune an ablation reads that claim on the "
                 "linear probe instead (the metric column says which). kNN is never read; it stays a table column.")
    return lines


def claims_markdown(df: pd.DataFrame, preset: str) -> str:
    head = ["claim", "paper", f"ours ({preset}, mean ± std)", f"{LEVEL:.0%} interval of Δ", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in df.itertuples():
        lines.append("| " + " | ".join([f"{r.claim} ({r.source}; {r.metric})", r.paper, r.ours, r.interval,
                                        f"**{r.verdict}**"]) + " |")
    return "\n".join(lines + [""] + rule_text()) + "\n"
