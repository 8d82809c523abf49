"""The tiers' datasets from what users have (docs/tiers.md): an ImageNet-100 folder of symlinks into
their ImageNet, and CIFAR-10/100 from the official python tarball, as ImageFolders (train/, val/).

Each is built in a temporary folder next to OUT and renamed to OUT when complete, so a failure
leaves no folder that looks finished. Bad input raises DataError: one line, exit 2 from the CLI.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import tarfile

import numpy as np
from PIL import Image

from core.errors import DataError

# The ImageNet-100 of CMC (Tian et al. 2019), the usual 100-class subset: HobbitLong/CMC imagenet100.txt
CLASS_LIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet100_classes.txt")
MANIFEST = "dataset.json"

# archive -> (folder in the tarball, train members, test member, meta member, label key, names key)
CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}
CIFAR_SIZES = {"cifar10": (50_000, 10_000, 10), "cifar100": (50_000, 10_000, 100)}


def imagenet100_classes(path: str = CLASS_LIST) -> list[str]:
    with open(path) as f:
        wnids = f.read().split()
    if len(wnids) != 100 or len(set(wnids)) != 100 or not all(re.fullmatch(r"n\d{8}", w) for w in wnids):
        raise DataError(f"{path} is not a list of 100 distinct WordNet ids")
    return wnids


def _fresh(out: str) -> str:
    """A temporary folder next to OUT (same filesystem: the final rename is atomic)."""
    if os.path.exists(out):
        raise DataError(f"{out} already exists: remove it or choose another --out")
    parent = os.path.dirname(os.path.abspath(out)) or "."
    if not os.path.isdir(parent):
        raise DataError(f"the parent folder of --out {out} does not exist")
    tmp = os.path.join(parent, f".partial-{os.path.basename(os.path.abspath(out))}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def _finish(tmp: str, out: str, manifest: dict) -> None:
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    os.rename(tmp, out)


def imagenet100(imagenet: str, out: str, classes: str = CLASS_LIST) -> dict:
    """OUT/{train,val}/<wnid> -> symlinks to IMAGENET/{train,val}/<wnid> for the 100 classes.
    Returns the manifest: images per split."""
    wnids = imagenet100_classes(classes)
    for split in ("train", "val"):
        folder = os.path.join(imagenet, split)
        if not os.path.isdir(folder):
            raise DataError(f"--imagenet {imagenet} has no {split}/ folder (expected {split}/<wnid>/*.JPEG)")
        missing = [w for w in wnids if not os.path.isdir(os.path.join(folder, w))]
        if missing:
            hint = " (val/ must be in class-folder layout, as train/)" if split == "val" and len(missing) == 100 else ""
            raise DataError(f"{folder} lacks {len(missing)} of the 100 ImageNet-100 classes, e.g. "
                            f"{', '.join(missing[:3])}{hint}")
    tmp = _fresh(out)
    counts = {}
    try:
        for split in ("train", "val"):
            os.makedirs(os.path.join(tmp, split))
            n = 0
            for w in wnids:
                src = os.path.abspath(os.path.join(imagenet, split, w))
                n += sum(1 for e in os.scandir(src) if e.is_file())
                os.symlink(src, os.path.join(tmp, split, w), target_is_directory=True)
            counts[split] = n
        _finish(tmp, out, {"dataset": "imagenet100", "source": os.path.abspath(imagenet), "classes": 100,
                           "images": counts})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's batches are dicts of bytes, lists and numpy arrays: nothing else may be built."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _load(tar: tarfile.TarFile, name: str, what: str) -> dict:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise DataError(f"{what} has no {name}: not the official python version of the dataset") from None
    f = tar.extractfile(member) if member.isfile() else None
    if f is None:
        raise DataError(f"{what}: {name} is not a regular file")
    try:
        obj = _ArraysOnly(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any damaged or hostile pickle is bad input
        raise DataError(f"{what}: {name} is not a CIFAR batch ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{what}: {name} is not a CIFAR batch (a {type(obj).__name__}, not a dict)")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _batch(tar, name: str, label_key: str, classes: int, what: str) -> tuple[np.ndarray, list]:
    d = _load(tar, name, what)
    data, labels = d.get("data"), d.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{what}: {name} holds no uint8 array of 32x32x3 images under 'data'")
    if not isinstance(labels, list) or len(labels) != len(data) or \
            not all(isinstance(y, int) and 0 <= y < classes for y in labels):
        raise DataError(f"{what}: {name} has no {label_key} list of {len(data)} labels in [0, {classes})")
    return data, labels


def cifar(kind: str, tarball: str, out: str) -> dict:
    """OUT/{train,val}/<class name>/<index>.png from cifar-10-python.tar.gz or cifar-100-python.tar.gz:
    the members are read by their known names and unpickled as arrays only; nothing is extracted."""
    folder, train_names, test_name, meta_name, label_key, names_key = CIFAR[kind]
    what = f"--tarball {tarball}"
    if not os.path.isfile(tarball):
        raise DataError(f"{what} is not a file")
    try:
        tar = tarfile.open(tarball, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{what} is not a readable tar archive ({e})") from None
    with tar:
        names = _load(tar, f"{folder}/{meta_name}", what).get(names_key)
        if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names):
            raise DataError(f"{what}: {folder}/{meta_name} has no {names_key} list")
        names = [n.decode(errors="replace") for n in names]
        if len(set(names)) != len(names) or not all(re.fullmatch(r"[A-Za-z0-9_\-]+", n) for n in names):
            raise DataError(f"{what}: class names must be distinct words, got {names[:5]} ...")
        splits = {"train": [_batch(tar, f"{folder}/{n}", label_key, len(names), what) for n in train_names],
                  "val": [_batch(tar, f"{folder}/{test_name}", label_key, len(names), what)]}
    tmp = _fresh(out)
    counts = {}
    try:
        for split, batches in splits.items():
            for name in names:
                os.makedirs(os.path.join(tmp, split, name))
            i = 0
            for data, labels in batches:
                images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # rows are R, G, B planes
                for img, y in zip(images, labels):
                    Image.fromarray(img).save(os.path.join(tmp, split, names[y], f"{i:05d}.png"))
                    i += 1
            counts[split] = i
        _finish(tmp, out, {"dataset": kind, "source": os.path.abspath(tarball), "classes": len(names),
                           "images": counts})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts
