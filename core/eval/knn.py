"""k-nearest-neighbour classification on frozen features (the DINO protocol): cosine similarity,
the k most similar training images vote for their class with weight exp(similarity / T)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from core.data import eval_transform
from core.eval.data import make_loader
from core.eval.features import extract, topk_hits
from core.eval.weights import frozen_encoder


@torch.no_grad()
def knn_votes(train_f, train_y, query_f, k: int, temperature: float, num_classes: int, batch: int = 256):
    """(Q, classes) vote totals for each query. Features are L2-normalised here."""
    train_f, query_f = F.normalize(train_f, dim=1), F.normalize(query_f, dim=1)
    k = min(k, train_f.shape[0])
    out = []
    for q in query_f.split(batch):
        sim, idx = (q @ train_f.T).topk(k, dim=1)
        votes = torch.zeros(q.shape[0], num_classes, device=q.device, dtype=sim.dtype)
        out.append(votes.scatter_add_(1, train_y[idx], (sim / temperature).exp()))
    return torch.cat(out)


def run(cfg, state, data, device, precision, progress, ses=None) -> dict:
    kc, m, d = cfg.eval.knn, cfg.model, cfg.data
    encoder = frozen_encoder(cfg, state, device)
    tf = eval_transform(m.img_size, d.mean, d.std)  # no augmentation on either side
    feats = {split: extract(encoder, make_loader(cfg, base, tf, kc.batch_size, False, device), kc.pool, precision,
                            device, f"knn {split} features", progress)
             for split, base in (("train", data.train), ("val", data.val))}
    (train_f, train_y), (val_f, val_y) = feats["train"], feats["val"]
    votes = knn_votes(train_f, train_y, val_f, kc.k, kc.temperature, data.num_classes, kc.batch_size)
    top1, top5 = (100.0 * torch.stack(topk_hits(votes, val_y)) / len(val_y)).tolist()
    return {"metrics": {"top1": top1, "top5": top5}, "history": {}, "epochs": 0}
