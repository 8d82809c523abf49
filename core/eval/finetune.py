"""End-to-end fine-tuning (paper Table 9), partial fine-tuning (Figure 9) and the supervised
from-scratch baseline (Appendix A.2): one code path, three recipes.

AdamW with layer-wise lr decay (timm's parameter groups), RandAugment and random erasing (timm's
transform), mixup / cutmix with label smoothing (timm's Mixup), drop path, global average pooling
followed by a norm (or the cls token), and for the baseline an EMA of the weights (timm's ModelEmaV3).
"""
from __future__ import annotations

import torch
from timm.data import Mixup, create_transform
from timm.layers import trunc_normal_
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_layer_decay
from timm.utils import ModelEmaV3
from torch import nn

from core.data import eval_transform
from core.device import grad_scaler
from core.errors import CheckpointError, DataError
from core.eval.context import Session
from core.eval.data import SeededTimm, make_loader
from core.eval.features import validate
from core.eval.supervised import Accumulate, cosine_schedule, fit
from core.eval.weights import encoder_state, is_finetuned_avg
from core.model import LayerNorm, ViTEncoder, _init_weights


class ViTClassifier(ViTEncoder):
    """The encoder with a classification head; its parameter names are the pretraining ones."""

    def __init__(self, arch: str, img_size: int, num_classes: int, pool: str = "avg", drop_path: float = 0.0):
        super().__init__(arch, img_size, drop_path)
        self.pool = pool
        if pool == "avg":  # as the paper's code: pool the blocks' output, then a new norm replaces the final one
            self.norm = nn.Identity()
            self.fc_norm = LayerNorm(self.embed_dim)
        self.head = nn.Linear(self.embed_dim, num_classes)
        self.frozen_blocks = 0  # partial fine-tuning: the first blocks are fixed feature extractors

    def forward(self, imgs):
        x = super().forward(imgs)
        x = self.fc_norm(x[:, 1:].mean(1)) if self.pool == "avg" else x[:, 0]
        return self.head(x)

    def train(self, mode: bool = True):
        super().train(mode)
        for blk in self.blocks[:self.frozen_blocks]:  # frozen blocks: no drop path
            blk.eval()
        return self

    # timm's layer-decay groups: layer 0 = embeddings, i + 1 = block i, and everything unmatched
    # (final norm, fc_norm, head) the top layer with lr scale 1, as in the paper's code.
    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^(?:cls_token|pos_embed|patch_embed)", "blocks": r"^blocks\.(\d+)"}

    def no_weight_decay(self) -> set:
        return {"cls_token", "pos_embed"}


def init_scratch(model: ViTClassifier) -> None:
    """Random initialisation as for MAE pretraining (xavier linears, unit norms, cls token N(0, 0.02))."""
    w = model.patch_embed.proj.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    nn.init.normal_(model.cls_token, std=0.02)
    model.apply(_init_weights)


def freeze_for_partial(model: ViTClassifier, blocks: int) -> None:
    """Figure 9: only the last `blocks` blocks, the final norm (fc_norm with avg pooling) and the head train."""
    model.requires_grad_(False)
    model.frozen_blocks = model.depth - blocks
    for module in list(model.blocks[model.frozen_blocks:]) + [model.norm, getattr(model, "fc_norm", None), model.head]:
        if module is not None:
            module.requires_grad_(True)
    model.pos_embed.requires_grad_(False)  # part of the frozen stem


