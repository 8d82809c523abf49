"""`compare NEW --baseline BASE`: per-metric differences between two sets of runs with their seed
spread and how surprising the difference is: a t-test and the t confidence interval of the
difference of means (unlike a bootstrap it stays honest at three seeds; core/report/intervals.py).
Two variants of pretraining ablations with the same finished seeds are paired (a seed fixes their
initial weights, data order and masks): paired t over the per-seed differences; anything else
(the scratch baseline, unequal seeds, single runs) is compared with Welch's unequal-variance test.

NEW and BASE are each an ablation (NEW: every variant, BASE: its baseline variant), one variant
`ablation/variant` (over its seeds), or a run id (one run: its own numbers and, for a pretraining
run, those of its evaluations).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.errors import UserError
from core.report.collect import METRICS, Results, protocol_metric
from core.sweep import id_inputs
from core.report.intervals import LEVEL, diff_ci, paired_contrast_ci, welch
from core.report.render import _md_row
from core.report.tables import METRIC_ORDER

@dataclass
class Group:
    label: str
    values: dict  # metric -> finished values, one per seed
    seeds: dict = field(default_factory=dict)  # metric -> the seed of each value
    pairable: bool = False  # a variant whose runs of one seed share that seed's randomness with other variants


def resolve(spec: str, res: Results, role: str) -> list[Group]:
    if "/" in spec:
        name, variant = spec.split("/", 1)
        abl = _ablation(name, res, spec)
        ours = abl.variants_for(res.preset)
        if variant not in ours:  # a paper label names our variant that stands in for it
            mapped = [lab for lab, (p, _) in ours.items() if p == variant]
            if len(mapped) != 1:
                near = difflib.get_close_matches(variant, list(ours), n=3, cutoff=0.3)
                raise UserError(f"ablation {name} has no variant {variant!r} at preset {res.preset}; "
                                f"variants: {', '.join(near or ours)}")
            variant = mapped[0]
        return [_variant_group(res, name, variant)]
    if spec in res.ablations:
        abl = res.ablations[spec]
        if role == "baseline":
            return [_variant_group(res, spec, abl.baseline_for(res.preset))]
        return [_variant_group(res, spec, lab) for lab in abl.variants_for(res.preset)]
    if spec in res.records:
        return [_run_group(res, spec)]
    known = list(res.ablations) + list(res.records)
    near = difflib.get_close_matches(spec, known, n=3, cutoff=0.5)
    raise UserError(f"{role} {spec!r} is not an ablation, ablation/variant or run id with a record in "
                    f"{res.results_dir}/runs" + (f"; did you mean {', '.join(near)}?" if near else ""))


def _ablation(name, res, spec):
    if name not in res.ablations:
        near = difflib.get_close_matches(name, list(res.ablations), n=3, cutoff=0.4)
        raise UserError(f"{spec!r}: unknown ablation {name!r}" + (f"; did you mean {', '.join(near)}?" if near else ""))
    return res.ablations[name]


def _variant_group(res: Results, name: str, variant: str) -> Group:
    v = res.values
    done = v[(v.ablation == name) & (v.variant == variant) & (v.state == "done") & v.value.notna()]
    by_metric = {m: g.sort_values("seed") for m, g in done.groupby("metric")}
    return Group(f"{name}/{variant}", {m: list(g.value) for m, g in by_metric.items()},
                 {m: [int(x) for x in g.seed] for m, g in by_metric.items()}, res.ablations[name].pretrain)


def _run_group(res: Results, run_id: str) -> Group:
    rec = res.records[run_id]
    values = {}
    if rec.get("status") == "done":
        values.update(_record_metrics(rec))
    if rec.get("kind") == "pretrain":  # and the evaluations of this pretraining run
        for other in res.records.values():
            if other.get("parent") == run_id and other.get("status") == "done":
                values.update(_record_metrics(other))
    return Group(run_id, values)


def _record_metrics(rec) -> dict:
    m = rec.get("metrics") or {}
    if rec.get("kind") == "pretrain":
        out = {"final_loss": m.get("final_loss"), "flops": rec.get("flops_per_image")}
        if rec.get("wall_time_s") is not None:
            out["hours"] = rec["wall_time_s"] / 3600
    else:
        out = {protocol_metric(rec.get("kind")): m.get("top1")}
    return {k: [float(v)] for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def compare(res: Results, new: str, baseline: str | None = None, metrics=None) -> pd.DataFrame:
    """One row per (new group, metric): both sides' mean, std and n, the difference and its tests."""
    new_groups = resolve(new, res, "new")
    if baseline is None:
        name = new.split("/")[0]
        if name not in res.ablations:
            raise UserError(f"--baseline is required when comparing {new!r} (not an ablation)")
        baseline = name
    (base,) = resolve(baseline, res, "baseline")
    new_groups = [g for g in new_groups if g.label != base.label] or new_groups
    known = set(METRICS)
    for m in metrics or ():
        if m not in known:
            raise UserError(f"unknown metric {m!r}; choose from: {', '.join(sorted(known))}")
    rows = []
    for g in new_groups:
        shared = [m for m in (*METRIC_ORDER, "final_loss") if m in g.values and m in base.values]
        for m in (metrics or shared):
            a, b = g.values.get(m, []), base.values.get(m, [])
            row = dict(new=g.label, baseline=base.label, metric=m, n_new=len(a), mean_new=_mean(a), std_new=_std(a),
                       n_base=len(b), mean_base=_mean(b), std_base=_std(b))
            row["delta"] = row["mean_new"] - row["mean_base"]
            paired = g.pairable and base.pairable and g.seeds.get(m) == base.seeds.get(m) and len(a) > 1
            w, ci = (paired_test(a, b), paired_contrast_ci([dict(enumerate(a)), dict(enumerate(b))], [1.0, -1.0])) \
                if paired else (welch(a, b), diff_ci(a, b))
            ci = ci[1:] if paired and ci else ci
            row.update(test="paired" if paired else "Welch", t=w[0] if w else math.nan, df=w[1] if w else math.nan,
                       p=w[2] if w else math.nan, ci_low=ci[0] if ci else math.nan, ci_high=ci[1] if ci else math.nan)
            rows.append(row)
    if not rows:
        raise UserError(f"{new} and {baseline} share no metric with finished runs"
                        + (f" among {', '.join(metrics)}" if metrics else "") + " yet; see python run_all.py status. "
                        + id_inputs(res.preset, res.overrides, [res.ablations[n] for n in
                                                                (new.split("/")[0], baseline.split("/")[0])
                                                                if n in res.ablations]))
    return pd.DataFrame(rows)


