"""Every ablation variant and every evaluation protocol under 2-process DDP, and the property DDP
relies on: a parameter that a variant does not use does not exist (DistributedDataParallel waits
for a gradient of every parameter that requires one; the suite does not pay for
find_unused_parameters=True, which walks the autograd graph every step)."""
import dataclasses

import pytest
import torch

from core.ablation import load_all
from core.config import build_config
from core.eval.finetune import ViTClassifier, freeze_for_partial
from core.eval.features import frozen_features
from core.eval.linprobe import probe_head
from core.masking import make_mask
from core.model import MAE, ViTEncoder
from core.sweep import make_plan
from core.targets import build_target
from tests.ddp_units import run_plan_on_two_processes, variant_plan


def params_without_grad(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def pretraining_configs():
    """The model settings of every pretraining run of every registered ablation at the tiny and the
    paper preset, shrunk: the structure, not the width or depth, decides what is used."""
    ablations, seen = list(load_all().values()), {}
    for preset in ("tiny", "paper"):
        for unit in make_plan(ablations, preset).pretrains:
            m = dataclasses.replace(unit.cfg.model, arch="vit_tiny_patch4", img_size=16, decoder_embed_dim=32,
                                    decoder_num_heads=4, decoder_depth=min(unit.cfg.model.decoder_depth, 2))
            seen.setdefault(repr(m), (f"{preset}: {unit.users[0][0]}/{unit.users[0][1]}", m))
    return list(seen.values())


def test_every_parameter_of_every_pretraining_variant_gets_a_gradient():
    """One forward and backward of each variant's MAE: no parameter that requires a gradient is
    left without one. The decoder's mask token of the encoder-[M] variant (Table 1c, Table 2) was:
    under DDP that run stopped on its second step."""
    configs = pretraining_configs()
    assert any(m.mask_token_in_encoder for _, m in configs)  # the variant that had one
    for name, m in configs:
        target = build_target(m, build_config("tiny").data)
        torch.manual_seed(0)
        model = MAE(m, target.dim)
        grid = m.img_size // model.patch_size
        mask = make_mask(m.mask_strategy, 2, grid, m.mask_ratio, torch.Generator().manual_seed(0))
        pred = model(torch.randn(2, 3, m.img_size, m.img_size), mask)
        # the loss over the masked patches (or all), as the targets score them; any target's loss
        # reaches the same parameters, so a stand-in of the prediction's shape will do
        rows = torch.ones_like(mask) if m.loss_on_all_patches else mask
        pred[rows].float().square().mean().backward()
        assert params_without_grad(model) == [], name


@pytest.mark.parametrize("pool", ["avg", "cls"])
@pytest.mark.parametrize("kind, blocks", [("finetune", None), ("partial", 0), ("partial", 2), ("scratch", None)])
def test_every_trained_parameter_of_the_evaluation_models_gets_a_gradient(kind, blocks, pool):
    """The classifiers of fine-tuning, partial fine-tuning (frozen first blocks) and the scratch
    baseline, and the linear probe's head on its frozen encoder: what trains gets a gradient."""
    model = ViTClassifier("vit_tiny_patch4", 16, 10, pool)
    if kind == "partial":
        freeze_for_partial(model, blocks)
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert params_without_grad(model) == []
    assert any(p.requires_grad for p in model.parameters())


def test_every_trained_parameter_of_the_linear_probe_gets_a_gradient():
    encoder = ViTEncoder("vit_tiny_patch4", 16).requires_grad_(False).eval()
    head = probe_head(encoder.embed_dim, 10).train()  # the probe trains its head on frozen features
    feats = frozen_features(encoder, torch.randn(4, 3, 16, 16), "cls", "fp32", torch.device("cpu"))
    head(feats).sum().backward()
    assert params_without_grad(head) == [] and all(p.grad is not None for p in head.parameters())


# Every unit tiny: 8 images, a global batch of 8 = 2 processes x accum_iter 2 x 2 images, so one
# optimizer step an epoch and two in the 2 epochs of the baseline and its variants (the encoder-[M]
# run stopped on its second); evaluations: batches of 4 (2 a process), two steps.
VARIANTS = ["data.dataset=synthetic", "data.synthetic_size=8", "model.img_size=16",
            "pretrain.epochs=2", "pretrain.warmup_epochs=0", "pretrain.batch_size=8", "pretrain.accum_iter=2",
            "model.pca_samples=256", "model.dvae_epochs=1", "model.dvae_vocab=16", "model.dvae_width=8",
            "eval.linprobe.epochs=1", "eval.linprobe.warmup_epochs=0", "eval.linprobe.batch_size=4",
            "eval.finetune.epochs=1", "eval.finetune.warmup_epochs=0", "eval.finetune.batch_size=4",
            "eval.scratch.epochs=1", "eval.scratch.warmup_epochs=0", "eval.scratch.batch_size=4",
            "eval.knn.batch_size=8"]


def test_every_ablation_variant_and_every_protocol_runs_under_two_process_ddp(tmp_path):
    """The tiny sweep of every registered ablation (pretraining with accum_iter=2, linear probe,
    kNN, partial fine-tuning, scratch) plus full fine-tuning and the paper's linear probe and
    fine-tuning recipes on the mask token runs, in one 2-process gloo group: every unit done, with
    a record of world size 2. Before the decoder's mask token was left out of the encoder-[M]
    variant, its pretraining stopped on its second step ('Expected to have finished reduction')."""
    overrides = [*VARIANTS, f"run.results_dir={tmp_path / 'results'}", f"run.work_dir={tmp_path / 'work'}"]
    plan = variant_plan(overrides)
    kinds = {u.kind for u in plan.units.values()}
    assert kinds == {"pca", "tokenizer", "pretrain", "linprobe", "knn", "finetune", "partial", "scratch"}
    assert {c.ablation for c in plan.cells} == set(load_all())
    assert any(u.cfg.model.mask_token_in_encoder for u in plan.pretrains)
    # the PCA basis and the tokenizer are units of their own, first: rank 0 makes each, rank 1 waits
    assert [u.kind for u in plan.units.values()][:2] == ["pca", "tokenizer"]
    run_plan_on_two_processes("variants", plan, overrides, tmp_path)


def test_an_encoder_mask_token_checkpoint_from_before_still_loads():
    """A checkpoint of the encoder-[M] variant written while the model still built the decoder's
    (unused, never trained) mask token resumes: that key is dropped, everything else loads strictly."""
    m = build_config("tiny", ["model.mask_token_in_encoder=true"]).model
    old = MAE(m, 48).state_dict()
    old["mask_token"] = torch.zeros(1, 1, m.decoder_embed_dim)
    new = MAE(m, 48)
    new.load_state_dict(old)
    assert all(torch.equal(v, old[k]) for k, v in new.state_dict().items())
    old["decoder_pred.bias_typo"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="bias_typo"):
        new.load_state_dict(old)
