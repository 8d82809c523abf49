"""FFCV data: the .beton writer and fast loaders for every augmentation set (data.backend=ffcv).

A .beton holds one split: an `image` field (RGB, longer side capped at --max-res, stored as JPEG
or raw pixels) and a `label` field, plus a `<file>.json` side-car with the class order and the
images skipped as unreadable. `data.path` is a folder holding train.beton and val.beton (what
`run_all.py data beton SRC OUT_DIR` writes from SRC/train and SRC/val), or a single .beton, which
is then the training split (enough for pretraining).

The augmentation sets follow core.data.pretrain_transform; docs/ffcv.md lists the differences
(one area-interpolated resample instead of bicubic resize then crop; crops from the stored,
size-capped image). Every random draw (crop, flip, jitter) is seeded per sample from the run seed,
the sample and the first sample of its batch, and the batch order from the run seed and the epoch,
so a run sees the same batches with any number of threads and when resumed mid-epoch.

ffcv is optional: nothing here imports it until a loader is built, and a machine without it gets
one line telling how to install it. Pitfalls of ffcv 1.0.2 handled here: importing it and building
a Loader reset torch's thread count (restored); NormalizeImage after ToTensor makes the Loader
constructor spin forever on the CPU (our decoder normalises, no NormalizeImage); QuasiRandom's
order depends on the epochs drawn before (reset); a writer worker that dies leaves the writer
polling forever (workers never raise here, and the writer's two waits check the workers' exit codes).
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import multiprocessing
import multiprocessing.queues
import os
import queue
import signal
import threading
import time

import numpy as np
import torch

from core.errors import DataError, UserError

INSTALL_HINT = "install it with scripts/install_ffcv.sh (pkg-config, libopencv-dev, libturbojpeg0-dev, then pip)"
SPLITS = ("train", "val")

# The .beton layout of ffcv 1.0.2 (ffcv/types.py, ffcv/fields), read with numpy alone so that a
# damaged file is reported on machines without ffcv too.
FORMAT_VERSION = 2
HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
                   ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")], align=True)
FIELD_DESC = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True)
ALLOC = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
RGB_META = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
INT_META = np.dtype("<i8")
METADATA = np.dtype([("", RGB_META), ("", INT_META)], align=True)  # fields f0 (image), f1 (label)
FIELDS = (("image", 2), ("label", 1))  # (name, ffcv type id of RGBImageField / IntField)
JPG, RAW = 0, 1


# --------------------------------------------------------------------------- ffcv import

@contextlib.contextmanager
def keep_torch_threads():
    """ffcv sets torch's thread count on import and in every Loader call; training must keep its own."""
    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)


def ffcv_available() -> bool:
    try:
        require_ffcv()
        return True
    except UserError:
        return False


@functools.lru_cache(maxsize=1)
def _import_ffcv():
    with keep_torch_threads():
        import ffcv  # noqa: F401
        import ffcv.loader  # noqa: F401
        import ffcv.writer  # noqa: F401
    return ffcv


def require_ffcv():
    """The ffcv module, or a one-line UserError with the install hint."""
    try:
        return _import_ffcv()
    except ImportError as e:  # also a missing libturbojpeg/opencv shared library under ffcv
        raise UserError(f"data.backend=ffcv needs the ffcv package, which cannot be imported ({e}); "
                        f"{INSTALL_HINT}") from None


# --------------------------------------------------------------------------- .beton files

def beton_path(data_cfg, split: str) -> str:
    """The .beton of `split`: data.path/<split>.beton, or data.path itself if it is a file (train)."""
    path = data_cfg.path
    if not path:
        raise DataError("data.path is required for data.backend=ffcv (a folder with train.beton and val.beton, "
                        "or one .beton for pretraining)")
    if path.endswith(".beton") or os.path.isfile(path):
        if split != "train":
            raise DataError(f"data.path={path} is a single .beton (the training split); the {split} split needs "
                            f"data.path=DIR holding train.beton and {split}.beton")
        return path
    return os.path.join(path, f"{split}.beton")


