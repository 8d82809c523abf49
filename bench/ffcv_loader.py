"""FFCV vs torchvision: images/s of the pretraining loader (crop_rand at 224 px) on the same images.

Writes one set of JPEG images (deterministic synthetic photos: smooth colour fields, edges and
texture, longer side 256 px, quality 90) as an ImageFolder and as a .beton (the defaults of
`run_all.py data beton`), then times both loaders with the same number of workers (torchvision:
DataLoader worker processes; FFCV: numba threads) over whole epochs, after a warm-up epoch that
pays FFCV's numba compilation and the DataLoader's worker start-up. The consumer only takes each
normalised float batch; the data are cached in --data-dir between runs.

    python bench/ffcv_loader.py                           # 2560 images, 2 workers, batch 128
    python bench/ffcv_loader.py --images 5000 --workers 8
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.errors import UserError  # noqa: E402

CLASSES = 10
ASPECTS = ((256, 192), (192, 256), (256, 256), (256, 171), (200, 256))  # (width, height): longer side 256


def synthetic_photo(i: int, res: int = 256) -> np.ndarray:
    """Image i: a lit gradient, soft blobs, one hard-edged shape and fine texture, as uint8 HWC."""
    rng = np.random.default_rng(i)
    w, h = ASPECTS[i % len(ASPECTS)]
    w, h = max(8, w * res // 256), max(8, h * res // 256)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    base = rng.uniform(0.15, 0.85, 3).astype(np.float32)
    img = base + (rng.uniform(-0.4, 0.4, 3) * (xx[..., None] * np.cos(i) + yy[..., None] * np.sin(i))).astype(np.float32)
    for _ in range(5):
        cy, cx, r = rng.uniform(0, 1, 2).tolist() + [rng.uniform(0.05, 0.3)]
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += rng.uniform(-0.5, 0.5, 3).astype(np.float32) * blob[..., None]
    (xa, xb), (ya, yb) = np.sort(rng.uniform(0, 1, 2)), np.sort(rng.uniform(0, 1, 2))
    img[(xx > xa) & (xx < xb) & (yy > ya) & (yy < yb)] *= rng.uniform(0.5, 1.5, 3).astype(np.float32)
    fx, fy = rng.uniform(20, 60, 2)
    img += 0.05 * np.sin(xx * fx + yy * fy)[..., None] + rng.normal(0, 0.02, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_data(data_dir: str, n: int, res: int, workers: int) -> tuple[str, str]:
    """(ImageFolder root, .beton path), written once per (n, res) and reused."""
    from PIL import Image

    from core.ffcv.writer import write_beton

    folder, beton = os.path.join(data_dir, "train"), os.path.join(data_dir, "train.beton")
    stamp = os.path.join(data_dir, "done.json")
    want = {"images": n, "res": res, "classes": CLASSES, "format": 1}
    if os.path.exists(stamp) and os.path.exists(beton):
        with open(stamp) as f:
            if json.load(f) == want:
                return folder, beton
    t = time.perf_counter()
    for i in range(n):
        d = os.path.join(folder, f"class{i % CLASSES:02d}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(synthetic_photo(i, res)).save(os.path.join(d, f"img{i:06d}.jpg"), quality=90)
    print(f"wrote {n} JPEGs to {folder} in {time.perf_counter() - t:.1f} s", flush=True)
    info = write_beton(folder, beton, max_res=res, workers=workers)
    print(f"wrote {beton} in {info['seconds']:.1f} s", flush=True)
    with open(stamp, "w") as f:
        json.dump(want, f)
    return folder, beton


def du_mib(path: str) -> float:
    if os.path.isfile(path):
        return os.path.getsize(path) / 2 ** 20
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) / 2 ** 20


def measure(loader, warmup_epochs: int, epochs: int) -> dict:
    """Images/s over `epochs` whole epochs after `warmup_epochs` untimed ones."""
    for e in range(warmup_epochs):
        for _ in loader.epoch(e):
            pass
    n, t = 0, time.perf_counter()
    for e in range(warmup_epochs, warmup_epochs + epochs):
        for imgs, _, _ in loader.epoch(e):
            n += imgs.shape[0]
    seconds = time.perf_counter() - t
    return {"images_per_s": n / seconds, "seconds": seconds, "images": n}


def main(argv=None) -> int:
    p = common.base_parser(__doc__)
    p.add_argument("--images", type=int, default=2560)
    p.add_argument("--res", type=int, default=256, help="longer side of the JPEGs (and the .beton's --max-res)")
    p.add_argument("--size", type=int, default=224, help="crop size")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers = FFCV threads")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    p.add_argument("--data-dir", default=None, help="where the images are cached (default: a temp folder)")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.res, args.size, args.batch, args.epochs = 64, 64, 32, 16, 1
    for name in ("images", "res", "size", "batch", "workers", "epochs"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1")
    from core.data import EpochLoader, ImageFolderImages, Transformed, pretrain_transform
    from core.ffcv.loaders import FFCVEpochLoader
    from core.ffcv.optional import require_ffcv

    require_ffcv()
    data_dir = args.data_dir or os.path.join("/tmp", f"mae-bench-ffcv-{args.images}-{args.res}")
    folder, beton = make_data(data_dir, args.images, args.res, args.workers)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    device = torch.device("cpu")
    env = common.environment(device)
    loaders = {  # built one at a time: the torchvision workers are gone before FFCV is timed
        "torchvision": lambda: EpochLoader(Transformed(ImageFolderImages(folder), pretrain_transform(
            "crop_rand", args.size, mean, std)), args.batch, seed=0, num_workers=args.workers),
        "ffcv": lambda: FFCVEpochLoader(beton, "crop_rand", args.size, args.batch, mean=mean, std=std, seed=0,
                                        num_workers=args.workers)}
    rows, common_keys = [], {"augmentation": "crop_rand", "size": args.size, "batch": args.batch,
                             "workers": args.workers, "dataset_images": args.images, "res": args.res}
    for backend, stored in (("torchvision", folder), ("ffcv", beton)):
        load_before = common.load_average()
        r = measure(loaders[backend](), warmup_epochs=1, epochs=args.epochs)
        rows.append({**env, "bench": "ffcv_loader", "quick": args.quick, "backend": backend, **common_keys, **r,
                     "stored_mib": du_mib(stored), "load_before": load_before, "load_after": common.load_average()})
    speedup = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    for r in rows:
        r["ffcv_speedup"] = speedup
    common.print_table(rows, [("backend", "loader"), ("images_per_s", "images/s"), ("images", "images timed"),
                              ("seconds", "s"), ("stored_mib", "MiB on disk"), ("load_before", "load before"),
                              ("load_after", "load after")],
                       title=f"crop_rand {args.size} px, batch {args.batch}, {args.workers} workers, "
                             f"{args.images} JPEGs (longer side {args.res}) on {env['cpu']} ({env['cpu_count']} cpus)")
    print(f"FFCV / torchvision: {speedup:.2f}x")
    if not args.no_record:
        print("records:", common.append_records(args.out_dir, "ffcv_loader", rows))
    return 0


if __name__ == "__main__":
    common.run_main(main)
