"""The .beton files: where a split's file is, its layout read and checked with numpy alone (so a
damaged file is reported on machines without ffcv too), the side-car, and single images."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import torch
from PIL import Image

from core.errors import DataError

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
        arr, label = self.pixels(i)
        return Image.fromarray(arr), label
