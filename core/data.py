"""Datasets, augmentation sets and the seeded loader.

Every sample's augmentation is drawn from a seed derived from (run seed, epoch, index), and the
data order from (run seed, epoch). A run resumed at any step therefore sees exactly the batches an
uninterrupted run would, with any number of loader workers.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from core.errors import DataError
from core.ffcv.beton import BetonImages, beton_path, check_beton
from core.ffcv.optional import require_ffcv
from core.scenes import scenes

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
BICUBIC = InterpolationMode.BICUBIC

# Colour jitter strengths of `crop_color_jitter` (the paper does not state them; these are the
# common ImageNet SSL values of brightness/contrast/saturation 0.4, no hue change).
COLOR_JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.4)


# --------------------------------------------------------------------------- augmentation sets

def _to_tensor(mean, std):
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]


def pretrain_transform(name: str, size: int, mean, std) -> "BoxAugment":
    """Paper Table 1e augmentation sets, by name: PIL images through torchvision, in-memory tensor
    images through one batched resampling per batch (BoxAugment)."""
    return BoxAugment(name, size, mean, std, _pil_pretrain_transform(name, size, mean, std))


def _pil_pretrain_transform(name: str, size: int, mean, std) -> T.Compose:
    if name == "none":  # resize + center crop, no flip
        ops = [T.Resize(size, interpolation=BICUBIC, antialias=True), T.CenterCrop(size)]
    elif name == "crop_fixed":  # a random crop of fixed size (size/0.875 resize first) + flip
        ops = [T.Resize(round(size / 0.875), interpolation=BICUBIC, antialias=True), T.RandomCrop(size),
               T.RandomHorizontalFlip()]
    elif name in ("crop_rand", "crop_color_jitter"):  # RandomResizedCrop scale (0.2, 1) + flip
        ops = [T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=BICUBIC, antialias=True),
               T.RandomHorizontalFlip()]
        if name == "crop_color_jitter":
            ops.append(T.ColorJitter(**COLOR_JITTER))
    else:
        raise DataError(f"unknown augmentation set {name!r}")
    return T.Compose(ops + _to_tensor(mean, std))


class BoxAugment:
    """An augmentation set as a box in the source image (and a flip) resampled to size x size.

    Every set of Table 1e is one: `none` the whole image, `crop_fixed` a random box of 0.875 of the
    side (resize to size/0.875, then crop size), `crop_rand` RandomResizedCrop's box (scale 0.2-1,
    ratio 3/4-4/3, its fallback to the central box after ten misses), `crop_color_jitter` that box
    then colour jitter. PIL images take the torchvision pipeline `pil`. uint8 tensor images (the
    in-memory datasets) are resampled in one bicubic `grid_sample` per batch (Transformed.__getitems__):
    torchvision's per-image transforms cost ~0.8 ms of Python each, more than a tiny model's step.
    Resampling reads real pixels just outside the box where torchvision replicates the box's edge,
    and keeps float values where torchvision rounds to uint8; boxes come from the sample seed alone,
    so an image gets the same view in any batch, on any rank, after any resume."""

    def __init__(self, name: str, size: int, mean, std, pil: T.Compose):
        self.name, self.size, self.pil = name, size, pil
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.jitter = T.ColorJitter(**COLOR_JITTER) if name == "crop_color_jitter" else None

    def __call__(self, img):
        if not isinstance(img, torch.Tensor):
            return self.pil(img)
        return self.batch(img.unsqueeze(0), [torch.initial_seed()])[0]

    def box(self, rng: random.Random, h: int, w: int) -> tuple[float, float, float, float, bool]:
        """(top, left, height, width, flip) in source pixels, drawn from rng."""
        if self.name == "none":
            return 0.0, 0.0, float(h), float(w), False
        if self.name == "crop_fixed":
            side = round(self.size / 0.875)
            bh, bw = h * self.size / side, w * self.size / side
            top, left = rng.randint(0, side - self.size) * h / side, rng.randint(0, side - self.size) * w / side
            return top, left, bh, bw, rng.random() < 0.5
        area = h * w
        for _ in range(10):
            target = area * rng.uniform(0.2, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            bw, bh = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
            if 0 < bw <= w and 0 < bh <= h:
                return float(rng.randint(0, h - bh)), float(rng.randint(0, w - bw)), float(bh), float(bw), rng.random() < 0.5
        side = min(h, w)  # RandomResizedCrop's fallback (ratio within bounds for square images)
        return (h - side) / 2, (w - side) / 2, float(side), float(side), rng.random() < 0.5

    def batch(self, imgs: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        """uint8 (B, 3, H, W) and one seed per image -> normalized float (B, 3, size, size)."""
        n, _, h, w = imgs.shape
        theta = torch.zeros(n, 2, 3, dtype=torch.float32)
        for k, seed in enumerate(seeds):
            top, left, bh, bw, flip = self.box(random.Random(seed), h, w)
            # output x in [-1, 1] -> source x: the box's centre and half-width in normalized coordinates
            theta[k, 0, 0] = (-bw if flip else bw) / w
            theta[k, 0, 2] = (2 * left + bw) / w - 1
            theta[k, 1, 1] = bh / h
            theta[k, 1, 2] = (2 * top + bh) / h - 1
        grid = torch.nn.functional.affine_grid(theta, [n, 3, self.size, self.size], align_corners=False)
        out = torch.nn.functional.grid_sample(imgs.float() / 255, grid, mode="bicubic", padding_mode="border",
                                              align_corners=False).clamp_(0, 1)
        if self.jitter is not None:
            with torch.random.fork_rng(devices=[]):
                for k, seed in enumerate(seeds):
                    torch.default_generator.manual_seed(seed)
                    out[k] = self.jitter(out[k])
        return (out - self.mean) / self.std


def eval_transform(size: int, mean, std) -> T.Compose:
    """Validation: resize to size/0.875 and center crop (224 <- 256 at the paper's size)."""
    return T.Compose([T.Resize(round(size / 0.875), interpolation=BICUBIC, antialias=True),
                      T.CenterCrop(size)] + _to_tensor(mean, std))


def linprobe_train_transform(size: int, mean, std) -> T.Compose:
    """Linear-probe training: RandomResizedCrop (default scale) + flip (paper Table 10)."""
    return T.Compose([T.RandomResizedCrop(size, interpolation=BICUBIC, antialias=True),
                      T.RandomHorizontalFlip()] + _to_tensor(mean, std))


# --------------------------------------------------------------------------- datasets

class TensorImages(Dataset):
    """Images held in memory as uint8 (N, 3, H, W) with integer labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]):
        self.images, self.labels, self.classes = images, labels, classes

    def __len__(self):
        return len(self.labels)

    def load(self, i):
        return self.images[i], int(self.labels[i])


def digits(split: str, size: int) -> TensorImages:
    """scikit-learn's handwritten digits (1797 8x8 images, shipped inside the package), upsampled
    once to `size`, grey replicated to 3 channels; a fixed 80/20 train/val split."""
    from sklearn.datasets import load_digits  # heavy (~7 s to import here): only the digits dataset needs it

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(d.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_val = len(y) // 5
    idx = order[n_val:] if split == "train" else order[:n_val]
    return TensorImages(x[idx], y[idx], [str(i) for i in range(10)])


def digit_scenes(split: str, size: int) -> TensorImages:
    """Digit scenes (core/scenes.py): shipped glyphs composed over clutter, train and val from
    disjoint glyphs; generated once per process (seconds) and kept in memory."""
    images, labels, _ = scenes(split, size)
    return TensorImages(torch.from_numpy(images), torch.from_numpy(labels), [str(i) for i in range(10)])


def synthetic(split: str, size: int, n: int) -> TensorImages:
    """Ten classes of oriented gratings with noise: learnable structure for tests, no files."""
    g = torch.Generator().manual_seed(1 if split == "train" else 2)
    labels = torch.arange(n) % 10
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    angle = labels.float() * torch.pi / 10
    phase = torch.rand(n, generator=g) * 2 * torch.pi
    wave = torch.sin((xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None]) * 0.8
                     + phase[:, None, None])
    img = 0.5 + 0.35 * wave.unsqueeze(1) + 0.1 * torch.randn(n, 3, size, size, generator=g)
    return TensorImages((img.clamp(0, 1) * 255).to(torch.uint8), labels, [str(i) for i in range(10)])


class ImageFolderImages(Dataset):
    """An ImageNet-style folder (one sub-folder per class). Unreadable images are skipped and
    counted (on_corrupt=skip) or stop the run naming the file (on_corrupt=error)."""

    def __init__(self, root: str, on_corrupt: str = "skip"):
        if not os.path.exists(root):
            raise DataError(f"dataset path {root} does not exist")
        if not os.path.isdir(root):
            raise DataError(f"dataset path {root} is not a directory")
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        self.samples = []
        for label, cls in enumerate(self.classes):
            for dirpath, _, files in sorted(os.walk(os.path.join(root, cls), followlinks=True)):
                self.samples += [(os.path.join(dirpath, f), label) for f in sorted(files)
                                 if f.lower().endswith(IMG_EXTENSIONS)]
        if not self.samples:
            raise DataError(f"dataset path {root} holds no images in class sub-folders")
        self.on_corrupt = on_corrupt

    def __len__(self):
        return len(self.samples)

    def load(self, i):
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                return im.convert("RGB"), label
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for damaged files
            if self.on_corrupt == "error":
                raise DataError(f"cannot read image {path}: {e}") from None
            return None


def build_dataset(data_cfg, split: str, size: int):
    """The raw (untransformed) dataset for split 'train' or 'val'."""
    if data_cfg.dataset == "digits":
        return digits(split, size)
    if data_cfg.dataset == "scenes":
        return digit_scenes(split, size)
    if data_cfg.dataset == "synthetic":
        return synthetic(split, size, data_cfg.synthetic_size)
    if data_cfg.backend == "ffcv":  # the images live in a .beton (core/ffcv/beton.py)
        return BetonImages(beton_path(data_cfg, split))
    if not data_cfg.path:
        raise DataError("data.path is required for data.dataset=imagefolder (a folder with train/ and val/)")
    return ImageFolderImages(os.path.join(data_cfg.path, split), data_cfg.on_corrupt)


def check_dataset_path(data_cfg) -> None:
    """Fail before anything is written if the dataset cannot be found."""
    if data_cfg.backend == "ffcv":
        if data_cfg.dataset != "imagefolder":
            raise DataError(f"data.backend=ffcv reads .beton files converted from an ImageFolder; set "
                            f"data.dataset=imagefolder (data.dataset={data_cfg.dataset} needs no files)")
        require_ffcv()  # not installed: one line with the install hint
        check_beton(beton_path(data_cfg, "train"))  # missing, empty or truncated: one line here
        return
    if data_cfg.dataset != "imagefolder":
        return
    if not data_cfg.path:
        raise DataError("data.path is required for data.dataset=imagefolder (a folder with train/ and val/)")
    if not os.path.exists(data_cfg.path):
        raise DataError(f"dataset path {data_cfg.path} does not exist")
    if not os.path.isdir(data_cfg.path):
        raise DataError(f"dataset path {data_cfg.path} is not a directory")
    ImageFolderImages(os.path.join(data_cfg.path, "train"), data_cfg.on_corrupt)


# An epoch that skips more than this fraction of its images as unreadable stops the run: past it the
# dataset is broken (a wrong path, a failed copy), not a few damaged files (ImageNet has none PIL refuses).
MAX_UNREADABLE = 0.1


def check_unreadable(epoch: int, steps: int, images: int, skipped: int, data_cfg) -> None:
    """After an epoch (totals over all ranks): one line instead of looping forever at step 0 when
    every image is unreadable, or training on what is left of a mostly broken dataset."""
    where = f"data.path={data_cfg.path}" if data_cfg.path else f"data.dataset={data_cfg.dataset}"
    if steps == 0:
        raise DataError(f"epoch {epoch} advanced no optimizer step: {skipped} images were unreadable and "
                        f"{images} were read ({where}); data.on_corrupt=error names the first bad file")
    if skipped > MAX_UNREADABLE * (images + skipped):
        raise DataError(f"epoch {epoch} skipped {skipped} of {images + skipped} images as unreadable, more than "
                        f"{MAX_UNREADABLE:.0%} ({where}); data.on_corrupt=error names the first bad file")


# --------------------------------------------------------------------------- seeded loading

def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2 ** 63)


@contextlib.contextmanager
def host_rngs_restored():
    """Python's and numpy's RNG states saved on entry and restored on exit."""
    state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])


@contextlib.contextmanager
def global_rngs_kept():
    """The global RNGs a transform may seed (torch's CPU generator, python's, numpy's: timm's
    transforms draw from the last two) as they were before: drop path and Mixup draw from them."""
    with torch.random.fork_rng(devices=[]), host_rngs_restored():
        yield


class Transformed(Dataset):
    """Applies a transform with a per-sample seed; item keys are (index, seed) pairs."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        with global_rngs_kept():
            return self._apply(self.base.load(key[0]), key[1])

    def _apply(self, item, seed: int):
        """One sample under its seed; the caller keeps the global RNGs (global_rngs_kept)."""
        if item is None:
            return None
        img, label = item
        # the CPU generator only, which the transforms draw from: torch.manual_seed would also
        # queue a lazy CUDA seeding with a formatted stack trace every sample, a third of a tiny
        # CPU run's time (cProfile: 7.4 of 22 s); the random streams are the same
        torch.default_generator.manual_seed(seed)
        return self.transform(img), label

    def __getitems__(self, keys):
        """A batch (the DataLoader's fetcher calls this when it exists): in-memory tensor images of one
        size go through the transform's batched path in one call, as each would alone. Otherwise each
        sample alone, the global RNGs saved and restored once for the whole batch."""
        batched = getattr(self.transform, "batch", None)
        items = [self.base.load(index) for index, _ in keys]
        if batched is None or any(it is None or not isinstance(it[0], torch.Tensor) for it in items) \
                or len({it[0].shape for it in items}) != 1:
            with global_rngs_kept():
                return [self._apply(item, seed) for item, (_, seed) in zip(items, keys)]
        imgs = batched(torch.stack([it[0] for it in items]), [seed for _, seed in keys])
        return [(img, it[1]) for img, it in zip(imgs, items)]


class SeededSampler(Sampler):
    """Yields (index, sample seed): a permutation drawn from (seed, epoch), split across ranks,
    optionally starting part-way into the epoch (resume)."""

    def __init__(self, n: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0):
        self.epoch, self.start = epoch, start

    def __len__(self):
        return len(range(self.rank, self.n, self.world))

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.n)
        mine = order[self.rank::self.world].tolist()
        for i in mine[self.start:]:
            yield i, sample_seed(self.seed, self.epoch, i)