def read_layout(path: str) -> dict:
    """Header, metadata and allocation table of a .beton, checked so that a damaged or truncated
    file is a one-line DataError here rather than a crash (or a read past the end) in a loader."""
    if not os.path.exists(path):
        raise DataError(f".beton file {path} does not exist (write one with: python run_all.py data beton SRC OUT)")
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, not a .beton file")
    size = os.path.getsize(path)
    if size < HEADER.itemsize:
        raise DataError(f"{path} is empty or not a .beton file ({size} bytes)")
    header = np.fromfile(path, dtype=HEADER, count=1)[0]
    if header["version"] != FORMAT_VERSION:
        raise DataError(f"{path} is not an FFCV .beton of format {FORMAT_VERSION} (version field {header['version']})")
    n_fields, n = int(header["num_fields"]), int(header["num_samples"])
    meta_start = HEADER.itemsize + n_fields * FIELD_DESC.itemsize
    if size < meta_start:
        raise DataError(f"{path} is truncated ({size} bytes, its header alone needs {meta_start})")
    desc = np.fromfile(path, dtype=FIELD_DESC, count=n_fields, offset=HEADER.itemsize)
    found = tuple((bytes(d["name"]).split(b"\0")[0].decode("ascii", "replace"), int(d["type_id"])) for d in desc)
    if found != FIELDS:
        raise DataError(f"{path} has fields {[f[0] for f in found]}, not an image and a label field "
                        f"(write it with: python run_all.py data beton SRC OUT)")
    if n == 0:
        raise DataError(f"{path} holds no images")
    table_at = int(header["alloc_table_ptr"])
    data_start = meta_start + n * METADATA.itemsize
    if table_at < data_start or size < table_at or (size - table_at) % ALLOC.itemsize:
        raise DataError(f"{path} is truncated or damaged ({size} bytes; its allocation table starts at byte "
                        f"{table_at}); write it again")
    metadata = np.fromfile(path, dtype=METADATA, count=n, offset=meta_start)
    table = np.fromfile(path, dtype=ALLOC, offset=table_at)
    order = np.argsort(table["ptr"])
    ptrs, sizes = table["ptr"][order], table["size"][order]
    img = metadata["f0"]
    where = np.minimum(np.searchsorted(ptrs, img["data_ptr"]), max(len(ptrs) - 1, 0))
    if len(ptrs) == 0 or not np.array_equal(ptrs[where], img["data_ptr"]) or int((ptrs + sizes).max()) > table_at:
        raise DataError(f"{path} is truncated or damaged (image data missing from its allocation table); write it again")
    return {"header": header, "metadata": metadata, "ptrs": ptrs, "sizes": sizes, "num_samples": n}


def check_beton(path: str) -> int:
    """Number of images of a readable .beton; DataError naming the problem otherwise."""
    return read_layout(path)["num_samples"]


def sidecar_path(path: str) -> str:
    return path + ".json"


def read_sidecar(path: str) -> dict:
    """Class order and skipped images written next to a .beton (empty if another tool wrote it)."""
    try:
        with open(sidecar_path(path)) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {sidecar_path(path)}: {e}") from None


def good_indices(path: str, n: int) -> np.ndarray | None:
    """Indices of the images to load: all but those the writer could not read (None: all)."""
    skipped = read_sidecar(path).get("skipped", [])
    if not skipped:
        return None
    return np.setdiff1d(np.arange(n), np.asarray(skipped, dtype=np.int64))


