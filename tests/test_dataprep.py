"""The tiers' data commands (issue 26): `data imagenet100` and `data cifar10|cifar100`, on small fakes
of the real layouts; bad input gets one line and exit 2, and no half-written folder is left."""
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

import run_all
from core import dataprep
from core.data import ImageFolderImages


def err_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def leftovers(parent):
    return [p for p in os.listdir(parent) if p.startswith(".partial-")]


def test_the_class_list_is_cmcs_100_wordnet_ids():
    wnids = dataprep.imagenet100_classes()
    assert len(set(wnids)) == 100 and wnids[:3] == ["n02869837", "n01749939", "n02488291"]
    assert wnids[-1] == "n02090622"


def fake_imagenet(root, classes, per_class=2):
    for split in ("train", "val"):
        for w in classes:
            os.makedirs(root / split / w)
            for i in range(per_class):
                (root / split / w / f"{w}_{i}.JPEG").write_bytes(b"jpeg")


def test_imagenet100_links_the_100_classes_and_nothing_else(tmp_path, capsys):
    wnids = dataprep.imagenet100_classes()
    fake_imagenet(tmp_path / "imagenet", wnids + ["n09999999", "n00000001"])  # two distractors
    out = tmp_path / "in100"
    assert run_all.main(["data", "imagenet100", "--imagenet", str(tmp_path / "imagenet"), "--out", str(out)]) == 0
    assert "200 train and 200 val images" in capsys.readouterr().out
    for split in ("train", "val"):
        assert sorted(os.listdir(out / split)) == sorted(wnids)
        assert all(os.path.islink(out / split / w) for w in wnids)
    train = ImageFolderImages(str(out / "train"))  # the suite's loader follows the links
    assert len(train) == 200 and len(train.classes) == 100
    assert (out / dataprep.MANIFEST).exists() and not leftovers(tmp_path)


def test_imagenet100_refuses_missing_classes_and_wrong_folders(tmp_path, capsys):
    wnids = dataprep.imagenet100_classes()
    fake_imagenet(tmp_path / "few", wnids[:5])
    out = tmp_path / "in100"
    assert run_all.main(["data", "imagenet100", "--imagenet", str(tmp_path / "few"), "--out", str(out)]) == 2
    assert "lacks 95 of the 100 ImageNet-100 classes" in err_line(capsys)
    assert run_all.main(["data", "imagenet100", "--imagenet", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "has no train/ folder" in err_line(capsys)
    flat = tmp_path / "flatval"  # val/ as the 50,000 JPEGs of the official tarball
    fake_imagenet(flat, wnids)
    for w in wnids:
        os.rename(flat / "val" / w, flat / "val" / f"x{w}")
    assert run_all.main(["data", "imagenet100", "--imagenet", str(flat), "--out", str(out)]) == 2
    assert "class-folder layout" in err_line(capsys)
    assert not out.exists() and not leftovers(tmp_path)
    out.mkdir()
    fake_imagenet(tmp_path / "all", wnids)
    assert run_all.main(["data", "imagenet100", "--imagenet", str(tmp_path / "all"), "--out", str(out)]) == 2
    assert "already exists" in err_line(capsys)


def batch(n, classes, rng, label_key=b"labels"):
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: [int(y) for y in
                                                                               rng.integers(0, classes, n)]}


def add(tar, name, obj=None, raw=None):
    blob = raw if raw is not None else pickle.dumps(obj, protocol=3)
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def fake_cifar(path, kind="cifar10", skip=(), extra=()):
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        if kind == "cifar10":
            names = [b"airplane", b"automobile", b"bird"]
            members = {"cifar-10-batches-py/batches.meta": {b"label_names": names}}
            members.update({f"cifar-10-batches-py/data_batch_{i}": batch(4, 3, rng) for i in range(1, 6)})
            members["cifar-10-batches-py/test_batch"] = batch(3, 3, rng)
        else:
            names = [b"apple", b"aquarium_fish"]
            members = {"cifar-100-python/meta": {b"fine_label_names": names, b"coarse_label_names": [b"fruit"]},
                       "cifar-100-python/train": batch(6, 2, rng, b"fine_labels"),
                       "cifar-100-python/test": batch(2, 2, rng, b"fine_labels")}
        for name, obj in members.items():
            if name not in skip:
                add(tar, name, obj)
        for name, raw in extra:
            add(tar, name, raw=raw)
    return path


@pytest.mark.parametrize("kind,train,val,classes", [("cifar10", 20, 3, 3), ("cifar100", 6, 2, 2)])
def test_cifar_tarball_becomes_an_imagefolder_of_pngs(tmp_path, capsys, kind, train, val, classes):
    tarball = fake_cifar(tmp_path / f"{kind}.tar.gz", kind)
    out = tmp_path / kind
    assert run_all.main(["data", kind, "--tarball", str(tarball), "--out", str(out)]) == 0
    assert f"{train} train and {val} val images" in capsys.readouterr().out
    ds = ImageFolderImages(str(out / "train"))
    assert len(ds) == train and len(ds.classes) == classes and len(ImageFolderImages(str(out / "val"))) == val
    img, _ = ds.load(0)
    assert img.size == (32, 32)
    # the first training image: the first batch's first row, channel planes to HWC, in its label's folder
    rng = np.random.default_rng(0)
    first = batch(4, 3, rng) if kind == "cifar10" else batch(6, 2, rng, b"fine_labels")
    label = first[b"labels" if kind == "cifar10" else b"fine_labels"][0]
    folder = (["airplane", "automobile", "bird"] if kind == "cifar10" else ["apple", "aquarium_fish"])[label]
    with Image.open(out / "train" / folder / "00000.png") as im:
        assert np.array_equal(np.asarray(im), first[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0))


class Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_bad_cifar_archives_get_one_line_and_leave_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cifar"
    cases = {
        "not a tarball": (tmp_path / "junk.tar.gz", "is not a readable tar archive"),
        "missing batch": (fake_cifar(tmp_path / "short.tar.gz", skip=("cifar-10-batches-py/data_batch_3",)),
                          "has no cifar-10-batches-py/data_batch_3"),
        "code in a pickle": (fake_cifar(tmp_path / "evil.tar.gz", skip=("cifar-10-batches-py/test_batch",),
                                        extra=[("cifar-10-batches-py/test_batch", pickle.dumps(Boom()))]),
                             "is not allowed in a CIFAR batch"),
        "the other dataset": (fake_cifar(tmp_path / "c100.tar.gz", "cifar100"), "has no cifar-10-batches-py"),
    }
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar file at all")
    for what, (tarball, message) in cases.items():
        assert run_all.main(["data", "cifar10", "--tarball", str(tarball), "--out", str(out)]) == 2, what
        assert message in err_line(capsys), what
    assert not (tmp_path / "pwned").exists() and not out.exists() and not leftovers(tmp_path)


def test_an_interrupted_build_leaves_no_folder(tmp_path, monkeypatch):
    tarball = fake_cifar(tmp_path / "c10.tar.gz")

    def full_disk(*a, **k):
        raise OSError("No space left on device")
    monkeypatch.setattr(dataprep.Image.Image, "save", full_disk)
    with pytest.raises(OSError):
        dataprep.cifar("cifar10", str(tarball), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)
