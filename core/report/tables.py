"""Ours joined with the paper's numbers: one table per ablation (Table 1a-f, Table 2, the data of
Figures 5, 7 and 9, section 4) and one for the paper rows no ablation here reproduces.

Every paper row appears exactly once. A table row is a paper row, one of our variants, or both
(small presets map their variants onto the paper's labels); a paper row this preset does not run
says so, and a variant the paper does not have is marked as such.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from core.ablation import PAPER_PRESET, load_all
from core.registry import PROTOCOLS
from core.report.collect import IN_SUITE_TOKENIZER, METRICS, Results, ours_text, protocol_metric
from core.report.paper import NO_FIGURE, PAPER_MODEL, load_reference, model_name, source_name

# Where MAE's own full fine-tuning number lives, for the section-4 comparison with the scratch ViT:
# (ablation, paper label), the first one with a number wins.
MAE_FINETUNE = (("mask_ratio", "0.75"), ("partial_finetune", "24"))
SERIES_NAMES = {"partial_finetune_mocov3": "MoCo v3"}
METRIC_ORDER = ("ft_top1", "linprobe_top1", "knn_top1", "flops_ratio", "hours", "speedup")
STATE_COLUMNS = ("done", "pending", "running", "interrupted", "preempted", "cancelled", "not run", "failed",
                 "unavailable")
NOT_RUN, REFERENCE, NOT_EVALUATED = "not run at this preset", "reference only", "not evaluated"
# a variant's caveat -> what its Δ column says instead of a difference that would not be like for like
NOT_LIKE_FOR_LIKE = {IN_SUITE_TOKENIZER: "n/a: different tokenizer"}


@dataclass
class Table:
    id: str  # file stem: table1c, figure5, ...
    title: str
    header: list
    body: list  # rows of display strings
    frame: pd.DataFrame  # long form, one row per (table row, series, metric): the CSV, the plots
    notes: list = field(default_factory=list)
    legend: list = field(default_factory=list)  # how to read it: the same for every joined table
    ablation: str | None = None  # the ablation the table shows, if one


def build_tables(res: Results, paper: pd.DataFrame | None = None) -> list[Table]:
    paper = load_reference(res.preset) if paper is None else paper
    summ = res.summary()
    model = main_model(res, paper)
    known = load_all()
    known_sources = {a.source for a in known.values()}
    # a table's file name depends on every known ablation, not on the ones this command names: `tables a`
    # and `tables a b` write the same files (two of one source: <source>_<name>, never a stale <source>.md)
    counts = Counter(a.source for a in {**known, **res.ablations}.values())
    tables, claimed = [], set()
    for abl in sorted(res.ablations.values(), key=lambda a: source_order(a.source)):
        tid = abl.source if counts[abl.source] == 1 else f"{abl.source}_{abl.name}"
        series = paper[(paper.source == abl.source) & ~paper.ablation.isin(list(known)) & ~paper.key.isin(claimed)]
        t = ablation_table(tid, abl, res, summ, paper[paper.ablation == abl.name], series, model)
        if abl.name == "scratch_baseline":
            t = add_mae_row(t, res, summ, paper, model)
        if paper.attrs.get("tier"):
            t = tier_notes(t, paper[paper.ablation == abl.name], paper.attrs["tier"])
        claimed |= set(series.key)
        tables.append(t)
    if "wallclock" in res.ablations:
        bench = measured_table(res.results_dir, paper)
        if bench is not None:
            tables.append(bench)
    rest = paper[~paper.ablation.isin(list(known)) & ~paper.source.isin(list(known_sources))]
    if len(rest):
        tables.append(reference_table(rest))
    return tables


def tier_notes(t: Table, prows, tier: str) -> Table:
    """At a tier: the published column is that scale's, each number's source in the notes."""
    t.header = [h.replace(" paper", " published") for h in t.header]
    t.body = [[NO_FIGURE if c == "—" and t.header[j].endswith(" published") else c for j, c in enumerate(row)]
              for row in t.body]
    sources = sorted({s for s in prows.get("published", []) if isinstance(s, str) and s})
    t.notes = t.notes + [f"published numbers at tier {tier} (not the paper's ViT-L): " + "; ".join(sources)
                         if sources else f"tier {tier}: {NO_FIGURE} for this ablation at this scale (docs/tiers.md)"]
    return t


def source_order(source: str):
    """Table 1a ... 1f, Table 2, Figures 5, 7, 9, section 4, then anything else by name."""
    m = re.fullmatch(r"(table|figure|section)(\d+)([a-z]?)", source)
    return (("table", "figure", "section").index(m.group(1)), int(m.group(2)), m.group(3)) if m else (3, 0, source)


def main_model(res: Results, paper) -> str:
    """The paper rows ours join: the paper preset's own model if the paper has it, else ViT-L/16,
    which every small preset stands in for."""
    arch = res.cfg.model.arch
    return arch if res.preset == PAPER_PRESET and arch in set(paper.model) else PAPER_MODEL


def table_metrics(abl, preset: str, prows) -> list[str]:
    """What the paper reports, what this preset evaluates, and the ablation's pretraining numbers
    (an accuracy neither evaluated here nor in the paper gets no column)."""
    evaluated = {protocol_metric(p) for p in abl.evals_for(preset)}
    accuracy = {protocol_metric(p) for p in PROTOCOLS}
    wanted = set(prows.metric) | evaluated | {m for m in abl.metrics if m not in accuracy}
    return [m for m in METRIC_ORDER if m in wanted] + sorted(wanted - set(METRIC_ORDER))


def _rows(abl, preset: str, prows, model: str) -> list[dict]:
    """Paper rows in the paper's order, each with the variant of ours that maps onto it; then our
    variants the paper does not have; then the paper's rows for other models (Table 2's ViT-H)."""
    ours = abl.variants_for(preset)
    baseline = abl.baseline_for(preset)
    rows, used = [], set()
    main = prows[prows.model == model]
    defaults = set(main.variant[main.is_default])
    for pv in dict.fromkeys(main.variant):
        mine = [lab for lab, (p, _) in ours.items() if p == pv and lab not in used]
        note = "" if mine else (NOT_RUN if pv in abl.variants else REFERENCE)
        rows.append(dict(ours=mine[0] if mine else None, paper=pv, shown=pv, model=model, note=note,
                         our_baseline=bool(mine) and mine[0] == baseline, paper_default=pv in defaults))
        used.update(mine[:1])
    for lab, (pv, _) in ours.items():
        if lab not in used:  # hog, or a new ablation's variants: labels the paper has no row for
            shown = pv if pv in set(prows.variant) else "not in the paper"
            rows.append(dict(ours=lab, paper=pv, shown=shown, model=model, note="",
                             our_baseline=lab == baseline, paper_default=False))
    other = prows[prows.model != model]
    for (m, pv), g in other.groupby(["model", "variant"], sort=False):
        rows.append(dict(ours=None, paper=pv, shown=f"{pv} ({model_name(m)})", model=m, note=NOT_RUN, our_baseline=False,
                         paper_default=bool(g.is_default.any())))
    return rows


def ablation_table(tid, abl, res: Results, summ, prows, series, model) -> Table:
    rows = _rows(abl, res.preset, prows, model)
    metrics = table_metrics(abl, res.preset, prows)
    measured = {m for (a, _, m) in summ.index if a == abl.name}
    for pv in dict.fromkeys(series.variant):  # a reference curve's points that no row holds yet
        if not any(r["paper"] == pv for r in rows):
            rows.append(dict(ours=None, paper=pv, shown=pv, model=model, note=REFERENCE, our_baseline=False,
                             paper_default=False))
    entries, notes, picks = [], [], []  # picks: which run of an eval ladder each number is
    for i, row in enumerate(rows):
        mine = summ[[a == abl.name and v == row["ours"] for a, v, _ in summ.index]] if "caveat" in summ else summ.iloc[:0]
        why = next((c for c in mine.get("caveat", []) if isinstance(c, str)), None)
        label = _label(row) + (f" [{why}]" if why else "")
        for metric in metrics:
            e = _entry(tid, i, label, row, "ours", metric)
            key = (abl.name, row["ours"], metric)
            if row["ours"] is None:
                e["ours"] = row["note"]
            elif key in summ.index:
                s = summ.loc[key]
                e.update(n=int(s["n"]), mean=s["mean"], std=s["std"], ours=ours_text(s, METRICS[metric][2]),
                         **{st: int(s[st]) for st in STATE_COLUMNS})
                notes += [f"{abl.name}/{row['ours']} {why}" for why in s["reasons"]]
                picks += [f"{abl.name}/{row['ours']} {d}" for d in s.get("details", [])]
            else:
                e["ours"] = NOT_EVALUATED if metric not in measured else "—"
            _join_paper(e, prows, row["model"], row["paper"], metric)
            if why:  # the paper's number is shown, but no difference to it
                e.update(caveat=why, delta=math.nan)
            entries.append(e)
        for name, g in series.groupby("ablation", sort=False):
            for metric in dict.fromkeys(g.metric):
                e = _entry(tid, i, label, row, SERIES_NAMES.get(name, name), metric)
                e["ours"] = REFERENCE
                _join_paper(e, g, row["model"], row["paper"], metric)
                entries.append(e)
    notes = list(dict.fromkeys(notes))  # one failed pretraining fails every metric of its row
    notes = [f"failed or unavailable: {n}" for n in notes] + list(dict.fromkeys(picks))
    if NOT_EVALUATED in {e["ours"] for e in entries}:
        notes.append(f"{NOT_EVALUATED}: at preset {res.preset} this ablation runs "
                     f"{' + '.join(abl.evals_for(res.preset))} only")
    if abl.notes:
        notes.append(abl.notes)
    return _table(tid, f"{source_name(abl.source)}: {abl.title}", entries, notes, res.preset, abl.name)


def _label(row) -> str:
    marks = ("†" if row["paper_default"] else "") + ("*" if row["our_baseline"] else "")
    return (row["ours"] if row["ours"] is not None else "—") + (" " + marks if marks else "")


def _entry(tid, i, label, row, series, metric) -> dict:
    return dict(table=tid, row=i, label=label, ours_variant=row["ours"], paper_variant=row["paper"],
                paper_label=row.get("shown", row["paper"]), model=row["model"], series=series, our_baseline=row["our_baseline"],
                paper_default=row["paper_default"], metric=metric, n=0, mean=math.nan, std=math.nan, ours="",
                paper=math.nan, delta=math.nan, paper_key=None, caveat=None, **{st: 0 for st in STATE_COLUMNS})


def _join_paper(e: dict, prows, model, variant, metric) -> None:
    hit = prows[(prows.model == model) & (prows.variant == variant) & (prows.metric == metric)] \
        if variant is not None else prows.iloc[:0]
    if len(hit):
        e["paper"], e["paper_key"] = float(hit.value.iloc[0]), hit.key.iloc[0]
        if e["n"]:
            e["delta"] = e["mean"] - e["paper"]


def add_mae_row(t: Table, res: Results, summ, paper, model) -> Table:
    """Section 4 compares the scratch ViT with MAE fine-tuning: borrow MAE's number from the
    ablation that fine-tunes the default model (the paper value is shown, not re-counted)."""
    row = dict(ours=None, paper=None, shown="MAE (Table 1 default)", model=model, our_baseline=False, paper_default=False)
    e = _entry(t.id, int(t.frame.row.max()) + 1, "MAE (fine-tuned)", row, "ours", "ft_top1")
    e["ours"] = NOT_EVALUATED
    found = mae_finetune(res, summ)
    if found:
        name, lab, pv = found
        s = summ.loc[(name, lab, "ft_top1")]
        e.update(ours_variant=f"{name}/{lab}", n=int(s["n"]), mean=s["mean"], std=s["std"],
                 ours=ours_text(s, ".2f") + f" [{name}/{lab}]")
        hit = paper[(paper.ablation == name) & (paper.variant == pv) & (paper.metric == "ft_top1") &
                    (paper.model == model)]
        if len(hit):
            e["paper"] = float(hit.value.iloc[0])  # no paper_key: the row is shown in its own table
            e["delta"] = e["mean"] - e["paper"] if e["n"] else math.nan
    entries = t.frame.to_dict("records") + [e]
    notes = t.notes + ["MAE (fine-tuned): ours from the first of " + ", ".join(f"{a}/{p}" for a, p in MAE_FINETUNE)
                       + " (paper labels) that has a fine-tuning number; the paper value is that row's"]
    return _table(t.id, t.title, entries, notes, res.preset, t.ablation)


def mae_finetune(res: Results, summ) -> tuple[str, str, str] | None:
    """(ablation, our variant, paper label) of the first of MAE_FINETUNE this sweep fine-tunes."""
    for name, pv in MAE_FINETUNE:
        abl = res.ablations.get(name)
        lab = next((lab for lab, (p, _) in abl.variants_for(res.preset).items() if p == pv), None) if abl else None
        if lab is not None and (name, lab, "ft_top1") in summ.index:
            return name, lab, pv
    return None


def _table(tid, title, entries, notes, preset, ablation) -> Table:
    frame = pd.DataFrame(entries)
    metrics = list(dict.fromkeys(frame.metric[frame.series == "ours"]))
    series = [s for s in dict.fromkeys(frame.series) if s != "ours"]
    in_paper = set(frame.metric[(frame.series == "ours") & (frame.paper.notna() | frame.paper_key.notna())])
    header = ["variant", "paper variant"]
    for m in metrics:
        short = METRICS.get(m, (m,))[0]
        header += [short, f"{short} paper", f"{short} Δ"] if m in in_paper else [f"{short} (ours only)"]
    header += [f"{s} {METRICS.get(m, (m,))[0]} (paper)" for s in series
               for m in dict.fromkeys(frame.metric[frame.series == s])]
    body = []
    for _, g in frame.groupby("row", sort=True):
        first = g.iloc[0]
        line = [first.label, first.paper_label]
        for m in metrics:
            e = g[(g.series == "ours") & (g.metric == m)].iloc[0]
            fmt = METRICS.get(m, (m, m, ".3g"))[2]
            line.append(e.ours)
            if m in in_paper:
                caveat = e.get("caveat")
                line += [_fmt(e.paper, "g"), NOT_LIKE_FOR_LIKE.get(caveat, f"n/a: {caveat}") if isinstance(caveat, str)
                         else _fmt(e.delta, fmt, sign=True)]
        for s in series:
            for m in dict.fromkeys(frame.metric[frame.series == s]):
                e = g[(g.series == s) & (g.metric == m)]
                line.append(_fmt(e.paper.iloc[0], "g") if len(e) else "")
        body.append(line)
    legend = ["ours: mean ± sample std over finished seeds (n); Δ = ours − paper; "
              "† the paper's default row (grey in the paper), * the baseline at this preset"]
    if preset != PAPER_PRESET:
        legend.append(f"preset {preset} runs a small model on a small dataset: compare the shape of a "
                      f"column with the paper's, not the numbers (Δ is shown for completeness)")
    return Table(tid, title, header, body, frame, notes, legend, ablation)


def _fmt(v, fmt, sign=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:+{fmt}}" if sign else f"{v:{fmt}}"


def measured_table(results_dir: str, paper) -> Table | None:
    """Table 2's step times as bench/wallclock.py measured them (results/bench/wallclock.json)."""
    path = os.path.join(results_dir, "bench", "wallclock.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            rows = json.load(f)
        rows = [r for r in rows if isinstance(r, dict)]
    except (OSError, ValueError, TypeError) as e:
        return Table("table2_measured", "Table 2, measured step time", ["note"], [[f"unreadable: {e}"]],
                     pd.DataFrame(), [f"{path} could not be read"])
    latest = {}  # the file is appended to: the newest record of each setting wins
    for r in rows:
        key = (r.get("model"), r.get("variant"), r.get("gpu") or r.get("device"), r.get("precision"), r.get("batch"))
        latest.pop(key, None)
        latest[key] = r
    ref = paper[(paper.source == "table2") & (paper.metric == "speedup")]
    header = ["model", "variant", "ms/step", "speed-up", "paper speed-up", "device", "precision", "batch", "date"]
    body, entries = [], []
    for r in latest.values():
        hit = ref[(ref.model == r.get("model")) & (ref.variant == r.get("variant"))]
        p = float(hit.value.iloc[0]) if len(hit) else math.nan
        device = str(r.get("gpu") or r.get("device") or "")
        ms = _fmt(_num(r.get("ms_per_step")), ".1f") if r.get("ms_per_step") is not None else \
            f"failed: {str(r.get('error') or '?')[:60]}"
        body.append([model_name(str(r.get("model"))), str(r.get("variant")), ms, _fmt(_num(r.get("speedup")), ".2f"),
                     _fmt(p, "g"), device, str(r.get("precision", "")), str(r.get("batch", "")),
                     str(r.get("date", ""))[:10]])
        entries.append({**{k: r.get(k) for k in ("model", "variant", "ms_per_step", "speedup", "precision", "batch",
                                                 "date")}, "device": device, "paper_speedup": p})
    notes = [f"from {path} (bench/wallclock.py): one optimizer step at the paper's model sizes, the newest record "
             f"of each setting; speed-up relative to the encoder with mask tokens, as in the paper; the paper "
             f"column repeats Table 2's"]
    return Table("table2_measured", "Table 2, measured step time", header, body, pd.DataFrame(entries), notes)


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def reference_table(rest) -> Table:
    header = ["source", "ablation", "model", "epochs", "variant", "metric", "paper", "ours"]
    body, entries = [], []
    for i, r in enumerate(rest.itertuples()):
        body.append([source_name(r.source), r.ablation, model_name(r.model), str(r.pretrain_epochs), r.variant,
                     r.metric, f"{r.value:g}", REFERENCE])
        entries.append(dict(table="reference", row=i, label=r.variant, ours_variant=None, paper_variant=r.variant,
                            paper_label=r.variant, model=r.model, series=r.ablation, our_baseline=False, paper_default=bool(r.is_default),
                            metric=r.metric, n=0, mean=math.nan, std=math.nan, ours=REFERENCE, paper=r.value,
                            delta=math.nan, paper_key=r.key, **{st: 0 for st in STATE_COLUMNS}))
    return Table("reference", "Paper numbers no ablation here reproduces", header, body, pd.DataFrame(entries),
                 ["system-level results at 1600 epochs (Tables 3 and 12): shown for reference"])
