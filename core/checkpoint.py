"""Checkpoints: written atomically, loaded with weights_only=True, a damaged newest one falls back
to the previous one with a warning naming the file."""
from __future__ import annotations

import argparse
import glob
import hashlib
import os
import re
import warnings

import torch

from core.errors import CheckpointError

NAME = "ckpt-{step:09d}.pt"
PATTERN = re.compile(r"ckpt-(\d{9})\.pt$")


def atomic_write(path: str, write) -> None:
    """Call write(tmp_path), then rename over `path`: a reader never sees a partial file, and a
    failure (full disk, kill) leaves the previous file untouched."""
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".tmp-{os.path.basename(path)}-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:
        fd = os.open(d, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename is still atomic
        pass


def write_text(path: str, text: str) -> None:
    """atomic_write of a text file (records, caches, reports, manifests): all of it or the old one."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def save(ckpt_dir: str, step: int, state: dict, keep: int = 2) -> str:
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, NAME.format(step=step))
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {e.strerror or e}{_free(ckpt_dir)}") from None
    except RuntimeError as e:  # torch.save reports a full disk as RuntimeError ("file write failed")
        raise CheckpointError(f"cannot write checkpoint {path}: {_first_line(e)}{_free(ckpt_dir)}") from None
    for old in list_checkpoints(ckpt_dir)[:-keep]:  # oldest first; keep the newest `keep`
        try:
            os.remove(old)
        except FileNotFoundError:  # already pruned (the run lock keeps a second writer out; be safe anyway)
            pass
    return path


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _free(d: str) -> str:
    try:
        st = os.statvfs(d)
    except OSError:
        return ""
    return f" ({st.f_bavail * st.f_frsize / 2**20:.1f} MiB free on its filesystem)"


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def list_checkpoints(ckpt_dir: str) -> list[str]:
    paths = [p for p in glob.glob(os.path.join(ckpt_dir, "ckpt-*.pt")) if PATTERN.search(p)]
    return sorted(paths)


def load_file(path: str, map_location="cpu") -> dict:
    """Load one checkpoint safely: weights_only=True refuses pickles that would run code. The one
    class allowed besides tensors and plain data is argparse.Namespace, which the official training
    scripts store under 'args': rebuilt as an attribute bag, it runs no code."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's multi-line warnings (pickle protocol, ...): our line only
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated, foreign or unsafe files
        raise CheckpointError(f"{path} is not a loadable checkpoint ({_first_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a checkpoint (expected a dict, got {type(obj).__name__})")
    return obj


def latest(ckpt_dir: str) -> tuple[dict, str] | None:
    """The newest loadable checkpoint, skipping (and warning about) damaged ones."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return load_file(path), path
        except CheckpointError as e:
            warnings.warn(f"skipping damaged checkpoint {path}: {e}", stacklevel=2)
    return None


def model_state(obj: dict, path: str = "checkpoint") -> dict:
    """The model weights of our checkpoints and of the officially released ones ({'model': ...},
    which the official training scripts write with 'args', 'optimizer', 'epoch' and 'scaler')."""
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no model weights")
    return state


def ignored_keys(obj: dict) -> list[str]:
    """What model_state leaves out of a checkpoint holding {'model': ...} and more."""
    return sorted(str(k) for k in obj if k != "model") if isinstance(obj.get("model"), dict) else []
