"""Reconstruction targets beyond pixels: PCA coefficients, dVAE tokens (in-suite tokenizer and
OpenAI's DALL-E encoder file) and HOG."""
import math
import os
import shutil
import sys
import types
import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import core.targets.dvae as dvae
import core.targets.pca as pca
import core.targets.tokenizer as tokenizer
from core import results
from core.config import build_config
from core.data import build_dataset
from core.errors import UserError
from core.fingerprint import resolve as resolve_dataset
from core.model import patchify
from core.rehearsal import write_imagefolder
from core.registry import TARGETS
from core.targets import build_target
from core.targets.dvae_model import DVAE
from core.targets.hog import BINS, HOGTarget

CPU = torch.device("cpu")


def test_the_builtin_targets_are_registered_and_config_reads_the_registry():
    assert list(TARGETS)[:5] == ["pixel", "norm_pixel", "pca", "dvae_token", "hog"]
    with pytest.raises(UserError, match="model.target='nope' is not one of: pixel, norm_pixel, pca"):
        build_config("tiny", ["model.target=nope"])


@pytest.mark.parametrize("name", list(TARGETS))  # every registered target, a plugin's too (MAE_PLUGINS)
def test_every_target_gives_per_patch_targets_and_a_loss_of_the_masked_patches(name, fast_cfg, tmp_path):
    """Shape: one target per patch, `dim` wide (or one class index); gradient: the loss reaches the
    prediction of every masked patch and of no visible one, and is finite."""
    quick = [f"{k}={v}" for k, v in TARGETS.entry(name).extra.get("quick", {}).items()]
    cfg = fast_cfg(f"model.target={name}", "data.synthetic_size=64", *quick)
    t = build_target(cfg.model, cfg.data)
    t.prepare(build_dataset(cfg.data, "train", cfg.model.img_size), str(tmp_path / "cache"), CPU,
              results_dir=cfg.run.results_dir)
    imgs = norm_images(cfg, n=4)
    y = t(imgs)
    length = (cfg.model.img_size // t.patch_size) ** 2
    assert y.shape[:2] == (4, length) and (y.dim() == 2 or y.shape[2] == t.dim)
    mask = torch.zeros(4, length, dtype=torch.bool)
    mask[:, ::3] = True
    pred = torch.randn(4, length, t.dim, requires_grad=True)
    loss = t.loss(pred, y, mask)
    loss.backward()
    assert torch.isfinite(loss) and loss.dim() == 0
    grad = pred.grad.abs().sum(-1)
    assert (grad[mask] > 0).all() and (grad[~mask] == 0).all()


def norm_images(cfg, n=8, split="train"):
    ds = build_dataset(cfg.data, split, cfg.model.img_size)
    x = torch.stack([ds.load(i)[0] for i in range(n)]).float() / 255
    mean, std = torch.tensor(cfg.data.mean).view(1, 3, 1, 1), torch.tensor(cfg.data.std).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------- PCA

def test_pca_k_follows_the_paper_ratio():
    assert build_target(build_config("paper", ["model.target=pca"]).model, None).dim == 96  # 768 / 8
    assert build_target(build_config("tiny", ["model.target=pca"]).model, None).dim == 6  # 48 / 8
    assert build_target(build_config("tiny", ["model.target=pca", "model.pca_components=20"]).model, None).dim == 20


def test_pca_with_all_components_reconstructs_patches(fast_cfg, tmp_path):
    cfg = fast_cfg("model.target=pca", "model.pca_components=48", "model.pca_samples=4000", "model.img_size=32")
    t = build_target(cfg.model, cfg.data)
    t.prepare(build_dataset(cfg.data, "train", 32), str(tmp_path / "cache"), CPU)
    imgs = norm_images(cfg, split="val")
    coef = t(imgs)
    assert coef.shape == (8, 64, 48)
    eye = t.components.T @ t.components
    assert torch.allclose(eye, torch.eye(48), atol=1e-5)  # an orthonormal basis
    assert (t.to_pixels(coef, imgs) - patchify(imgs, 4)).abs().max() < 1e-4  # float32 rounding
    # with the paper's k = dim / 8 the same basis keeps most, not all, of the signal
    cfg6 = fast_cfg("model.target=pca", "model.pca_samples=4000")
    t6 = build_target(cfg6.model, cfg6.data)
    t6.prepare(build_dataset(cfg6.data, "train", 32), str(tmp_path / "cache"), CPU)
    err6 = (t6.to_pixels(t6(imgs), imgs) - patchify(imgs, 4)).pow(2).mean()
    assert t6.dim == 6 and 0 < err6 < patchify(imgs, 4).var() and 0.5 < t6.explained < 1


def test_pca_basis_is_cached_and_refitted_when_its_key_changes(fast_cfg, tmp_path, monkeypatch):
    fits = []
    real = pca.fit_pca
    monkeypatch.setattr(pca, "fit_pca", lambda x: fits.append(1) or real(x))
    cache = str(tmp_path / "cache")

    def prepare(*overrides):
        cfg = fast_cfg("model.target=pca", "model.pca_samples=2000", *overrides)
        t = build_target(cfg.model, cfg.data)
        t.prepare(build_dataset(cfg.data, "train", cfg.model.img_size), cache, CPU)
        return t

    a = prepare()
    assert len(fits) == 1 and os.path.exists(a.cache_path)
    b = prepare("pretrain.seed=3", "pretrain.epochs=5")  # not part of the basis: reused
    assert len(fits) == 1 and torch.equal(a.components, b.components)
    prepare("model.pca_samples=1500")
    prepare("data.mean=(0.4,0.4,0.4)")
    prepare("model.img_size=32")
    prepare("data.synthetic_size=128")
    assert len(fits) == 5
    prepare("model.pca_samples=1500")  # each key has its own file
    assert len(fits) == 5
    with open(a.cache_path, "wb") as f:  # a damaged cache file is refitted, not trusted
        f.write(b"garbage")
    c = prepare()
    assert len(fits) == 6 and torch.allclose(c.components, a.components)


def test_a_dataset_replaced_in_place_gets_its_own_pca_basis(fast_cfg, tmp_path, monkeypatch):
    """The cache key holds the images' fingerprint, not only their path and count: other images under
    the same path (as many) are fitted again; the pretraining run reads the file the unit wrote."""
    fits = []
    real = pca.fit_pca
    monkeypatch.setattr(pca, "fit_pca", lambda x: fits.append(1) or real(x))
    root = tmp_path / "data"
    write_imagefolder(str(root), seed=0)
    cfg = fast_cfg("model.target=pca", "model.pca_samples=500", "data.dataset=imagefolder", f"data.path={root}")
    first = pca.pca_job(cfg)
    assert pca.pca_job(cfg) == first and len(fits) == 1  # same images: reused
    run_cfg = resolve_dataset(cfg)  # what pretrain() builds its target from
    target = build_target(run_cfg.model, run_cfg.data)
    target.prepare(build_dataset(run_cfg.data, "train", run_cfg.model.img_size), str(tmp_path / "work" / "cache"), CPU)
    assert target.cache_path == first and len(fits) == 1
    shutil.rmtree(root)
    assert write_imagefolder(str(root), seed=1) > 0  # same path, same count, other pixels
    second = pca.pca_job(cfg)
    assert second != first and len(fits) == 2


# --------------------------------------------------------------------------- dVAE tokens

def test_token_grid_matches_the_patch_grid_for_every_arch():
    for preset, overrides, grid, view in [("paper", [], 14, 112), ("tiny", [], 4, 32), ("tiny", ["model.img_size=32"], 8, 64),
                                          ("paper", ["model.arch=vit_huge_patch14"], 16, 128)]:
        cfg = build_config(preset, ["model.target=dvae_token"] + overrides)
        t = build_target(cfg.model, cfg.data)
        assert (t.grid, t.view) == (grid, view)
        with torch.device("meta"):
            logits = DVAE(16, 4).encoder(torch.empty(1, 3, view, view))
        assert logits.shape == (1, 16, grid, grid)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """The tiny preset's tokenizer at 32 px, trained once on the embedded digits: the slowest part of this
    file: 176 steps, about 20 s of CPU time (single-threaded), but 250 s of wall time on a 2-core
    machine loaded 3-5x over by other jobs."""
    tmp = tmp_path_factory.mktemp("tok")
    cfg = build_config("tiny", ["model.target=dvae_token", "model.img_size=32", f"run.results_dir={tmp / 'results'}",
                                f"run.work_dir={tmp / 'work'}"])
    t = build_target(cfg.model, cfg.data)
    t.prepare(build_dataset(cfg.data, "train", 32), str(tmp / "cache"), CPU, results_dir=cfg.run.results_dir)
    return cfg, t, tmp


def test_tokenizer_trains_on_digits_and_uses_its_codebook(tiny_tokenizer, monkeypatch):
    cfg, t, tmp = tiny_tokenizer
    rec = results.read_record(cfg.run.results_dir, t.record["run_id"])
    assert rec["kind"] == "tokenizer" and rec["status"] == "done" and rec["run_id"].startswith("tok-")
    m = rec["metrics"]
    assert m["vocab"] == 128 and m["eval_split"] == "val"
    # measured at the tiny preset (VERSION 1): 115 of 128 codes used, perplexity 51.9, MSE 0.027
    assert m["codebook_usage"] >= 0.6 and m["perplexity"] >= 25
    assert m["recon_mse"] < 0.1
    assert len(rec["history"]["loss"]) == cfg.model.dvae_epochs and rec["history"]["loss"][-1] < rec["history"]["loss"][0]
    # a second run needing the same tokenizer loads it from the cache instead of training it again
    monkeypatch.setattr(tokenizer, "train_tokenizer", lambda *a, **k: pytest.fail("tokenizer trained twice"))
    again = build_target(cfg.model, cfg.data)
    again.prepare(build_dataset(cfg.data, "train", 32), str(tmp / "cache"), CPU)
    imgs = norm_images(cfg, split="val")
    assert torch.equal(again(imgs), t(imgs))


def test_token_targets_have_the_patch_grid_shape_and_the_loss_ignores_visible_patches(tiny_tokenizer):
    cfg, t, _ = tiny_tokenizer
    imgs = norm_images(cfg, split="val")
    tokens = t(imgs)
    assert tokens.shape == (8, 64) and tokens.dtype == torch.long
    assert 0 <= tokens.min() and tokens.max() < t.dim == 128
    assert len(tokens.unique()) > 5  # different patches get different codes
    mask = torch.zeros(8, 64, dtype=torch.bool)
    mask[:, ::2] = True
    pred = torch.randn(8, 64, t.dim)
    loss = t.loss(pred, tokens, mask)
    changed = pred.clone()
    changed[~mask] = torch.randn_like(changed[~mask]) * 10
    assert torch.equal(t.loss(changed, tokens, mask), loss)  # visible patches do not count
    changed[mask] = torch.randn_like(changed[mask]) * 10
    assert not torch.equal(t.loss(changed, tokens, mask), loss)
    exact = F.one_hot(tokens, t.dim).float() * 50  # confident correct logits on masked patches
    exact[~mask] = 0
    assert t.loss(exact, tokens, mask) < 1e-6 < t.loss(exact, tokens, mask, all_patches=True)
    # the head's predictions decode to pictures through the tokenizer's decoder
    assert t.to_pixels(exact, imgs).shape == (8, 64, 48)


# --------------------------------------------------------------------------- DALL-E encoder file

class FakeConv(nn.Module):  # DALL-E's layer layout: w, b and attrs-style fields in __dict__
    def __init__(self, n_in, n_out, kw):
        super().__init__()
        self.n_in, self.n_out, self.kw, self.use_float16 = n_in, n_out, kw, True
        self.device, self.requires_grad = torch.device("cpu"), False
        self.w = nn.Parameter(torch.randn(n_out, n_in, kw, kw) / math.sqrt(n_in * kw * kw), requires_grad=False)
        self.b = nn.Parameter(torch.randn(n_out) * 0.1, requires_grad=False)

    def forward(self, x):
        return F.conv2d(x, self.w, self.b, padding=(self.kw - 1) // 2)


class FakeBlock(nn.Module):
    def __init__(self, n_in, n_out, n_layers):
        super().__init__()
        self.n_in, self.n_out, self.n_layers, self.n_hid = n_in, n_out, n_layers, n_out // 4
        self.post_gain = 1 / n_layers ** 2
        self.id_path = FakeConv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        h = self.n_hid
        self.res_path = nn.Sequential(OrderedDict([
            ("relu_1", nn.ReLU()), ("conv_1", FakeConv(n_in, h, 3)), ("relu_2", nn.ReLU()),
            ("conv_2", FakeConv(h, h, 3)), ("relu_3", nn.ReLU()), ("conv_3", FakeConv(h, h, 3)),
            ("relu_4", nn.ReLU()), ("conv_4", FakeConv(h, n_out, 1))]))

    def forward(self, x):
        return self.id_path(x) + self.post_gain * self.res_path(x)


class FakeEncoder(nn.Module):
    def __init__(self, n_hid=8, n_blk=2, vocab=16):
        super().__init__()
        self.group_count, self.n_hid, self.n_blk_per_group, self.vocab_size = 4, n_hid, n_blk, vocab
        blk = lambda a, b: FakeBlock(a, b, 4 * n_blk)  # noqa: E731
        groups, width = [], n_hid
        for g in range(4):
            out = n_hid * 2 ** g
            items = []
            for i in range(n_blk):
                items.append((f"block_{i + 1}", blk(width, out)))
                width = out
            if g < 3:
                items.append(("pool", nn.MaxPool2d(kernel_size=2)))
            groups.append((f"group_{g + 1}", nn.Sequential(OrderedDict(items))))
        self.blocks = nn.Sequential(OrderedDict([
            ("input", FakeConv(3, n_hid, 7)), *groups,
            ("output", nn.Sequential(OrderedDict([("relu", nn.ReLU()), ("conv", FakeConv(width, vocab, 1))])))]))

    def forward(self, x):
        return self.blocks(x)


@pytest.fixture
def fake_encoder_pkl(tmp_path, monkeypatch):
    """A pickled module that names dall_e.encoder.Encoder etc., as OpenAI's encoder.pkl does. The
    fake `dall_e` package exists only while saving: loading must not need it."""
    torch.manual_seed(0)
    enc = FakeEncoder().eval()
    real = {FakeEncoder: ("dall_e.encoder", "Encoder"), FakeBlock: ("dall_e.encoder", "EncoderBlock"),
            FakeConv: ("dall_e.utils", "Conv2d")}
    saved = {cls: (cls.__module__, cls.__qualname__) for cls in real}
    paths = {}
    try:
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "dall_e", types.ModuleType("dall_e"))
            for name in ("dall_e.encoder", "dall_e.utils"):
                m.setitem(sys.modules, name, types.ModuleType(name))
            for cls, (mod, qual) in real.items():
                cls.__module__, cls.__qualname__ = mod, qual
                setattr(sys.modules[mod], qual, cls)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "couldn't retrieve source code" of the legacy format
                for fmt, zipped in (("zip", True), ("legacy", False)):
                    paths[fmt] = str(tmp_path / f"encoder-{fmt}.pkl")
                    torch.save(enc, paths[fmt], _use_new_zipfile_serialization=zipped)
    finally:
        for cls, (mod, qual) in saved.items():
            cls.__module__, cls.__qualname__ = mod, qual
    assert "dall_e.encoder" not in sys.modules
    return enc, paths


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_dalle_encoder_pkl_loads_without_running_its_code(fake_encoder_pkl, fmt):
    enc, paths = fake_encoder_pkl
    ours = dvae.load_dalle_encoder(paths[fmt])
    assert ours.vocab == 16
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x), enc(x), atol=1e-5)


