"""The rehearsal (README "Before you submit: rehearse"): the paper preset's plan unit for unit at
miniature size, differing from the paper preset in the declared settings only; run locally under a
2-process torchrun and as real SLURM arrays; its records kept apart from real ones."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from core import results
from core.cluster import jobs as cluster_jobs
from core.ablation import load_all, select
from core.config import build_config, flat_dict
from core.presets import PRESETS, REHEARSAL, SCALED
from core.data import ImageFolderImages
from core.eval import baselines
from core.rehearsal import save_outcome, summary_lines, write_imagefolder
from core.sweep import Plan, Unit, make_plan, run_plan
from tests.conftest import ROOT

try:  # one fixture module object, also when pytest put only tests/ on sys.path
    import tests.slurm_fixture  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.slurm_fixture import slurm_cluster  # noqa: F401,E402  (fixture)
from tests.test_submit import cli, log_tails, wait_ended  # noqa: E402

import run_all  # noqa: E402

PINNED = {k for k, v in PRESETS[REHEARSAL].items() if k not in PRESETS["paper"] or PRESETS["paper"][k] != v}
DECLARED = PINNED | set(SCALED[REHEARSAL])


def aligned_units():
    """(paper unit, rehearsal unit) pairs, cell by cell, over every ablation."""
    paper, rehearsal = make_plan(select(["all"]), "paper"), make_plan(select(["all"]), REHEARSAL)
    pairs = []
    for a, b in zip(paper.cells, rehearsal.cells, strict=True):
        assert (a.ablation, a.variant, a.paper_variant, a.seed, a.is_baseline, list(a.eval_ids)) == \
               (b.ablation, b.variant, b.paper_variant, b.seed, b.is_baseline, list(b.eval_ids))
        ids = [(a.prepared_id, b.prepared_id)] if a.prepared_id else []  # the PCA basis, the tokenizer
        ids += [(a.pretrain_id, b.pretrain_id)] if a.pretrain_id else []
        pairs += ids + [(a.eval_ids[p], b.eval_ids[p]) for p in a.eval_ids]
        pairs += [(a.eval_choices[p][c], b.eval_choices[p][c]) for p in a.eval_choices for c in a.eval_choices[p]]
    return paper, rehearsal, pairs


def expected_units(preset: str) -> int:
    """The plan's size from the ablations' declarations alone (whatever ablations are installed): one
    pretraining run per distinct variant config, one evaluation per distinct (run, protocol, evaluation
    settings, ladder step), one prepared artifact per distinct PCA basis or tokenizer."""
    from core.prepared import artifact_id, artifact_kind

    runs, evals, artifacts = set(), set(), set()
    for abl in load_all().values():
        ladder, _ = abl.eval_ladder_for(preset)
        for label, (_, variant) in abl.variants_for(preset).items():
            cfg = build_config(preset, values={**abl.overrides, **variant})
            source = abl.sources.get(label)  # a reference (raw pixels, random weights): no pretraining run
            parent = cfg.run_id() if abl.pretrain and not source else None
            runs.add(parent)
            if parent and artifact_kind(cfg):
                artifacts.add(artifact_id(cfg, artifact_kind(cfg)))
            own = tuple(sorted((k, str(v)) for k, v in variant.items() if k.startswith("eval.") or not parent))
            parent = baselines.parent(cfg, source) if source else parent
            for protocol in abl.evals_for(preset):
                kind = abl.substitute.get(label, {}).get(protocol, protocol)
                steps = ladder[protocol][1] if kind == protocol and protocol in ladder else [None]
                evals.update((parent, kind, own if kind == protocol else (), step) for step in steps)
    return len(runs - {None}) + len(evals) + len(artifacts)


def test_the_rehearsal_plan_is_the_paper_plan_unit_for_unit():
    paper, rehearsal, pairs = aligned_units()
    assert not paper.unavailable and not rehearsal.unavailable  # e.g. Figure 9's 24 blocks build
    forward, backward = {}, {}
    for p, r in pairs:  # the same runs are shared: a one-to-one map of run ids
        assert forward.setdefault(p, r) == r and backward.setdefault(r, p) == p
    # Figure 9: 3 schedules a count; 2 prepared artifacts (the PCA basis, the tokenizer); the learning check's
    # random-weight linear probe; 124 units with the suite's own ablations, derived so an ablation a user adds does not break it
    assert len(forward) == len(paper.units) == len(rehearsal.units) == expected_units("paper")
    assert [paper.units[p].kind for p in forward] == [rehearsal.units[r].kind for r in forward.values()]
    assert set(paper.units).isdisjoint(rehearsal.units)  # a rehearsal record is never a real run's


def test_the_rehearsal_differs_from_the_paper_only_in_its_declared_settings():
    paper, rehearsal, pairs = aligned_units()
    for p, r in dict(pairs).items():
        a, b = flat_dict(paper.units[p].cfg), flat_dict(rehearsal.units[r].cfg)
        differ = {k for k in a if a[k] != b[k]}
        assert differ <= DECLARED, differ - DECLARED
    # the recipes stay the paper's, and what an ablation varies is never pinned by the rehearsal
    assert {"eval.finetune.layer_decay", "eval.finetune.mixup", "eval.finetune.randaug", "eval.finetune.reprob",
            "eval.finetune.drop_path", "eval.scratch.ema", "eval.linprobe.blr", "pretrain.blr"}.isdisjoint(DECLARED)
    varied = {k for abl in load_all().values() for ov in abl.variants.values() for k in ov}
    assert varied.isdisjoint(PINNED)  # a pinned value would override no variant
    # scaled after the variant: the epochs ablation's 100 ... 1600 stay five runs
    epochs = {build_config(REHEARSAL, values={"pretrain.epochs": e}).pretrain.epochs for e in (100, 200, 400, 800, 1600)}
    assert epochs == {1, 2, 4, 8, 16} and build_config(REHEARSAL).pretrain.epochs == 8
    cfg = build_config(REHEARSAL)
    assert cfg.pretrain.batch_size % (cfg.pretrain.accum_iter * 2) == 0 and cfg.pretrain.accum_iter >= 2
    assert (cfg.run.results_dir, cfg.run.work_dir) != (build_config("paper").run.results_dir,
                                                       build_config("paper").run.work_dir)


def test_the_data_is_an_imagefolder_of_real_jpegs(tmp_path):
    root = tmp_path / "data"
    assert write_imagefolder(str(root)) == 24
    assert write_imagefolder(str(root)) == 0  # written once
    train, val = ImageFolderImages(str(root / "train")), ImageFolderImages(str(root / "val"))
    assert len(train) == 16 and len(val) == 8 and train.classes == val.classes and len(train.classes) == 4
    with Image.open(train.samples[0][0]) as img:
        assert img.format == "JPEG" and img.size != (64, 64)


def plan_of_two(tmp_path):
    cfg = build_config("tiny", [f"run.results_dir={tmp_path}/results"])
    plan = Plan("tiny")
    for kind, rid, parent in (("pretrain", "pt-a", None), ("pretrain", "pt-b", None), ("linprobe", "lp-a", "pt-a"),
                              ("linprobe", "lp-b", "pt-b")):
        plan.units[rid] = Unit(kind, rid, cfg, parent, users=[("mask_token", rid[-1], 0)])
    return plan, cfg


def test_a_unit_that_breaks_fails_alone_in_a_rehearsal(tmp_path):
    plan, cfg = plan_of_two(tmp_path)

    def pretrain_fn(cfg, progress):
        if pretrain_fn.calls == 0:
            pretrain_fn.calls += 1
            raise RuntimeError("shape mismatch in the decoder")
        return {"status": "done"}
    pretrain_fn.calls = 0
    reasons = {}
    status = run_plan(plan, pretrain_fn=pretrain_fn, eval_fn=lambda *a, **k: {"status": "done"}, log=lambda *a: None,
                      keep_going=True, reasons=reasons)
    assert status == {"pt-a": "failed", "pt-b": "done", "lp-a": "skipped", "lp-b": "done"}
    assert reasons == {"pt-a": "RuntimeError: shape mismatch in the decoder", "lp-a": "its pretraining pt-a is failed"}
    pretrain_fn.calls = 0
    with pytest.raises(RuntimeError):  # a real sweep stops on a bug
        run_plan(plan, pretrain_fn=pretrain_fn, eval_fn=lambda *a, **k: {"status": "done"}, log=lambda *a: None)
    save_outcome(cfg, status, reasons)
    from core.rehearsal import load_outcome
    lines, all_done = summary_lines(plan, cfg, load_outcome(cfg), 75.0, "test")
    assert not all_done and "  2 done, 1 failed, 1 skipped" in lines
    assert "  failed pretrain pt-a (mask_token/a): RuntimeError: shape mismatch in the decoder" in lines
    assert "  skipped linprobe lp-a (mask_token/a): its pretraining pt-a is failed" in lines


def test_rehearse_flags_are_checked(capsys):
    assert run_all.main(["run", "--preset", "tiny", "--rehearse"]) == 2  # the tiers' rehearsals: tests/test_tiers.py
    assert "preset tiny has no rehearsal; presets with one: paper, " in capsys.readouterr().err
    assert run_all.main(["run", "--nproc", "2", "mask_token"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--nproc is for --rehearse" in err[0]


def test_run_rehearse_two_processes_of_one_ablation(tmp_path):
    """`run_all.py run mask_token --rehearse` in a fresh folder: one torchrun launch of 2 gloo processes
    runs the 6 units (encoder mask tokens under DDP among them), then tables, report, status, summary;
    the real results folder stays empty and `status --preset paper` counts nothing."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                               "MASTER_PORT")}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "run_all.py"), "run", "mask_token", "--rehearse"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "rehearsal of the paper plan: 6 units (2 pretrain, 2 finetune, 2 linprobe) of 1 ablations, torchrun x 2" \
           in text and "  6 done, 0 failed, 0 skipped" in text and "  wall time " in text, text
    cfg = build_config(REHEARSAL)
    runs = tmp_path / cfg.run.results_dir / "runs"
    recs = [results.read_record(str(tmp_path / cfg.run.results_dir), p.stem) for p in runs.glob("*.json")]
    assert len(recs) == 6 and {(r["status"], r["preset"], r["world_size"]) for r in recs} == {("done", REHEARSAL, 2)}
    pretrains = [r for r in recs if r["kind"] == "pretrain"]
    assert {r["config"]["pretrain"]["accum_iter"] for r in pretrains} == {2}
    assert (tmp_path / cfg.run.results_dir / "report" / REHEARSAL / "report.md").exists()
    assert (tmp_path / cfg.run.results_dir / "tables" / REHEARSAL).is_dir()
    assert not (tmp_path / "results").exists()  # the paper preset's folder
    paper = subprocess.run([sys.executable, os.path.join(ROOT, "run_all.py"), "status", "--preset", "paper",
                            "mask_token"], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    from core.sweep import STATES
    row = next(ln for ln in paper.stdout.splitlines() if ln.startswith("mask_token"))
    counts = dict(zip([*STATES, "unavailable"], row.split()[1:]))
    assert counts.pop("pending") == "6" and set(counts.values()) == {"0"}, paper.stdout


def test_submit_rehearse_runs_one_ablation_on_slurm(slurm_cluster, tmp_path, capsys):
    """`submit mask_token --rehearse`: the data written, a pretraining array of CPU jobs, then the
    evaluation array by aftercorr dependency; every unit done; `status --rehearse` shows the jobs."""
    dirs = [f"run.results_dir={tmp_path}/results", f"run.work_dir={tmp_path}/work", f"data.path={tmp_path}/data"]
    code, out, err = cli(capsys, "submit", "mask_token", "--rehearse", "--cluster", "slurm", *dirs)
    assert code == 0, err
    cfg = build_config(REHEARSAL, dirs)
    data = cluster_jobs.load_jobs(cfg)
    [(pt_ids, _), (ev_ids, dependency)] = [(a["job_ids"], a["dependency"]) for a in data["submissions"][0]["arrays"]]
    assert len(pt_ids) == len(ev_ids) == 2 and dependency == f"aftercorr:{pt_ids[0].split('_')[0]}"
    assert "rehearsal data: 24 JPEG images" in out and "#SBATCH --cpus-per-task=1" in out
    states = wait_ended(cfg, pt_ids + ev_ids, slurm_cluster, timeout=400)
    assert set(states.values()) == {"COMPLETED"}, log_tails(cfg)
    plan = make_plan(select(["mask_token"]), REHEARSAL, 1, dirs)
    assert all(results.read_record(cfg.run.results_dir, rid)["status"] == "done" for rid in plan.units)
    code, out, _ = cli(capsys, "status", "mask_token", "--rehearse", *dirs)
    assert code == 0 and out.count("COMPLETED") == 4 and "mask_token" in out


def test_no_rehearsal_data_for_a_dry_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: the local executor's plan
    dirs = [f"run.results_dir={tmp_path}/results", f"run.work_dir={tmp_path}/work", f"data.path={tmp_path}/data"]
    code, out, err = cli(capsys, "submit", "mask_token", "--rehearse", "--dry-run", *dirs)
    assert code == 0, err
    assert "6 units at preset rehearsal" in out and not (tmp_path / "data").exists()


def test_every_planned_id_is_the_id_its_unit_runs_under(tmp_path, monkeypatch):
    """The plan's run ids hold the dataset's fingerprint, as pretrain() and evaluate() compute it:
    Figure 9's schedule ladder once planned ids without it, ran under others, and `status` showed
    its 21 finished units as pending."""
    from core.eval import eval_run_id
    from core.fingerprint import resolve as resolve_dataset
    from core.prepared import ARTIFACT_KINDS, artifact_id
    from core.rehearsal import ensure_data

    monkeypatch.chdir(tmp_path)
    ensure_data(build_config(REHEARSAL), lambda *a: None)
    plan = make_plan(select(["all"]), REHEARSAL)
    for unit in plan.units.values():
        cfg = resolve_dataset(unit.cfg)
        if unit.kind in ARTIFACT_KINDS:
            rid = artifact_id(cfg, unit.kind)
        else:
            rid = cfg.run_id() if unit.kind == "pretrain" else eval_run_id(cfg, unit.kind, parent=unit.reads)
        assert rid == unit.run_id, (unit.kind, unit.users[0])
