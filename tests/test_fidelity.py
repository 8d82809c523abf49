"""Fidelity to the paper and the official code (docs/evaluation.md): position-embedding channel
order, fine-tune recipes by model size, pos_embed and min_lr in fine-tuning, gradient
accumulation in the evaluations, the official checkpoint layouts, Figure 9's protocol and the
labelling of the in-suite dVAE tokenizer."""
import argparse
import copy
import math
import os

import pytest
import torch
from torch import nn

from core.config import Config, build_config
from core.errors import CheckpointError, ConfigError, UserError
from core.eval import evaluate
from core.eval.data import eval_data, make_loader
from core.eval.features import validate
from core.eval.records import eval_run_id
from core.eval.supervised import Accumulate, cosine_schedule, fit
from core.eval.finetune import ViTClassifier, build, train_transform
from core.model import ARCHS, MAE, ViTEncoder, sincos_pos_embed

SMALL = ["model.img_size=16", "data.synthetic_size=64"]


# --------------------------------------------------------------------------- position embeddings

def reference_pos_embed(grid: int, dim: int) -> list[list[float]]:
    """Written out element by element from the definition: channel c < dim/2 encodes the column,
    the rest the row; within a half, sines of the dim/4 frequencies, then their cosines."""
    quarter = dim // 4
    rows = [[0.0] * dim]  # the cls token
    for r in range(grid):
        for c in range(grid):
            row = []
            for coord in (c, r):
                angles = [coord / 10000 ** (k / quarter) for k in range(quarter)]
                row += [math.sin(a) for a in angles] + [math.cos(a) for a in angles]
            rows.append(row)
    return rows


