"""`compare NEW --baseline BASE`: deltas, seed spread and significance checked against numbers
computed by hand; one seed says so; bad names are one-line errors."""
import dataclasses
import math

import pytest

from core.ablation import select
from core.errors import UserError
from core.report.collect import collect
from core.report.compare import compare, resolve, to_markdown, welch
from core.report.intervals import NAME, PAIRED_NAME, best_ci, contrast_ci, diff_ci, mean_halfwidth, paired_contrast_ci
from core.sweep import make_plan
from tests.test_tables import write_sweep

# per-seed linear-probe accuracies: the new variant and the baseline
NEW = {0: 1.0, 1: 2.0, 2: 3.0}
BASE = {0: 2.0, 1: 4.0, 2: 6.0}


def test_welch_matches_the_formula():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0, 8.0]
    # by hand: means 2 and 5, variances 1 and 20/3; se^2 = 1/3 + 5/3 = 2
    t_hand = (2 - 5) / math.sqrt(2)  # -2.1213
    df_hand = 2 ** 2 / ((1 / 3) ** 2 / 2 + (5 / 3) ** 2 / 3)  # Welch-Satterthwaite: 4.0755
    t, df, p = welch(a, b)
    assert t == pytest.approx(t_hand) and df == pytest.approx(df_hand) and df == pytest.approx(4.0755, abs=1e-4)
    from scipy import stats
    assert p == pytest.approx(2 * stats.t.sf(abs(t_hand), df_hand))
    assert 0.09 < p < 0.11
    assert welch([1.0], [2.0, 3.0]) is None and welch([1.0, 1.0], [2.0, 2.0]) is None


def test_welch_interval_is_honest_at_three_seeds():
    from scipy import stats
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0, 6.0]
    # by hand: difference -2, se^2 = 1/3 + 4/3, Welch-Satterthwaite df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2)
    se, df = math.sqrt(5 / 3), (5 / 3) ** 2 / ((1 / 3) ** 2 / 2 + (4 / 3) ** 2 / 2)
    half = stats.t.ppf(0.975, df) * se
    lo, hi = diff_ci(a, b)
    assert (lo, hi) == (pytest.approx(-2 - half), pytest.approx(-2 + half))
    # a bootstrap can never leave [min(a) - max(b), max(a) - min(b)] = [-5, 1]; with 3 seeds the honest
    # interval must (the bootstrap's was too narrow: issue 19)
    assert lo < -5 and hi > 1
    assert diff_ci([1.0, 1.0], [0.0, 0.0]) == (1.0, 1.0)  # no spread: the interval is the difference
    assert diff_ci([1.0], b) is None
    # a contrast of three groups: 2*few - none - full, each group's variance weighted by w^2
    est, lo3, hi3 = contrast_ci([[5.0, 6.0, 7.0], [1.0, 1.0, 1.0], [8.0, 8.0, 8.0]], [2.0, -1.0, -1.0])
    assert est == pytest.approx(3.0) and hi3 - est == pytest.approx(est - lo3)
    assert hi3 - est == pytest.approx(stats.t.ppf(0.975, 2) * 2 * 1 / math.sqrt(3))
    assert mean_halfwidth([1.0, 2.0, 3.0]) == pytest.approx(stats.t.ppf(0.975, 2) / math.sqrt(3))
    assert mean_halfwidth([4.0]) == 0.0


def test_paired_interval_is_over_the_per_seed_contrasts():
    from scipy import stats
    a, b = {0: 1.0, 1: 2.0, 2: 3.0}, {0: 2.0, 1: 4.0, 2: 6.0}
    # differences -1, -2, -3: mean -2, sd 1, t with 2 degrees of freedom
    est, lo, hi = paired_contrast_ci([a, b], [1.0, -1.0])
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert (est, lo, hi) == (pytest.approx(-2.0), pytest.approx(-2 - half), pytest.approx(-2 + half))
    # seeds that move every variant alike cancel: the paired interval is exact where Welch's is wide
    c = {s: v + 5.0 for s, v in a.items()}
    assert paired_contrast_ci([c, a], [1.0, -1.0]) == (5.0, 5.0, 5.0)
    assert diff_ci(list(c.values()), list(a.values()))[0] < 3.0
    # different seeds: no pairs; best_ci falls back to Welch's interval of the groups and says so
    assert paired_contrast_ci([a, {0: 2.0, 1: 4.0}], [1.0, -1.0]) is None
    assert best_ci([a, {0: 2.0, 1: 4.0}], [1.0, -1.0])[3] == NAME
    assert best_ci([a, b], [1.0, -1.0])[3] == PAIRED_NAME and best_ci([a, b], [1.0, -1.0], paired=False)[3] == NAME