def collate_skipping(batch):
    """Stack a batch, dropping unreadable samples; the third element counts them."""
    good = [b for b in batch if b is not None]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), len(batch)
    imgs = torch.stack([b[0] for b in good])
    labels = torch.tensor([b[1] for b in good])
    return imgs, labels, len(batch) - len(good)


@dataclass
class EpochLoader:
    """Batches for one epoch at a time: `for imgs, labels, skipped in loader.epoch(e, start_step)`."""

    dataset: Dataset
    batch_size: int  # per process
    seed: int
    shuffle: bool = True
    drop_last: bool = True
    num_workers: int = 0
    rank: int = 0
    world: int = 1
    pin_memory: bool = False

    def __post_init__(self):
        self.sampler = SeededSampler(len(self.dataset), self.seed, self.shuffle, self.rank, self.world)
        if self.drop_last and len(self.sampler) < self.batch_size:
            raise DataError(f"the dataset has {len(self.sampler)} images per process, fewer than one batch "
                            f"of {self.batch_size}")
        self.loader = DataLoader(self.dataset, self.batch_size, sampler=self.sampler, drop_last=self.drop_last,
                                 num_workers=self.num_workers, collate_fn=collate_skipping,
                                 pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)

    @property
    def steps_per_epoch(self) -> int:
        if self.drop_last:  # the same on every rank, though the first shards can hold one image more
            return (self.sampler.n // self.world) // self.batch_size
        return -(-len(self.sampler) // self.batch_size)

    def epoch(self, epoch: int, start_step: int = 0):
        self.sampler.set_epoch(epoch, start_step * self.batch_size)
        # A DataLoader iterator draws its base seed from the global RNG, which drop path also uses:
        # kept out of it, a run resumed mid-epoch draws the same drop-path masks as an uninterrupted one.
        with torch.random.fork_rng(devices=[]):
            return _plain_worker_errors(iter(self.loader))


def _plain_worker_errors(batches):
    """A DataError raised in a loader worker comes back wrapped in PyTorch's text ("Caught DataError
    in DataLoader worker process 0. Original Traceback ..."): give the user its own message."""
    try:
        yield from batches
    except DataError as e:
        text = str(e.args[0]) if e.args else ""
        if "Original Traceback" not in text:
            raise
        last = text.strip().splitlines()[-1]
        raise DataError(last.split(": ", 1)[1] if last.startswith(("DataError:", "core.errors.DataError:"))
                        else last) from None
