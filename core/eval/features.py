"""Frozen features and accuracy: pooled encoder outputs in chunks, whole-split feature extraction,
top-k hits and a classifier's top-1/top-5 over a (sharded) split."""
from __future__ import annotations

import torch
from tqdm import tqdm

from core.data import EpochLoader
from core.device import autocast
from core.distributed import all_sum
from core.progress import show_bar

# Images per forward pass of a frozen encoder and per validation batch: bounds memory (a linear
# probe batch is 16384 images at the paper preset), changes no result.
CHUNK = 256


def pool_tokens(x: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, 1 + N, D) encoder output -> (B, D): the cls token, or the mean of the patch tokens."""
    return x[:, 0] if pool == "cls" else x[:, 1:].mean(1)


@torch.no_grad()
def frozen_features(encoder, imgs: torch.Tensor, pool: str, precision: str, device) -> torch.Tensor:
    out = []
    for chunk in imgs.split(CHUNK):
        with autocast(precision, device):
            out.append(pool_tokens(encoder(chunk), pool).float())
    return torch.cat(out)


def extract(encoder, loader: EpochLoader, pool: str, precision: str, device, desc: str, progress: bool):
    """Features and labels of a whole split, in dataset order (the loader must not shuffle)."""
    feats, labels = [], []
    for imgs, y, _ in tqdm(loader.epoch(0), total=loader.steps_per_epoch, desc=desc, disable=not show_bar(progress),
                           unit="batch", dynamic_ncols=True, mininterval=1.0):
        if imgs.shape[0]:
            feats.append(frozen_features(encoder, imgs.to(device, non_blocking=True), pool, precision, device))
            labels.append(y.to(device))
    return torch.cat(feats), torch.cat(labels)


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of rows whose label is among the k highest scores, for each k (k capped at the classes)."""
    maxk = min(max(ks), scores.shape[1])
    hit = scores.topk(maxk, dim=1).indices == labels[:, None]
    return [hit[:, :min(k, maxk)].any(1).sum() for k in ks]


@torch.no_grad()
def validate(model, loader: EpochLoader, precision: str, device) -> tuple[float, float]:
    """Top-1 and top-5 accuracy in percent over the whole split."""
    model.eval()
    hits = torch.zeros(2, dtype=torch.long, device=device)
    n = 0
    for imgs, labels, _ in loader.epoch(0):
        if not imgs.shape[0]:
            continue
        imgs, labels = imgs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(precision, device):
            logits = model(imgs)
        hits += torch.stack(topk_hits(logits.float(), labels))
        n += labels.shape[0]
    if isinstance(loader, EpochLoader) and loader.world > 1:  # each rank saw its shard
        hits = all_sum(torch.cat([hits, torch.tensor([n], device=device)]))
        hits, n = hits[:2], int(hits[2])
    top1, top5 = (100.0 * hits / max(n, 1)).tolist()
    return top1, top5