class BetonImages(torch.utils.data.Dataset):
    """The images of a .beton as a core.data-style dataset (`load(i)` -> (PIL image, label)), for
    code that needs single images (e.g. fitting a PCA target) rather than the fast loader."""

    def __init__(self, path: str):
        layout = read_layout(path)
        self.path, self.n = path, layout["num_samples"]
        self.meta, self.ptrs, self.sizes = layout["metadata"], layout["ptrs"], layout["sizes"]
        keep = good_indices(path, self.n)
        self.indices = np.arange(self.n) if keep is None else keep
        side = read_sidecar(path)
        labels = self.meta["f1"]
        self.classes = side.get("classes") or [str(i) for i in range(int(labels.max()) + 1)]
        self._mmap = None

    def __len__(self):
        return len(self.indices)

    def __getstate__(self):  # DataLoader workers open their own map
        return {**self.__dict__, "_mmap": None}

    def pixels(self, i: int) -> tuple[np.ndarray, int]:
        """(uint8 HWC RGB array, label) of the i-th readable image."""
        from PIL import Image

        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        j = int(self.indices[i])
        m = self.meta[j]
        img, label = m["f0"], int(m["f1"])
        ptr = int(img["data_ptr"])
        size = int(self.sizes[np.searchsorted(self.ptrs, ptr)])
        data = self._mmap[ptr:ptr + size]
        h, w = int(img["height"]), int(img["width"])
        if img["mode"] == RAW:
            return np.array(data).reshape(h, w, 3), label
        with Image.open(io.BytesIO(data.tobytes())) as im:
            return np.asarray(im.convert("RGB")), label

    def load(self, i: int):
        from PIL import Image

        arr, label = self.pixels(i)
        return Image.fromarray(arr), label


# --------------------------------------------------------------------------- writer

class _FolderForWriter:
    """ImageFolder samples as (uint8 HWC array, label) for ffcv's writer workers. It never raises:
    a worker that raised would leave ffcv's writer waiting forever. An unreadable image becomes a
    1x1 placeholder and a marker file; the loaders leave such images out."""

    def __init__(self, folder, max_res: int, bad_dir: str):
        self.folder, self.max_res, self.bad_dir = folder, max_res, bad_dir

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, i):
        from PIL import Image

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


# A writer worker that dies (e.g. killed for memory) leaves ffcv's writer waiting forever: its main
# thread polls a done-counter with sleep(0.1), then blocks on each worker's allocations queue. Both
# waits are replaced below by ones that check the workers' exit codes on that same thread. (An earlier
# watchdog thread called _thread.interrupt_main(), which does nothing where SIGINT is ignored, as in
# every job a non-interactive shell starts with '&' or nohup: there the conversion hung.)

class _WorkerDied(Exception):
    pass


class _TrackedProcess(multiprocessing.Process):
    """ffcv.writer's Process, remembered as it starts, so that a worker that died is noticed."""
    started: list = []

    def start(self):
        super().start()
        _TrackedProcess.started.append(self)


def _check_workers():
    for p in _TrackedProcess.started:
        code = p.exitcode  # waitpid(WNOHANG): needs SIGCHLD not ignored (write_beton sees to it)
        if code not in (None, 0):
            raise _WorkerDied(code)


def _watching_sleep(seconds: float):
    """ffcv's progress loop (`while done != num_samples: sleep(0.1)`) with a look at the workers."""
    time.sleep(seconds)
    _check_workers()


class _WatchedQueue(multiprocessing.queues.Queue):
    """ffcv's Queue: in the process that made it, a blocking get() polls and checks the workers, so
    a worker that died before handing over its allocations is an error, not a wait forever."""
    made: list = []

    def __init__(self, maxsize: int = 0):
        super().__init__(maxsize, ctx=multiprocessing.get_context())
        self._owner = os.getpid()
        _WatchedQueue.made.append(self)

    def get(self, block=True, timeout=None):
        if not block or timeout is not None or getattr(self, "_owner", None) != os.getpid():
            return super().get(block, timeout)
        while True:
            try:
                return super().get(timeout=0.2)
            except queue.Empty:
                _check_workers()


