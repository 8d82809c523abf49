"""The ablation registry and the sweep runner."""
import os
import signal

import pytest
import torch

from core import results
from core.ablation import Ablation, load_all, select
from core.config import build_config
from core.errors import Preempted, UserError
from core.sweep import make_plan, run_plan, sweep_status
from tests.conftest import FAST

EVAL_FAST = ["eval.linprobe.epochs=1", "eval.linprobe.warmup_epochs=0", "eval.linprobe.batch_size=64",
             "eval.knn.k=5"]


def test_registry_finds_every_paper_ablation():
    names = set(load_all())
    assert {"mask_ratio", "mask_token", "target", "augmentation", "epochs", "decoder_depth", "decoder_width",
            "mask_sampling", "partial_finetune", "wallclock", "scratch_baseline"} <= names
    for abl in load_all().values():
        assert abl.baseline in abl.variants
        assert abl.baseline_for("tiny") in abl.variants_for("tiny")


def test_unknown_ablation_suggests_the_nearest():
    with pytest.raises(UserError, match="did you mean mask_ratio"):
        select(["mask_rato"])


def test_each_ablation_maps_to_paper_rows():
    """An ablation that says it reproduces a paper table or figure (its source) maps its variants onto
    the paper's rows; one of a researcher's own (source "extra", no paper rows) has nothing to map."""
    import pandas as pd
    paper = pd.read_csv(os.path.join(os.path.dirname(__file__), "..", "results", "paper", "paper_reference.csv"))
    for abl in load_all().values():
        rows = paper[paper.ablation == abl.name]
        if abl.source not in set(paper.source):
            continue
        assert len(rows), abl.name
        labels = {str(v) for v in rows.variant}
        for label, (paper_label, _) in abl.variants_for("tiny").items():
            assert paper_label is None or paper_label in labels, (abl.name, label)
        assert set(abl.variants) <= labels | {"hog"}, abl.name


def test_shared_baseline_is_one_run_per_seed(tmp_path):
    plan = make_plan(select(["all"]), "tiny", seeds=2, overrides=[f"run.results_dir={tmp_path}"])
    for seed in (0, 1):
        base = build_config("tiny", [f"run.results_dir={tmp_path}"], {"pretrain.seed": seed, "eval.seed": seed})
        unit = plan.units[base.run_id()]
        users = {a for a, _, s in unit.users if s == seed}
        assert len(users) >= 8  # every Table 1 / Figure 5, 7 ablation shares it
    calls = []
    fake = lambda cfg, *a, **k: calls.append(cfg.run_id()) or {"status": "done"}  # noqa: E731
    from core.eval import eval_run_id
    from core.eval.baselines import parent
    # a reference (raw pixels, random weights) is the parent of its evaluations instead of a run
    fake_eval = lambda cfg, kind, run_id=None, source=None, **k: calls.append(  # noqa: E731
        eval_run_id(cfg, kind, parent(cfg, source) if source else run_id)) or {"status": "done"}
    fake_prepare = lambda cfg, kind, **k: calls.append(kind) or {"status": "done"}  # noqa: E731
    run_plan(plan, pretrain_fn=fake, eval_fn=fake_eval, prepare_fn=fake_prepare, log=lambda *a: None)
    assert len(calls) == len(set(map(str, calls))) == len(plan.units)


def test_cli_overrides_apply_under_the_variants():
    plan = make_plan(select(["mask_ratio"]), "tiny", overrides=["model.mask_ratio=0.6", "pretrain.epochs=2",
                                                                   "pretrain.warmup_epochs=1"])
    ratios = sorted(u.cfg.model.mask_ratio for u in plan.pretrains)
    assert ratios == [0.1, 0.3, 0.5, 0.75, 0.9] and all(u.cfg.pretrain.epochs == 2 for u in plan.pretrains)


def test_unbuildable_variants_are_reported_not_skipped(monkeypatch):
    import ablations.mask_ratio as m
    broken = Ablation(name="broken", source="figure5", title="x", baseline="ok",
                      variants={"ok": {}, "bad": {"model.mask_ratio": 1.5}})
    monkeypatch.setattr(m, "ABLATION", broken)
    plan = make_plan([broken], "paper")
    assert [c.variant for c in plan.unavailable] == ["bad"]
    assert "mask_ratio must be in (0, 1)" in plan.unavailable[0].unavailable
    logged = []
    run_plan(plan, pretrain_fn=lambda c, **k: {"status": "done"}, eval_fn=lambda *a, **k: {"status": "done"},
             log=logged.append)
    assert any(line.startswith("unavailable: broken/bad") for line in logged)


def test_bad_seeds_and_overrides():
    with pytest.raises(UserError, match="positive"):
        make_plan(select(["mask_token"]), "tiny", seeds=0)
    with pytest.raises(UserError, match="unknown config key"):
        make_plan(select(["mask_token"]), "tiny", overrides=["model.nope=1"])


