"""The in-suite dVAE tokenizer's training job: trained once per (data, image/patch size, tokenizer
config), cached under <work_dir>/cache, with its own run record (kind "tokenizer"). Gumbel-softmax
relaxation annealed from temperature 1 to 1/16 and a KL term towards the uniform prior, as DALL-E's
dVAE; an MSE reconstruction loss (DALL-E: logit-Laplace). `run_all.py tokenizer` is `tokenizer_job`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time

import torch
import torch.nn.functional as F

from core import results
from core.checkpoint import atomic_write
from core.config import config_hash
from core.data import (EpochLoader, Transformed, build_dataset, check_dataset_path, collate_skipping, eval_transform,
                       pretrain_transform)
from core.device import resolve_device
from core.distributed import StopFlag
from core.errors import DataError, UserError
from core.fingerprint import resolve as resolve_dataset
from core.loop import Resumable, epoch_mean, stop_point, tracked
from core.model import ARCHS
from core.progress import tensorboard_dir
from core.targets.base import load_cached, wait_for_cached
from core.targets.dvae_model import DVAE, resize, token_grid
from core.targets.pca import dataset_identity

# The in-suite tokenizer's training recipe; part of its cache key (bump VERSION when the code changes).
VERSION = 1
BATCH = 64
LR = 3e-3
TAU = (1.0, 1.0 / 16)  # Gumbel-softmax temperature, annealed exponentially over training (DALL-E)
KL_WEIGHT = 0.03  # weight of KL(q || uniform) per token, warmed up linearly over the first 20% of steps
SEED = 0
EVAL_IMAGES = 2048
LOG_EVERY = 50  # steps between log lines (one host sync each) and looks at the stop flag


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
                    results_dir: str | None = None, run_cfg=None, ckpt_dir: str | None = None,
                    stop: StopFlag | None = None) -> dict:
    """Train the in-suite dVAE; returns {"model": state dict, "key", "record"}. With `results_dir`
    its `running` record there shows its progress after every epoch; the record carries the preset
    and config of `run_cfg`, the run it was trained for. With `ckpt_dir` it saves after every epoch
    and, when `stop` is set, at its next look (every LOG_EVERY steps), then raises Preempted; it
    resumes from there, ending with the weights of an uninterrupted training."""
    rid = tokenizer_id(key)
    tb = tensorboard_dir(results_dir, rid) if results_dir else None
    recorder = results.Recorder(results_dir, rid, "tokenizer", run_cfg, main=results_dir is not None, tokenizer=key,
                                started_at=results.now(), tensorboard_dir=tb, **results.environment(device))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the caller's RNG stays
        torch.manual_seed(SEED)
        return _train(dataset, model_cfg, data_cfg, key, device, progress, recorder, ckpt_dir, stop)


def _train(dataset, model_cfg, data_cfg, key, device, progress, recorder: results.Recorder, ckpt_dir=None,
           stop=None) -> dict:
    view = key["view"]
    model = DVAE(key["vocab"], key["width"]).to(device)
    tf = pretrain_transform(data_cfg.augmentation, model_cfg.img_size, data_cfg.mean, data_cfg.std)
    loader = EpochLoader(Transformed(dataset, tf), min(BATCH, len(dataset)), SEED, num_workers=data_cfg.num_workers,
                         pin_memory=device.type == "cuda")
    total = key["epochs"] * loader.steps_per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    history, step, start_epoch, start_batch, t0 = [], 0, 0, 0, time.perf_counter()
    loss_sum, n = torch.zeros((), device=device), 0
    log_v = math.log(key["vocab"])
    rid = recorder.run_id
    cuda = device.type == "cuda"
    state = Resumable(ckpt_dir, keep=1, model=model, optimizer=opt, scheduler=sched)
    found = state.latest()
    if found is not None:
        st = state.load(found[0])
        history, step, start_epoch, start_batch = list(st["history"]), st["step"], st["epoch"], st["batch"]
        loss_sum, n = st["loss_sum"].to(device), st["n"]
        torch.set_rng_state(st["torch_rng"])  # the Gumbel noise draws from it
        if cuda:
            torch.cuda.set_rng_state(st["cuda_rng"], device)

    def save(epoch: int, batch: int) -> str | None:
        return state.save(step, history=list(history), step=step, epoch=epoch, batch=batch, loss_sum=loss_sum.cpu(),
                          n=n, torch_rng=torch.get_rng_state(), cuda_rng=torch.cuda.get_rng_state(device) if cuda else None)

    def preempted(epoch: int, batch: int) -> str | None:
        path = save(epoch, batch)
        recorder.write("preempted", reason=f"signal {stop.signum}", history={"loss": history}, last_checkpoint=path)
        return path

    with tracked(f"tokenizer {rid}", epochs=key["epochs"], steps_per_epoch=loader.steps_per_epoch, step=step,
                 images_per_step=loader.batch_size, tb_dir=recorder.base["tensorboard_dir"], log=progress) as (bar, meter):
        for epoch in range(start_epoch, key["epochs"]):
            batch = start_batch if epoch == start_epoch else 0
            for imgs, _, _ in loader.epoch(epoch, batch):
                batch += 1
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
                    if batch < loader.steps_per_epoch:  # rank 0 trains it alone: its own flag, no all-reduce
                        stop_point(stop, device, f"step {step} of tokenizer {rid}", lambda: preempted(epoch, batch),
                                   reduce=False)
            # rank 0 trains it alone (the other ranks wait for its file): no all-reduce
            history.append(epoch_mean(loss_sum, n, lambda v: f"tokenizer {rid}: non-finite loss ({v}) in epoch {epoch}",
                                      reduce=False))
            loss_sum, n = torch.zeros((), device=device), 0
            payload = meter.epoch_end(epoch, step, history[-1], sched.get_last_lr()[0])
            recorder.write("running", history={"loss": history}, progress=payload)
            save(epoch + 1, 0)
            if epoch + 1 < key["epochs"]:
                stop_point(stop, device, f"step {step} of tokenizer {rid}", lambda: preempted(epoch + 1, 0),
                           reduce=False)
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
    """The tokenizer for this config: from the cache, else trained now (resuming a preempted
    training; SIGTERM/SIGUSR1 stop it with a checkpoint) and cached. Its record is written to
    `results_dir` (default: the cache folder) if not there yet; it carries the preset and config of
    `run_cfg`, the run it is prepared for."""
    key = tokenizer_key(model_cfg, data_cfg, dataset, patch)
    path = os.path.join(cache_dir, tokenizer_id(key) + ".pt")
    blob = load_cached(path, key)
    if blob is None and int(os.environ.get("RANK", 0)) != 0:
        blob = wait_for_cached(path, key, f"tokenizer {tokenizer_id(key)}",  # rank 0 trains it
                               "train it first: python run_all.py tokenizer, with this run's --preset and overrides")
    where = results_dir or cache_dir
    if blob is None:
        print(f"training the dVAE tokenizer {tokenizer_id(key)} (once: cached as {path})", flush=True)
        run = {"preset": run_cfg.run.preset, "config": run_cfg.to_dict()} if run_cfg is not None else {}
        ckpt_dir = os.path.join(cache_dir, tokenizer_id(key))  # a preempted training resumes from here
        with results.ending_recorded(where, tokenizer_id(key), kind="tokenizer", tokenizer=key, **run), \
                StopFlag() as stop:
            blob = train_tokenizer(dataset, model_cfg, data_cfg, key, device, progress, where, run_cfg, ckpt_dir, stop)
            os.makedirs(cache_dir, exist_ok=True)
            atomic_write(path, lambda tmp: torch.save(blob, tmp))
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # the cached weights replace it
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
    if cfg.model.dvae_path:
        raise UserError(f"model.dvae_path={cfg.model.dvae_path} is set: DALL-E's encoder needs no training")
    cfg = resolve_dataset(cfg)  # the key holds the dataset's fingerprint, as the pretraining run's does
    check_dataset_path(cfg.data)
    train_set = build_dataset(cfg.data, "train", cfg.model.img_size)
    _, record = prepare_tokenizer(train_set, cfg.model, cfg.data, ARCHS[cfg.model.arch]["patch_size"],
                                  os.path.join(cfg.run.work_dir, "cache"), resolve_device(cfg.run.device),
                                  cfg.run.results_dir, progress, cfg)
    return record

