"""Tables regenerated from run records: known means and spreads, every paper row exactly once,
missing and failed runs shown as such. Records are synthetic but carry the run ids the sweep plan
names, so the join from plan to records to paper rows is the real one."""
import json
import math
import os

import pandas as pd
import pytest

from core import results
from core.ablation import select
from core.report.collect import collect, ours_text, summarise
from core.report.paper import load_paper
from core.report.render import latex, markdown, tex_escape, write_tables
from core.report.tables import build_tables
from core.sweep import make_plan

SPREAD = (-1.0, 0.0, 1.0)  # seed s adds SPREAD[s]: mean = the base value, sample std = 1


def base_value(ablation, variant, protocol) -> float:
    """A distinct, known accuracy per (ablation, variant, protocol)."""
    return 50.0 + (sum(map(ord, f"{ablation}/{variant}")) % 40) + {"linprobe": 0.25, "knn": 0.5}.get(protocol, 0.0)


def write_sweep(results_dir, plan, *, skip=(), fail=(), value=None, hours=None, flops=None):
    """Records for every run of `plan`. skip/fail: {(ablation, variant, seed)} whose pretraining has
    no record / a failed one (and so no evaluations)."""
    value = value or (lambda c, p: base_value(c.ablation, c.variant, p) + SPREAD[c.seed % 3])
    hours = hours or (lambda c: 1.0)
    flops = flops or (lambda c: 1e6)
    written = set()
    for cell in plan.cells:
        key = (cell.ablation, cell.variant, cell.seed)
        if cell.pretrain_id and cell.pretrain_id not in written:
            written.add(cell.pretrain_id)
            if key in skip:
                continue
            failed = key in fail
            results.write_record(results_dir, {
                "run_id": cell.pretrain_id, "kind": "pretrain", "status": "failed" if failed else "done",
                "reason": "non-finite loss (nan) in epoch 3" if failed else None,
                "config": plan.units[cell.pretrain_id].cfg.to_dict(),
                "history": {"loss": [1.0 - 0.1 * e - 0.01 * cell.seed for e in range(5)]},
                "metrics": {} if failed else {"first_loss": 1.0, "final_loss": 0.6},
                "wall_time_s": hours(cell) * 3600, "flops_per_image": flops(cell)})
        if key in skip or key in fail:
            continue
        for protocol, eid in cell.eval_ids.items():
            if eid in written:
                continue
            written.add(eid)
            results.write_record(results_dir, {
                "run_id": eid, "kind": protocol, "parent": cell.pretrain_id, "status": "done",
                "config": plan.units[eid].cfg.to_dict(), "metrics": {"top1": value(cell, protocol), "top5": 99.0},
                "history": {}, "wall_time_s": 1.0})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three seeds of a few ablations at the tiny preset, with one pending and one failed pretraining
    (written once for the module: the tests only read it)."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    overrides = [f"run.results_dir={tmp_path / 'results'}", f"run.work_dir={tmp_path / 'work'}"]
    names = ["mask_ratio", "target", "mask_token", "decoder_depth", "partial_finetune", "scratch_baseline",
             "wallclock"]
    plan = make_plan(select(names), "tiny", 3, overrides)
    write_sweep(str(tmp_path / "results"), plan, skip={("mask_ratio", "0.1", 2)}, fail={("mask_ratio", "0.3", 0)},
                hours=lambda c: 2.0 if c.variant.startswith("encoder") else 1.0,
                flops=lambda c: 3e6 if c.variant == "encoder" or c.variant.startswith("encoder@") else 1e6)
    return collect("tiny", 3, overrides, names), overrides, names


def table(tables, tid):
    return next(t for t in tables if t.id == tid)


def cell(t, variant, metric, series="ours"):
    f = t.frame
    return f[(f.ours_variant == variant) & (f.metric == metric) & (f.series == series)].iloc[0]


def test_known_means_and_spreads(sweep):
    res, _, _ = sweep
    tables = build_tables(res)
    t = table(tables, "figure5")
    paper = load_paper()
    for variant in ("0.5", "0.75", "0.9"):
        e = cell(t, variant, "linprobe_top1")
        expect = base_value("mask_ratio", variant, "linprobe")
        assert e.n == 3 and e["mean"] == pytest.approx(expect) and e["std"] == pytest.approx(1.0)
        assert e.ours == f"{expect:.2f} ± 1.00 (n=3)"
        p = paper[(paper.ablation == "mask_ratio") & (paper.variant == variant) & (paper.metric == "linprobe_top1")]
        assert e.paper == pytest.approx(p.value.iloc[0]) and e.delta == pytest.approx(expect - p.value.iloc[0])
    # kNN is not in the paper: an extra column of ours only
    e = cell(t, "0.75", "knn_top1")
    assert e["mean"] == pytest.approx(base_value("mask_ratio", "0.75", "knn")) and math.isnan(e.paper)
    assert any("kNN (ours only)" == h for h in t.header)
    # the summary agrees with a hand computation over the per-seed values
    s = summarise(res.values).loc[("mask_ratio", "0.9", "knn_top1")]
    vals = [base_value("mask_ratio", "0.9", "knn") + d for d in SPREAD]
    assert s["mean"] == pytest.approx(sum(vals) / 3) and s["n"] == 3
    assert s["std"] == pytest.approx((sum((v - s["mean"]) ** 2 for v in vals) / 2) ** 0.5)