@pytest.mark.parametrize("abl_name", sorted(load_all()))
def test_every_variant_builds_and_trains_one_step(abl_name, tmp_path_factory):
    """timm-style walk: every ablation x variant at the tiny preset builds its model and runs one step."""
    from core.masking import make_mask
    from core.model import MAE
    from core.targets import build_target
    from core.data import build_dataset

    cache = str(tmp_path_factory.getbasetemp() / "target-cache")  # shared: a tokenizer trains once
    abl = load_all()[abl_name]
    for label, (_, overrides) in abl.variants_for("tiny").items():
        cfg = build_config("tiny", [], overrides)
        target = build_target(cfg.model, cfg.data)
        target.prepare(build_dataset(cfg.data, "train", cfg.model.img_size), cache, torch.device("cpu"))
        model = MAE(cfg.model, target.dim)
        imgs = torch.randn(4, 3, cfg.model.img_size, cfg.model.img_size)
        mask = make_mask(cfg.model.mask_strategy, 4, model.grid, cfg.model.mask_ratio, torch.Generator().manual_seed(0))
        loss = target.loss(model(imgs, mask), target(imgs), mask)
        loss.backward()
        assert torch.isfinite(loss), (abl_name, label)
        assert model.decoder_pred.weight.grad is not None


def _mtimes(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[p] = os.path.getmtime(p)
    return out


def test_second_run_of_a_finished_sweep_trains_nothing(dirs, monkeypatch):
    overrides = FAST + dirs + EVAL_FAST
    plan = make_plan(select(["mask_token"]), "tiny", overrides=overrides)
    first = run_plan(plan, progress=False, log=lambda *a: None)
    assert set(first.values()) == {"done"} and len(first) == 2 + 2 * 2
    cfg = build_config("tiny", overrides)
    before = _mtimes(cfg.run.results_dir) | _mtimes(cfg.run.work_dir)
    import core.train
    monkeypatch.setattr(core.train, "_Run", None)  # any training attempt would crash
    second = run_plan(make_plan(select(["mask_token"]), "tiny", overrides=overrides), progress=False,
                      log=lambda *a: None)
    assert second == first
    assert _mtimes(cfg.run.results_dir) | _mtimes(cfg.run.work_dir) == before
    assert len(os.listdir(os.path.join(cfg.run.results_dir, "runs"))) == 6


def test_interrupted_sweep_continues_where_it_stopped(dirs, monkeypatch):
    overrides = FAST + dirs + EVAL_FAST
    cfg = build_config("tiny", overrides)
    plan = make_plan(select(["mask_token"]), "tiny", overrides=overrides)
    import core.train
    real, calls = core.train.make_mask, []

    def signal_in_second_run(*a, **k):  # SIGTERM during the second pretraining run
        calls.append(1)
        if len(calls) == 16 + 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)
    monkeypatch.setattr(core.train, "make_mask", signal_in_second_run)
    with pytest.raises(Preempted):
        run_plan(plan, progress=False, log=lambda *a: None)
    first_id, second_id = [u.run_id for u in plan.pretrains]
    assert results.read_record(cfg.run.results_dir, first_id)["status"] == "done"
    assert results.read_record(cfg.run.results_dir, second_id)["status"] == "preempted"
    monkeypatch.setattr(core.train, "make_mask", real)
    status = run_plan(plan, progress=False, log=lambda *a: None)
    assert set(status.values()) == {"done"}
    assert results.read_record(cfg.run.results_dir, second_id)["resumed_from"]  # resumed, not restarted
    rows = {r["ablation"]: r for r in sweep_status(plan, cfg.run.results_dir)}
    assert rows["mask_token"]["done"] == 6 and rows["mask_token"]["pending"] == 0


def test_demo_runs_the_named_ablations_then_writes_tables_figures_report_and_status(dirs, capsys, tmp_path,
                                                                                   monkeypatch):
    """`make demo` is `run_all.py demo --preset tiny` over every ablation; here over one, fast."""
    import plots.style
    import run_all
    monkeypatch.setattr(plots.style, "DEFAULT_OUT", str(tmp_path / "figures"))  # not the checkout's plots/out
    assert run_all.main(["demo", "mask_token", "--quiet", "--seeds", "1", "--jobs", "1", *FAST, *dirs, *EVAL_FAST]) == 0
    out = capsys.readouterr().out
    results_dir = tmp_path / "results"
    assert "6 of 6 runs done" in out and "report: " in out and "demo: " in out
    assert (results_dir / "tables" / "tiny" / "table1c.md").stat().st_size > 0
    assert (results_dir / "report" / "tiny" / "report.md").read_text().count("Table 1c") >= 1
    assert (tmp_path / "figures" / "tiny" / "loss_mask_token.png").stat().st_size > 0
    status = [line for line in out.splitlines() if line.startswith("mask_token ")]
    assert status and status[0].split()[1:3] == ["6", "0"]  # done, running
