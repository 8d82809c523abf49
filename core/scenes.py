"""Digit scenes: scikit-learn's 8x8 digit glyphs composed into larger images, so that raw pixels say
less about the label while the label stays learnable (docs/testbed.md).

Each scene is one labelled glyph at a random position and size, drawn last over a background that may
hold clutter (fragments of other glyphs of the same split), a texture, noise and colours. Train and val
scenes come from disjoint glyph sets. Everything is integer arithmetic on a seeded numpy Generator
(PCG64): the same pixels on every CPU, and torch's global RNG is never touched.

The constants below are the dataset (docs/testbed.md, design M: a white glyph of 16-24 px anywhere on
black). The clutter, texture, noise and colour constants are the levers bench/testbed_designs.py
measured; every colour or clutter tried made the MAE's linear probe read chance at the tiny budget,
so they are off. Changing any constant makes another dataset: it takes a new VERSION and a new
data.dataset name, since run ids hash the name, not these values.
"""
from __future__ import annotations

import functools

import numpy as np

VERSION = 1
VAL_FRACTION = 5  # one glyph in 5 of each class is a val glyph (the digits split's 80/20)
TRAIN_SCENES = 1440  # 45 batches of 32: one epoch costs what an epoch of the 1438 digits did
VAL_SCENES_PER_GLYPH = 6  # 355 val glyphs x 6 = 2130 val scenes: a smaller evaluation noise
GLYPH_SIDE = (16, 24)  # the labelled glyph's side on a 32 px canvas, inclusive (2x to 3x the 8x8 glyph)
FRAGMENTS = 0  # clutter: crops of other glyphs, FRAGMENT_SIDE glyph pixels a side, at the glyph's scales
FRAGMENT_SIDE = (3, 6)
TEXTURE_GRID = 4  # the background: a colour, a bilinear 4x4 texture of +-TEXTURE and pixel noise +-NOISE
TEXTURE, NOISE = 0, 0
BG_MAX = 1  # background colours (each channel) are drawn below this: 1 = black
POLARITY, LIFT = "light", 255  # glyphs LIFT..LIFT+64 above the background, capped at 255 (or mod 256: "any")
GREY = False  # one value for the three channels
CANVAS = 32  # the sizes above are for this canvas; other image sizes scale them