def test_dalle_token_target_maps_pixels_and_aligns_the_grid(fake_encoder_pkl, fast_cfg, tmp_path):
    enc, paths = fake_encoder_pkl
    cfg = fast_cfg("model.target=dvae_token", f"model.dvae_path={paths['zip']}", "model.img_size=32")
    t = build_target(cfg.model, cfg.data)
    t.prepare(None, str(tmp_path / "cache"), CPU)
    assert t.dim == 16 and not os.path.exists(tmp_path / "cache")  # nothing trained
    imgs = norm_images(cfg)
    tokens = t(imgs)
    pixels = (imgs * 0.5 + 0.5).clamp(0, 1)  # the tiny preset's mean = std = 0.5
    view = F.interpolate(pixels, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        expect = enc(0.8 * view + 0.1).argmax(dim=1).flatten(1)  # logit-Laplace mapping, eps 0.1
    assert tokens.shape == (8, 64) and torch.equal(tokens, expect)
    assert t.to_pixels(torch.randn(8, 64, 16), imgs) is None  # no decoder: no pictures
    # the run id names the file; the in-suite tokenizer's settings do not matter then
    other = fast_cfg("model.target=dvae_token", f"model.dvae_path={paths['zip']}", "model.dvae_vocab=7", "model.img_size=32")
    assert other.run_id() == cfg.run_id() != fast_cfg("model.target=dvae_token", "model.img_size=32").run_id()


def test_bad_dalle_files_get_one_line_errors(fake_encoder_pkl, tmp_path, capsys):
    import pickle

    import run_all

    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    evil = tmp_path / "evil.pkl"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    with open(evil, "wb") as f:
        pickle.dump(Evil(), f)
    evil_torch = {}
    for fmt, zipped in (("zip", True), ("legacy", False)):  # the same inside torch's own formats
        evil_torch[fmt] = tmp_path / f"evil-{fmt}.pt"
        torch.save({"blocks.input.w": Evil()}, evil_torch[fmt], _use_new_zipfile_serialization=zipped)
    wrong = tmp_path / "wrong.pt"
    torch.save({"blocks.input.w": torch.zeros(8, 3, 3, 3)}, wrong)
    for path, needle in [(tmp_path / "missing.pkl", "does not exist"), (text, "is not a DALL-E encoder.pkl"),
                         (evil, "is not a DALL-E encoder.pkl"), (evil_torch["zip"], "is not a DALL-E encoder.pkl"),
                         (evil_torch["legacy"], "refused global"),
                         (wrong, "does not hold DALL-E encoder weights")]:
        with pytest.raises(UserError, match=needle) as e:
            dvae.load_dalle_encoder(str(path))
        assert "\n" not in str(e.value)
    assert not marker.exists()  # the malicious pickle ran nothing
    code = run_all.main(["pretrain", "--quiet", "model.target=dvae_token", f"model.dvae_path={tmp_path / 'nope.pkl'}",
                         f"run.results_dir={tmp_path / 'r'}", f"run.work_dir={tmp_path / 'w'}",
                         "data.dataset=synthetic"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: model.dvae_path=") and "\n" not in err
    assert not os.path.exists(tmp_path / "r" / "runs")  # no record of a run that never started


# --------------------------------------------------------------------------- HOG

def ramp(angle_deg, size=32):
    """An image whose every gradient points along angle_deg (rows grow downwards)."""
    a = math.radians(angle_deg)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return ((xx * math.cos(a) + yy * math.sin(a)) / size).expand(1, 3, size, size)


@pytest.mark.parametrize("angle, peak", [(10, 0), (50, 2), (95, 4), (130, 6), (170, 8), (190, 0), (-50, 6)])
def test_hog_of_a_single_gradient_direction_peaks_in_its_bin(angle, peak):
    t = HOGTarget(build_config("tiny", ["model.target=hog"]).model, None)
    h = t(ramp(angle))
    assert h.shape == (1, 64, t.dim) and t.dim == 108
    assert torch.allclose(h.norm(dim=-1), torch.ones(64), atol=1e-5)  # L2-normalised per patch
    per_bin = h.view(1, 64, 3, 4, BINS).sum(dim=(0, 1, 2, 3))
    assert per_bin.argmax().item() == peak and per_bin[peak] > 0.8 * per_bin.sum()


def test_hog_of_a_vertical_edge_is_in_bin_zero_only_where_the_edge_is():
    t = HOGTarget(build_config("tiny", ["model.target=hog"]).model, None)
    img = torch.zeros(1, 3, 32, 32)
    img[..., 18:] = 1.0  # a vertical edge between columns 17 and 18: patch column 4
    h = t(img).view(8, 8, 3, 4, BINS)
    assert h[:, 4].sum(dim=(0, 1, 2, 3)).argmax() == 0 and h[:, 4, :, :, 1:].abs().max() == 0
    assert h[:, [0, 1, 2, 3, 5, 6, 7]].abs().max() == 0  # no gradient, no histogram


# --------------------------------------------------------------------------- config and pretraining

def test_target_settings_are_in_the_run_id_of_their_target_only():
    pixel = build_config("tiny").run_id()
    assert build_config("tiny", ["model.pca_components=10", "model.dvae_vocab=64"]).run_id() == pixel
    p = build_config("tiny", ["model.target=pca"]).run_id()
    assert build_config("tiny", ["model.target=pca", "model.pca_components=10"]).run_id() != p
    assert build_config("tiny", ["model.target=pca", "model.dvae_vocab=64"]).run_id() == p
    d = build_config("tiny", ["model.target=dvae_token"]).run_id()
    assert build_config("tiny", ["model.target=dvae_token", "model.dvae_vocab=64"]).run_id() != d
    with pytest.raises(UserError, match="pca_components must be in"):
        build_config("tiny", ["model.target=pca", "model.pca_components=49"])


@pytest.mark.parametrize("target, extra", [
    ("pca", ["model.pca_samples=2000"]),
    ("dvae_token", ["model.dvae_vocab=32", "model.dvae_width=8", "model.dvae_epochs=1"]),
    ("hog", []),
])
def test_every_new_target_pretrains(fast_cfg, target, extra):
    from core.train import pretrain

    cfg = fast_cfg(f"model.target={target}", "pretrain.epochs=1", "pretrain.warmup_epochs=0", *extra)
    rec = pretrain(cfg, progress=False)
    assert rec["status"] == "done" and math.isfinite(rec["metrics"]["final_loss"])
    state = torch.load(rec["last_checkpoint"], weights_only=True)["model"]
    dim = {"pca": 6, "dvae_token": 32, "hog": 108}[target]
    assert state["decoder_pred.weight"].shape[0] == dim
    if target == "dvae_token":  # the tokenizer job left its weights in the run's cache, and its record
        cache = os.path.join(cfg.run.work_dir, "cache")
        tok = [f[:-3] for f in os.listdir(cache) if f.startswith("tok-")]
        rec = results.read_record(cfg.run.results_dir, tok[0]) or results.read_record(cache, tok[0])
        assert len(tok) == 1 and rec["kind"] == "tokenizer"


def test_tokenizer_command_trains_once_and_reports(dirs, capsys):
    import run_all

    args = ["tokenizer", "--quiet", "data.dataset=synthetic", "data.synthetic_size=128", "model.dvae_vocab=16",
            "model.dvae_width=4", "model.dvae_epochs=1", *dirs]
    assert run_all.main(args) == 0
    out = capsys.readouterr().out
    assert "training the dVAE tokenizer" in out and "codes used, perplexity" in out
    rid = out.split("tokenizer ")[-1].split(":")[0]
    rec = results.read_record(dirs[0].split("=", 1)[1], rid)
    assert rec["kind"] == "tokenizer" and rec["metrics"]["vocab"] == 16 and os.path.exists(rec["weights"])
    assert run_all.main(args) == 0
    assert "training the dVAE tokenizer" not in capsys.readouterr().out  # found in the cache
    assert run_all.main(args + ["model.dvae_path=/x/encoder.pkl"]) == 2
    assert "needs no training" in capsys.readouterr().err
