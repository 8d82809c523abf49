"""Registries and the run-id rule (issue 25): one registration per component, components declaring
their own settings, and run ids that survive new settings."""
import dataclasses

import pytest

from core.ablation import select
from core.config import build_config
from core.errors import ConfigError
from core.registry import PARAMS, TARGETS, Param, component_params
from core.settings import SETTINGS, Range
from core.sweep import make_plan
from tests.test_dataset_id import PINNED


def sweep_ids():
    return sorted(make_plan(select(["all"]), "tiny", 2, []).units)


def add_setting_to_pixel(monkeypatch, default=0.5):
    """A new setting of the pixel target (the target of every pinned run but one), as a plugin or a
    later version of the suite would declare it."""
    component_params()
    p = Param("model.new_blur", default, Range(0), "pixel target: a setting added after runs were made")
    entry = TARGETS.entry("pixel")
    monkeypatch.setitem(TARGETS._entries, "pixel", dataclasses.replace(entry, params=entry.params + (p,)))
    monkeypatch.setitem(PARAMS, p.key, (TARGETS, "pixel", p))


def test_a_new_setting_at_its_default_moves_no_run_id(monkeypatch):
    before = sweep_ids()
    add_setting_to_pixel(monkeypatch)
    for preset, overrides, run_id in PINNED:
        assert build_config(preset, overrides).run_id() == run_id
    assert sweep_ids() == before
    cfg = build_config("tiny")
    assert cfg.model.new_blur == 0.5 and "model.new_blur=0.5" not in str(cfg.pretrain_identity())
    # away from its default it is another run, of the component that reads it only
    assert build_config("tiny", ["model.new_blur=2"]).run_id() != cfg.run_id()
    pca = build_config("tiny", ["model.target=pca"])
    assert build_config("tiny", ["model.target=pca", "model.new_blur=2"]).run_id() == pca.run_id()
    with pytest.raises(ConfigError, match="model.new_blur must be >= 0, got -1"):
        build_config("tiny", ["model.new_blur=-1"])


def test_the_rule_is_the_same_for_evaluation_ids(monkeypatch):
    from core.eval import eval_run_id

    cfg = build_config("tiny")
    ids = [eval_run_id(cfg, p) for p in ("linprobe", "finetune", "knn", "scratch")]
    add_setting_to_pixel(monkeypatch)
    assert [eval_run_id(cfg, p) for p in ("linprobe", "finetune", "knn", "scratch")] == ids
    # accum_iter was added after eval ids were first hashed: at its default 1 it is out of the id
    assert eval_run_id(build_config("tiny", ["eval.linprobe.accum_iter=1"]), "linprobe") == ids[0]
    assert eval_run_id(build_config("tiny", ["eval.linprobe.accum_iter=2"]), "linprobe") != ids[0]


def test_a_setting_without_a_declaration_is_one_line(monkeypatch, capsys):
    import run_all

    monkeypatch.delitem(SETTINGS, "pretrain.seed")
    with pytest.raises(ConfigError, match="^pretrain.seed has no declaration"):
        build_config("tiny")
    assert run_all.main(["config", "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pretrain.seed has no declaration") and err.count("\n") == 1


def test_a_component_setting_is_validated_and_shown_by_config_from_its_declaration(capsys):
    import run_all

    assert run_all.main(["config", "--preset", "tiny", "model.target=pca", "model.pca_components=7"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("model.pca_components"))
    assert "= 7" in line and "pca target: coefficients kept" in line and ">= 0" in line and "[Table 1d]" in line
    assert run_all.main(["config", "--preset", "tiny", "model.pca_samples=0"]) == 2
    assert "model.pca_samples must be >= 1, got 0" in capsys.readouterr().err


def test_a_component_cannot_redeclare_a_config_field_or_another_components_setting():
    from core.registry import MASKS

    with pytest.raises(Exception, match="declared by reconstruction target 'pca'"):
        MASKS.register("twice", lambda *a: None, params=[Param("model.pca_samples", 1, Range(1), "again")])
    assert "twice" not in list(MASKS)
