"""Prepared artifacts (the PCA basis, the in-suite tokenizer) are units of the sweep plan: one per
distinct artifact, before the pretraining runs that read it and depended on by them, locally and in
the SLURM arrays; a rank waiting for rank 0 to prepare one gives up after a bound, in one line."""
import threading

import pytest

import core.targets.dvae as dvae
import core.targets.pca as pca
from core import prepared, results
from core.cluster import arrays as cluster_arrays
from core.ablation import Ablation, select
from core.config import build_config
from core.data import build_dataset
from core.errors import TrainingFailed
from core.model import ARCHS
from core.targets.base import wait_for_rank0
from core.sweep import make_plan, run_plan
from core.train import pretrain
from tests.conftest import FAST


def test_target_plan_has_one_artifact_unit_each_before_and_needed_by_its_users(tmp_path):
    plan = make_plan(select(["target"]), "tiny", seeds=2, overrides=[f"run.results_dir={tmp_path}"])
    order = list(plan.units)
    arts = {u.kind: u for u in plan.artifacts}
    assert sorted(arts) == ["pca", "tokenizer"] and len(plan.artifacts) == 2  # one each for both seeds
    assert order[:2] == [u.run_id for u in plan.artifacts]  # before every pretraining run
    for kind, target in (("pca", "pca"), ("tokenizer", "dvae_token")):
        art = arts[kind]
        users = [u for u in plan.pretrains if u.needs == art.run_id]
        assert sorted(u.cfg.model.target for u in users) == [target, target]  # seed 0 and 1
        assert all(order.index(u.run_id) > order.index(art.run_id) for u in users)
        assert {(a, s) for a, _, s in art.users} == {("target", 0), ("target", 1)}
        assert art.run_id.startswith(kind + "-") and art.run_id == prepared.artifact_id(users[0].cfg, kind)
    assert all(u.needs is None for u in plan.pretrains if u.cfg.model.target in ("pixel", "norm_pixel", "hog"))
    # another seed or mask ratio reads the same artifact; other tokenizer settings another one
    cfg = build_config("tiny", ["model.target=dvae_token"])
    same = build_config("tiny", ["model.target=dvae_token", "pretrain.seed=3", "model.mask_ratio=0.5"])
    other = build_config("tiny", ["model.target=dvae_token", "model.dvae_vocab=64"])
    ids = [prepared.artifact_id(c, "tokenizer") for c in (cfg, same, other)]
    assert ids[0] == ids[1] != ids[2]
    assert prepared.artifact_kind(build_config("tiny", ["model.target=dvae_token", "model.dvae_path=x.pkl"])) is None

    # SLURM: a prepare array first; the runs reading an artifact start after that artifact's task
    arrays = cluster_arrays.build_arrays(plan, list(plan.units.values()), {}, "slurm")
    prep = arrays[0]
    assert prep.stage == "prepare" and [t[0].run_id for t in prep.tasks] == [u.run_id for u in plan.artifacts]
    prep.job_ids = ["40_0", "40_1"]
    for i, art in enumerate(plan.artifacts):
        a = [a for a in arrays if a.after is prep and a.task == i][0]
        assert {t[0].needs for t in a.tasks} == {art.run_id} and a.dependency() == f"afterok:40_{i}"
    free = [a for a in arrays if a.stage == "pretrain" and a.after is None]
    assert len(free) == 1 and all(t[0].needs is None for t in free[0].tasks)
    # a prepare unit still queued from an earlier submission: its users wait for that job
    again = cluster_arrays.build_arrays(plan, [u for u in plan.units.values() if u not in plan.artifacts],
                                {plan.artifacts[1].run_id: "41"}, "slurm")
    waiting = [a for a in again if a.after == ["41"] * 2]
    assert len(waiting) == 1 and waiting[0].dependency() == "afterok:41"


def mini(dirs):
    """Two variants reading one PCA basis, no evaluations: the smallest plan with an artifact."""
    abl = Ablation(name="mini", source="-", title="-", baseline="a", small_evals=(),
                   variants={"a": {"model.target": "pca", "model.mask_ratio": 0.5},
                             "b": {"model.target": "pca", "model.mask_ratio": 0.75}})
    return make_plan([abl], "tiny", overrides=FAST + dirs + ["pretrain.epochs=1", "pretrain.warmup_epochs=0"])