@pytest.fixture(scope="module")
def res(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    overrides = [f"run.results_dir={tmp / 'results'}", f"run.work_dir={tmp / 'work'}"]
    plan = make_plan(select(["mask_ratio", "decoder_depth"]), "tiny", 3, overrides)

    def value(cell, protocol):
        if cell.ablation == "mask_ratio" and cell.variant == "0.5":
            return NEW[cell.seed] + (10 if protocol == "knn" else 0)
        if cell.variant in ("0.75", "2"):  # the shared baseline run (decoder_depth's tiny baseline is 2)
            return BASE[cell.seed] + (10 if protocol == "knn" else 0)
        return 50.0
    # mask_ratio/0.9: seed 0 only
    write_sweep(str(tmp / "results"), plan, value=value, skip={("mask_ratio", "0.9", 1), ("mask_ratio", "0.9", 2)})
    return collect("tiny", 3, overrides, ["mask_ratio", "decoder_depth"]), overrides


def test_compare_variant_with_baseline(res):
    r, _ = res
    df = compare(r, "mask_ratio/0.5", "mask_ratio", ["linprobe_top1", "knn_top1"])
    lin = df[df.metric == "linprobe_top1"].iloc[0]
    assert lin.baseline == "mask_ratio/0.75"
    assert (lin.mean_new, lin.mean_base, lin.delta) == pytest.approx((2.0, 4.0, -2.0))
    assert (lin.std_new, lin.std_base) == pytest.approx((1.0, 2.0))
    # two variants of the same seeds: paired. By hand: differences -1, -2, -3 (mean -2, sd 1),
    # t = -2 / (1 / sqrt(3)), df = 2
    from scipy import stats
    t, dof = -2 / (1 / math.sqrt(3)), 2
    assert lin.test == "paired" and lin.t == pytest.approx(t) and lin.df == dof
    assert lin.p == pytest.approx(2 * stats.t.sf(abs(t), dof))
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert (lin.ci_low, lin.ci_high) == (pytest.approx(-2 - half), pytest.approx(-2 + half))
    md = to_markdown(df, "tiny")
    assert f"paired: t = {t:.2f}, df = {dof:.1f}, p = {lin.p:.3g}" in md
    assert "| mask_ratio/0.5 | mask_ratio/0.75 | linprobe_top1 | 2.00 ± 1.00 (n=3) | 4.00 ± 2.00 (n=3) | -2.00 |" in md


def test_unequal_seeds_fall_back_to_welch(res):
    r, _ = res
    v = r.values
    # the baseline's seed 2 unfinished: seeds {0, 1, 2} against {0, 1} are no pairs
    r = dataclasses.replace(r, values=v[~((v.ablation == "mask_ratio") & (v.variant == "0.75") & (v.seed == 2))])
    lin = compare(r, "mask_ratio/0.5", "mask_ratio", ["linprobe_top1"]).iloc[0]
    # by hand: new 1, 2, 3 (var 1), base 2, 4 (var 2): se^2 = 1/3 + 2/2, Welch-Satterthwaite df
    se2 = 1 / 3 + 1.0
    dof = se2 ** 2 / ((1 / 3) ** 2 / 2 + 1.0 ** 2 / 1)
    assert lin.test == "Welch" and lin.t == pytest.approx((2 - 3) / math.sqrt(se2)) and lin.df == pytest.approx(dof)


def test_one_seed_says_so(res):
    r, _ = res
    df = compare(r, "mask_ratio/0.9", "mask_ratio/0.75", ["linprobe_top1"])
    assert df.iloc[0].n_new == 1 and math.isnan(df.iloc[0].p)
    assert "n/a (1 seed)" in to_markdown(df, "tiny")


def test_ablation_against_its_baseline_and_another_ablation(res):
    r, _ = res
    df = compare(r, "mask_ratio")  # every variant against its own baseline, which is left out
    assert set(df.new) == {"mask_ratio/0.1", "mask_ratio/0.3", "mask_ratio/0.5", "mask_ratio/0.9"}
    assert set(df.metric) >= {"linprobe_top1", "knn_top1", "final_loss", "hours"}
    # another ablation's baseline (the same shared run at tiny), and a paper label for our variant
    d2 = compare(r, "mask_ratio/0.5", "decoder_depth/2", ["knn_top1"]).iloc[0]
    assert d2.delta == pytest.approx(-2.0) and d2.mean_base == pytest.approx(14.0)
    assert resolve("decoder_depth/8", r, "new")[0].label == "decoder_depth/8"


def test_run_ids(res):
    r, _ = res
    cell = next(c for c in r.plan.cells if c.ablation == "mask_ratio" and c.variant == "0.5" and c.seed == 1)
    df = compare(r, cell.pretrain_id, "mask_ratio", ["linprobe_top1"]).iloc[0]
    assert df.new == cell.pretrain_id and df.n_new == 1 and df.mean_new == 2.0 and df.delta == -2.0
    eid = cell.eval_ids["knn"]
    assert compare(r, eid, "mask_ratio").iloc[0].metric == "knn_top1"


def test_bad_names_are_one_line_errors(res, capsys):
    r, overrides = res
    with pytest.raises(UserError, match="did you mean mask_ratio"):
        compare(r, "mask_rato", "mask_ratio")
    with pytest.raises(UserError, match="has no variant '0.33'"):
        compare(r, "mask_ratio/0.33", "mask_ratio")
    with pytest.raises(UserError, match="unknown metric 'top1'"):
        compare(r, "mask_ratio/0.5", "mask_ratio", ["top1"])
    import run_all
    assert run_all.main(["compare", "nothing-here", "--baseline", "mask_ratio", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: new 'nothing-here' is not an ablation")


def test_cli_prints_and_writes(res, tmp_path, capsys):
    import run_all
    _, overrides = res
    out = tmp_path / "cmp.md"
    # options before and after NEW, overrides last: argparse leaves them over, main() takes them in
    assert run_all.main(["compare", "--seeds", "3", "mask_ratio/0.5", "--baseline", "mask_ratio", "--metric",
                         "linprobe_top1", "--out", str(out), *overrides]) == 0
    text = capsys.readouterr().out
    assert "| mask_ratio/0.5 | mask_ratio/0.75 | linprobe_top1 |" in text and out.read_text() in text
