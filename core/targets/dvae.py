"""dVAE token target (paper Table 1d, BEiT's target): the tokenizer's code of each patch.

Two tokenizers:
- the in-suite discrete VAE (default), trained once per (data, image/patch size, tokenizer config)
  as its own cached job with its own run record (kind "tokenizer"): a conv encoder with 8x
  downsampling to vocabulary logits, Gumbel-softmax relaxation annealed from temperature 1 to 1/16
  and a KL term towards the uniform prior, as DALL-E's dVAE; a conv decoder with an MSE
  reconstruction loss (DALL-E: logit-Laplace);
- OpenAI's DALL-E encoder from a local `encoder.pkl` (model.dvae_path), as BEiT used. The file is a
  pickled `dall_e` module; its weights are read into a reimplementation of that encoder, the
  pickle's class names mapped to inert records (torch.load(weights_only=True) for the zip format,
  a restricted unpickler for the legacy one), so the file can run no code and the `dall_e` package
  is not needed.

Grid alignment: the tokenizer downsamples by 8 and must give one token per MAE patch, so it sees
the image resized to (img_size / patch_size) * 8 px: 112 px at 224 / 16 (as BEiT), 64 px at the tiny
preset's 32 / 4.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import time
import types
import warnings
import zipfile
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from core import results
from core.checkpoint import atomic_write
from core.config import config_hash
from core.data import EpochLoader, Transformed, build_dataset, collate_skipping, eval_transform, pretrain_transform
from core.errors import DataError, UserError
from core.loop import epoch_mean, tracked
from core.progress import tensorboard_dir
from core.targets import Target, cross_entropy_patch_loss, load_cached
from core.targets.pca import dataset_identity

DOWN = 8  # tokenizer downsampling: one token per DOWN x DOWN pixels of its view
# The in-suite tokenizer's training recipe; part of its cache key (bump VERSION when the code changes).
VERSION = 1
BATCH = 64
LR = 3e-3
TAU = (1.0, 1.0 / 16)  # Gumbel-softmax temperature, annealed exponentially over training (DALL-E)
KL_WEIGHT = 0.03  # weight of KL(q || uniform) per token, warmed up linearly over the first 20% of steps
SEED = 0
EVAL_IMAGES = 2048
LOG_EVERY = 50  # steps between log lines (one host sync each)


def token_grid(model_cfg, patch: int) -> tuple[int, int]:
    """(tokens per side, tokenizer view size in px): one token per MAE patch."""
    grid = model_cfg.img_size // patch
    return grid, grid * DOWN


def resize(imgs: torch.Tensor, size: int) -> torch.Tensor:
    if imgs.shape[-1] == size:
        return imgs.float()
    return F.interpolate(imgs.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)


# --------------------------------------------------------------------------- in-suite dVAE

class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 1))

    def forward(self, x):
        return x + self.body(x)


class DVAE(nn.Module):
    """Conv encoder (8x down: a stride-4 then a stride-2 conv) -> vocabulary logits; a codebook; a
    mirrored transposed-conv decoder. Deliberately light: the tiny preset's trains in seconds."""

    def __init__(self, vocab: int, width: int):
        super().__init__()
        w, e = width, 2 * width
        self.vocab = vocab
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 4, stride=4), nn.ReLU(),
            nn.Conv2d(w, e, 4, stride=2, padding=1), ResBlock(e), nn.ReLU(),
            nn.Conv2d(e, vocab, 1))
        self.codebook = nn.Parameter(torch.randn(vocab, e) / math.sqrt(e))
        self.decoder = nn.Sequential(
            nn.Conv2d(e, e, 1), ResBlock(e), nn.ReLU(),
            nn.ConvTranspose2d(e, w, 4, stride=2, padding=1), ResBlock(w), nn.ReLU(),
            nn.ConvTranspose2d(w, 3, 4, stride=4))

    def decode_soft(self, q: torch.Tensor) -> torch.Tensor:
        """q: (B, V, g, g) code probabilities -> image."""
        return self.decoder(torch.einsum("bvhw,ve->behw", q, self.codebook))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, g, g) long -> image."""
        return self.decoder(self.codebook[tokens].permute(0, 3, 1, 2))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).argmax(dim=1)


def tokenizer_key(model_cfg, data_cfg, dataset, patch: int) -> dict:
    grid, view = token_grid(model_cfg, patch)
    return {"kind": "dvae", "version": VERSION, "data": dataset_identity(data_cfg, dataset),
            "img_size": model_cfg.img_size, "grid": grid, "view": view, "augmentation": data_cfg.augmentation,
            "mean": list(data_cfg.mean), "std": list(data_cfg.std), "vocab": model_cfg.dvae_vocab,
            "width": model_cfg.dvae_width, "epochs": model_cfg.dvae_epochs, "batch": BATCH, "lr": LR,
            "tau": list(TAU), "kl_weight": KL_WEIGHT, "seed": SEED}


def tokenizer_id(key: dict) -> str:
    return "tok-" + config_hash(key)


def train_tokenizer(dataset, model_cfg, data_cfg, key: dict, device, progress: bool = False,
                    results_dir: str | None = None, run_cfg=None) -> dict:
    """Train the in-suite dVAE; returns {"model": state dict, "key", "record"}. With `results_dir`
    its `running` record there shows its progress after every epoch; the record carries the preset
    and config of `run_cfg`, the run it was trained for."""
    rid = tokenizer_id(key)
    tb = tensorboard_dir(results_dir, rid) if results_dir else None
    recorder = results.Recorder(results_dir, rid, "tokenizer", run_cfg, main=results_dir is not None, tokenizer=key,
                                started_at=results.now(), tensorboard_dir=tb, **results.environment(device))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the caller's RNG stays
        torch.manual_seed(SEED)
        return _train(dataset, model_cfg, data_cfg, key, device, progress, recorder)


def _train(dataset, model_cfg, data_cfg, key, device, progress, recorder: results.Recorder) -> dict:
    view = key["view"]
    model = DVAE(key["vocab"], key["width"]).to(device)
    tf = pretrain_transform(data_cfg.augmentation, model_cfg.img_size, data_cfg.mean, data_cfg.std)
    loader = EpochLoader(Transformed(dataset, tf), min(BATCH, len(dataset)), SEED, num_workers=data_cfg.num_workers,
                         pin_memory=device.type == "cuda")
    total = key["epochs"] * loader.steps_per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    history, step, t0 = [], 0, time.perf_counter()
    log_v = math.log(key["vocab"])
    rid = recorder.run_id
    with tracked(f"tokenizer {rid}", epochs=key["epochs"], steps_per_epoch=loader.steps_per_epoch,
                 images_per_step=loader.batch_size, tb_dir=recorder.base["tensorboard_dir"], log=progress) as (bar, meter):
        for epoch in range(key["epochs"]):
            loss_sum = torch.zeros((), device=device)
            n = 0
            for imgs, _, _ in loader.epoch(epoch):
                if imgs.shape[0] == 0:
                    continue
                x = resize(imgs.to(device, non_blocking=True), view)
                frac = step / max(total - 1, 1)
                tau = TAU[0] * (TAU[1] / TAU[0]) ** frac
                beta = KL_WEIGHT * min(1.0, frac / 0.2)
                logits = model.encoder(x)
                recon = model.decode_soft(F.gumbel_softmax(logits, tau=tau, dim=1))
                mse = F.mse_loss(recon, x)
                logq = F.log_softmax(logits, dim=1)
                kl = (logq.exp() * logq).sum(dim=1).mean() + log_v  # KL(q || uniform) per token
                loss = mse + beta * kl
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += mse.detach()
                n, step = n + 1, step + 1
                bar.update(1)
                if step % LOG_EVERY == 0:
                    meter.step(step, mse.item(), sched.get_last_lr()[0])
            # rank 0 trains it alone (the other ranks wait for its file): no all-reduce
            history.append(epoch_mean(loss_sum, n, lambda v: f"tokenizer {rid}: non-finite loss ({v}) in epoch {epoch}",
                                      reduce=False))
            payload = meter.epoch_end(epoch, step, history[-1], sched.get_last_lr()[0])
            recorder.write("running", history={"loss": history}, progress=payload)
    wall = time.perf_counter() - t0
    model.eval()
    metrics = evaluate_tokenizer(model, dataset, model_cfg, data_cfg, view, device)
    record = recorder.build("done", history={"loss": history}, metrics=metrics, wall_time_s=wall, steps=total,
                            finished_at=results.now())
    record = json.loads(json.dumps(record, default=str))  # plain data (torch's version is a str subclass)
    return {"model": {k: v.cpu() for k, v in model.state_dict().items()}, "key": key, "record": record}


@torch.no_grad()
def evaluate_tokenizer(model: DVAE, train_set, model_cfg, data_cfg, view: int, device) -> dict:
    """Reconstruction MSE through hard tokens and codebook use, on up to EVAL_IMAGES validation
    images (training images when the dataset has no readable val split)."""
    split = "val"
    try:
        dataset = build_dataset(data_cfg, "val", model_cfg.img_size)
    except DataError:
        dataset, split = train_set, "train"
    keys = [(i, 0) for i in range(min(len(dataset), EVAL_IMAGES))]
    tf = eval_transform(model_cfg.img_size, data_cfg.mean, data_cfg.std)
    loader = torch.utils.data.DataLoader(Transformed(dataset, tf), batch_size=256, sampler=keys,
                                         num_workers=data_cfg.num_workers, collate_fn=collate_skipping)
    counts = torch.zeros(model.vocab, dtype=torch.float64)
    se, n = 0.0, 0
    for imgs, _, _ in loader:
        if imgs.shape[0] == 0:
            continue
        x = resize(imgs.to(device), view)
        tokens = model.tokens(x)
        se += F.mse_loss(model.decode(tokens), x, reduction="sum").item()
        n += x.numel()
        counts += torch.bincount(tokens.flatten().cpu(), minlength=model.vocab).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"recon_mse": se / max(n, 1), "perplexity": math.exp(entropy), "codes_used": int((counts > 0).sum()),
            "codebook_usage": float((counts > 0).float().mean()), "vocab": model.vocab, "eval_split": split,
            "eval_images": len(keys)}


def prepare_tokenizer(dataset, model_cfg, data_cfg, patch: int, cache_dir: str, device,
                      results_dir: str | None = None, progress: bool = False, run_cfg=None) -> tuple[DVAE, dict]:
    """The tokenizer for this config: from the cache, else trained now and cached. Its record is
    written to `results_dir` (default: the cache folder) if not there yet; it carries the preset and
    config of `run_cfg`, the run it is prepared for."""
    key = tokenizer_key(model_cfg, data_cfg, dataset, patch)
    path = os.path.join(cache_dir, tokenizer_id(key) + ".pt")
    blob = load_cached(path, key)
    if blob is None and int(os.environ.get("RANK", 0)) != 0:
        blob = _wait_for(path, key)  # rank 0 trains it; the others wait for its file
    where = results_dir or cache_dir
    if blob is None:
        print(f"training the dVAE tokenizer {tokenizer_id(key)} (once: cached as {path})", flush=True)
        run = {"preset": run_cfg.run.preset, "config": run_cfg.to_dict()} if run_cfg is not None else {}
        with results.ending_recorded(where, tokenizer_id(key), kind="tokenizer", tokenizer=key, **run):
            blob = train_tokenizer(dataset, model_cfg, data_cfg, key, device, progress, where, run_cfg)
            os.makedirs(cache_dir, exist_ok=True)
            atomic_write(path, lambda tmp: torch.save(blob, tmp))
    record = {**blob["record"], "weights": os.path.abspath(path)}
    if int(os.environ.get("RANK", 0)) == 0:
        if not results.finished(where, record["run_id"]):
            results.write_record(where, record)
    model = DVAE(key["vocab"], key["width"])
    model.load_state_dict(blob["model"])
    return model.to(device).eval().requires_grad_(False), record


def tokenizer_job(cfg, progress: bool = True) -> dict:
    """`run_all.py tokenizer`: train (or find) the tokenizer a dvae_token run of `cfg` uses; its
    record goes to cfg.run.results_dir, its weights to the cache every pretraining run reads."""
    from core.data import check_dataset_path
    from core.device import resolve_device
    from core.model import ARCHS

    if cfg.model.dvae_path:
        raise UserError(f"model.dvae_path={cfg.model.dvae_path} is set: DALL-E's encoder needs no training")
    check_dataset_path(cfg.data)
    train_set = build_dataset(cfg.data, "train", cfg.model.img_size)
    _, record = prepare_tokenizer(train_set, cfg.model, cfg.data, ARCHS[cfg.model.arch]["patch_size"],
                                  os.path.join(cfg.run.work_dir, "cache"), resolve_device(cfg.run.device),
                                  cfg.run.results_dir, progress, cfg)
    return record


def _wait_for(path: str, key: dict, poll_s: float = 10.0) -> dict:
    print(f"waiting for rank 0 to train the tokenizer {path}", flush=True)
    while True:
        blob = load_cached(path, key)
        if blob is not None:
            return blob
        time.sleep(poll_s)


# --------------------------------------------------------------------------- OpenAI DALL-E encoder

LOGIT_LAPLACE_EPS = 0.1  # DALL-E maps [0, 1] pixels into [eps, 1 - eps] before its encoder


class DalleConv(nn.Module):
    """DALL-E's conv layer: parameters named w and b, 'same' padding."""

    def __init__(self, n_in: int, n_out: int, kw: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(n_out, n_in, kw, kw))
        self.b = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return F.conv2d(x, self.w, self.b, padding=(self.w.shape[-1] - 1) // 2)


class DalleBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, n_layers: int):
        super().__init__()
        hid = n_out // 4
        self.id_path = DalleConv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential()
        for i, (a, b, k) in enumerate([(n_in, hid, 3), (hid, hid, 3), (hid, hid, 3), (hid, n_out, 1)], 1):
            self.res_path.add_module(f"relu_{i}", nn.ReLU())
            self.res_path.add_module(f"conv_{i}", DalleConv(a, b, k))
        self.post_gain = 1 / n_layers ** 2

    def forward(self, x):
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DalleEncoder(nn.Module):
    """The architecture of OpenAI's DALL-E dVAE encoder (4 groups, 3 max-pools: 8x down), with its
    parameter names, so the weights of encoder.pkl load with strict=True."""

    def __init__(self, n_hid: int = 256, n_blk_per_group: int = 2, vocab: int = 8192, groups: int = 4):
        super().__init__()
        self.vocab = vocab
        n_layers = groups * n_blk_per_group
        self.blocks = nn.Sequential()
        self.blocks.add_module("input", DalleConv(3, n_hid, 7))
        width = n_hid
        for g in range(1, groups + 1):
            out = n_hid * 2 ** (g - 1)
            group = nn.Sequential()
            for i in range(1, n_blk_per_group + 1):
                group.add_module(f"block_{i}", DalleBlock(width, out, n_layers))
                width = out
            if g < groups:
                group.add_module("pool", nn.MaxPool2d(kernel_size=2))
            self.blocks.add_module(f"group_{g}", group)
        self.blocks.add_module("output", nn.Sequential())
        self.blocks.output.add_module("relu", nn.ReLU())
        self.blocks.output.add_module("conv", DalleConv(width, vocab, 1))

    def forward(self, x):
        return self.blocks(x)


