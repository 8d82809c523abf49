"""The run id names the dataset by its content: moving a folder keeps a run's id, other images
under the same path give a new one; digits and synthetic runs keep the ids they always had."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from core.config import build_config
from core.fingerprint import dataset_fingerprint, resolve

# Ids of runs that exist on users' disks: a change here would retrain every finished run. The tiny
# preset moved from 32 px with automatic precision to 16 px in fp32 (its runs are new runs); the old
# preset's configs, spelled out, keep their ids.
OLD_TINY = ["model.img_size=32", "pretrain.precision=auto"]
PINNED = [
    ("tiny", OLD_TINY, "pt-f75ce5f9463d"),
    ("paper", [], "pt-f592c58e6b0e"),
    ("tiny", [*OLD_TINY, "data.dataset=synthetic"], "pt-ca546e3dc208"),
    ("tiny", [*OLD_TINY, "model.target=pca"], "pt-9dedef23c9dc"),
    ("tiny", [*OLD_TINY, "model.mask_ratio=0.5", "pretrain.epochs=2"], "pt-0e02ca3b86ec"),
    ("tiny", [], "pt-be959d006def"),
    ("scenes", [], "pt-50bb6de288ba"),  # the digit scenes (docs/testbed.md)
]


@pytest.mark.parametrize("preset,overrides,run_id", PINNED)
def test_run_ids_of_file_free_datasets_are_pinned(preset, overrides, run_id):
    cfg = build_config(preset, overrides)
    assert cfg.run_id() == run_id and resolve(cfg).run_id() == run_id


def make_images(root, n=12, seed=0, size=16):
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for i in range(n):
            d = root / split / f"c{i % 3}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")


def folder_cfg(path, tmp_path, *extra):
    return build_config("tiny", ["data.dataset=imagefolder", f"data.path={path}", f"run.work_dir={tmp_path / 'work'}",
                                 f"run.results_dir={tmp_path / 'results'}", "model.img_size=16",
                                 "pretrain.batch_size=8", "pretrain.epochs=1", "pretrain.warmup_epochs=0", *extra])


def test_moving_a_dataset_keeps_the_id_and_changing_it_does_not(tmp_path, monkeypatch):
    import core.fingerprint as F

    make_images(tmp_path / "a")
    first = resolve(folder_cfg(tmp_path / "a", tmp_path))
    assert first.data.fingerprint and first.run_id() != folder_cfg(tmp_path / "a", tmp_path).run_id()
    shutil.move(tmp_path / "a", tmp_path / "moved")
    assert resolve(folder_cfg(tmp_path / "moved", tmp_path)).run_id() == first.run_id()
    # cached: a second look lists no files (ImageNet: 1.28M stats) while no folder changed
    monkeypatch.setattr(F, "_folder_fingerprint", lambda root: pytest.fail("recomputed although nothing changed"))
    assert resolve(folder_cfg(tmp_path / "moved", tmp_path)).run_id() == first.run_id()
    monkeypatch.undo()
    ids = {first.run_id()}
    # one more image, one image replaced by a different one, a class renamed, another dataset at the path
    Image.new("RGB", (16, 16)).save(tmp_path / "moved" / "train" / "c0" / "extra.png")
    ids.add(resolve(folder_cfg(tmp_path / "moved", tmp_path)).run_id())
    replacement = tmp_path / "new.png"
    Image.new("RGB", (20, 20)).save(replacement)
    os.replace(replacement, tmp_path / "moved" / "train" / "c1" / "001.png")
    ids.add(resolve(folder_cfg(tmp_path / "moved", tmp_path)).run_id())
    os.rename(tmp_path / "moved" / "val" / "c2", tmp_path / "moved" / "val" / "c9")
    ids.add(resolve(folder_cfg(tmp_path / "moved", tmp_path)).run_id())
    shutil.rmtree(tmp_path / "moved")
    make_images(tmp_path / "moved", seed=1, size=17)
    ids.add(resolve(folder_cfg(tmp_path / "moved", tmp_path)).run_id())
    assert len(ids) == 5
    assert dataset_fingerprint(str(tmp_path / "moved")) == resolve(folder_cfg(tmp_path / "moved", tmp_path)).data.fingerprint


def test_other_images_under_the_same_path_are_a_new_run_not_the_finished_one(tmp_path):
    from core.errors import DataError
    from core.train import pretrain

    make_images(tmp_path / "data")
    first = pretrain(folder_cfg(tmp_path / "data", tmp_path), progress=False)
    assert first["status"] == "done" and first["config"]["data"]["fingerprint"]
    shutil.rmtree(tmp_path / "data")
    make_images(tmp_path / "data", seed=5)
    second = pretrain(folder_cfg(tmp_path / "data", tmp_path), progress=False)
    assert second["status"] == "done" and second["run_id"] != first["run_id"]
    assert second["history"] != first["history"]
    # a run planned on one dataset refuses to train on another found at its path later
    planned = folder_cfg(tmp_path / "data", tmp_path, f"data.fingerprint={first['config']['data']['fingerprint']}")
    with pytest.raises(DataError, match="changed since this run was planned"):
        pretrain(planned, progress=False)


def test_a_beton_is_named_by_its_bytes_not_its_place(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "train.beton").write_bytes(os.urandom(3 << 20))
    (a / "train.beton.json").write_text('{"classes": ["x", "y"], "num_samples": 10, "skipped": []}')
    fp = dataset_fingerprint(str(a), "ffcv")
    shutil.move(a, tmp_path / "b")
    assert dataset_fingerprint(str(tmp_path / "b"), "ffcv") == fp
    assert dataset_fingerprint(str(tmp_path / "b" / "train.beton"), "ffcv") == fp  # the file itself: the same data
    with open(tmp_path / "b" / "train.beton", "r+b") as f:
        f.seek(-5, 2)
        f.write(b"other")
    assert dataset_fingerprint(str(tmp_path / "b"), "ffcv") != fp


def test_the_scratch_baseline_id_follows_the_dataset_too(tmp_path):
    """The scratch baseline has no pretraining parent: its own id holds the fingerprint."""
    from core.eval import eval_run_id

    make_images(tmp_path / "a")
    make_images(tmp_path / "b", seed=3)
    ids = {p: eval_run_id(resolve(folder_cfg(tmp_path / p, tmp_path)), "scratch") for p in ("a", "b")}
    assert ids["a"] != ids["b"]
    shutil.move(tmp_path / "a", tmp_path / "c")
    assert eval_run_id(resolve(folder_cfg(tmp_path / "c", tmp_path)), "scratch") == ids["a"]
    tiny = resolve(build_config("tiny", OLD_TINY))  # file-free datasets: evaluation ids as they always were
    assert (eval_run_id(tiny, "scratch"), eval_run_id(tiny, "knn")) == ("scratch-c5f7b16bdb54", "knn-107a45c9f234")
