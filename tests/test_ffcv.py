"""FFCV backend: .beton round trip, every augmentation set in both backends, damaged input,
reproducible order, a pretraining run on a .beton, and the Loader-constructor hang guard.

Each ffcv Loader compiles its pipeline with numba (seconds), so the tests build few of them.
Without ffcv they skip, unless MAE_REQUIRE_FFCV=1 (CI), where they fail.
"""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import build_config
from core.errors import DataError, UserError

REQUIRE = os.environ.get("MAE_REQUIRE_FFCV") == "1"
SIZE = 32
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


@pytest.fixture(scope="session")
def ffcv():
    from core.ffcv.optional import require_ffcv

    try:
        return require_ffcv()
    except UserError as e:
        if REQUIRE:
            pytest.fail(f"MAE_REQUIRE_FFCV=1 but {e}")
        pytest.skip(f"ffcv is not importable ({e}); set MAE_REQUIRE_FFCV=1 to make this a failure")


def natural(rng, h, w):
    """Smooth colour blobs over a gradient with a little noise: resampling-friendly like photos."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([rng.uniform(0.2, 0.8) + rng.uniform(-0.3, 0.3) * (xx if c % 2 else yy) for c in range(3)], -1)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
        img += rng.uniform(-0.4, 0.4, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
    img += rng.normal(0, 0.01, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def make_folder(root, n, sizes, classes=3, seed=0):
    """An ImageFolder of n PNGs; returns the images and labels in ImageFolder order."""
    rng = np.random.default_rng(seed)
    by_class = {c: [] for c in range(classes)}
    for i in range(n):
        c = i % classes
        h, w = sizes[i % len(sizes)]
        img = natural(rng, h, w)
        os.makedirs(root / f"class{c}", exist_ok=True)
        Image.fromarray(img).save(root / f"class{c}" / f"img{i:04d}.png")
        by_class[c].append((f"img{i:04d}.png", img))
    imgs, labels = [], []
    for c in range(classes):
        for _, img in sorted(by_class[c], key=lambda t: t[0]):
            imgs.append(img)
            labels.append(c)
    return imgs, labels


@pytest.fixture(scope="module")
def betons(ffcv, tmp_path_factory):
    """SRC/train and SRC/val of varied sizes and aspect ratios, written as OUT/{train,val}.beton."""
    from core.ffcv.writer import convert

    tmp = tmp_path_factory.mktemp("ffcv")
    sizes = [(40, 56), (64, 48), (36, 36), (50, 70)]
    make_folder(tmp / "src" / "train", 96, sizes, seed=1)
    make_folder(tmp / "src" / "val", 24, sizes, seed=2)
    written = convert(str(tmp / "src"), str(tmp / "out"), max_res=64, workers=2)
    assert sorted(os.path.basename(p) for p in written) == ["train.beton", "val.beton"]
    return tmp


def ffcv_cfg(path, *overrides):
    return build_config("tiny", ["data.dataset=imagefolder", "data.backend=ffcv", f"data.path={path}",
                                 f"model.img_size={SIZE}", "data.num_workers=2", f"data.mean={MEAN}",
                                 f"data.std={STD}", *overrides])


def value_range():
    lo = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    hi = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    return lo.view(1, 3, 1, 1) - 1e-4, hi.view(1, 3, 1, 1) + 1e-4


def check_batch(x, y, batch):
    lo, hi = value_range()
    assert x.shape == (batch, 3, SIZE, SIZE) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.shape == (batch,) and y.dtype == torch.int64 and set(y.tolist()) <= {0, 1, 2}
    assert torch.isfinite(x).all() and (x >= lo).all() and (x <= hi).all()
    assert x.std() > 0.1  # real pixels, not a constant


def same(batches, ref):
    batches = list(batches)
    return len(batches) == len(ref) and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
                                            for p, q in zip(batches, ref))


def unnormalise(x):
    return (x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255


# --------------------------------------------------------------------------- tests

@pytest.mark.timeout(300)
def test_labels_and_pixels_round_trip(ffcv, tmp_path):
    from core.ffcv.beton import BetonImages, read_sidecar
    from core.ffcv.loaders import FFCVEpochLoader
    from core.ffcv.writer import write_beton

    imgs, labels = make_folder(tmp_path / "src", 20, [(SIZE, SIZE)], classes=4)
    raw, jpg = str(tmp_path / "raw.beton"), str(tmp_path / "jpg.beton")
    write_beton(str(tmp_path / "src"), raw, compress_prob=0.0, workers=2)  # raw pixels: exact
    write_beton(str(tmp_path / "src"), jpg, compress_prob=1.0, jpeg_quality=95, workers=2)
    assert read_sidecar(raw)["classes"] == ["class0", "class1", "class2", "class3"]

    ds = BetonImages(raw)  # what build_dataset gives for data.backend=ffcv (e.g. the PCA target's fit)
    assert len(ds) == 20 and ds.classes == ["class0", "class1", "class2", "class3"]
    pil, label = ds.load(5)
    assert pil.mode == "RGB" and np.array_equal(np.asarray(pil), imgs[5]) and label == labels[5]
    for i in range(20):
        pixels, label = ds.pixels(i)
        assert label == labels[i] and np.array_equal(pixels, imgs[i])
    ds = BetonImages(jpg)
    err = np.mean([np.abs(ds.pixels(i)[0].astype(float) - imgs[i]).mean() for i in range(20)])
    assert 0 < err < 3  # JPEG at quality 95: close, not identical

    # through the fast loader, in file order: a centre crop of a square image at its own size is the image
    loader = FFCVEpochLoader(raw, "none", SIZE, 8, mean=MEAN, std=STD, shuffle=False, drop_last=False, num_workers=2)
    batches = list(loader.epoch(0))
    assert loader.steps_per_epoch == 3 and [len(b[1]) for b in batches] == [8, 8, 4]
    got = torch.cat([unnormalise(b[0]) for b in batches]).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.cat([b[1] for b in batches]).tolist() == labels
    assert torch.equal(got, torch.from_numpy(np.stack(imgs)))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["none", "crop_fixed", "crop_rand", "crop_color_jitter"])
def test_every_augmentation_set_in_both_backends(betons, kind):
    from core.data import EpochLoader, ImageFolderImages, Transformed, pretrain_transform
    from core.ffcv.loaders import FFCVEpochLoader, ffcv_pretrain_loader

    cfg = ffcv_cfg(betons / "out", f"data.augmentation='{kind}'")
    deterministic = kind == "none"
    tf = pretrain_transform(kind, SIZE, MEAN, STD)
    fast = (FFCVEpochLoader(str(betons / "out" / "train.beton"), kind, SIZE, 8, mean=MEAN, std=STD, shuffle=False,
                            num_workers=2) if deterministic else ffcv_pretrain_loader(cfg, 8))
    ref = EpochLoader(Transformed(ImageFolderImages(str(betons / "src" / "train")), tf), 8, seed=0,
                      shuffle=not deterministic)
    assert fast.steps_per_epoch == ref.steps_per_epoch == 12
    a, b = next(iter(fast.epoch(0))), next(iter(ref.epoch(0)))
    for x, y, skipped in (a, b):
        check_batch(x, y, 8)
        assert skipped == 0
    if deterministic:  # same images in the same order: the same crop, up to interpolation (area vs bicubic)
        assert torch.equal(a[1], b[1])
        assert (a[0] - b[0]).abs().mean() < 0.05, (a[0] - b[0]).abs().mean()
    if kind == "crop_color_jitter":  # same seed, so the same crops and flips as crop_rand; colours differ
        plain = ffcv_pretrain_loader(ffcv_cfg(betons / "out", "data.augmentation=crop_rand"), 8)
        c = next(iter(plain.epoch(0)))
        assert torch.equal(a[1], c[1])
        per_image = (a[0] - c[0]).abs().mean(dim=(1, 2, 3))
        assert (per_image > 0.01).sum() >= 6, per_image  # brightness/contrast/saturation factors ~U(0.6, 1.4)


@pytest.mark.timeout(300)
def test_order_and_views_are_seeded_and_resume_mid_epoch(betons):
    from core.ffcv.loaders import FFCVEpochLoader

    path = str(betons / "out" / "train.beton")
    kw = dict(mean=MEAN, std=STD, seed=3)
    two = FFCVEpochLoader(path, "crop_rand", SIZE, 16, num_workers=2, **kw)
    full = list(two.epoch(1))
    assert len(full) == two.steps_per_epoch == 6
    assert same(two.epoch(1), full)  # the same epoch again
    assert same(two.epoch(1, start_step=4), full[4:])  # resumed part-way: the rest of that epoch
    assert not torch.equal(next(iter(two.epoch(2)))[0], full[0][0])  # a new epoch: new order and crops
    one = FFCVEpochLoader(path, "crop_rand", SIZE, 16, num_workers=1, **kw)  # threads do not change the views
    assert same(one.epoch(1), full)
    seen = torch.cat([b[1] for b in full])
    assert len(seen) == 96 and sorted(seen.tolist()) == sorted([i % 3 for i in range(96)])


@pytest.mark.timeout(120)  # the Loader constructor spins forever if NormalizeImage follows ToTensor
def test_pipeline_never_normalises_after_totensor_so_the_loader_cannot_hang(betons):
    from ffcv.transforms import NormalizeImage, ToTensor

    from core.ffcv.loaders import FFCVEpochLoader, image_pipeline

    for kind in ("none", "crop_fixed", "crop_rand", "crop_color_jitter"):
        ops = image_pipeline(kind, SIZE, 0, MEAN, STD)
        first_tensor = next(i for i, op in enumerate(ops) if isinstance(op, ToTensor))
        assert not any(isinstance(op, NormalizeImage) for op in ops[first_tensor:]), kind
    loader = FFCVEpochLoader(str(betons / "out" / "val.beton"), "crop_fixed", SIZE, 8, mean=MEAN, std=STD,
                             num_workers=2)
    x, y, _ = next(iter(loader.epoch(0)))
    check_batch(x, y, 8)


@pytest.mark.timeout(300)
def test_pretraining_on_a_beton(betons, dirs):
    from core.train import pretrain

    threads = torch.get_num_threads()
    cfg = ffcv_cfg(betons / "out" / "train.beton", "pretrain.epochs=3", "pretrain.warmup_epochs=1",
                   "pretrain.batch_size=32", "pretrain.blr=1.5e-3", "pretrain.log_every=1", *dirs)
    rec = pretrain(cfg, progress=False)
    loss = rec["history"]["loss"]
    assert rec["status"] == "done" and len(loss) == 3 and rec["images_skipped"] == 0
    assert all(np.isfinite(loss)) and loss[-1] < loss[0], loss
    assert torch.get_num_threads() == threads  # importing ffcv and its Loader reset torch's threads


def test_damaged_or_missing_beton_and_empty_source_are_one_line_errors(ffcv, betons, tmp_path, capsys):
    import run_all

    good = betons / "out" / "val.beton"
    data = good.read_bytes()
    (tmp_path / "cut.beton").write_bytes(data[:len(data) // 2])
    (tmp_path / "tail.beton").write_bytes(data[:-7])
    (tmp_path / "zero.beton").write_bytes(b"")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    common = ["--preset", "tiny", "data.dataset=imagefolder", "data.backend=ffcv",
              f"run.results_dir={tmp_path / 'results'}", f"run.work_dir={tmp_path / 'work'}"]
    cases = [(["pretrain", *common, f"data.path={tmp_path / 'cut.beton'}"], "is truncated"),
             (["pretrain", *common, f"data.path={tmp_path / 'tail.beton'}"], "is truncated"),
             (["pretrain", *common, f"data.path={tmp_path / 'zero.beton'}"], "is empty"),
             (["pretrain", *common, f"data.path={tmp_path / 'none.beton'}"], "does not exist"),
             (["pretrain", *common, f"data.path={tmp_path}"], "train.beton does not exist"),
             (["data", "beton", str(tmp_path / "empty" / "train"), str(tmp_path / "e.beton")], "holds no images"),
             (["data", "beton", str(tmp_path / "empty" / "train"), str(tmp_path / "e")], "no train/ folder"),
             (["data", "beton", str(tmp_path / "nowhere"), str(tmp_path / "e")], "does not exist"),
             (["data", "beton", str(betons / "src"), str(tmp_path / "e"), "--jpeg-quality", "101"], "--jpeg-quality")]
    for argv, needle in cases:
        assert run_all.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], (argv, err)
    assert not (tmp_path / "results").exists() and not (tmp_path / "work").exists()
    assert not (tmp_path / "e.beton").exists() and not (tmp_path / "e").exists()
    from core.ffcv.beton import beton_path
    with pytest.raises(DataError, match="single .beton .* needs data.path=DIR"):  # evaluation needs val too
        beton_path(ffcv_cfg(good).data, "val")


def test_unreadable_images_are_skipped_or_named(ffcv, tmp_path):
    from core.ffcv.beton import BetonImages, read_sidecar
    from core.ffcv.writer import write_beton

    make_folder(tmp_path / "src", 6, [(20, 24)], classes=2)
    (tmp_path / "src" / "class1" / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = str(tmp_path / "x.beton")
    info = write_beton(str(tmp_path / "src"), out, workers=2)
    assert len(info["skipped"]) == 1 and "broken.jpg" in info["skipped_files"][0]
    assert read_sidecar(out)["skipped"] == info["skipped"] and len(BetonImages(out)) == 6
    with pytest.raises(DataError, match="cannot read image .*broken.jpg"):
        write_beton(str(tmp_path / "src"), str(tmp_path / "y.beton"), workers=2, on_corrupt="error")
    assert sorted(os.listdir(tmp_path)) == ["src", "x.beton", "x.beton.json"]  # nothing half-written


@pytest.mark.timeout(120)  # ffcv's writer alone would wait forever for a dead worker
@pytest.mark.parametrize("when", ["reading", "handing_over"])
def test_a_writer_worker_that_dies_is_an_error_not_a_hang(ffcv, tmp_path, monkeypatch, when):
    """As if OOM-killed, while reading an image or after its images, before handing ffcv its allocations.
    SIGINT is ignored as in any job a script starts with '&' (make test & on a busy machine): the old
    watchdog interrupted the main thread with SIGINT and so never fired there."""
    import signal

    import core.ffcv.watchdog as W
    import core.ffcv.writer as F

    make_folder(tmp_path / "src", 4, [(20, 24)], classes=2)
    if when == "reading":
        monkeypatch.setattr(F._FolderForWriter, "__getitem__", lambda self, i: os._exit(3))
    else:
        real_put = W.WatchedQueue.put
        monkeypatch.setattr(W.WatchedQueue, "put", lambda self, obj, *a, **k: os._exit(3)
                            if os.getpid() != self._owner else real_put(self, obj, *a, **k))
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(DataError, match=r"writer worker died \(exit code 3\)"):
            F.write_beton(str(tmp_path / "src"), str(tmp_path / "x.beton"), workers=2)
    finally:
        signal.signal(signal.SIGINT, old)
    assert sorted(os.listdir(tmp_path)) == ["src"]


def test_without_ffcv_the_backend_is_a_one_line_error_with_the_install_hint(fast_cfg, monkeypatch, tmp_path):
    import core.ffcv.optional as F
    from core.train import pretrain

    def missing():
        raise ImportError("No module named 'ffcv'")

    monkeypatch.setattr(F, "_import_ffcv", missing)
    cfg = fast_cfg("data.dataset=imagefolder", "data.backend=ffcv", f"data.path={tmp_path / 'x.beton'}")
    with pytest.raises(UserError) as e:
        pretrain(cfg, progress=False)
    assert "scripts/install_ffcv.sh" in str(e.value) and "\n" not in str(e.value)
    assert not F.ffcv_available()
    with pytest.raises(DataError, match="set data.dataset=imagefolder"):
        pretrain(fast_cfg("data.backend=ffcv"), progress=False)


@pytest.mark.timeout(300)
def test_benchmark_quick_run_writes_both_figures(ffcv, tmp_path, capsys):
    import json
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import ffcv_loader

    assert ffcv_loader.main(["--quick", "--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "out")]) == 0
    recs = json.loads((tmp_path / "out" / "ffcv_loader.json").read_text())
    assert [r["backend"] for r in recs] == ["torchvision", "ffcv"] and all(r["quick"] for r in recs)
    assert all(r["images_per_s"] > 0 and r["images"] == 64 for r in recs)
    assert "FFCV / torchvision" in capsys.readouterr().out
