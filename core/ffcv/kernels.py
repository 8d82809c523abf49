"""The numba kernels of the FFCV decoder (core/ffcv/decoder.py): per-sample seeds, the fixed crop,
flip, colour jitter and normalisation, each compiled once and cached on disk."""
from __future__ import annotations

import functools

import numpy as np


def sample_seed(salt, first, index):
    """Seed of one sample's draws (numba): a function of the run, the sample and its batch, so
    the same batch gets the same views on any thread, and a new batch (new epoch) new ones."""
    h = np.int64(salt) * np.int64(1_000_003) + np.int64(first)
    h = h * np.int64(10_000_019) + np.int64(index)
    return np.uint32(h % np.int64(4_294_967_291))


def fixed_crop(height, width, frac, _):
    """crop_fixed: a square of frac x the shorter side at a uniform random position (= resize the
    shorter side to size/frac, then a random size x size crop)."""
    c = max(1, int(round(frac * min(height, width))))
    i = np.random.randint(0, height - c + 1)
    j = np.random.randint(0, width - c + 1)
    return i, j, c, c


def flip_lr(img):
    """Mirror one HWC image left-right in place (numba)."""
    w = img.shape[1]
    for y in range(img.shape[0]):
        for x in range(w // 2):
            for c in range(img.shape[2]):
                img[y, x, c], img[y, w - 1 - x, c] = img[y, w - 1 - x, c], img[y, x, c]


def jitter_one(src, dst, seed, b, c, s):
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


def normalise_chw(src, dst, mul, add):
    """uint8 HWC -> normalised float32 CHW (numba)."""
    for y in range(src.shape[0]):
        for x in range(src.shape[1]):
            for c in range(3):
                dst[c, y, x] = src[y, x, c] * mul[c] + add[c]


@functools.lru_cache(maxsize=None)
def jit(fn):
    """One numba dispatcher per helper, cached on disk: each Loader recompiles its own pipeline
    (seconds), but not these."""
    import numba  # optional dependency (installed with ffcv): compiled only when a loader is built

    return numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")(fn)
