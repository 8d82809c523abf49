"""Does pretraining learn? The references (raw pixels, the seed's random weights) as run records,
their plan units, the pairing of variants by seed that the paired intervals rely on, and
`run_all.py testbed` (issue 24)."""
import math

import pytest
import torch

import run_all
from core import results
from core.ablation import select
from core.data import eval_transform
from core.distributed import DistInfo
from core.eval import evaluate
from core.eval.baselines import PixelFeatures, features
from core.model import initial_mae
from core.report.collect import collect
from core.report.testbed import check, markdown
from core.sweep import make_plan
from core.train import _Run
from tests.conftest import FAST
from tests.ddp_units import baseline_plan, launch, result
from tests.test_tables import SPREAD, write_sweep

ENCODER = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")
# one short linear probe and kNN on 64 synthetic images
EVAL = ["data.synthetic_size=64", "eval.linprobe.epochs=1", "eval.linprobe.warmup_epochs=0",
        "eval.linprobe.batch_size=16", "eval.knn.batch_size=16"]


def start(cfg):
    """What pretraining run `cfg` starts from: its initial encoder weights and its first batch."""
    run = _Run(cfg, cfg.run_id(), torch.device("cpu"), DistInfo(), None, False)
    encoder = {k: v.clone() for k, v in run.model.state_dict().items() if k.startswith(ENCODER)}
    imgs, labels, _ = next(iter(run.loader.epoch(0)))
    return encoder, imgs, labels


def test_variants_of_one_seed_start_from_the_same_weights_and_batch(fast_cfg):
    """The pairing the claims table's paired interval uses: variants of one seed that differ in the
    decoder, the mask token, the masking ratio or the target start from the same encoder weights
    and read the same first batch (the mask stream is mask_generator(pretrain.seed, step, rank)
    for every variant). Before the encoder was initialised first, a deeper decoder drew from the
    RNG in between and changed the encoder's initial weights."""
    base_w, base_x, base_y = start(fast_cfg())
    for variant in ("model.decoder_depth=1", "model.decoder_embed_dim=32", "model.mask_token_in_encoder=true",
                    "model.mask_ratio=0.5", "model.target=pixel", "model.loss_on_all_patches=true"):
        w, x, y = start(fast_cfg(variant))
        assert w.keys() == base_w.keys() and all(torch.equal(w[k], base_w[k]) for k in w), variant
        assert torch.equal(x, base_x) and torch.equal(y, base_y), variant
    other_w, other_x, _ = start(fast_cfg("pretrain.seed=1"))
    assert not torch.equal(other_w["blocks.0.attn.qkv.weight"], base_w["blocks.0.attn.qkv.weight"])
    assert not torch.equal(other_x, base_x)
    # the random-weight baseline is exactly that encoder, whatever the head's width
    random = features(fast_cfg(), "random")
    assert random.keys() == base_w.keys() and all(torch.equal(random[k], base_w[k]) for k in random)
    m = fast_cfg().model
    assert torch.equal(initial_mae(m, 7, 0).state_dict()["norm.weight"], initial_mae(m, 48, 0).state_dict()["norm.weight"])


