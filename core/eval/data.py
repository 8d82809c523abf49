"""The data of an evaluation: its two splits, seeded loaders sharded over the session's processes,
seeded timm augmentations and batches of precomputed features."""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_pil_image

from core.config import Config
from core.data import EpochLoader, SeededSampler, Transformed, build_dataset, host_rngs_restored
from core.distributed import DistInfo, split_batch
from core.errors import DataError
from core.eval.context import Session


@dataclass
class EvalData:
    train: Dataset  # raw: TensorImages or ImageFolderImages
    val: Dataset
    num_classes: int


def eval_data(cfg: Config) -> EvalData:
    size = cfg.model.img_size
    train, val = build_dataset(cfg.data, "train", size), build_dataset(cfg.data, "val", size)
    if list(train.classes) != list(val.classes):
        raise DataError(f"the train and val splits have different classes ({len(train.classes)} vs {len(val.classes)})")
    return EvalData(train, val, len(train.classes))


def make_loader(cfg: Config, base, transform, batch_size: int, train: bool, device, shard: bool | None = None,
                key: str = "the evaluation batch size", ses: Session | None = None) -> EpochLoader:
    """Seeded like pretraining: order from (eval.seed, epoch), augmentation from (eval.seed, epoch, index).
    Sharded over the ranks of session `ses` (default: training loaders), `batch_size` (setting `key`)
    then being the global batch; feature extraction reads whole splits on every rank."""
    dist = (ses or Session()).dist if (train if shard is None else shard) else DistInfo()
    per_rank = split_batch(batch_size, dist.world, key=key) if train else batch_size
    return EpochLoader(Transformed(base, transform), per_rank, cfg.eval.seed, shuffle=train, drop_last=train,
                       num_workers=cfg.data.num_workers, rank=dist.rank, world=dist.world,
                       pin_memory=device.type == "cuda")


def _seed_host(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)


@contextlib.contextmanager
def seeded(seed: int):
    """Seed python's and numpy's RNGs for a block, then restore them. timm's RandAugment, random
    crop, random erasing and Mixup draw from these, not from torch."""
    with host_rngs_restored():
        _seed_host(seed)
        yield


class SeededTimm:
    """Runs a timm transform on PIL images with python/numpy seeded from the torch RNG, which
    core.data.Transformed seeds per sample: the same augmentation for any worker count. Transformed
    also restores the global RNGs after each batch (not per image: numpy's get/set_state cost 160 us,
    a fifth of a 16 px image's augmentation)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        if isinstance(img, torch.Tensor):  # in-memory datasets hold uint8 tensors; RandAugment needs PIL
            img = to_pil_image(img)
        _seed_host(int(torch.randint(2 ** 31 - 1, ())))
        return self.transform(img)


class FeatureLoader:
    """Batches of precomputed features in the order core.data's seeded sampler gives, without the
    per-sample cost of the image loader; `epoch(e)` and `steps_per_epoch` as EpochLoader."""

    def __init__(self, feats: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, train: bool):
        self.feats, self.labels, self.batch_size, self.drop_last = feats, labels, batch_size, train
        self.sampler = SeededSampler(len(labels), seed, shuffle=train)
        if train and len(labels) < batch_size:
            raise DataError(f"the dataset has {len(labels)} images, fewer than one batch of {batch_size}")

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int, start_step: int = 0):
        self.sampler.set_epoch(epoch)
        order = torch.tensor([i for i, _ in self.sampler], device=self.feats.device)
        for step in range(start_step, self.steps_per_epoch):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.feats[idx], self.labels[idx], 0
