"""The named presets and fine-tune recipes: pure data, each a short dict of `key=value` overrides on
top of the dataclass defaults in core/config.py (which ARE the paper recipe), so a preset reads as
exactly what it changes. core/config.py builds and validates configs from them.
"""
from __future__ import annotations

TINY_MEAN, TINY_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

PRESETS: dict[str, dict] = {
    # The dataclass defaults: ViT-L/16 on ImageNet, 800 epochs, batch 4096, run on a cluster.
    "paper": {"run.preset": "paper", "data.num_workers": 10},
    # CPU in minutes on scikit-learn's digits; every deviation from the paper is listed here.
    "tiny": {
        "run.preset": "tiny",
        "run.device": "cpu",
        # 16 px, 4 x 4 patches of 4 px (each 2 x 2 of the 8 x 8 digit): 16 tokens, 4 visible at 75 %.
        # At 32 px (64 tokens) one seed of the grid took 40.7 minutes on a 2-core machine where three seeds of
        # this one take 24.9 (docs/performance.md, "The laptop grid")
        "model.arch": "vit_tiny_patch4",
        "model.img_size": 16,
        "model.decoder_depth": 2,
        "model.decoder_embed_dim": 64,
        "model.decoder_num_heads": 4,
        "model.dvae_vocab": 128,
        "model.dvae_width": 32,
        "model.dvae_epochs": 8,
        "data.dataset": "digits",
        "data.num_workers": 0,
        "data.mean": TINY_MEAN,
        "data.std": TINY_STD,
        # batch 32 (44 steps an epoch): at batch 128 the same 20 epochs ended at the loss of predicting
        # the mean image and kNN 80%; batch 32 for 15 epochs reaches loss 0.22 and kNN 91% in less time
        "pretrain.epochs": 15,
        "pretrain.warmup_epochs": 2,
        "pretrain.batch_size": 32,
        # fp32 on every CPU: at this size bf16 autocast's casts cost more than its matmuls save, and a
        # laptop with native bf16 and one without compute the same numbers
        "pretrain.precision": "fp32",
        "pretrain.blr": 1.5e-3,
        "pretrain.checkpoint_every": 5,
        "pretrain.log_every": 10,
        # linear probe: 5 steps an epoch instead of 78, so LARS (whose steps are lr x 0.001 x |w|) needs
        # a 100x larger lr; no augmentation, so the frozen features are computed once (docs/evaluation.md)
        "eval.linprobe.batch_size": 256,
        "eval.linprobe.blr": 10.0,
        "eval.linprobe.augment": False,
        # fine-tune and scratch: batch 32 for 44 steps an epoch (lr = 1e-3 as blr x 32 / 256), milder
        # crops (digits fill the image) and no mixup / cutmix, which kept 15 epochs from fitting
        "eval.finetune.epochs": 15,
        "eval.finetune.warmup_epochs": 2,
        "eval.finetune.batch_size": 32,
        "eval.finetune.blr": 8e-3,
        "eval.finetune.randaug": "rand-m5-mstd0.5-inc1",
        "eval.finetune.crop_scale": (0.7, 1.0),
        "eval.finetune.mixup": 0.0,
        "eval.finetune.cutmix": 0.0,
        "eval.knn.k": 20,
        "eval.scratch.epochs": 15,
        "eval.scratch.warmup_epochs": 2,
        "eval.scratch.batch_size": 32,
        "eval.scratch.blr": 8e-3,
        "eval.scratch.weight_decay": 0.05,
        "eval.scratch.ema": 0.99,
        "eval.scratch.drop_path": 0.1,
        "eval.scratch.randaug": "rand-m5-mstd0.5-inc1",
        "eval.scratch.crop_scale": (0.7, 1.0),
        "eval.scratch.mixup": 0.0,
        "eval.scratch.cutmix": 0.0,
        # one CPU process per job (a cluster's CPU partition or the local executor)
        "cluster.nodes": 1,
        "cluster.gpus_per_node": 0,
        "cluster.cpus_per_task": 2,
        "cluster.time": "02:00:00",
        "cluster.signal_delay_s": 30,
    },
}
# tiny's model and recipe on digit scenes (core/scenes.py, docs/testbed.md): glyphs at random places and
# sizes on a 32 px canvas, in 8 px patches (16 tokens, as tiny); the val split 6x larger
PRESETS["scenes"] = {
    **PRESETS["tiny"],
    "run.preset": "scenes",
    "model.arch": "vit_tiny_patch8",
    "model.img_size": 32,
    "data.dataset": "scenes",
}


