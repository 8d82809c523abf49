"""Linear probing (paper Table 10): BatchNorm (no affine) + linear head on frozen encoder features,
LARS with momentum 0.9, lr = blr x batch / 256, warm-up then cosine."""
from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from timm.optim import Lars
from torch import nn

from core.data import eval_transform, linprobe_train_transform
from core.device import grad_scaler
from core.eval.context import Session
from core.eval.data import FeatureLoader, make_loader
from core.eval.features import extract, frozen_features, validate
from core.eval.supervised import Accumulate, cosine_schedule, fit
from core.eval.weights import frozen_encoder


def probe_head(dim: int, num_classes: int) -> nn.Sequential:
    # The BatchNorm standardises features whose scale differs between models and layers, so one lr fits all.
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    return head


class FeatureSteps:
    """The augmented probe's training steps as frozen features. Each step reads accum_iter image
    batches through the encoder (eval mode, no autograd, CHUNK images a forward) and gives the head
    all their features at once: its BatchNorm normalises over this process's whole share of the
    effective batch, exactly as without accumulation (docs/evaluation.md). Only the images are split."""

    def __init__(self, loader, encoder, pool: str, precision: str, device, accum: int):
        self.steps = Accumulate(loader, accum)
        self.steps_per_epoch = self.steps.steps_per_epoch
        self.batch_size, self.world = self.steps.batch_size, self.steps.world
        self.encoder, self.pool, self.precision, self.device = encoder, pool, precision, device

    def epoch(self, epoch: int, start_step: int = 0):
        for parts in self.steps.epoch(epoch, start_step):
            feats = [frozen_features(self.encoder, imgs.to(self.device, non_blocking=True), self.pool,
                                     self.precision, self.device) for imgs, _, _ in parts]
            yield torch.cat(feats), torch.cat([labels for _, labels, _ in parts]), 0


def lars_param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """LARS adapts (and decays) matrices only; biases and other 1-D parameters take plain SGD with
    momentum, as in the LARS of the paper's recipe. timm's Lars adapts a group when its weight
    decay is non-zero or always_adapt is set, so the two groups say it explicitly."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay, "always_adapt": True},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0, "always_adapt": False}]


def build_optimizer(head: nn.Module, lp) -> Lars:
    lr = lp.blr * lp.batch_size / 256  # batch_size is the effective batch (processes x accum_iter)
    return Lars(lars_param_groups(head, lp.weight_decay), lr=lr, momentum=0.9, trust_coeff=0.001)


def run(cfg, state, data, device, precision, progress, ses: Session | None = None) -> dict:
    lp, m, d = cfg.eval.linprobe, cfg.model, cfg.data
    encoder = frozen_encoder(cfg, state, device)
    torch.manual_seed(cfg.eval.seed)
    head = probe_head(encoder.embed_dim, data.num_classes).to(device)
    val_tf = eval_transform(m.img_size, d.mean, d.std)
    # The validation features never change (frozen encoder, no augmentation): computed once.
    micro = lp.batch_size // lp.accum_iter  # images loaded at once
    val_f, val_y = extract(encoder, make_loader(cfg, data.val, val_tf, micro, False, device), lp.pool,
                           precision, device, "linprobe val features", progress)
    val_loader = FeatureLoader(val_f, val_y, lp.batch_size, cfg.eval.seed, train=False)
    if lp.augment:  # the paper's protocol: a fresh crop and flip of every image in every epoch
        loader = FeatureSteps(make_loader(cfg, data.train, linprobe_train_transform(m.img_size, d.mean, d.std),
                                          micro, True, device, key="eval.linprobe.batch_size", ses=ses),
                              encoder, lp.pool, precision, device, lp.accum_iter)
    else:  # no augmentation: every epoch would see the same features, so compute them once
        train_f, train_y = extract(encoder, make_loader(cfg, data.train, val_tf, micro, False, device),
                                   lp.pool, precision, device, "linprobe train features", progress)
        loader = FeatureLoader(train_f, train_y, lp.batch_size, cfg.eval.seed, train=True)
    optimizer = build_optimizer(head, lp)
    scheduler = cosine_schedule(optimizer, lp.epochs, lp.warmup_epochs, loader.steps_per_epoch)
    # precomputed features: the head trains in fp32; augmented ones: under autocast, as it always has
    history = fit(head, optimizer, scheduler, loader, epochs=lp.epochs, criterion=nn.CrossEntropyLoss(),
                  precision=precision if lp.augment else "fp32", device=device,
                  scaler=grad_scaler(precision, device), seed=cfg.eval.seed,
                  validators={"": lambda: validate(head, val_loader, "fp32", device)},
                  progress=progress, desc="linprobe", ses=ses)
    return {"metrics": {"top1": history["val_top1"][-1], "top5": history["val_top5"][-1],
                        "train_loss": history["loss"][-1]},
            "history": history, "epochs": lp.epochs}
