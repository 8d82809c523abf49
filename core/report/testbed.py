"""Does the testbed measure learning? From the records of a sweep: raw pixels, random weights and
MAE on the linear probe, fine-tuning and kNN (ablations/learning_check.py, the scratch baseline,
MAE's full fine-tune), and the two criteria of issue 24 (docs/evaluation.md, "Does pretraining learn?"):

1. learning is measurable: MAE's linear probe beats raw pixels and random weights by at least
   MIN_GAIN points each, with 95 % intervals that exclude 0, and stays at or below MAX_PROBE %;
2. power: the median 95 % half-width over the claims table's contrasts is at most MAX_HALFWIDTH.

`python run_all.py testbed --preset P --seeds N` prints it; the report holds the same section.
"""
from __future__ import annotations

import math

from core.errors import UserError
from core.report.claims import evaluate_claims, median_halfwidth
from core.report.collect import Results, ours_text
from core.report.intervals import PAIRED_NAME, best_ci
from core.report.render import _md_row
from core.report.tables import mae_finetune

CHECK = "learning_check"
MIN_GAIN, MAX_PROBE, MAX_HALFWIDTH = 10.0, 90.0, 2.0
SOURCES = (("pixels", "raw pixels (no model)"), ("random", "random weights (the seed's untrained encoder)"),
           ("mae", "MAE (the baseline pretraining run)"))
COLUMNS = (("linprobe_top1", "linear probe top-1 (%)"), ("ft_top1", "fine-tune top-1 (%)"),
           ("knn_top1", "kNN top-1 (%)"))


def _per_seed(res: Results, ablation: str, variant: str, metric: str) -> dict:
    v = res.values
    sel = v[(v.ablation == ablation) & (v.variant == variant) & (v.metric == metric) & (v.state == "done")
            & v.value.notna()]
    return dict(zip(sel.seed.astype(int), sel.value.astype(float)))


def check(res: Results, seeds: int, overrides=()) -> dict:
    """The table and both criteria. UserError (one line, naming what to run) when the linear probes
    of pixels, random weights or MAE lack two finished seeds."""
    extra = "".join(f" {o}" for o in overrides)  # the sweep's own overrides, so the hint runs the same sweep
    run = f"python run_all.py run {CHECK} --preset {res.preset} --seeds {max(seeds, 2)}{extra}"
    if CHECK not in res.ablations:
        raise UserError(f"the {CHECK} ablation is not in this sweep; run: {run}")
    probes = {var: _per_seed(res, CHECK, var, "linprobe_top1") for var, _ in SOURCES}
    short = [f"{var} (has {len(p)})" for var, p in probes.items() if len(p) < 2]
    if short:
        raise UserError(f"the learning check needs the linear probe of 2 or more finished seeds of "
                        f"{', '.join(short)} at preset {res.preset}; run: {run}")
    summ = res.summary()
    scratch = ("scratch_baseline", next(iter(res.ablations["scratch_baseline"].variants_for(res.preset)))) \
        if "scratch_baseline" in res.ablations else None
    mae_ft = mae_finetune(res, summ)
    cells = {("pixels", "ft_top1"): None, ("random", "ft_top1"): scratch, ("mae", "ft_top1"): mae_ft and mae_ft[:2]}
    rows = []
    for var, name in SOURCES:
        line = [name]
        for metric, _ in COLUMNS:
            where = cells.get((var, metric), (CHECK, var))
            key = (*where, metric) if where else None
            if where is None:
                line.append("n/a (no model)" if var == "pixels" else "not evaluated")
            elif key not in summ.index:
                line.append("not evaluated")
            else:
                line.append(ours_text(summ.loc[key], ".2f") + ("" if where[0] == CHECK else f" [{'/'.join(where)}]"))
        rows.append(line)
    gains = {}
    for var in ("pixels", "random"):
        est, lo, hi, name = best_ci([probes["mae"], probes[var]], [1.0, -1.0])
        gains[var] = dict(est=est, lo=lo, hi=hi, interval="paired" if name == PAIRED_NAME else "Welch")
    mae_mean = sum(probes["mae"].values()) / len(probes["mae"])
    c1 = all(g["est"] >= MIN_GAIN and g["lo"] > 0 for g in gains.values()) and mae_mean <= MAX_PROBE
    claims = evaluate_claims(res)
    half = median_halfwidth(claims)
    n_half = sum(len(h) for h in claims.halfwidths)
    n_all = sum(len(v) for v in claims.verdicts)
    return dict(extra=extra, rows=rows, gains=gains, mae_probe=mae_mean, criterion1=c1, halfwidth=half,
                contrasts=(n_half, n_all), criterion2=None if math.isnan(half) else half <= MAX_HALFWIDTH,
                run_all=f"python run_all.py run all --preset {res.preset} --seeds {max(seeds, 2)}{extra}")


def markdown(res: Results, out: dict, seeds: int) -> str:
    lines = [_md_row(["features"] + [c for _, c in COLUMNS]), _md_row(["---"] + ["---:"] * len(COLUMNS))]
    lines += [_md_row(r) for r in out["rows"]]
    lines += ["", "mean ± sample std over finished seeds (n). Random weights' fine-tune: the scratch baseline (the "
              "same architecture trained from random initialisation, supervised recipe); MAE's: its full fine-tune.", ""]
    for var, label in (("pixels", "raw pixels"), ("random", "random weights")):
        g = out["gains"][var]
        lines.append(f"- MAE − {label}, linear probe: {g['est']:+.2f} [{g['lo']:+.2f}, {g['hi']:+.2f}] (95 %, "
                     f"{g['interval']} t interval over seeds)")
    verdict = lambda ok: "**holds**" if ok else "**fails**"  # noqa: E731
    lines.append(f"- Criterion 1, learning is measurable (MAE − pixels and MAE − random ≥ {MIN_GAIN:g} points with "
                 f"intervals excluding 0, MAE linear probe ≤ {MAX_PROBE:g} %, now {out['mae_probe']:.2f} %): "
                 + verdict(out["criterion1"]))
    n_half, n_all = out["contrasts"]
    if out["criterion2"] is None:
        lines.append(f"- Criterion 2, power: no contrast of the claims table has an interval yet ({n_all} contrasts "
                     f"need 2 finished seeds per variant); run: {out['run_all']}")
    else:
        lines.append(f"- Criterion 2, power (median 95 % half-width over the claims table's contrasts ≤ "
                     f"{MAX_HALFWIDTH:g} points): {out['halfwidth']:.2f} over {n_half} of {n_all} contrasts: "
                     + verdict(out["criterion2"]))
    lines.append(f"- From the records by `python run_all.py testbed --preset {res.preset} --seeds {seeds}"
                 f"{out['extra']}`.")
    return "\n".join(lines) + "\n"


def section(res: Results, seeds: int | None = None) -> str:
    """The report's section: the check, or the one line saying what to run."""
    seeds = seeds or 1 + max((c.seed for c in res.plan.cells), default=0)
    try:
        return markdown(res, check(res, seeds), seeds)
    except UserError as e:
        return f"Not measured yet: {e}\n"
