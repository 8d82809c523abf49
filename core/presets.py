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


# The tiers between the laptop and the paper (docs/tiers.md gives the source of every setting that
# differs from the paper's): each runs the paper's plan, every ablation and every protocol, and its
# whole grid costs at most a tenth of the tier above (`submit all --preset T --dry-run`). Schedules
# shrink by SCALED, after the ablation's variant set them, so the epoch ladders stay distinct runs.
TIERS = ("paper", "in1k_vitb", "in100_vits", "cifar_vitt")
EPOCH_KEYS = ("pretrain.epochs", "pretrain.warmup_epochs", "model.dvae_epochs", "eval.linprobe.epochs",
              "eval.linprobe.warmup_epochs", "eval.finetune.epochs", "eval.finetune.warmup_epochs",
              "eval.scratch.epochs", "eval.scratch.warmup_epochs")
PRETRAIN_EPOCH_KEYS = ("pretrain.epochs", "pretrain.warmup_epochs", "model.dvae_epochs")
# One node of 8 GPUs at the official per-GPU batches (pretraining 64, fine-tuning 32, linear probe
# 512): the effective batches stay the paper's, by gradient accumulation.
ONE_NODE = {"cluster.nodes": 1, "pretrain.accum_iter": 8, "eval.finetune.accum_iter": 4,
            "eval.linprobe.accum_iter": 4, "eval.scratch.accum_iter": 16}
PRESETS["in1k_vitb"] = {  # ViT-B/16 on ImageNet-1k at 224 px, every schedule / 8: 100 pretraining epochs
    **PRESETS["paper"], **ONE_NODE, "run.preset": "in1k_vitb", "model.arch": "vit_base_patch16",
}
PRESETS["in100_vits"] = {  # ViT-S/16 on ImageNet-100 (`run_all.py data imagenet100`) at 224 px
    **PRESETS["paper"], "run.preset": "in100_vits", "model.arch": "vit_small_patch16",
    # a tenth of ImageNet's images: batches / 4 keep ~124 optimizer steps an epoch (lr = blr x batch / 256)
    "pretrain.batch_size": 1024, "eval.linprobe.batch_size": 4096, "eval.scratch.batch_size": 1024,
    "cluster.nodes": 1, "pretrain.accum_iter": 2, "eval.finetune.accum_iter": 4, "eval.linprobe.accum_iter": 1,
    "eval.scratch.accum_iter": 4,
}
PRESETS["cifar_vitt"] = {  # ViT-Ti with 4 px patches on CIFAR-10 (`run_all.py data cifar10`) at 32 px
    **PRESETS["paper"], "run.preset": "cifar_vitt", "model.arch": "vit_ti_patch4", "model.img_size": 32,
    "model.pca_samples": 50_000,
    # 50,000 images: batches / 8 (pretraining, scratch), / 4 (fine-tuning, linear probe)
    "pretrain.batch_size": 512, "eval.finetune.batch_size": 256, "eval.linprobe.batch_size": 4096,
    "eval.scratch.batch_size": 512,
    "cluster.nodes": 1, "cluster.gpus_per_node": 1, "cluster.cpus_per_task": 16, "cluster.time": "24:00:00",
}
SCALED["in1k_vitb"] = {k: 8 for k in EPOCH_KEYS}
# the decoder's width / 4 and / 8 keep its share of a token's FLOPs near the paper's (512 wide next to
# ViT-L's 1024: (1/2)^2 x 8/24 blocks = 8 %; ViT-S 384: (128/384)^2 x 8/12 = 7 %; ViT-Ti 192: 64 wide, 7 %)
SCALED["in100_vits"] = {**{k: 4 for k in PRETRAIN_EPOCH_KEYS}, "model.decoder_embed_dim": 4}
SCALED["cifar_vitt"] = {**{k: 4 for k in PRETRAIN_EPOCH_KEYS}, "model.decoder_embed_dim": 8}
PLAN_OF.update({tier: "paper" for tier in TIERS[1:]})
# What `submit --dry-run` names the tier by: (encoder, data).
TIER_NAMES = {"paper": ("ViT-L/16", "ImageNet-1k"), "in1k_vitb": ("ViT-B/16", "ImageNet-1k"),
              "in100_vits": ("ViT-S/16", "ImageNet-100"), "cifar_vitt": ("ViT-Ti/4", "CIFAR-10")}
# Images per split of each tier's ImageFolder, for the GPU-hour estimate without listing the files.
IMAGES = {
    "paper": {"train": 1_281_167, "val": 50_000},  # ImageNet-1k (ILSVRC 2012)
    "in1k_vitb": {"train": 1_281_167, "val": 50_000},
    "in100_vits": {"train": 126_689, "val": 5_000},  # the 100 classes of core/imagenet100_classes.txt
    "cifar_vitt": {"train": 50_000, "val": 10_000},
}


# The rehearsal of each tier (`--rehearse --preset T`): the tier's preset with the paper rehearsal's
# miniature settings, on an encoder of the tier's depth and patch size (Figure 9's block counts
# build, or not, as in the tier) at 4 x 4 patches; the same SCALED schedules as the paper's rehearsal.
MINIATURE = {k: v for k, v in PRESETS[REHEARSAL].items() if k not in PRESETS["paper"] or PRESETS["paper"][k] != v}
REHEARSAL_OF = {"paper": REHEARSAL}
for _tier, _arch, _size in (("in1k_vitb", "vit_rehearsal12_patch16", 64), ("in100_vits", "vit_rehearsal12_patch16", 64),
                            ("cifar_vitt", "vit_rehearsal12_patch4", 16)):
    REHEARSAL_OF[_tier] = f"{REHEARSAL}_{_tier}"
    PRESETS[REHEARSAL_OF[_tier]] = {
        **PRESETS[_tier], **MINIATURE, "run.preset": REHEARSAL_OF[_tier], "model.arch": _arch, "model.img_size": _size,
        # the tier's accumulation over 8 GPUs would not divide a batch of 16: 2 micro-batches, as in pretraining
        **{f"eval.{p}.accum_iter": 2 for p in ("finetune", "linprobe", "scratch")}}
    SCALED[REHEARSAL_OF[_tier]] = SCALED[REHEARSAL]
    PLAN_OF[REHEARSAL_OF[_tier]] = "paper"
TIER_OF = {r: t for t, r in REHEARSAL_OF.items()}  # rehearsal preset -> the tier it rehearses


def is_rehearsal(preset: str) -> bool:
    return preset in TIER_OF


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
