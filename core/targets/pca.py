"""PCA target (paper Table 1d): each patch's coefficients on the top-k principal components of
training patches.

The basis is fitted once on patches of the training set, seen exactly as training sees them
(pretraining augmentation, normalised by data.mean/std, cut at the model's patch size), and cached
under the run's cache folder, keyed by everything that changes it. k follows the paper's ratio:
96 of 768 values for 16x16x3 patches, so k = patch dim / 8 unless model.pca_components says.
"""
from __future__ import annotations

import math
import os

import torch
from torch.utils.data import DataLoader

from core.checkpoint import atomic_write
from core.config import config_hash
from core.data import Transformed, build_dataset, check_dataset_path, collate_skipping, pretrain_transform, sample_seed
from core.errors import DataError
from core.fingerprint import resolve as resolve_dataset
from core.errors import ConfigError
from core.model import ARCHS, patchify
from core.registry import TARGETS, Param
from core.settings import ATLEAST1, NONNEG
from core.targets.base import Target, load_cached

MIN_PATCHES_PER_IMAGE = 16  # on ImageNet: 100k patches from ~6k images rather than 100k decodes
SEED = 0  # the basis belongs to the data, not to a run: runs of every pretrain.seed share it


def dataset_identity(data_cfg, dataset) -> dict:
    """What makes a training set the same one for a cache: its kind, where it lives, its size and,
    for files on disk, their content (data.fingerprint: other images under the same path, even as
    many, are another dataset). Callers pass a config through core.fingerprint.resolve first, as
    pretrain() and the prepared units do, so every rank and unit computes the same key."""
    ident = {"dataset": data_cfg.dataset, "images": len(dataset)}
    if data_cfg.dataset == "imagefolder":
        ident["path"] = os.path.abspath(data_cfg.path)
    if data_cfg.fingerprint:
        ident["fingerprint"] = data_cfg.fingerprint
    if data_cfg.dataset == "synthetic":
        ident["synthetic_size"] = data_cfg.synthetic_size
    return ident


def sample_patches(dataset, data_cfg, img_size: int, patch: int, samples: int, seed: int,
                   num_workers: int = 0) -> torch.Tensor:
    """About `samples` patches (N, p*p*3) from training images under the pretraining augmentation,
    a fixed number from each of a seeded random subset of images."""
    n_img, per_image_all = len(dataset), (img_size // patch) ** 2
    per_image = min(per_image_all, max(MIN_PATCHES_PER_IMAGE, math.ceil(samples / n_img)))
    n_use = min(n_img, math.ceil(samples / per_image))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_img, generator=g)[:n_use].tolist()
    keys = [(i, sample_seed(seed, -1, i)) for i in order]  # epoch -1: views no training epoch uses
    tf = pretrain_transform(data_cfg.augmentation, img_size, data_cfg.mean, data_cfg.std)
    loader = DataLoader(Transformed(dataset, tf), batch_size=64, sampler=keys, num_workers=num_workers,
                        collate_fn=collate_skipping)
    out = []
    for imgs, _, _ in loader:
        if imgs.shape[0] == 0:
            continue
        x = patchify(imgs, patch)  # (B, L, D)
        pick = torch.rand(x.shape[:2], generator=g).argsort(dim=1)[:, :per_image]
        out.append(torch.gather(x, 1, pick.unsqueeze(-1).expand(-1, -1, x.shape[-1])).flatten(0, 1))
    if not out:
        raise DataError("no readable training image to fit the PCA target on")
    return torch.cat(out)[:samples]


def fit_pca(patches: torch.Tensor) -> dict:
    """Mean and principal axes (D, D), largest variance first, from torch.linalg.eigh of the
    covariance in float64. Signs are fixed (largest entry positive) so refits agree."""
    x = patches.double()
    mean = x.mean(dim=0)
    x = x - mean
    cov = x.T @ x / max(x.shape[0] - 1, 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    big = evecs.abs().argmax(dim=0)
    evecs = evecs * evecs[big, torch.arange(evecs.shape[1])].sign()
    return {"mean": mean.float(), "components": evecs.float(), "variance": evals.float(),
            "samples": patches.shape[0]}


def _components_fit(cfg) -> None:
    """Config time: no more components than a patch has values."""
    patch = ARCHS[cfg.model.arch]["patch_size"]
    if cfg.model.pca_components > patch * patch * 3:
        raise ConfigError(f"model.pca_components must be in [0, {patch * patch * 3}] (0 = patch dim / 8), "
                          f"got {cfg.model.pca_components}")


# quick: settings that make it cheap where a test only needs it to work (tests/test_targets.py)
@TARGETS.register("pca", help="coefficients on the top principal axes of training patches", check=_components_fit, quick={"model.pca_samples": 2000}, params=[
    Param("model.pca_components", 0, NONNEG, "pca target: coefficients kept (0: patch dim / 8)", "Table 1d"),
    Param("model.pca_samples", 100_000, ATLEAST1, "pca target: training patches the basis is fitted on")])
class PCATarget(Target):
    """Coefficients of (patch - mean) on the top-k principal axes (not whitened); MSE loss."""

    def __init__(self, model_cfg, data_cfg):
        super().__init__(model_cfg, data_cfg)
        self.k = model_cfg.pca_components or max(1, self.patch_size ** 2 * 3 // 8)
        self.mean = self.components = None

    @property
    def dim(self):
        return self.k

    def cache_key(self, dataset) -> dict:
        m, d = self.model_cfg, self.data_cfg
        return {"kind": "pca", "data": dataset_identity(d, dataset), "img_size": m.img_size,
                "patch": self.patch_size, "augmentation": d.augmentation, "mean": list(d.mean),
                "std": list(d.std), "samples": m.pca_samples, "seed": SEED}

    def prepare(self, dataset, cache_dir, device, results_dir=None, run_cfg=None):
        key = self.cache_key(dataset)
        path = os.path.join(cache_dir, f"pca-{config_hash(key)}.pt")
        basis = load_cached(path, key)
        if basis is None:
            patches = sample_patches(dataset, self.data_cfg, self.model_cfg.img_size, self.patch_size,
                                     self.model_cfg.pca_samples, SEED, self.data_cfg.num_workers)
            basis = {**fit_pca(patches), "key": key}
            os.makedirs(cache_dir, exist_ok=True)
            atomic_write(path, lambda tmp: torch.save(basis, tmp))
        self.mean = basis["mean"].to(device)
        self.components = basis["components"][:, :self.k].contiguous().to(device)  # (D, k)
        self.explained = float(basis["variance"][:self.k].sum() / basis["variance"].sum().clamp_min(1e-12))
        self.cache_path = path

    @torch.no_grad()
    def __call__(self, imgs):
        return (patchify(imgs, self.patch_size).float() - self.mean) @ self.components

    def to_pixels(self, pred, imgs):
        return pred.float() @ self.components.T + self.mean


def pca_job(cfg) -> str:
    """The sweep's `pca` unit: fit (or find) the basis a pca run of `cfg` reads, where that run looks
    for it (on the CPU: an eigendecomposition of a D x D covariance). Returns its cache path."""
    cfg = resolve_dataset(cfg)  # the key holds the dataset's fingerprint, as the pretraining run's does
    check_dataset_path(cfg.data)
    target = PCATarget(cfg.model, cfg.data)
    target.prepare(build_dataset(cfg.data, "train", cfg.model.img_size), os.path.join(cfg.run.work_dir, "cache"),
                   torch.device("cpu"))
    return target.cache_path