def build(cfg, kind: str, state: dict | None, num_classes: int, device):
    """(model, optimizer) for kind finetune | partial | scratch."""
    r = cfg.eval.scratch if kind == "scratch" else cfg.eval.finetune
    torch.manual_seed(cfg.eval.seed)
    model = ViTClassifier(cfg.model.arch, cfg.model.img_size, num_classes, r.pool, r.drop_path)
    if state is None:
        init_scratch(model)
    else:
        if r.pool == "avg":  # the final norm is replaced by fc_norm
            state = {k: v for k, v in state.items() if not k.startswith("norm.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(k.startswith(("head.", "fc_norm.")) for k in missing), (missing, unexpected)
        trunc_normal_(model.head.weight, std=2e-5)  # a near-zero head, as in the paper's code
        nn.init.zeros_(model.head.bias)
    if kind == "partial":
        freeze_for_partial(model, r.blocks)
    else:  # as the official fine-tuning code: the position embeddings train (layer 0's lr, no decay)
        model.pos_embed.requires_grad_(True)
    model.to(device)
    groups = param_groups_layer_decay(model, r.weight_decay, no_weight_decay_list=model.no_weight_decay(),
                                      layer_decay=getattr(r, "layer_decay", 1.0))
    lr = r.blr * r.batch_size / 256  # batch_size is the effective batch (processes x accum_iter)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(r.betas), fused=device.type in ("cpu", "cuda"))
    return model, optimizer


def train_transform(r, cfg):
    d = cfg.data
    randaug = r.randaug or None
    return SeededTimm(create_transform(cfg.model.img_size, is_training=True, scale=tuple(r.crop_scale),
                                       color_jitter=None, auto_augment=randaug, interpolation="bicubic",
                                       re_prob=r.reprob, re_mode="pixel", re_count=1, mean=tuple(d.mean),
                                       std=tuple(d.std)))


def run(cfg, kind, state, data, device, precision, progress, ses: Session | None = None) -> dict:
    r = cfg.eval.scratch if kind == "scratch" else cfg.eval.finetune
    model, optimizer = build(cfg, kind, state, data.num_classes, device)
    loader = Accumulate(make_loader(cfg, data.train, train_transform(r, cfg), r.batch_size // r.accum_iter, True,
                                    device, key=f"eval.{'scratch' if kind == 'scratch' else 'finetune'}.batch_size", ses=ses),
                        r.accum_iter)
    val_loader = make_loader(cfg, data.val, eval_transform(cfg.model.img_size, cfg.data.mean, cfg.data.std),
                             min(r.batch_size, 256), False, device, shard=True, ses=ses)  # summed over ranks
    mixup = None
    if r.mixup > 0 or r.cutmix > 0:
        mixup = Mixup(mixup_alpha=r.mixup, cutmix_alpha=r.cutmix, label_smoothing=r.smoothing,
                      num_classes=data.num_classes)
        criterion = SoftTargetCrossEntropy()
    elif r.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(r.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()
    ema = ModelEmaV3(model, decay=r.ema) if getattr(r, "ema", None) else None
    validators = {"": lambda: validate(model, val_loader, precision, device)}
    if ema is not None:
        validators["_ema"] = lambda: validate(ema.module, val_loader, precision, device)
    history = fit(model, optimizer, cosine_schedule(optimizer, r.epochs, r.warmup_epochs, loader.steps_per_epoch, r.min_lr),
                  loader, epochs=r.epochs, criterion=criterion, precision=precision, device=device,
                  scaler=grad_scaler(precision, device), seed=cfg.eval.seed, validators=validators, mixup=mixup,
                  ema=ema, progress=progress, desc=kind, ses=ses)
    metrics = {"top1": history["val_top1"][-1], "top5": history["val_top5"][-1], "train_loss": history["loss"][-1]}
    if ema is not None:  # the paper reports the EMA weights of its baseline; the raw ones are kept too
        metrics = {"top1": history["val_top1_ema"][-1], "top5": history["val_top5_ema"][-1],
                   "raw_top1": metrics["top1"], "raw_top5": metrics["top5"], "train_loss": metrics["train_loss"]}
    if kind == "partial":
        metrics["blocks"] = r.blocks
    return {"metrics": metrics, "history": history, "epochs": r.epochs}


# --------------------------------------------------------------------------- --eval-only

def classifier_state(state: dict, arch: str, img_size: int, source: str) -> dict:
    """The weights of a fine-tuned classifier, checked strictly: the official layout (average pooling,
    fc_norm and head, no final norm) or the cls-token one (final norm and head)."""
    head = state.get("head.weight")
    if not isinstance(head, torch.Tensor) or head.ndim != 2:
        raise CheckpointError(f"{source} holds no classifier (no head.weight): --eval-only needs a fine-tuned "
                              f"checkpoint such as mae_finetuned_vit_large.pth")
    avg = is_finetuned_avg(state)
    top = ("head.", "fc_norm.") if avg else ("head.",)
    return {**encoder_state(state, arch, img_size, source, final_norm=not avg),
            **{k: v for k, v in state.items() if k.startswith(top)}}


def classify(cfg, state, data, device, precision, progress, ses: Session | None = None) -> dict:
    """--eval-only: the top-1/top-5 of a fine-tuned classifier on the validation split, nothing trained."""
    classes = state["head.weight"].shape[0]
    if classes != data.num_classes:
        raise DataError(f"the checkpoint classifies {classes} classes but the dataset has {data.num_classes}")
    model = ViTClassifier(cfg.model.arch, cfg.model.img_size, classes, "avg" if "fc_norm.weight" in state else "cls")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the classifier does not load: {str(e).splitlines()[0][:200]}") from None
    val_loader = make_loader(cfg, data.val, eval_transform(cfg.model.img_size, cfg.data.mean, cfg.data.std),
                             min(cfg.eval.finetune.batch_size, 256), False, device, shard=True, ses=ses)
    top1, top5 = validate(model.to(device), val_loader, precision, device)
    return {"metrics": {"top1": top1, "top5": top5}, "epochs": 0}