def test_pixel_and_random_weight_evaluations_are_records(fast_cfg):
    cfg = fast_cfg(*EVAL)
    imgs = torch.rand(2, 3, 16, 16)
    assert torch.equal(PixelFeatures(16)(imgs)[:, 0], imgs.flatten(1))  # the cls token and the patch mean
    assert torch.equal(PixelFeatures(16)(imgs)[:, 1:].mean(1), imgs.flatten(1))
    got = {}
    for source in ("pixels", "random"):
        for protocol in ("linprobe", "knn"):
            rec = evaluate(cfg, protocol, source=source, progress=False)
            assert rec["status"] == "done" and rec["kind"] == protocol and rec["source"] == source
            assert 0 <= rec["metrics"]["top1"] <= 100
            got[source, protocol] = rec
    assert got["pixels", "knn"]["parent"] == "pixels" and got["random", "knn"]["parent"] == "init-random-seed0"
    # a second call finds the record; another pretraining seed is another random encoder, another record
    assert evaluate(cfg, "knn", source="random", progress=False)["run_id"] == got["random", "knn"]["run_id"]
    seed1 = evaluate(fast_cfg(*EVAL, "pretrain.seed=1"), "knn", source="random", progress=False)
    assert seed1["parent"] == "init-random-seed1" and seed1["run_id"] != got["random", "knn"]["run_id"]
    # the pixel kNN by hand: cosine similarity of normalised, flattened images, k nearest vote exp(sim / T)
    from core.data import build_dataset
    from core.eval.knn import knn_votes
    tf = eval_transform(16, cfg.data.mean, cfg.data.std)
    split = {s: build_dataset(cfg.data, s, 16) for s in ("train", "val")}
    xy = {s: (torch.stack([tf(split[s].load(i)[0]).flatten() for i in range(len(split[s]))]),
              torch.tensor([split[s].load(i)[1] for i in range(len(split[s]))])) for s in split}
    votes = knn_votes(*xy["train"], xy["val"][0], cfg.eval.knn.k, cfg.eval.knn.temperature, int(xy["train"][1].max()) + 1)
    top1 = 100.0 * (votes.argmax(1) == xy["val"][1]).float().mean().item()
    assert got["pixels", "knn"]["metrics"]["top1"] == pytest.approx(top1)


def test_bad_baseline_requests_are_one_line_errors(fast_cfg, capsys, dirs):
    with pytest.raises(Exception, match="scratch baseline"):
        evaluate(fast_cfg(), "finetune", source="random")
    assert run_all.main(["eval", "linprobe", "--baseline", "random", "--run", "pt-0123456789ab", *FAST, *dirs]) == 2
    assert "not several (--run and --baseline given)" in capsys.readouterr().err


def test_the_plan_evaluates_references_without_pretraining():
    tiny = make_plan(select(["learning_check"]), "tiny", 2)
    by = {(u.users[0][1], u.kind, u.users[0][2]): u for u in tiny.units.values()}
    assert {u.kind for u in tiny.units.values() if u.source} == {"linprobe", "knn"}
    assert all(u.parent is None for u in tiny.units.values() if u.source)
    assert [u.users[0][1] for u in tiny.pretrains] == ["mae", "mae"]  # the references pretrain nothing
    assert by["random", "linprobe", 0].run_id != by["random", "linprobe", 1].run_id
    # MAE's numbers are the baseline's runs that every ablation shares
    mr = make_plan(select(["mask_ratio"]), "tiny", 1)
    base = next(c for c in mr.cells if c.is_baseline)
    mae = next(c for c in tiny.cells if c.variant == "mae" and c.seed == 0)
    assert mae.eval_ids == base.eval_ids and mae.pretrain_id == base.pretrain_id
    # the paper preset: the random-weight linear probe only (no pixel probe of 224 px images, no kNN)
    paper = make_plan(select(["learning_check"]), "paper", 1)
    assert sorted((u.kind, u.source) for u in paper.units.values() if u.source) == [("linprobe", "random")]


# per source: linear probe level; seed s shifts it by SPREAD rotated by ROT (pairs vary over seeds)
LEVEL, ROT = {"pixels": 60.0, "random": 50.0, "mae": 80.0}, {"pixels": 1, "random": 2, "mae": 0}
NAMES = ["learning_check", "mask_ratio", "partial_finetune", "scratch_baseline"]


def value(cell, protocol):
    if cell.ablation == "learning_check" or (cell.is_baseline and protocol != "partial"):
        return LEVEL.get(cell.variant, 80.0) + SPREAD[(cell.seed + ROT.get(cell.variant, 0)) % 3]
    return 70.0 + SPREAD[cell.seed % 3]