@pytest.mark.parametrize("grid, dim", [(4, 16), (14, 1024)])
def test_pos_embed_is_the_official_channel_order_in_float64(grid, dim):
    ours = sincos_pos_embed(grid, dim)
    assert ours.shape == (1, 1 + grid * grid, dim) and ours.dtype == torch.float32
    ref = torch.tensor(reference_pos_embed(grid, dim), dtype=torch.float64)
    assert torch.equal(ours[0], ref.float())  # computed in float64, then cast: bit for bit
    # the patch to the right changes only the first half, the patch below only the second
    assert torch.equal(ours[0, 1, dim // 2:], ours[0, 2, dim // 2:])
    assert torch.equal(ours[0, 1, :dim // 2], ours[0, 1 + grid, :dim // 2])
    # the same values as timm's builder, whose channels are in another order
    from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
    timm_emb = build_sincos2d_pos_embed([grid, grid], dim=dim).double()
    assert not torch.allclose(timm_emb, ours[0, 1:].double(), atol=1e-3)
    assert torch.allclose(timm_emb.sort(1).values, ref[1:].sort(1).values, atol=1e-5)


def test_models_use_it_for_encoder_and_decoder():
    cfg = build_config("tiny").model
    mae = MAE(cfg, 48)
    grid = cfg.img_size // ARCHS[cfg.arch]["patch_size"]
    assert torch.equal(mae.pos_embed, sincos_pos_embed(grid, mae.embed_dim))
    assert torch.equal(mae.decoder_pos_embed, sincos_pos_embed(grid, cfg.decoder_embed_dim))


# --------------------------------------------------------------------------- recipes by model size

def test_paper_recipe_follows_the_model_size_and_keeps_vit_l_ids():
    large = build_config("paper")
    assert (large.eval.finetune.epochs, large.eval.finetune.drop_path) == (50, 0.1)
    assert large.eval == Config().eval  # the dataclass defaults are the paper's ViT-L row
    base = build_config("paper", ["model.arch=vit_base_patch16"])
    assert (base.eval.finetune.epochs, base.eval.finetune.drop_path, base.eval.finetune.blr) == (100, 0.1, 1e-3)
    huge = build_config("paper", ["model.arch=vit_huge_patch14", "model.img_size=224"])
    assert (huge.eval.finetune.epochs, huge.eval.finetune.drop_path) == (50, 0.2)
    off = build_config("paper", ["model.arch=vit_base_patch16", "eval.recipe=official"]).eval.finetune
    assert (off.epochs, off.blr, off.layer_decay, off.drop_path) == (100, 5e-4, 0.65, 0.1)
    assert build_config("paper", ["eval.recipe=official"]).eval.finetune.drop_path == 0.2
    # the command line wins over the recipe; the tiny preset's own values win too
    assert build_config("paper", ["model.arch=vit_base_patch16", "eval.finetune.epochs=7"]).eval.finetune.epochs == 7
    assert build_config("tiny", ["eval.recipe=official"]).eval.finetune == build_config("tiny").eval.finetune
    with pytest.raises(ConfigError, match="eval.recipe"):
        build_config("paper", ["eval.recipe=timm"])


# --------------------------------------------------------------------------- fine-tuning details

def encoder_weights(img_size=16):
    torch.manual_seed(0)
    return ViTEncoder("vit_tiny_patch4", img_size).state_dict()


def test_finetune_trains_pos_embed_at_layer_zero_without_decay_and_partial_does_not(fast_cfg):
    cfg = fast_cfg(*SMALL)
    model, opt = build(cfg, "finetune", encoder_weights(), 10, torch.device("cpu"))
    group = next(g for g in opt.param_groups if any(p is model.pos_embed for p in g["params"]))
    assert model.pos_embed.requires_grad
    assert group["weight_decay"] == 0.0 and group["lr_scale"] == pytest.approx(0.75 ** (model.depth + 1))
    part, _ = build(fast_cfg(*SMALL, "eval.finetune.blocks=1"), "partial", encoder_weights(), 10, torch.device("cpu"))
    assert not part.pos_embed.requires_grad


def test_cosine_floor_is_min_lr_times_each_groups_scale(fast_cfg):
    cfg = fast_cfg(*SMALL)
    assert cfg.eval.finetune.min_lr == 1e-6 and cfg.eval.scratch.min_lr == 1e-6
    model, opt = build(cfg, "finetune", encoder_weights(), 10, torch.device("cpu"))
    sched = cosine_schedule(opt, 3, 1, 4, cfg.eval.finetune.min_lr)
    sched.step_update(12)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(1e-6 * g["lr_scale"])


def test_new_settings_at_their_old_behaviour_keep_eval_ids(fast_cfg):
    old = (*SMALL, "pretrain.precision=auto")  # the tiny preset's precision before it became fp32
    cfg = fast_cfg(*old)
    # ids computed by the code before accum_iter, min_lr and eval.recipe existed
    assert (eval_run_id(cfg, "linprobe"), eval_run_id(cfg, "knn")) == ("linprobe-ac0220d9a434", "knn-8bcbd290412e")
    paper = build_config("paper")
    assert (eval_run_id(paper, "linprobe"), paper.run_id()) == ("linprobe-6bfc0cf41658", "pt-f592c58e6b0e")
    assert eval_run_id(cfg, "linprobe") == eval_run_id(fast_cfg(*old, "eval.linprobe.accum_iter=1"), "linprobe")
    assert eval_run_id(cfg, "linprobe") != eval_run_id(fast_cfg(*old, "eval.linprobe.accum_iter=2"), "linprobe")
    with pytest.raises(ConfigError, match="accum_iter"):
        fast_cfg(*SMALL, "eval.finetune.batch_size=32", "eval.finetune.accum_iter=3")


# --------------------------------------------------------------------------- accumulation

def _fit_once(cfg, model, batch: int, accum: int, data):
    r = cfg.eval.finetune
    loader = Accumulate(make_loader(cfg, data.train, train_transform(r, cfg), batch // accum, True,
                                    torch.device("cpu")), accum)
    seen = []
    inner = loader.epoch
    loader.epoch = lambda e, s=0: (seen.append(len(parts)) or parts for parts in inner(e, s))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    fit(model, opt, cosine_schedule(opt, 1, 0, loader.steps_per_epoch), loader, epochs=1,
        criterion=nn.CrossEntropyLoss(), precision="fp32", device=torch.device("cpu"),
        scaler=torch.amp.GradScaler("cpu", enabled=False), seed=0, validators={"": lambda: (0.0, 0.0)},
        progress=False)
    return seen, loader.steps_per_epoch


def test_accumulated_micro_batches_give_the_large_batch_update(fast_cfg):
    cfg = fast_cfg(*SMALL, "eval.finetune.drop_path=0.0", "eval.finetune.randaug=None", "eval.finetune.reprob=0.0")
    data = eval_data(cfg)
    model, _ = build(cfg, "finetune", encoder_weights(), 10, torch.device("cpu"))
    big, small = model, copy.deepcopy(model)
    start = copy.deepcopy(model.state_dict())
    seen_big, steps_big = _fit_once(cfg, big, 16, 1, data)
    seen_small, steps_small = _fit_once(cfg, small, 16, 4, data)
    assert steps_big == steps_small == 64 // 16 and set(seen_big) == {1} and set(seen_small) == {4}
    moved = 0
    for (name, a), b in zip(big.state_dict().items(), small.state_dict().values()):
        assert torch.allclose(a, b, atol=2e-6, rtol=1e-4), name
        moved += not torch.equal(a, start[name])
    assert moved > 10  # the steps did change the weights


def test_linear_probe_accumulation_is_exact_batchnorm_included(fast_cfg, monkeypatch):
    from core.eval import linprobe

    loaded = []  # images per training batch the loader reads
    real = linprobe.make_loader
    monkeypatch.setattr(linprobe, "make_loader", lambda cfg, base, tf, batch, train, device, **kw:
                        (loaded.append(batch) if train else None) or real(cfg, base, tf, batch, train, device, **kw))
    runs = []
    for accum in (1, 4):
        cfg = fast_cfg(*SMALL, "data.synthetic_size=128", "eval.linprobe.batch_size=32", "eval.linprobe.epochs=2",
                       "eval.linprobe.warmup_epochs=1", "eval.linprobe.augment=True",
                       f"eval.linprobe.accum_iter={accum}")
        runs.append(linprobe.run(cfg, encoder_weights(), eval_data(cfg), torch.device("cpu"), "fp32", False))
    a, b = runs
    assert loaded == [32, 8]
    assert a["history"]["loss"] == pytest.approx(b["history"]["loss"], rel=1e-5)
    assert a["history"]["val_top1"] == b["history"]["val_top1"]


# --------------------------------------------------------------------------- official checkpoints

def official_args(**kw):
    return argparse.Namespace(model="vit_tiny_patch4", batch_size=64, blr=1e-3, epochs=800, device="cuda",
                              data_path="/datasets/imagenet", norm_pix_loss=True, resume="", **kw)


def test_official_pretraining_checkpoint_with_args_loads_strictly(fast_cfg, tmp_path, capsys):
    from core.eval.weights import encoder_state, load_init

    cfg = fast_cfg(*SMALL)
    torch.manual_seed(1)
    mae = MAE(cfg.model, 48)
    path = tmp_path / "checkpoint-799.pth"
    torch.save({"model": mae.state_dict(), "optimizer": torch.optim.AdamW(mae.parameters()).state_dict(),
                "epoch": 799, "scaler": {"scale": 65536.0}, "args": official_args(mask_ratio=0.75)}, path)
    state, _ = load_init(str(path))
    assert "ignoring args, epoch, optimizer, scaler" in capsys.readouterr().err
    enc = encoder_state(state, cfg.model.arch, cfg.model.img_size, str(path))
    model = ViTEncoder(cfg.model.arch, cfg.model.img_size)
    model.load_state_dict(enc, strict=True)
    assert torch.equal(model.blocks[0].attn.qkv.weight, mae.blocks[0].attn.qkv.weight)


def test_the_ignored_keys_are_named_in_one_line(fast_cfg, tmp_path, capsys):
    from core.eval.weights import load_init

    path = tmp_path / "ckpt.pth"
    torch.save({"model": encoder_weights(), "epoch": 3, "args": official_args()}, path)
    load_init(str(path))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("note:") and "ignoring args, epoch" in err[0]


class RunsCode:
    def __reduce__(self):
        return (os.getcwd, ())


def test_a_pickle_with_other_objects_is_still_refused(tmp_path):
    from core.eval.weights import load_init

    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": RunsCode()}, path)
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        load_init(str(path))


def finetuned(cfg, pool: str, classes: int = 10, seed: int = 3) -> ViTClassifier:
    torch.manual_seed(seed)
    model = ViTClassifier(cfg.model.arch, cfg.model.img_size, classes, pool)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_eval_only_evaluates_an_official_finetuned_classifier(fast_cfg, tmp_path, pool):
    cfg = fast_cfg(*SMALL)
    model = finetuned(cfg, pool)
    state = model.state_dict()
    assert ("norm.weight" in state) == (pool == "cls") and ("fc_norm.weight" in state) == (pool == "avg")
    path = tmp_path / f"mae_finetuned_{pool}.pth"
    torch.save({"model": state, "args": official_args(global_pool=pool == "avg")}, path)
    rec = evaluate(cfg, "finetune", init=str(path), eval_only=True, progress=False)
    assert rec["status"] == "done" and rec["eval_only"] and rec["epochs"] == 0
    from core.data import eval_transform
    loader = make_loader(cfg, eval_data(cfg).val, eval_transform(16, cfg.data.mean, cfg.data.std), 32, False,
                         torch.device("cpu"))
    top1, top5 = validate(model, loader, "fp32", torch.device("cpu"))
    assert rec["metrics"]["top1"] == pytest.approx(top1) and rec["metrics"]["top5"] == pytest.approx(top5)
    assert rec["run_id"] != eval_run_id(cfg, "finetune", rec["parent"])  # not a trained fine-tune's id


def test_eval_only_and_finetuned_checkpoints_refuse_what_they_cannot_do(fast_cfg, tmp_path):
    cfg = fast_cfg(*SMALL)
    path = tmp_path / "ft.pth"
    torch.save({"model": finetuned(cfg, "avg").state_dict()}, path)
    with pytest.raises(CheckpointError, match="fine-tuned classifier.*--eval-only"):
        evaluate(cfg, "linprobe", init=str(path), progress=False)
    with pytest.raises(UserError, match="--eval-only"):
        evaluate(cfg, "linprobe", init=str(path), eval_only=True, progress=False)
    enc = tmp_path / "enc.pth"
    torch.save({"model": encoder_weights()}, enc)
    with pytest.raises(CheckpointError, match="no classifier"):
        evaluate(cfg, "finetune", init=str(enc), eval_only=True, progress=False)
    other = tmp_path / "ft100.pth"
    torch.save({"model": finetuned(cfg, "avg", classes=100).state_dict()}, other)
    with pytest.raises(Exception, match="100 classes"):
        evaluate(cfg, "finetune", init=str(other), eval_only=True, progress=False)


def test_cli_eval_only(fast_cfg, tmp_path, capsys, dirs):
    import run_all

    cfg = fast_cfg(*SMALL)
    path = tmp_path / "ft.pth"
    torch.save({"model": finetuned(cfg, "avg").state_dict(), "args": official_args()}, path)
    code = run_all.main(["eval", "finetune", "--preset", "tiny", "--init", str(path), "--eval-only", "--quiet",
                         "data.dataset=synthetic", *SMALL, *dirs])
    out = capsys.readouterr()
    assert code in (0, None) and "finetune" in out.out and "top-1" in out.out
    assert "note:" in out.err and "ignoring args" in out.err


# --------------------------------------------------------------------------- Figure 9 and Table 1d rows

def write_records(plan, results_dir, top1):
    """A finished record for every unit of the plan; top1(unit) -> the eval's top-1 (None: no record)."""
    from core import results

    for unit in plan.units.values():
        rec = {"run_id": unit.run_id, "kind": unit.kind, "parent": unit.parent, "status": "done",
               "config": unit.cfg.to_dict(), "wall_time_s": 1.0}
        if unit.kind == "pretrain":
            rec.update(history={"loss": [1.0, 0.5]}, metrics={"final_loss": 0.5}, flops_per_image=1e6)
        else:
            value = top1(unit)
            if value is None:
                continue
            rec.update(metrics={"top1": value, "top5": 99.0}, history={})
        results.write_record(results_dir, rec)


def test_figure9_zero_blocks_is_the_linear_probe_and_each_count_the_best_of_its_epoch_ladder(tmp_path, dirs):
    from core.ablation import select
    from core.report.collect import collect
    from core.report.tables import build_tables
    from core.sweep import make_plan

    plan = make_plan(select(["partial_finetune"]), "tiny", 1, dirs)
    cells = {c.variant: c for c in plan.cells}
    zero = plan.units[cells["0"].eval_ids["partial"]]
    assert zero.kind == "linprobe" and zero.parent == cells["1"].pretrain_id
    assert list(cells["1"].eval_choices["partial"]) == ["4 epochs", "8 epochs", "15 epochs"]
    assert [plan.units[e].cfg.eval.finetune.epochs for e in cells["2"].eval_choices["partial"].values()] == [4, 8, 15]
    paper_plan = make_plan(select(["partial_finetune"]), "paper", 1, dirs)
    assert sorted({u.cfg.eval.finetune.epochs for u in paper_plan.units.values() if u.kind == "partial"}) == [50, 100, 200]
    base_plan = make_plan(select(["partial_finetune"]), "paper", 1, [*dirs, "model.arch=vit_base_patch16"])
    assert sorted({u.cfg.eval.finetune.epochs for u in base_plan.units.values() if u.kind == "partial"}) == [100, 200, 400]
    # 1 block: the 30-epoch run is best; 2 blocks: the 60-epoch one has no record yet
    scores = {("linprobe", 15): 70.0, (1, 4): 80.0, (1, 8): 85.0, (1, 15): 82.0, (2, 4): 86.0, (2, 8): 84.0,
              (4, 4): 90.0, (4, 8): 91.0, (4, 15): 89.0}
    key = lambda u: ("linprobe", 15) if u.kind == "linprobe" else (u.cfg.eval.finetune.blocks, u.cfg.eval.finetune.epochs)  # noqa
    write_records(plan, str(tmp_path / "results"), lambda u: scores.get(key(u)))
    res = collect("tiny", 1, dirs, ["partial_finetune"])
    s = res.summary()
    assert [s.loc[("partial_finetune", v, "ft_top1"), "mean"] for v in ("0", "1", "2", "4")] == [70.0, 85.0, 86.0, 91.0]
    t = next(t for t in build_tables(res) if t.id == "figure9")
    notes = "\n".join(t.notes)
    assert "partial_finetune/1 seed 0: 8 epochs is the best of: 4 epochs 80.00, 8 epochs 85.00, 15 epochs 82.00" \
        in notes
    assert "4 epochs 86.00, 8 epochs 84.00, 15 epochs pending" in notes
    row0 = t.frame[(t.frame.ours_variant == "0") & (t.frame.series == "ours")].iloc[0]
    assert row0["mean"] == 70.0 and row0.paper == 73.5


@pytest.mark.parametrize("dvae_path", ["", "/models/dall_e/encoder.pkl"])
def test_dvae_row_says_which_tokenizer_and_shows_no_delta_for_the_in_suite_one(tmp_path, dirs, dvae_path):
    from core.ablation import select
    from core.report.collect import collect
    from core.report.render import markdown
    from core.report.tables import build_tables
    from core.sweep import make_plan

    overrides = dirs + ([f"model.dvae_path={dvae_path}"] if dvae_path else [])
    plan = make_plan(select(["target"]), "tiny", 1, overrides)
    write_records(plan, str(tmp_path / "results"), lambda u: 60.0)
    res = collect("tiny", 1, overrides, ["target"])
    t = next(t for t in build_tables(res) if t.id == "table1d")
    row = next(r for r in t.body if r[0].startswith("dvae_token"))
    lin = t.header.index("lin Δ")
    text = markdown(t)
    legend = set(res.losses("target"))
    if dvae_path:  # DALL-E's tokenizer: the paper's experiment, a difference like any other
        assert row[0] == "dvae_token" and row[lin] == f"{60.0 - 71.6:+.2f}" and "dvae_token" in legend
        assert "not DALL-E" not in text
    else:
        assert row[0] == "dvae_token [in-suite tokenizer, not DALL-E]"
        assert row[lin] == "n/a: different tokenizer" and row[lin - 1] == "71.6"
        assert "dvae_token (in-suite tokenizer, not DALL-E)" in legend
        assert "dvae_token [in-suite tokenizer, not DALL-E]" in text and "n/a: different tokenizer" in text
        pixel = next(r for r in t.body if r[0].startswith("pixel"))
        assert "not DALL-E" not in pixel[0] and pixel[lin].startswith(("+", "-"))


def test_torchrun_two_processes_accumulating_match_one_process_at_the_same_effective_batch(fast_cfg, tmp_path):
    """`torchrun --nproc_per_node 2 ... eval scratch eval.scratch.accum_iter=2`: 4 images per process
    per micro-batch, DDP reducing once per step, the weights of one process with batch 16."""
    import subprocess
    import sys

    from core import results
    from core.eval import scratch
    from tests.conftest import FAST
    from tests.test_distributed import LAUNCH_VARS, assert_weights_close, one_thread
    from tests.test_eval import ROOT, SCRATCH3, eval_checkpoint

    args = [*SCRATCH3, "eval.scratch.drop_path=0.0", "pretrain.precision=fp32"]
    where = [f"run.results_dir={tmp_path}/r2", f"run.work_dir={tmp_path}/w2"]
    two = fast_cfg(*args, "eval.scratch.accum_iter=2", *where)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          os.path.join(ROOT, "run_all.py"), "eval", "scratch", "--quiet", *FAST, *args,
                          "eval.scratch.accum_iter=2", *where],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    one_cfg = fast_cfg(*args)
    with one_thread():
        one = scratch(one_cfg, progress=False)
    eid = eval_run_id(two, "scratch")
    rec = results.read_record(two.run.results_dir, eid)
    assert rec["status"] == "done" and rec["world_size"] == 2 and eid != one["run_id"]
    assert_weights_close(eval_checkpoint(two, eid)["model"], eval_checkpoint(one_cfg, one["run_id"])["model"],
                         atol=1e-3)
    for x, y in zip(rec["history"]["loss"], one["history"]["loss"]):
        assert math.isclose(x, y, rel_tol=1e-4)