def write_beton(src: str, out: str, *, max_res: int = 256, jpeg_quality: int = 90, compress_prob: float = 0.5,
                workers: int | None = None, on_corrupt: str = "skip") -> dict:
    """Convert one ImageFolder split (class sub-folders) into `out` (.beton + .json side-car).
    The file appears only when complete; returns the side-car's summary."""
    from core.data import ImageFolderImages

    _check_writer_args(max_res, jpeg_quality, compress_prob, workers)
    folder = ImageFolderImages(src, "skip")  # DataError for a missing or empty folder
    ffcv = require_ffcv()
    from ffcv.fields import IntField, RGBImageField

    workers = workers or max(1, min(len(os.sched_getaffinity(0)), 16))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp-{os.getpid()}"
    bad_dir = tmp + ".bad"
    os.makedirs(bad_dir, exist_ok=True)
    fields = {"image": RGBImageField(write_mode="proportion", max_resolution=max_res, jpeg_quality=jpeg_quality,
                                     compress_probability=compress_prob),
              "label": IntField()}
    t0 = time.perf_counter()
    _TrackedProcess.started, _WatchedQueue.made = [], []
    try:
        writer = ffcv.writer.DatasetWriter(tmp, fields, page_size=_page_size(max_res), num_workers=workers)
        saved = ffcv.writer.Process, ffcv.writer.Queue, ffcv.writer.sleep
        ffcv.writer.Process, ffcv.writer.Queue, ffcv.writer.sleep = _TrackedProcess, _WatchedQueue, _watching_sleep
        reap = threading.current_thread() is threading.main_thread()  # a SIGCHLD ignored by our parent would
        old_chld = signal.signal(signal.SIGCHLD, signal.SIG_DFL) if reap else None  # hide the exit codes
        try:
            writer.from_indexed_dataset(_FolderForWriter(folder, max_res, bad_dir), chunksize=64)
        except _WorkerDied as e:
            for p in _TrackedProcess.started:
                p.terminate()
            for q in _WatchedQueue.made:  # work nobody will read: exit without flushing it into a pipe
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
    from importlib.metadata import version

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


# --------------------------------------------------------------------------- pipeline operations

def _sample_seed(salt, first, index):
    """Seed of one sample's draws (numba): a function of the run, the sample and its batch, so
    the same batch gets the same views on any thread, and a new batch (new epoch) new ones."""
    h = np.int64(salt) * np.int64(1_000_003) + np.int64(first)
    h = h * np.int64(10_000_019) + np.int64(index)
    return np.uint32(h % np.int64(4_294_967_291))


def _fixed_crop(height, width, frac, _):
    """crop_fixed: a square of frac x the shorter side at a uniform random position (= resize the
    shorter side to size/frac, then a random size x size crop)."""
    c = max(1, int(round(frac * min(height, width))))
    i = np.random.randint(0, height - c + 1)
    j = np.random.randint(0, width - c + 1)
    return i, j, c, c