class _Pickled:
    """An inert stand-in for a class named in the pickle: it only receives the pickled __dict__."""


# Classes a pickled DALL-E encoder names. Each becomes its own empty subclass of _Pickled: loading
# builds plain attribute holders and never imports or runs the `dall_e` package.
DALLE_CLASSES = ("dall_e.encoder.Encoder", "dall_e.encoder.EncoderBlock", "dall_e.utils.Conv2d",
                 "torch.nn.modules.container.Sequential", "torch.nn.modules.activation.ReLU",
                 "torch.nn.modules.pooling.MaxPool2d", "torch.nn.modules.linear.Identity")
_STUBS = [(type(name.rsplit(".", 1)[1], (_Pickled,), {"__module__": __name__}), name) for name in DALLE_CLASSES]
_ALLOWED = {name: cls for cls, name in _STUBS} | {
    "collections.OrderedDict": OrderedDict, "torch.device": torch.device, "torch.Size": torch.Size,
    "builtins.set": set, "__builtin__.set": set,  # protocol 2 spells builtins the Python 2 way
    **{f"torch._utils.{f.__name__}": f for f in (torch._utils._rebuild_tensor, torch._utils._rebuild_tensor_v2,
                                                 torch._utils._rebuild_parameter)}}


class _RestrictedUnpickler(pickle.Unpickler):
    """For the legacy (non-zip) torch format, which weights_only=True cannot read when it holds a
    module: names resolve only to the inert records and torch's tensor rebuilders above; anything
    else (os.system, ...) is refused, so the file can run no code (Python's documented way to
    restrict unpickling)."""

    def find_class(self, module, name):
        if f"{module}.{name}" in _ALLOWED:
            return _ALLOWED[f"{module}.{name}"]
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