# The rehearsal (README "Before you submit: rehearse"): the paper preset's plan, unit for unit and
# through the same code paths, at miniature size. These two dicts are all it changes.
REHEARSAL = "rehearsal"
PRESETS[REHEARSAL] = {
    **PRESETS["paper"],
    "run.preset": REHEARSAL,
    "run.results_dir": "work/rehearsal/results",  # never mixed with real records
    "run.work_dir": "work/rehearsal/work",
    "run.device": "cpu",  # a GPU partition: --gpus-per-node 1 run.device=auto
    "data.path": "work/rehearsal/imagefolder",  # real JPEG files written by core/rehearsal.py
    "data.num_workers": 1,  # still a loader worker process, not ten per rank
    # ViT-L's depth and patch size at 32 wide on 64 px: 4 x 4 patches, where grid masking at 0.75 fits
    "model.arch": "vit_rehearsal_patch16",
    "model.img_size": 64,
    "model.pca_samples": 256,  # every patch of the 16 training images
    "model.dvae_vocab": 64,
    "model.dvae_width": 16,
    # 16 images a batch: one optimizer step an epoch, two accumulated micro-batches per process at 2
    # processes; every evaluation batch splits over 1, 2, 4 or 8 processes
    "pretrain.batch_size": 16,
    "pretrain.accum_iter": 2,
    "pretrain.checkpoint_every": 4,  # 2 checkpoints at 8 epochs, 4 (two of them deleted) at 16
    "pretrain.log_every": 4,
    "eval.linprobe.batch_size": 16,
    "eval.finetune.batch_size": 16,
    "eval.knn.batch_size": 16,
    "eval.scratch.batch_size": 16,
    # one CPU process per job; a unit takes seconds
    "cluster.nodes": 1,
    "cluster.gpus_per_node": 0,
    "cluster.cpus_per_task": 1,
    "cluster.time": "00:30:00",
}
# Settings divided by these numbers (rounded up) once a preset, the overrides and an ablation's
# variant have set them: the epochs ablation's 100 ... 1600 become 1 ... 16 (800: 8, as the
# baseline), the decoder widths 128 ... 1024 become 16 ... 128, Figure 9's fine-tuning ladder of
# 50 / 100 / 200 epochs becomes 1 / 2 / 4, so no two paper runs become one.
SCALED: dict[str, dict] = {REHEARSAL: {
    "pretrain.epochs": 100, "pretrain.warmup_epochs": 100, "model.dvae_epochs": 100, "model.decoder_embed_dim": 8,
    "eval.linprobe.epochs": 100, "eval.linprobe.warmup_epochs": 100, "eval.finetune.epochs": 50,
    "eval.finetune.warmup_epochs": 100, "eval.scratch.epochs": 100, "eval.scratch.warmup_epochs": 100,
}}
# The preset whose ablation variants and evaluations a preset runs (itself unless listed).
PLAN_OF = {REHEARSAL: "paper"}


# eval.recipe -> encoder -> fine-tune settings (docs/evaluation.md). The dataclass defaults are the
# paper's ViT-L row; encoders not listed (the tiny and small ones) keep them.
FINETUNE_RECIPES: dict[str, dict[str, dict]] = {
    "paper": {  # paper Table 9: 100 epochs for ViT-B, 50 for ViT-L/H; drop path 0.1 (B/L), 0.2 (H)
        "vit_base_patch16": {"epochs": 100, "drop_path": 0.1},
        "vit_large_patch16": {"epochs": 50, "drop_path": 0.1},
        "vit_huge_patch14": {"epochs": 50, "drop_path": 0.2},
    },
    "official": {  # the official repository's FINETUNE.md
        "vit_base_patch16": {"epochs": 100, "blr": 5e-4, "layer_decay": 0.65, "drop_path": 0.1},
        "vit_large_patch16": {"epochs": 50, "blr": 1e-3, "layer_decay": 0.75, "drop_path": 0.2},
        "vit_huge_patch14": {"epochs": 50, "blr": 1e-3, "layer_decay": 0.75, "drop_path": 0.3},
    },
}
