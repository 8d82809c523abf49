"""The FFCV epoch loader (same contract as core.data.EpochLoader) and the ffcv pipeline of each
augmentation set; pretraining builds it for data.backend=ffcv."""
from __future__ import annotations

import math

import torch

from core.data import COLOR_JITTER
from core.errors import DataError
from core.ffcv.beton import beton_path, check_beton, good_indices, read_sidecar
from core.ffcv.decoder import seeded_crop_decoder
from core.ffcv.optional import keep_torch_threads, require_ffcv


def image_pipeline(kind: str, size: int, seed: int, mean, std) -> list:
    """The ffcv operations of one augmentation set (core.data.pretrain_transform's names), ending in
    normalised float32 NCHW tensors. The decoder normalises: ffcv's NormalizeImage
    after ToTensor would make the Loader constructor spin forever on the CPU (an ffcv bug)."""
    require_ffcv()
    from ffcv.transforms import ToTensor  # optional dependency: imported once a loader is built

    Decoder = seeded_crop_decoder()
    salt, out = int(seed) % 2_147_483_647, (size, size)
    norm = dict(mean=mean, std=std)
    if kind == "none":  # Resize(size) + CenterCrop(size) = the central square of the shorter side
        decoder = Decoder(out, "center", 0.0, 1.0, False, salt, **norm)
    elif kind == "crop_fixed":
        decoder = Decoder(out, "fixed", size / round(size / 0.875), 0.0, True, salt, **norm)
    elif kind in ("crop_rand", "crop_color_jitter"):
        jitter = None
        if kind == "crop_color_jitter":
            j = COLOR_JITTER
            if set(j) - {"brightness", "contrast", "saturation"}:
                raise DataError(f"the ffcv backend has no colour jitter for {sorted(j)}")
            jitter = (float(j.get("brightness", 0)), float(j.get("contrast", 0)), float(j.get("saturation", 0)))
        decoder = Decoder(out, "random_resized", (0.2, 1.0), (3 / 4, 4 / 3), True, salt, jitter=jitter, **norm)
    else:
        raise DataError(f"unknown augmentation set {kind!r}")
    return [decoder, ToTensor()]


class _SkipStart:
    """Traversal order wrapper: the order of an epoch depends on (seed, epoch) only, and drops the
    trailing partial batch (drop_last) and the batches before `start` (resume), keeping batch
    boundaries where a full epoch has them."""

    def __init__(self, inner, batch_size: int, drop_last: bool):
        self.inner, self.batch_size, self.drop_last, self.start = inner, batch_size, drop_last, 0
        # ffcv's QuasiRandom shuffles its page table in place, so each epoch's order would depend
        # on the epochs drawn before it (a resumed run would see other batches): restore it first
        table = getattr(inner, "page_to_samples_array", None)
        self.pristine = None if table is None else table.copy()

    def sample_order(self, epoch: int):
        if self.pristine is not None:
            self.inner.page_to_samples_array[...] = self.pristine
        order = self.inner.sample_order(epoch)
        if self.drop_last:
            order = order[:len(order) // self.batch_size * self.batch_size]
        return order[self.start * self.batch_size:]


class FFCVEpochLoader:
    """Same contract as core.data.EpochLoader: `steps_per_epoch` and `epoch(e, start_step)`
    yielding (normalised float NCHW images, labels, 0 skipped)."""

    def __init__(self, path: str, kind: str, size: int, batch_size: int, *, mean, std, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, num_workers: int = 1, os_cache: bool = False,
                 world: int = 1, device: str | torch.device = "cpu", batches_ahead: int = 3):
        n = check_beton(path)
        ffcv = require_ffcv()
        # optional dependencies, installed with ffcv: imported once a loader is built
        import numba
        from ffcv.fields.basics import IntDecoder
        from ffcv.loader import OrderOption
        from ffcv.transforms import ToTensor

        distributed = world > 1
        if not shuffle:
            order = OrderOption.SEQUENTIAL
        else:  # QUASI_RANDOM reads pages in a shuffled order (fast without os_cache); no DDP support
            order = OrderOption.RANDOM if distributed else OrderOption.QUASI_RANDOM
        # A RANDOM epoch touches nearly every page from its first batch to its last, so ffcv's own
        # page cache would hold almost the whole file in each process: read through the OS cache
        os_cache = os_cache or (shuffle and distributed)
        indices = good_indices(path, n)
        per_rank = math.ceil((n if indices is None else len(indices)) / world)
        if drop_last and per_rank < batch_size:
            raise DataError(f"{path} has {per_rank} images per process, fewer than one batch of {batch_size}")
        threads = max(1, min(num_workers, numba.config.NUMBA_NUM_THREADS))
        pipelines = {"image": image_pipeline(kind, size, seed, mean, std), "label": [IntDecoder(), ToTensor()]}
        with keep_torch_threads():
            self.loader = ffcv.loader.Loader(path, batch_size=batch_size, num_workers=threads, os_cache=os_cache,
                                             order=order, distributed=distributed, seed=seed, indices=indices,
                                             pipelines=pipelines, drop_last=drop_last, batches_ahead=batches_ahead)
        self.order = _SkipStart(self.loader.traversal_order, batch_size, drop_last)
        self.loader.traversal_order = self.order
        self.batch_size, self.device = batch_size, torch.device(device)
        self.steps_per_epoch = len(self.loader)
        self.classes = read_sidecar(path).get("classes")

    def epoch(self, epoch: int, start_step: int = 0):
        if start_step >= self.steps_per_epoch:
            return
        self.order.start = start_step
        self.loader.next_epoch = epoch  # orders are drawn from (seed, epoch)
        with keep_torch_threads():
            it = iter(self.loader)
        try:
            for imgs, labels in it:  # views of ffcv's buffers, which it refills: copy
                imgs = imgs.to(self.device, copy=True)
                yield imgs, labels.view(-1).clone(), 0
        finally:
            it.close()  # stop ffcv's reader thread when the consumer stops early


def ffcv_pretrain_loader(cfg, batch_size: int, dist=None) -> FFCVEpochLoader:
    """The pretraining loader of cfg.data.augmentation at cfg.model.img_size (core/train.py)."""
    d = cfg.data
    world = dist.world if dist is not None else 1
    return FFCVEpochLoader(beton_path(d, "train"), d.augmentation, cfg.model.img_size, batch_size, mean=d.mean,
                           std=d.std, seed=cfg.pretrain.seed, shuffle=True, drop_last=True,
                           num_workers=d.num_workers, os_cache=d.ffcv_os_cache, world=world)