_restricted_pickle = types.SimpleNamespace(
    __name__="restricted_pickle", Unpickler=_RestrictedUnpickler,
    load=lambda f, **kw: _RestrictedUnpickler(f, **kw).load())


def _load_pickled_module(path: str):
    """The zip format (torch >= 1.6) loads with weights_only=True; OpenAI's encoder.pkl is in the
    legacy format (BEiT's bug reports show torch taking its _legacy_load path), read restricted."""
    with torch.serialization.safe_globals(_STUBS):
        if zipfile.is_zipfile(path):
            return torch.load(path, map_location="cpu", weights_only=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch compares the pickled class source with the stubs'
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)


def _collect(obj, prefix: str, out: dict) -> None:
    """Walk pickled modules (_parameters, _buffers, _modules dicts) into a flat state dict."""
    state = getattr(obj, "__dict__", {})
    for name, p in (state.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p.detach() if isinstance(p, torch.Tensor) else p
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _collect(child, f"{prefix}{name}.", out)


def check_dvae_path(path: str) -> None:
    """Also before a run starts (bad input: one line, nothing written): DALL-E's encoder file is there."""
    if path and not os.path.isfile(path):
        raise UserError(f"model.dvae_path={path} does not exist (get encoder.pkl from "
                        f"https://cdn.openai.com/dall-e/encoder.pkl, see docs/targets.md)")


def load_dalle_encoder(path: str) -> DalleEncoder:
    """OpenAI's encoder.pkl (or a plain state dict of it) -> DalleEncoder. One-line UserError if the
    file is missing or is not such an encoder."""
    check_dvae_path(path)
    try:
        obj = _load_pickled_module(path)
    except Exception as e:  # torch raises many types for foreign, truncated or unsafe files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"model.dvae_path={path} is not a DALL-E encoder.pkl ({first[:160]})") from None
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = dict(obj)
    else:
        state = {}
        _collect(obj, "", state)
    try:
        n_hid, _, kw, _ = state["blocks.input.w"].shape
        vocab = state["blocks.output.conv.w"].shape[0]
        n_blk = len({k.split(".")[2] for k in state if k.startswith("blocks.group_1.")})
        if kw != 7:
            raise KeyError("blocks.input.w")
        enc = DalleEncoder(n_hid, n_blk, vocab)
        enc.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"model.dvae_path={path} does not hold DALL-E encoder weights ({first[:160]})") from None
    return enc.eval().requires_grad_(False)