def test_missing_and_failed_runs_are_shown_as_such(sweep):
    res, _, _ = sweep
    t = table(build_tables(res), "figure5")
    pending = cell(t, "0.1", "linprobe_top1")  # seed 2's pretraining has no record
    assert pending.n == 2 and pending.pending == 1 and pending.ours.endswith("; 1 pending")
    failed = cell(t, "0.3", "linprobe_top1")  # seed 0's pretraining failed
    assert failed.n == 2 and failed.failed == 1 and "1 failed" in failed.ours
    assert any("mask_ratio/0.3" in n and "non-finite loss" in n for n in t.notes)
    # no finished seed at all: a dash with the count, never a zero
    s = {"n": 0, "mean": math.nan, "std": math.nan, "failed": 0, "pending": 3, "done": 0}
    assert ours_text(s, ".2f") == "— (3 pending)"
    assert ours_text({**s, "pending": 0, "failed": 2}, ".2f") == "— (2 failed)"


def test_nothing_run_yet_is_pending_not_zero(tmp_path):
    overrides = [f"run.results_dir={tmp_path}"]
    res = collect("tiny", 2, overrides, ["decoder_width"])
    t = build_tables(res)[0]
    lin = t.frame[(t.frame.metric == "linprobe_top1") & t.frame.ours_variant.notna()]
    assert len(lin) == 5 and (lin.n == 0).all() and (lin.pending == 2).all()
    assert set(lin.ours) == {"— (2 pending)"}
    assert not any(c.strip() in ("0", "0.00") for row in t.body for c in row)


def test_paper_rows_not_run_and_variants_not_in_paper(sweep):
    res, _, _ = sweep
    tables = build_tables(res)
    t = table(tables, "table1a")
    row12 = t.frame[(t.frame.paper_variant == "12") & (t.frame.metric == "linprobe_top1")].iloc[0]
    assert row12.ours == "not run at this preset" and row12.paper == 73.3
    hog = cell(table(tables, "table1d"), "hog", "linprobe_top1")
    assert hog.paper_label == "not in the paper" and hog.n == 3 and math.isnan(hog.paper)
    vit_h = table(tables, "table2").frame.query("model == 'vit_huge_patch14' and metric == 'hours'")
    assert len(vit_h) == 3 and set(vit_h.ours) == {"not run at this preset"}
    assert set(vit_h.paper) == {119.6, 34.5, 29.3}
    # tiny ft is not evaluated for Table 1 ablations (they run linprobe + kNN there)
    assert cell(t, "2", "ft_top1").ours == "not evaluated"


def test_baseline_rows_are_marked(sweep):
    res, _, _ = sweep
    tables = build_tables(res)
    labels = [row[0] for row in table(tables, "table1a").body]
    assert "2 *" in labels and "8 †" in labels  # ours at tiny: 2 blocks; the paper's grey row: 8
    assert "0.75 †*" in [row[0] for row in table(tables, "figure5").body]


def test_ratios_flops_and_speedup(sweep):
    res, _, _ = sweep
    tables = build_tables(res)
    c = table(tables, "table1c")
    assert cell(c, "encoder", "flops_ratio")["mean"] == pytest.approx(3.0)
    assert cell(c, "decoder_only", "flops_ratio")["mean"] == pytest.approx(1.0)
    w = table(tables, "table2")
    # the paper's speed-up is relative to the encoder with mask tokens: 2 h / 1 h
    assert cell(w, "decoder_only@2", "speedup")["mean"] == pytest.approx(2.0)
    assert cell(w, "decoder_only@2", "speedup").paper == 2.8
    assert cell(w, "encoder@2", "hours")["mean"] == pytest.approx(2.0)


