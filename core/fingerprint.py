"""What a dataset on disk is, independent of where it is mounted: the run id holds this fingerprint
instead of data.path, so moving ImageNet keeps a run's id and swapping the images for others does not.

Config.run_id() stays pure data: `resolve(cfg)` fills data.fingerprint where the dataset is known
(pretrain, evaluate, the sweep's plan), and the id is computed from the filled-in config.

- ImageFolder: sha256 over every split's class names, each image's path relative to data.path and
  its size in bytes, and the bytes of 256 images spread evenly over the list (the rest is not read). Listing ImageNet's 1.28M files costs a stat each, so
  the result is cached in <work_dir>/cache/datasets/, keyed by the folder's absolute path and the
  inode and mtime of the root, its split folders and its class folders: adding, removing, renaming
  or replacing a file (or swapping the whole folder) changes a mtime and the fingerprint is computed
  again. Not noticed: a file rewritten in place under the same name (delete the cache entry then).
- .beton (data.backend=ffcv): each file's size, its first and last MiB (header, field layout,
  allocation table) and its side-car's classes and sample counts. No cache needed.
- digits and synthetic: no files; their settings already say what they are (no fingerprint, so
  their run ids are what they were before fingerprints existed).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from core.checkpoint import write_text
from core.config import Config
from core.data import IMG_EXTENSIONS
from core.errors import DataError

SPLITS = ("train", "val")
EDGE = 1 << 20  # bytes hashed at each end of a .beton
SAMPLED = 256  # image files whose bytes are hashed (ImageNet: ~30 MB read once, then cached)


def resolve(cfg: Config) -> Config:
    """cfg with data.fingerprint filled in (imagefolder or ffcv with an existing data.path). A config
    that already holds one is checked against the files: a dataset changed since a sweep was
    planned is an error, not a silently different run."""
    d = cfg.data
    if d.dataset != "imagefolder" or not d.path or not os.path.exists(d.path):
        return cfg  # digits / synthetic; a missing path is reported by check_dataset_path
    fp = dataset_fingerprint(d.path, d.backend, os.path.join(cfg.run.work_dir, "cache", "datasets"))
    if d.fingerprint and d.fingerprint != fp:
        raise DataError(f"the dataset at {d.path} changed since this run was planned (fingerprint "
                        f"{d.fingerprint}, now {fp}); plan the sweep again")
    return dataclasses.replace(cfg, data=dataclasses.replace(d, fingerprint=fp))


def dataset_fingerprint(path: str, backend: str = "torchvision", cache_dir: str | None = None) -> str:
    if backend == "ffcv":
        return _beton_fingerprint(path)
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        raise DataError(f"dataset path {path} is not a directory")
    signature = _folder_signature(root)
    cache = os.path.join(cache_dir, hashlib.sha256(root.encode()).hexdigest()[:16] + ".json") if cache_dir else None
    if cache and os.path.isfile(cache):
        try:
            with open(cache) as f:
                entry = json.load(f)
            if isinstance(entry, dict) and entry.get("signature") == signature:
                return entry["fingerprint"]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    fp, images = _folder_fingerprint(root)
    if cache and images:  # an empty or wrong folder is reported by check_dataset_path; leave no trace
        try:
            os.makedirs(cache_dir, exist_ok=True)
            write_text(cache, json.dumps({"path": root, "signature": signature, "fingerprint": fp}))
        except OSError:
            pass  # no cache (read-only work dir): computed again next time, same value
    return fp


def _split_dirs(root: str) -> list[tuple[str, str]]:
    """(name, folder) of each split present; a folder without train/ or val/ is one tree of classes."""
    found = [(s, os.path.join(root, s)) for s in SPLITS if os.path.isdir(os.path.join(root, s))]
    return found or [("", root)]


def _folder_signature(root: str) -> str:
    h = hashlib.sha256()
    for folder in [root] + [d for _, d in _split_dirs(root)]:
        st = os.stat(folder)
        h.update(f"{folder}:{st.st_ino}:{st.st_mtime_ns}\n".encode())
        for e in sorted(os.scandir(folder), key=lambda e: e.name):
            if e.is_dir():
                st = e.stat()
                h.update(f"{e.name}:{st.st_ino}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _folder_fingerprint(root: str) -> tuple[str, int]:
    """The same files ImageFolderImages reads (class sub-folders, image extensions), by relative path
    and size, plus the bytes of SAMPLED files spread evenly over them: other images with the same
    names and sizes (re-encoded, another seed of a synthetic set) are another dataset too."""
    h = hashlib.sha256(b"imagefolder/1\n")
    paths = []
    for split, folder in _split_dirs(root):
        classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        h.update(json.dumps([split, classes]).encode() + b"\n")
        for cls in classes:
            for dirpath, dirs, files in sorted(os.walk(os.path.join(folder, cls), followlinks=True)):
                dirs.sort()
                for name in sorted(files):
                    if name.lower().endswith(IMG_EXTENSIONS):
                        full = os.path.join(dirpath, name)
                        h.update(f"{os.path.relpath(full, root)}\t{os.path.getsize(full)}\n".encode())
                        paths.append(full)
    for full in paths[::max(1, len(paths) // SAMPLED)][:SAMPLED]:
        with open(full, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:16], len(paths)


def _beton_fingerprint(path: str) -> str:
    files = [path] if path.endswith(".beton") or os.path.isfile(path) else [os.path.join(path, f"{s}.beton") for s in SPLITS]
    h = hashlib.sha256(b"beton/1\n")
    for name, f in ((os.path.basename(f), f) for f in files if os.path.isfile(f)):
        size = os.path.getsize(f)
        h.update(f"{name}\t{size}\n".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(EDGE))
            fh.seek(max(size - EDGE, 0))
            h.update(fh.read(EDGE))
        side = f + ".json"  # core.ffcv.beton.sidecar_path: classes and counts
        if os.path.isfile(side):
            try:
                with open(side) as fh:
                    info = json.load(fh)
                h.update(json.dumps([info.get("classes"), info.get("num_samples"), info.get("skipped")]).encode())
            except (OSError, ValueError, AttributeError):
                pass  # read_sidecar reports a damaged side-car where it matters
    return h.hexdigest()[:16]