# --------------------------------------------------------------------------- the target

class DVAETokenTarget(Target):
    """Target = the tokenizer's argmax code per patch, (B, L) long; head = vocabulary logits;
    loss = cross-entropy on the masked patches."""
    name = "dvae_token"

    def __init__(self, model_cfg, data_cfg):
        super().__init__(model_cfg, data_cfg)
        self.grid, self.view = token_grid(model_cfg, self.patch_size)
        self.tokenizer = self.dalle = None
        self.vocab = model_cfg.dvae_vocab
        self.record = None

    @property
    def dim(self):
        return self.vocab

    def prepare(self, dataset, cache_dir, device, results_dir=None, progress=False, run_cfg=None):
        if self.model_cfg.dvae_path:
            self.dalle = load_dalle_encoder(self.model_cfg.dvae_path).to(device)
            self.vocab = self.dalle.vocab
        else:
            self.tokenizer, self.record = prepare_tokenizer(dataset, self.model_cfg, self.data_cfg, self.patch_size,
                                                            cache_dir, device, results_dir, progress, run_cfg)
        self.mean = torch.tensor(self.data_cfg.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.data_cfg.std, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, imgs):
        if self.dalle is not None:
            x = (imgs.float() * self.std + self.mean).clamp(0, 1)  # back to [0, 1] pixels
            x = (1 - 2 * LOGIT_LAPLACE_EPS) * resize(x, self.view) + LOGIT_LAPLACE_EPS
            logits = self.dalle(x)
        else:
            logits = self.tokenizer.encoder(resize(imgs, self.view))
        assert logits.shape[-1] == self.grid, (logits.shape, self.grid)  # one token per patch
        return logits.argmax(dim=1).flatten(1)  # (B, L) in patchify's row-major order

    def patch_loss(self, pred, target):
        return cross_entropy_patch_loss(pred, target)

    @torch.no_grad()
    def to_pixels(self, pred, imgs):
        """The in-suite tokenizer decodes the predicted codes back into a picture."""
        if self.tokenizer is None:
            return None
        from core.model import patchify

        tokens = pred.argmax(dim=-1).view(-1, self.grid, self.grid)
        return patchify(resize(self.tokenizer.decode(tokens), imgs.shape[-1]), self.patch_size)
