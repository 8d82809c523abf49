"""ImageFolder -> .beton (`run_all.py data beton`): ffcv's DatasetWriter with workers that never raise
(an unreadable image becomes a marker file) and a watchdog (core/ffcv/watchdog.py); the file appears
only when complete."""
from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from importlib.metadata import version

import numpy as np
from PIL import Image

from core.data import ImageFolderImages
from core.errors import DataError, UserError
from core.ffcv.beton import SPLITS, read_layout, sidecar_path
from core.ffcv.optional import require_ffcv
from core.ffcv.watchdog import TrackedProcess, WatchedQueue, watching_sleep, WorkerDied


class _FolderForWriter:
    """ImageFolder samples as (uint8 HWC array, label) for ffcv's writer workers. It never raises:
    a worker that raised would leave ffcv's writer waiting forever. An unreadable image becomes a
    1x1 placeholder and a marker file; the loaders leave such images out."""

    def __init__(self, folder, max_res: int, bad_dir: str):
        self.folder, self.max_res, self.bad_dir = folder, max_res, bad_dir

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, i):
        path, label = self.folder.samples[i]
        np.random.seed(i)  # ffcv draws raw-or-JPEG per image from numpy's global RNG: same file every time
        try:
            with Image.open(path) as im:
                im.draft("RGB", (self.max_res, self.max_res))  # JPEG: decode at a reduced scale >= max_res
                return np.ascontiguousarray(np.asarray(im.convert("RGB"))), label
        except Exception as e:  # noqa: BLE001 - any failure must be recorded, never raised (see above)
            with open(os.path.join(self.bad_dir, str(i)), "w") as f:
                f.write(f"{path}: {type(e).__name__}: {e}".replace("\n", " "))
            return np.zeros((1, 1, 3), np.uint8), label


def _page_size(max_res: int) -> int:
    """A power of two holding the largest raw image (ffcv's default is 8 MiB)."""
    need = 3 * max_res * max_res + 1
    return max(8 << 20, 1 << math.ceil(math.log2(need)))


def write_beton(src: str, out: str, *, max_res: int = 256, jpeg_quality: int = 90, compress_prob: float = 0.5,
                workers: int | None = None, on_corrupt: str = "skip") -> dict:
    """Convert one ImageFolder split (class sub-folders) into `out` (.beton + .json side-car).
    The file appears only when complete; returns the side-car's summary."""
    _check_writer_args(max_res, jpeg_quality, compress_prob, workers)
    folder = ImageFolderImages(src, "skip")  # DataError for a missing or empty folder
    ffcv = require_ffcv()
    from ffcv.fields import IntField, RGBImageField  # optional dependency: imported once it is needed

    workers = workers or max(1, min(len(os.sched_getaffinity(0)), 16))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    bad_dir = tmp + ".bad"
    os.makedirs(bad_dir, exist_ok=True)
    fields = {"image": RGBImageField(write_mode="proportion", max_resolution=max_res, jpeg_quality=jpeg_quality,
                                     compress_probability=compress_prob),
              "label": IntField()}
    t0 = time.perf_counter()
    TrackedProcess.started, WatchedQueue.made = [], []
    try:
        writer = ffcv.writer.DatasetWriter(tmp, fields, page_size=_page_size(max_res), num_workers=workers)
        saved = ffcv.writer.Process, ffcv.writer.Queue, ffcv.writer.sleep
        ffcv.writer.Process, ffcv.writer.Queue, ffcv.writer.sleep = TrackedProcess, WatchedQueue, watching_sleep
        reap = threading.current_thread() is threading.main_thread()  # a SIGCHLD ignored by our parent would
        old_chld = signal.signal(signal.SIGCHLD, signal.SIG_DFL) if reap else None  # hide the exit codes
        try:
            writer.from_indexed_dataset(_FolderForWriter(folder, max_res, bad_dir), chunksize=64)
        except WorkerDied as e:
            for p in TrackedProcess.started:
                p.terminate()
            for q in WatchedQueue.made:  # work nobody will read: exit without flushing it into a pipe
                q.cancel_join_thread()
            shm = getattr(writer, "metadata_sm", None)
            if shm is not None and not isinstance(shm, int):
                shm.close()
                shm.unlink()
            raise DataError(f"a writer worker died (exit code {e.args[0]}) while converting {src}; "
                            f"try fewer --workers or a smaller --max-res") from None
        finally:
            ffcv.writer.Process, ffcv.writer.Queue, ffcv.writer.sleep = saved
            if reap and old_chld is not None:
                signal.signal(signal.SIGCHLD, old_chld)
        bad = sorted(int(f) for f in os.listdir(bad_dir))
        if bad and on_corrupt == "error":
            with open(os.path.join(bad_dir, str(bad[0]))) as f:
                raise DataError(f"cannot read image {f.read()}")
        messages = []
        for i in bad[:20]:
            with open(os.path.join(bad_dir, str(i))) as f:
                messages.append(f.read())
        info = {"format": "mae-suite-beton/1", "source": os.path.abspath(src), "classes": folder.classes,
                "num_samples": len(folder), "skipped": bad, "skipped_files": messages, "max_res": max_res,
                "jpeg_quality": jpeg_quality, "compress_prob": compress_prob, "page_size": _page_size(max_res),
                "ffcv_version": _ffcv_version(), "seconds": round(time.perf_counter() - t0, 2)}
        with open(sidecar_path(tmp), "w") as f:
            json.dump(info, f, indent=1)
        read_layout(tmp)  # what we wrote must read back
        os.replace(tmp, out)
        os.replace(sidecar_path(tmp), sidecar_path(out))
        return info
    finally:
        for p in (tmp, sidecar_path(tmp)):
            if os.path.exists(p):
                os.remove(p)
        for f in os.listdir(bad_dir):
            os.remove(os.path.join(bad_dir, f))
        os.rmdir(bad_dir)


def _ffcv_version() -> str:
    return version("ffcv")


def _check_writer_args(max_res, jpeg_quality, compress_prob, workers):
    if not 8 <= max_res <= 65535:  # ffcv stores width and height as uint16
        raise UserError(f"--max-res must be in [8, 65535], got {max_res}")
    if not 1 <= jpeg_quality <= 100:
        raise UserError(f"--jpeg-quality must be in [1, 100], got {jpeg_quality}")
    if not 0.0 <= compress_prob <= 1.0:
        raise UserError(f"--compress-prob must be in [0, 1], got {compress_prob}")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")


def convert(src: str, out: str, **kw) -> dict[str, dict]:
    """`run_all.py data beton`: OUT ending in .beton converts SRC's class folders into one file;
    otherwise SRC must hold train/ (and usually val/), written as OUT/train.beton and OUT/val.beton."""
    if not os.path.isdir(src):
        raise DataError(f"source folder {src} does not exist" if not os.path.exists(src)
                        else f"source {src} is not a folder")
    if out.endswith(".beton"):
        return {out: write_beton(src, out, **kw)}
    splits = [s for s in SPLITS if os.path.isdir(os.path.join(src, s))]
    if "train" not in splits:
        raise DataError(f"{src} has no train/ folder: give SRC with train/ and val/ and an output folder, "
                        f"or an output file ending in .beton to convert one class-folder tree")
    return {os.path.join(out, f"{s}.beton"): write_beton(os.path.join(src, s), os.path.join(out, f"{s}.beton"), **kw)
            for s in splits}