def test_local_run_prepares_the_artifact_once_before_its_users(dirs, monkeypatch):

    events = []
    fit = pca.fit_pca
    monkeypatch.setattr(pca, "fit_pca", lambda *a: events.append("fit") or fit(*a))
    plan = mini(dirs)
    assert [u.kind for u in plan.units.values()] == ["pca", "pretrain", "pretrain"]
    status = run_plan(plan, pretrain_fn=lambda cfg, **k: events.append("pretrain") or pretrain(cfg, **k),
                      progress=False, log=lambda *a: None)
    assert set(status.values()) == {"done"} and events == ["fit", "pretrain", "pretrain"]
    art = plan.artifacts[0]
    rec = results.read_record(art.cfg.run.results_dir, art.run_id)
    assert rec["kind"] == "pca" and rec["status"] == "done" and rec["artifact"].endswith(".pt")
    for u in plan.pretrains:
        assert results.read_record(u.cfg.run.results_dir, u.run_id)["started_at"] >= rec["finished_at"]
    # the same sweep again: the finished artifact unit is not fitted again (nor the runs trained)
    import core.train
    monkeypatch.setattr(pca, "fit_pca", lambda *a: pytest.fail("fitted twice"))
    monkeypatch.setattr(core.train, "_Run", None)
    assert run_plan(plan, progress=False, log=lambda *a: None) == status


def test_a_rank_waiting_for_rank0_gives_up_in_one_line(fast_cfg, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MAE_PREPARE_WAIT_S", "0.3")
    cfg = fast_cfg("model.target=dvae_token")
    train = build_dataset(cfg.data, "train", cfg.model.img_size)
    out = {}

    def lone_pretraining_rank1():  # what pretrain()'s target.prepare does on rank 1 before a tokenizer exists
        try:
            dvae.prepare_tokenizer(train, cfg.model, cfg.data, ARCHS[cfg.model.arch]["patch_size"],
                                   cfg.run.work_dir, "cpu", cfg.run.results_dir)
        except TrainingFailed as e:
            out["error"] = str(e)
    t = threading.Thread(target=lone_pretraining_rank1, daemon=True)  # unbounded before: it would hang
    t.start()
    t.join(60)
    assert not t.is_alive(), "rank 1 still waits for the tokenizer"
    err = out["error"]
    assert "tokenizer tok-" in err and "python run_all.py tokenizer" in err and "\n" not in err
    # in a sweep's artifact unit, rank 1 waits for rank 0's record: a failed one ends the wait at once
    with pytest.raises(TrainingFailed, match=r"tokenizer tokenizer-\w+: waited 0 s .*run_all.py tokenizer"):
        prepared.prepare(cfg, "tokenizer")
    rid = prepared.artifact_id(cfg, "tokenizer")
    monkeypatch.setenv("MAE_PREPARE_WAIT_S", "60")
    results.write_record(cfg.run.results_dir, {"run_id": rid, "status": "failed", "reason": "out of memory"})
    with pytest.raises(TrainingFailed, match="rank 0 could not prepare it: out of memory"):
        prepared.prepare(cfg, "tokenizer")


def test_the_shared_wait_returns_what_appears_and_names_what_it_waited_for(monkeypatch):
    monkeypatch.setenv("MAE_PREPARE_WAIT_S", "30")
    answers = iter([None, None, {"status": "done"}])
    assert wait_for_rank0(lambda: next(answers), "pca pca-x", "run it", 0.01) == {"status": "done"}
    monkeypatch.setenv("MAE_PREPARE_WAIT_S", "0.05")
    with pytest.raises(TrainingFailed, match=r"^pca pca-x: waited 0 s \(MAE_PREPARE_WAIT_S\) for rank 0 to prepare it; run it$"):
        wait_for_rank0(lambda: None, "pca pca-x", "run it", 0.01)