def test_testbed_prints_both_criteria_from_records(tmp_path, capsys):
    from scipy import stats

    overrides = [f"run.results_dir={tmp_path / 'results'}", f"run.work_dir={tmp_path / 'work'}"]
    args = ["testbed", "--preset", "tiny", "--seeds", "3", *overrides]
    assert run_all.main(args) == 2  # no records: one line naming what to run
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "run_all.py run learning_check --preset tiny --seeds 3" in err
    write_sweep(str(tmp_path / "results"), make_plan(select(NAMES), "tiny", 3, overrides), value=value)
    res = collect("tiny", 3, overrides, NAMES)
    out = check(res, 3)
    # MAE - pixels per seed: 20 + SPREAD[s] - SPREAD[s + 1] = 19, 19, 22: mean 20, sd sqrt(3), paired t
    half = stats.t.ppf(0.975, 2) * math.sqrt(3) / math.sqrt(3)
    g = out["gains"]["pixels"]
    assert g["interval"] == "paired" and (g["est"], g["lo"], g["hi"]) == pytest.approx((20.0, 20 - half, 20 + half))
    assert out["gains"]["random"]["est"] == pytest.approx(30.0) and out["mae_probe"] == pytest.approx(80.0)
    assert out["criterion1"] is True
    assert run_all.main(args) == 0
    text = capsys.readouterr().out
    assert "| raw pixels (no model) | 60.00 ± 1.00 (n=3) | n/a (no model) |" in text
    assert "[scratch_baseline/our_impl]" in text and "[partial_finetune/4]" in text
    assert "Criterion 1" in text and "**holds**" in text and "Criterion 2" in text
    # the report holds the same section, and the learning check's own table
    assert run_all.main(["report", "--preset", "tiny", "--seeds", "3", "--out", str(tmp_path / "report"),
                         *NAMES, *overrides]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    section = report[report.index("## Does pretraining learn?"):report.index("## Tables and curves")]
    assert "| raw pixels (no model) | 60.00 ± 1.00 (n=3) |" in section and "**holds**" in section
    assert "### testbed: Does pretraining learn?" in report
    # MAE's probe above 90 %: variants could not move up; criterion 1 fails
    res.values.loc[(res.values.variant == "mae") & (res.values.metric == "linprobe_top1"), "value"] += 15
    res.values.loc[(res.values.variant != "mae") & (res.values.metric == "linprobe_top1"), "value"] += 15
    assert check(res, 3)["criterion1"] is False
    assert "**fails**" in markdown(res, check(res, 3), 3)


def test_the_references_run_under_two_process_ddp(tmp_path):
    """The raw-pixel and random-weight linear probes and kNN of two seeds in one 2-process gloo group:
    every unit done with a record of world size 2; the pixel kNN (no training) reads as in one process."""
    overrides = [*FAST, *EVAL, f"run.results_dir={tmp_path / 'results'}", f"run.work_dir={tmp_path / 'work'}"]
    plan = baseline_plan(overrides)
    assert len(plan.units) == 8 and not plan.pretrains
    out = launch("baselines", tmp_path / "status.json", *overrides, cwd=tmp_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert result(tmp_path / "status.json") == {rid: "done" for rid in plan.units}
    for rid, unit in plan.units.items():
        rec = results.read_record(str(tmp_path / "results"), rid)
        assert rec["status"] == "done" and rec["world_size"] == 2 and rec["source"] == unit.source, rid
    knn = next(u for u in plan.units.values() if u.source == "pixels" and u.kind == "knn")
    alone = evaluate(build_alone(knn.cfg, tmp_path), "knn", source="pixels", progress=False)
    assert alone["world_size"] == 1
    assert alone["metrics"]["top1"] == results.read_record(str(tmp_path / "results"), knn.run_id)["metrics"]["top1"]


def build_alone(cfg, tmp_path):
    import dataclasses
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, results_dir=str(tmp_path / "alone")))