def _flip(img):
    """Mirror one HWC image left-right in place (numba)."""
    w = img.shape[1]
    for y in range(img.shape[0]):
        for x in range(w // 2):
            for c in range(img.shape[2]):
                img[y, x, c], img[y, w - 1 - x, c] = img[y, w - 1 - x, c], img[y, x, c]


def _jitter_one(src, dst, seed, b, c, s):
    """ColorJitter of one uint8 HWC image (numba): brightness (op 0), contrast (1), saturation (2)
    with factors uniform in [max(0, 1-x), 1+x], in a random order, drawn from `seed`."""
    np.random.seed(seed)
    order = np.random.permutation(3)
    factors = np.empty(3)
    factors[0] = np.random.uniform(max(0.0, 1 - b), 1 + b)
    factors[1] = np.random.uniform(max(0.0, 1 - c), 1 + c)
    factors[2] = np.random.uniform(max(0.0, 1 - s), 1 + s)
    img = src.astype(np.float32)
    hh, ww = img.shape[0], img.shape[1]
    gray = np.empty((hh, ww), np.float32)
    for k in range(3):
        op, f = order[k], np.float32(factors[order[k]])
        total = 0.0
        for y in range(hh):
            for x in range(ww):
                g = np.float32(0.299) * img[y, x, 0] + np.float32(0.587) * img[y, x, 1] + np.float32(0.114) * img[y, x, 2]
                gray[y, x] = g
                total += g
        mean = np.float32(np.floor(total / (hh * ww) + 0.5))
        for y in range(hh):
            for x in range(ww):
                for ch in range(3):
                    v = img[y, x, ch]
                    if op == 0:
                        v = f * v
                    elif op == 1:
                        v = f * v + (1 - f) * mean
                    else:
                        v = f * v + (1 - f) * gray[y, x]
                    img[y, x, ch] = min(max(np.floor(v + np.float32(0.5)), np.float32(0.0)), np.float32(255.0))
    for y in range(hh):
        for x in range(ww):
            for ch in range(3):
                dst[y, x, ch] = np.uint8(img[y, x, ch])


def _normalise_chw(src, dst, mul, add):
    """uint8 HWC -> normalised float32 CHW (numba)."""
    for y in range(src.shape[0]):
        for x in range(src.shape[1]):
            for c in range(3):
                dst[c, y, x] = src[y, x, c] * mul[c] + add[c]


@functools.lru_cache(maxsize=None)
def _jit(fn):
    """One numba dispatcher per helper, cached on disk: each Loader recompiles its own pipeline
    (seconds), but not these."""
    import numba

    return numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")(fn)


@functools.lru_cache(maxsize=1)
def _ops():
    """Our ffcv decoder, defined on first use so that this module imports without ffcv."""
    from dataclasses import replace

    from ffcv.fields.rgb_image import (IMAGE_MODES, ResizedCropRGBImageDecoder, get_center_crop,
                                       get_random_crop)
    from ffcv.libffcv import imdecode, resize_crop
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler

    crops = {"random_resized": get_random_crop, "center": get_center_crop, "fixed": _fixed_crop}

    class SeededCropDecoder(ResizedCropRGBImageDecoder):
        """Decode, crop (random_resized: scale/ratio; center: ratio of the shorter side; fixed:
        frac of the shorter side at a random place), resize to output_size, optionally flip and
        colour-jitter (brightness, contrast, saturation strengths), and write normalised float32
        CHW: one parallel loop (each loop costs seconds of numba compilation per Loader), and
        the normalisation costs a pass over uint8 pixels in the worker threads rather than a
        strided float copy on the training thread."""

        def __init__(self, output_size, crop: str, scale, ratio, flip: bool, salt: int, mean, std, jitter=None):
            super().__init__(output_size)
            self.crop, self.scale, self.ratio, self.flip, self.salt = crop, scale, ratio, flip, salt
            self.jitter = jitter
            std = np.asarray(std, dtype=np.float32)
            self.mul = (1.0 / (255.0 * std)).astype(np.float32)  # (x/255 - mean)/std = x*mul + add
            self.add = (-np.asarray(mean, dtype=np.float32) / std).astype(np.float32)

        @property
        def get_crop_generator(self):
            return crops[self.crop]

        def declare_state_and_memory(self, previous_state):
            state, (_, decoded) = super().declare_state_and_memory(previous_state)
            h, w = self.output_size
            out = (3, h, w)
            return (replace(state, shape=out, dtype=np.dtype("<f4")),
                    (AllocationQuery(out, np.dtype("<f4")), decoded, AllocationQuery((h, w, 3), np.dtype("<u1"))))

        def generate_code(self):
            jpg = IMAGE_MODES["jpg"]
            mem_read, my_range = self.memory_read, Compiler.get_iterator()
            imdecode_c, resize_crop_c = Compiler.compile(imdecode), Compiler.compile(resize_crop)
            get_crop_c, seed_c, flip_c = _jit(self.get_crop_generator), _jit(_sample_seed), _jit(_flip)
            jitter_c, chw_c = _jit(_jitter_one), _jit(_normalise_chw)
            scale = np.array(self.scale, dtype=np.float64) if isinstance(self.scale, tuple) else float(self.scale)
            ratio = np.array(self.ratio, dtype=np.float64) if isinstance(self.ratio, tuple) else float(self.ratio)
            flip, salt, mul, add = self.flip, self.salt, self.mul, self.add
            do_jitter = self.jitter is not None
            jb, jc, js = self.jitter or (0.0, 0.0, 0.0)

            def decode(batch_indices, my_storage, metadata, storage_state):
                destination, temp_storage, crop_storage = my_storage
                first = batch_indices[0]
                for dst_ix in my_range(len(batch_indices)):
                    source_ix = batch_indices[dst_ix]
                    np.random.seed(seed_c(salt, first, source_ix))  # numba's per-thread generator
                    field = metadata[source_ix]
                    image_data = mem_read(field["data_ptr"], storage_state)
                    height, width = np.uint32(field["height"]), np.uint32(field["width"])
                    if field["mode"] == jpg:
                        temp_buffer = temp_storage[dst_ix]
                        imdecode_c(image_data, temp_buffer, height, width, height, width, 0, 0, 1, 1, False, False)
                        temp_buffer = temp_buffer.reshape(-1)[:3 * height * width].reshape(height, width, 3)
                    else:
                        temp_buffer = image_data.reshape(height, width, 3)
                    i, j, h, w = get_crop_c(height, width, scale, ratio)
                    crop = crop_storage[dst_ix]
                    resize_crop_c(temp_buffer, i, i + h, j, j + w, crop)
                    if flip and np.random.random() < 0.5:
                        flip_c(crop)
                    if do_jitter:  # in place, on a random stream of its own
                        jitter_c(crop, crop, seed_c(salt, first, source_ix) ^ np.uint32(0x5BD1E995), jb, jc, js)
                    chw_c(crop, destination[dst_ix], mul, add)
                return destination[:len(batch_indices)]

            decode.is_parallel = True
            return decode

    return SeededCropDecoder


# --------------------------------------------------------------------------- loaders

def image_pipeline(kind: str, size: int, seed: int, mean, std) -> list:
    """The ffcv operations of one augmentation set (core.data.pretrain_transform's names) or of
    evaluation ('val': resize to size/0.875 + center crop; 'linprobe': RandomResizedCrop + flip),
    ending in normalised float32 NCHW tensors. The decoder normalises: ffcv's NormalizeImage
    after ToTensor would make the Loader constructor spin forever on the CPU (an ffcv bug)."""
    from core.data import COLOR_JITTER

    require_ffcv()
    from ffcv.transforms import ToTensor

    Decoder = _ops()
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
    elif kind == "val":
        decoder = Decoder(out, "center", 0.0, size / round(size / 0.875), False, salt, **norm)
    elif kind == "linprobe":
        decoder = Decoder(out, "random_resized", (0.08, 1.0), (3 / 4, 4 / 3), True, salt, **norm)
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


def ffcv_eval_loader(cfg, split: str, kind: str, batch_size: int, dist=None, *, shuffle: bool | None = None,
                     drop_last: bool | None = None, seed: int | None = None, device="cpu") -> FFCVEpochLoader:
    """Evaluation loaders: kind 'val' (resize + center crop, in file order, every image) or
    'linprobe' (RandomResizedCrop + flip, shuffled, whole batches), from data.path/<split>.beton."""
    if kind not in ("val", "linprobe"):
        raise DataError(f"unknown evaluation loader kind {kind!r} (val | linprobe)")
    d = cfg.data
    shuffle = kind != "val" if shuffle is None else shuffle
    return FFCVEpochLoader(beton_path(d, split), kind, cfg.model.img_size, batch_size, mean=d.mean, std=d.std,
                           seed=cfg.eval.seed if seed is None else seed, shuffle=shuffle,
                           drop_last=shuffle if drop_last is None else drop_last, num_workers=d.num_workers,
                           os_cache=d.ffcv_os_cache, world=dist.world if dist is not None else 1, device=device)
