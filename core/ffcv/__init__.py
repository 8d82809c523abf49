"""FFCV data (data.backend=ffcv): the .beton format, its writer, and fast loaders for every
augmentation set. docs/ffcv.md has the why of each choice and the measured speed.

A .beton holds one split: an `image` field (RGB, longer side capped at --max-res, stored as JPEG
or raw pixels) and a `label` field, plus a `<file>.json` side-car with the class order and the
images skipped as unreadable. `data.path` is a folder holding train.beton and val.beton (what
`run_all.py data beton SRC OUT_DIR` writes from SRC/train and SRC/val), or a single .beton, which
is then the training split (enough for pretraining).

One file per job: optional.py (import ffcv on first use, or one line with the install hint),
beton.py (the file format, read with numpy alone; core.data builds datasets from it), writer.py
(ImageFolder -> .beton) with watchdog.py (a writer worker that dies is an error, not a hang),
kernels.py (numba kernels), decoder.py (the seeded crop decoder built on them) and loaders.py
(the epoch loader pretraining reads).
"""