def split_glyphs(targets: np.ndarray) -> dict[str, np.ndarray]:
    """Glyph indices of each split: per class, a seeded permutation's first fifth is val. Disjoint."""
    rng = np.random.default_rng([VERSION, 0])
    train, val = [], []
    for c in range(10):
        idx = np.flatnonzero(targets == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = len(idx) // VAL_FRACTION
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return {"train": np.sort(np.concatenate(train)), "val": np.sort(np.concatenate(val))}


def _axis(d0: np.ndarray, dn: np.ndarray, s0: np.ndarray, sn: np.ndarray, size: int):
    """Bilinear sampling along one axis, in integers: canvas pixels 0..size-1 of a box starting at d0,
    dn pixels long, showing source pixels s0..s0+sn-1 (align_corners=False, as torch's resize).
    Returns the two source indices and their weights (out of 2*dn), zero outside the box and window."""
    d = np.arange(size)[None, :] - d0[:, None]  # (N, size) position inside the box
    num = (2 * d + 1) * sn[:, None] - dn[:, None]  # source coordinate x 2*dn, relative to s0
    two = 2 * dn[:, None]
    i0 = num // two
    frac = num - i0 * two
    inside = (d >= 0) & (d < dn[:, None])
    idx, w = [], []
    for k, wk in ((i0, two - frac), (i0 + 1, frac)):
        ok = inside & (k >= 0) & (k < sn[:, None])
        idx.append(np.where(ok, s0[:, None] + k, 0))
        w.append(np.where(ok, wk, 0))
    return idx, w


def _resample(src: np.ndarray, win: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """src (N, h, w) integers; win (N, 4) source rows/cols (top, left, height, width); box (N, 4) the
    canvas box (top, left, height, width) -> (N, size, size) int64 bilinear values x (2h_box)(2w_box)."""
    n = np.arange(len(src))[:, None, None]
    ry, wy = _axis(box[:, 0], box[:, 2], win[:, 0], win[:, 2], size)
    rx, wx = _axis(box[:, 1], box[:, 3], win[:, 1], win[:, 3], size)
    out = np.zeros((len(src), size, size), np.int64)
    for a in range(2):
        for b in range(2):
            out += wy[a][:, :, None] * wx[b][:, None, :] * src[n, ry[a][:, :, None], rx[b][:, None, :]]
    return out


def _paste(canvas: np.ndarray, glyphs: np.ndarray, win: np.ndarray, box: np.ndarray, colour: np.ndarray):
    """Composite glyph windows (values 0..16 = opacity) in `colour` over canvas (N, 3, S, S) int64."""
    size = canvas.shape[-1]
    acc = _resample(glyphs, win, box, size)
    den = (16 * 4 * box[:, 2] * box[:, 3])[:, None, None]
    alpha = ((acc * 255 + den // 2) // den)[:, None]  # 0..255
    canvas[:] = (canvas * (255 - alpha) + colour[:, :, None, None] * alpha + 127) // 255


def _contrasting(rng: np.random.Generator, bg: np.ndarray) -> np.ndarray:
    """A colour LIFT..LIFT+64 above the background in every channel (mod 256 when POLARITY is
    "any", which makes it lighter or darker): always visible."""
    c = bg + LIFT + rng.integers(0, 65, bg.shape)
    if GREY:
        c = np.repeat(c[:, :1], 3, 1)
    return c % 256 if POLARITY == "any" else np.minimum(c, 255)


def _scaled(v: int, size: int) -> int:
    return max(1, (v * size + CANVAS // 2) // CANVAS)


def render(glyphs: np.ndarray, main: np.ndarray, size: int, seed: int) -> np.ndarray:
    """uint8 (N, 3, size, size) scenes of glyphs[main[i]] over clutter of the other glyphs of `glyphs`."""
    rng = np.random.default_rng([VERSION, seed])
    n, pool = len(main), len(glyphs)
    lo, hi = _scaled(GLYPH_SIDE[0], size), _scaled(GLYPH_SIDE[1], size)
    # background: a colour, a smooth texture per channel, pixel noise
    bg = rng.integers(0, BG_MAX, (n, 3))
    if GREY:
        bg = np.repeat(bg[:, :1], 3, 1)
    tex = rng.integers(-TEXTURE, TEXTURE + 1, (n * 3, TEXTURE_GRID, TEXTURE_GRID))
    full = np.tile([0, 0, TEXTURE_GRID, TEXTURE_GRID], (n * 3, 1))
    canvas_box = np.tile([0, 0, size, size], (n * 3, 1))
    smooth = _resample(tex, full, canvas_box, size) // (4 * size * size)
    canvas = bg[:, :, None, None] + smooth.reshape(n, 3, size, size)
    canvas = np.clip(canvas + rng.integers(-NOISE, NOISE + 1, canvas.shape), 0, 255)
    # clutter: fragments of other glyphs, partly off the canvas
    for _ in range(FRAGMENTS):
        other = (main + rng.integers(1, pool, n)) % pool
        side = rng.integers(FRAGMENT_SIDE[0], FRAGMENT_SIDE[1] + 1, (n, 2))
        top_left = rng.integers(0, 8 - side + 1)
        win = np.concatenate([top_left, side], 1)
        dside = side * rng.integers(lo, hi + 1, (n, 1)) // 8
        dpos = rng.integers(-dside // 2, size - dside // 2 + 1)
        _paste(canvas, glyphs[other], win, np.concatenate([dpos, dside], 1), _contrasting(rng, bg))
    # the labelled glyph, whole and on the canvas
    side = rng.integers(lo, hi + 1, (n, 1))
    pos = rng.integers(0, size - side + 1, (n, 2))
    win = np.tile([0, 0, 8, 8], (n, 1))
    _paste(canvas, glyphs[main], win, np.concatenate([pos, side, side], 1), _contrasting(rng, bg))
    return canvas.astype(np.uint8)


@functools.lru_cache(maxsize=4)
def scenes(split: str, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, size, size), labels, glyph index of each scene) of split 'train' or 'val'.
    Train: TRAIN_SCENES scenes, one each of the first 1440 of the 1442 train glyphs; val: every val glyph
    VAL_SCENES_PER_GLYPH times."""
    from sklearn.datasets import load_digits  # heavy (~7 s to import here): only the digit datasets need it

    d = load_digits()
    split_idx = split_glyphs(d.target)[split]
    count = TRAIN_SCENES if split == "train" else VAL_SCENES_PER_GLYPH * len(split_idx)
    main = np.arange(count) % len(split_idx)  # every glyph of the split once before any twice
    images = render(d.images.astype(np.int64)[split_idx], main, size, 1 if split == "train" else 2)
    return images, d.target[split_idx][main], split_idx[main]