def test_every_paper_row_appears_exactly_once(sweep, tmp_path):
    res, _, _ = sweep
    paper = load_paper()
    for r in (collect("tiny", 1, [f"run.results_dir={tmp_path / 'empty'}"]),
              collect("paper", 1, [f"run.results_dir={tmp_path / 'empty'}"])):
        keys = [k for t in build_tables(r) if "paper_key" in t.frame for k in t.frame.paper_key.dropna()]
        assert sorted(keys) == sorted(paper.key), r.preset
    # with records, and a subset of ablations: no paper row twice
    keys = [k for t in build_tables(res) if "paper_key" in t.frame for k in t.frame.paper_key.dropna()]
    assert len(keys) == len(set(keys)) and set(keys) <= set(paper.key)


def test_section4_compares_scratch_with_mae(sweep):
    res, _, _ = sweep
    t = table(build_tables(res), "section4")
    mae = t.frame[t.frame.label == "MAE (fine-tuned)"].iloc[0]
    # tiny: MAE's full fine-tuning is partial_finetune's all-blocks variant (paper label 24)
    assert mae.ours_variant == "partial_finetune/4" and mae.paper == 84.9 and pd.isna(mae.paper_key)
    assert mae["mean"] == pytest.approx(base_value("partial_finetune", "4", "partial"))
    scratch = cell(t, "our_impl", "ft_top1")
    assert scratch.paper == 82.5 and scratch.n == 3


def test_files_markdown_latex_csv(sweep, tmp_path):
    res, _, _ = sweep
    tables = build_tables(res)
    paths = write_tables(tables, str(tmp_path / "tables"))
    for tid in ("table1a", "table1c", "table1d", "table2", "figure5", "figure9", "section4", "reference"):
        for ext in ("md", "tex", "csv"):
            assert os.path.getsize(tmp_path / "tables" / f"{tid}.{ext}") > 100, (tid, ext)
    assert str(tmp_path / "tables" / "all.csv") in paths
    tex = (tmp_path / "tables" / "table1c.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex and r"decoder\_only" in tex
    assert r"$\pm$" in tex and "±" not in tex.split("\\bottomrule")[0]
    md = (tmp_path / "tables" / "figure9.md").read_text()
    assert "MoCo v3 ft (paper)" in md and "| 77.6 |" in md
    f = pd.read_csv(tmp_path / "tables" / "figure5.csv", dtype={"ours_variant": str})
    row = f[(f.ours_variant == "0.75") & (f.metric == "linprobe_top1")].iloc[0]
    assert row["mean"] == pytest.approx(base_value("mask_ratio", "0.75", "linprobe")) and row["n"] == 3
    assert tex_escape("a_b & 50% ± 1") == r"a\_b \& 50\% $\pm$ 1"
    assert markdown(tables[0]).startswith("### Table 1a") and latex(tables[0]).count(r"\\") == len(tables[0].body) + 1


def test_measured_step_times_are_a_separate_block(sweep):
    res, _, _ = sweep
    bench = os.path.join(res.results_dir, "bench")
    os.makedirs(bench, exist_ok=True)
    with open(os.path.join(bench, "wallclock.json"), "w") as f:
        json.dump([{"model": "vit_large_patch16", "variant": "encoder@8", "ms_per_step": 999.0, "speedup": 1.0,
                    "device": "H100", "precision": "bf16", "batch": 64},  # an older run of the same setting
                   {"model": "vit_large_patch16", "variant": "encoder@8", "ms_per_step": 300.0, "speedup": 1.0,
                    "device": "H100", "precision": "bf16", "batch": 64},
                   {"model": "vit_large_patch16", "variant": "decoder_only@8", "ms_per_step": 100.0,
                    "speedup": 3.0, "device": "H100", "precision": "bf16", "batch": 64}], f)
    try:
        t = table(build_tables(res), "table2_measured")
    finally:
        os.remove(os.path.join(bench, "wallclock.json"))  # the module's other tests share these records
    assert [r[2] for r in t.body] == ["300.0", "100.0"]  # the newest record of each setting
    assert t.body[1][:5] == ["ViT-L/16", "decoder_only@8", "100.0", "3.00", "2.8"]
    assert "paper_key" not in t.frame  # the paper's Table 2 rows are counted in table2 only


def test_cli_tables_and_errors(sweep, tmp_path, capsys):
    import run_all

    _, overrides, _ = sweep
    out = tmp_path / "cli_tables"
    assert run_all.main(["tables", "--preset", "tiny", "--seeds", "3", "--out", str(out), "mask_ratio",
                         *overrides]) == 0
    assert (out / "figure5.md").exists() and not (out / "table1a.md").exists()
    assert "tables (md, tex, csv)" in capsys.readouterr().out
    assert run_all.main(["tables", "mask_rato", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean mask_ratio" in err[0]