def paired_test(a, b):
    """(t, degrees of freedom, two-sided p) of the paired t-test of a - b (same seeds, in order), or
    None when the differences do not vary."""
    from scipy import stats  # heavy (~3 s to import here): only the tests need it

    d = np.asarray(a, float) - np.asarray(b, float)
    if d.std(ddof=1) == 0:
        return None
    r = stats.ttest_rel(a, b)
    return float(r.statistic), float(len(d) - 1), float(r.pvalue)


def _mean(v):
    return float(np.mean(v)) if len(v) else math.nan


def _std(v):
    return float(np.std(v, ddof=1)) if len(v) > 1 else math.nan


def to_markdown(df: pd.DataFrame, preset: str) -> str:
    header = ["new", "baseline", "metric", "new: mean ± std (n)", "baseline: mean ± std (n)", "Δ (new − baseline)",
              "t-test", f"{LEVEL:.0%} CI of Δ"]
    lines = [f"### Comparison at preset {preset}", "", _md_row(header), _md_row(["---"] * 3 + ["---:"] * 5)]
    for r in df.itertuples():
        fmt = METRICS.get(r.metric, (r.metric, r.metric, ".3g"))[2]
        n = min(r.n_new, r.n_base)
        why = "n/a (no finished run)" if n == 0 else "n/a (1 seed)" if n == 1 else "n/a (no spread)"
        test = f"{r.test}: t = {r.t:.2f}, df = {r.df:.1f}, p = {r.p:.3g}" if not math.isnan(r.t) else why
        ci = f"[{r.ci_low:+{fmt}}, {r.ci_high:+{fmt}}]" if not math.isnan(r.ci_low) else why
        delta = f"{r.delta:+{fmt}}" if not math.isnan(r.delta) else "—"
        lines.append(_md_row([r.new, r.baseline, r.metric, _side(r.mean_new, r.std_new, r.n_new, fmt),
                              _side(r.mean_base, r.std_base, r.n_base, fmt), delta, test, ci]))
    lines += ["", "- std: sample standard deviation over seeds. paired: two variants of pretraining ablations with the "
              "same finished seeds, whose runs of one seed share its initial weights, data order and masks: two-sided "
              "t-test and Student's t interval over the per-seed differences (n - 1 degrees of freedom; valid because "
              "the seeds are independent draws). Welch: anything else, two-sided, unequal variances, Welch-Satterthwaite "
              "degrees of freedom. Both stay valid at a few seeds, where a bootstrap interval is far too narrow",
              "- with one seed on either side there is no spread to test: run more with --seeds N"]
    return "\n".join(lines) + "\n"


def _side(mean, std, n, fmt) -> str:
    if not n:
        return "— (no finished run)"
    return f"{mean:{fmt}}" + (f" ± {std:{fmt}}" if n > 1 else "") + f" (n={n})"
