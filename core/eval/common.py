"""What the evaluation protocols share: run ids and records, the eval data, checking and loading
encoder weights, frozen features, the supervised training loop and top-k accuracy."""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
from timm.scheduler import CosineLRScheduler
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import Dataset
from torchvision.transforms.functional import to_pil_image
from tqdm import tqdm

from core import checkpoint, results
from core.config import Config, _plain, config_hash
from core.data import EpochLoader, SeededSampler, Transformed, build_dataset, sample_seed
from core.device import autocast
from core.distributed import DistInfo, StopFlag, all_sum, split_batch
from core.errors import CheckpointError, ConfigError, DataError, UserError
from core.loop import Resumable, epoch_mean, stop_point, tracked
from core.model import ARCHS, ViTEncoder
from core.progress import show_bar

PROTOCOLS = ("linprobe", "finetune", "partial", "knn")
KINDS = PROTOCOLS + ("scratch",)
# Images per forward pass of a frozen encoder and per validation batch: bounds memory (a linear
# probe batch is 16384 images at the paper preset), changes no result.
CHUNK = 256
LOG_EVERY = 50  # steps between the training loop's log lines (one host sync each)

# Section settings whose value here is what every run did before the setting existed: left out of
# eval ids at that value, so existing records keep their ids.
OLD_BEHAVIOUR = {"accum_iter": 1}


# --------------------------------------------------------------------------- the session

@dataclass
class Session:
    """Where an evaluation runs, passed to the protocol's runner and on to its loaders and `fit`: its
    processes (DDP when launched by torchrun or a cluster job), the stop flag that SIGTERM/SIGUSR1/USR2
    set, and the folder of its checkpoints. The default: one process, no stop flag, no checkpoints."""
    dist: DistInfo = DistInfo()
    stop: StopFlag | None = None  # None: never stops early
    ckpt_dir: str | None = None  # None: no checkpoints (nothing to resume)
    record: "results.Recorder | None" = None  # the evaluation's record: `fit` writes its progress every epoch
    tb_dir: str | None = None  # TensorBoard event files of the evaluation
    # Training steps between looks at the stop flag (and at every epoch's end). With several
    # processes a look is an all-reduce and a host sync, so not every step (pretrain.log_every).
    stop_every: int = 1



# --------------------------------------------------------------------------- ids and records

def section(cfg: Config, kind: str):
    """The config section a protocol reads; partial fine-tuning is the fine-tune section with `blocks`."""
    e = cfg.eval
    sections = {"linprobe": e.linprobe, "finetune": e.finetune, "partial": e.finetune, "knn": e.knn,
                "scratch": e.scratch}
    if kind not in sections:
        raise UserError(f"unknown evaluation protocol {kind!r}; choose one of: {', '.join(KINDS)}")
    return sections[kind]


def eval_run_id(cfg: Config, protocol: str, parent: str | None = None, eval_only: bool = False) -> str:
    """'<protocol>-<12 hex>' from the parent run, the protocol's section, eval.seed and the
    model/data settings evaluation depends on. Paths never enter it. The scratch baseline has no parent."""
    sec = section(cfg, protocol)
    parent = None if protocol == "scratch" else (parent or cfg.run_id())
    m, d = cfg.model, cfg.data
    data = {"dataset": d.dataset, "mean": d.mean, "std": d.std}
    if d.dataset == "synthetic":
        data["synthetic_size"] = d.synthetic_size
    if d.fingerprint:  # a folder's content (core.fingerprint); the scratch baseline has no parent that holds it
        data["fingerprint"] = d.fingerprint
    # settings added later leave the id of runs that keep their old behaviour unchanged
    sec = {k: v for k, v in dataclasses.asdict(sec).items() if OLD_BEHAVIOUR.get(k, object()) != v}
    ident = {"protocol": protocol, "parent": parent, "section": sec, "seed": cfg.eval.seed,
             "model": {"arch": m.arch, "img_size": m.img_size}, "data": data}
    if eval_only:  # a fine-tuned classifier evaluated as it is
        ident["eval_only"] = True
    return f"{protocol}-{config_hash(ident)}"


def check_protocol(cfg: Config, kind: str) -> None:
    """Settings that only make sense for some protocols (the rest is checked by core.config)."""
    section(cfg, kind)
    blocks = cfg.eval.finetune.blocks
    if kind == "partial" and blocks is None:
        raise ConfigError("the partial protocol needs eval.finetune.blocks=K (the last K blocks train)")
    if kind == "finetune" and blocks is not None:
        raise ConfigError(f"eval.finetune.blocks={blocks} is for the partial protocol: run `eval partial`, "
                          "or set eval.finetune.blocks=None for full fine-tuning")
    for key, value in (("eval.knn.pool", cfg.eval.knn.pool), ("eval.scratch.pool", cfg.eval.scratch.pool)):
        if value not in ("cls", "avg"):
            raise ConfigError(f"{key}={value!r} is not one of: cls, avg")
    for key, value in (("eval.finetune.crop_scale", cfg.eval.finetune.crop_scale),
                       ("eval.scratch.crop_scale", cfg.eval.scratch.crop_scale)):
        if len(value) != 2 or not 0 < value[0] <= value[1] <= 1:
            raise ConfigError(f"{key} must be two numbers 0 < lo <= hi <= 1, got {value}")


def eval_recorder(cfg: Config, run_id: str, kind: str, parent: str | None, device, main: bool,
                  **extra) -> results.Recorder:
    """An evaluation's run record: 'running' when it starts, then 'done', or 'failed' with a reason."""
    return results.Recorder(cfg.run.results_dir, run_id, kind, cfg, main=main, parent=parent,
                            protocol_config=_plain(dataclasses.asdict(section(cfg, kind))),
                            started_at=results.now(), **results.environment(device), **extra)


# --------------------------------------------------------------------------- data

@dataclass
class EvalData:
    train: Dataset  # raw: TensorImages or ImageFolderImages
    val: Dataset
    num_classes: int


def eval_data(cfg: Config) -> EvalData:
    size = cfg.model.img_size
    train, val = build_dataset(cfg.data, "train", size), build_dataset(cfg.data, "val", size)
    if list(train.classes) != list(val.classes):
        raise DataError(f"the train and val splits have different classes ({len(train.classes)} vs {len(val.classes)})")
    return EvalData(train, val, len(train.classes))


def make_loader(cfg: Config, base, transform, batch_size: int, train: bool, device, shard: bool | None = None,
                key: str = "the evaluation batch size", ses: Session | None = None) -> EpochLoader:
    """Seeded like pretraining: order from (eval.seed, epoch), augmentation from (eval.seed, epoch, index).
    Sharded over the ranks of session `ses` (default: training loaders), `batch_size` (setting `key`)
    then being the global batch; feature extraction reads whole splits on every rank."""
    dist = (ses or Session()).dist if (train if shard is None else shard) else DistInfo()
    per_rank = split_batch(batch_size, dist.world, key=key) if train else batch_size
    return EpochLoader(Transformed(base, transform), per_rank, cfg.eval.seed, shuffle=train, drop_last=train,
                       num_workers=cfg.data.num_workers, rank=dist.rank, world=dist.world,
                       pin_memory=device.type == "cuda")


@contextlib.contextmanager
def seeded(seed: int):
    """Seed python's and numpy's RNGs for a block, then restore them. timm's RandAugment, random
    crop, random erasing and Mixup draw from these, not from torch."""
    state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])


class SeededTimm:
    """Runs a timm transform on PIL images with python/numpy seeded from the torch RNG, which
    core.data.Transformed seeds per sample: the same augmentation for any worker count."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        if isinstance(img, torch.Tensor):  # in-memory datasets hold uint8 tensors; RandAugment needs PIL
            img = to_pil_image(img)
        with seeded(int(torch.randint(2 ** 31 - 1, ()))):
            return self.transform(img)


class FeatureLoader:
    """Batches of precomputed features in the order core.data's seeded sampler gives, without the
    per-sample cost of the image loader; `epoch(e)` and `steps_per_epoch` as EpochLoader."""

    def __init__(self, feats: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, train: bool):
        self.feats, self.labels, self.batch_size, self.drop_last = feats, labels, batch_size, train
        self.sampler = SeededSampler(len(labels), seed, shuffle=train)
        if train and len(labels) < batch_size:
            raise DataError(f"the dataset has {len(labels)} images, fewer than one batch of {batch_size}")

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int, start_step: int = 0):
        self.sampler.set_epoch(epoch)
        order = torch.tensor([i for i, _ in self.sampler], device=self.feats.device)
        for step in range(start_step, self.steps_per_epoch):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.feats[idx], self.labels[idx], 0


# --------------------------------------------------------------------------- encoder weights

# Keys of a pretraining checkpoint that are not the encoder's (the decoder, mask tokens) and keys
# of a fine-tuned one that every evaluation replaces (the head).
NOT_ENCODER = ("decoder_", "mask_token", "encoder_mask_token", "head.", "fc_norm.")


def load_init(path: str) -> tuple[dict, str]:
    """(weights, sha256) of an external checkpoint: {'model': state dict} as the MAE authors
    released them, or ours. weights_only=True: a pickle that would run code is refused."""
    obj = checkpoint.load_file(path)
    state = checkpoint.model_state(obj, path)
    ignored = checkpoint.ignored_keys(obj)
    if ignored:  # an official training checkpoint: args (an argparse.Namespace), optimizer, epoch, scaler
        print(f"note: {path}: using its 'model' weights, ignoring {', '.join(ignored)}", file=sys.stderr)
    return state, checkpoint.sha256(path)


def is_finetuned_avg(state: dict) -> bool:
    """The layout of the official fine-tuned classifiers: fc_norm and head, no final norm."""
    return "fc_norm.weight" in state and "norm.weight" not in state


def encoder_state(state: dict, arch: str, img_size: int, source: str, final_norm: bool = True) -> dict:
    """The encoder's weights out of a checkpoint, checked strictly against model.arch: every
    encoder key present with its shape, nothing unknown besides the decoder and head.
    final_norm=False: the encoder of a fine-tuned classifier that pools before its fc_norm."""
    if final_norm and is_finetuned_avg(state):
        raise CheckpointError(f"{source} is a fine-tuned classifier (fc_norm and head, no final norm): evaluate "
                              f"it with `eval finetune --eval-only`, or pass a pretraining checkpoint")
    state = {k: v for k, v in state.items() if not k.startswith(NOT_ENCODER)}
    with torch.device("meta"):  # shapes only, no memory
        want = {k: v.shape for k, v in ViTEncoder(arch, img_size).state_dict().items()
                if final_norm or not k.startswith("norm.")}
    a = ARCHS[arch]
    w = state.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 4:
        if w.shape[0] != a["embed_dim"]:
            guess = [n for n, s in ARCHS.items() if s["embed_dim"] == w.shape[0]]
            hint = f" ({guess[0]}?)" if guess else ""
            raise CheckpointError(f"{source}: checkpoint has embed dim {w.shape[0]}{hint} but model.arch={arch} "
                                  f"has {a['embed_dim']}")
        if w.shape[-1] != a["patch_size"]:
            raise CheckpointError(f"{source}: checkpoint has patch size {w.shape[-1]} but model.arch={arch} "
                                  f"has {a['patch_size']}")
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    if depth and depth != a["depth"]:
        raise CheckpointError(f"{source}: checkpoint has {depth} blocks but model.arch={arch} has {a['depth']}")
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else "")] if missing else []) + \
                ([f"unexpected {', '.join(unexpected[:4])}" + (" ..." if len(unexpected) > 4 else "")]
                 if unexpected else [])
        raise CheckpointError(f"{source} is not a {arch} encoder checkpoint: {'; '.join(parts)}")
    for k, shape in want.items():
        if state[k].shape != shape:
            raise CheckpointError(f"{source}: {k} has shape {tuple(state[k].shape)} but model.arch={arch} at "
                                  f"model.img_size={img_size} needs {tuple(shape)}")
    return state


def frozen_encoder(cfg: Config, state: dict, device) -> ViTEncoder:
    enc = ViTEncoder(cfg.model.arch, cfg.model.img_size)
    enc.load_state_dict(state, strict=True)
    enc.requires_grad_(False)
    return enc.to(device).eval()


# --------------------------------------------------------------------------- features and accuracy

def pool_tokens(x: torch.Tensor, pool: str) -> torch.Tensor:
    """(B, 1 + N, D) encoder output -> (B, D): the cls token, or the mean of the patch tokens."""
    return x[:, 0] if pool == "cls" else x[:, 1:].mean(1)


@torch.no_grad()
def frozen_features(encoder, imgs: torch.Tensor, pool: str, precision: str, device) -> torch.Tensor:
    out = []
    for chunk in imgs.split(CHUNK):
        with autocast(precision, device):
            out.append(pool_tokens(encoder(chunk), pool).float())
    return torch.cat(out)


def extract(encoder, loader: EpochLoader, pool: str, precision: str, device, desc: str, progress: bool):
    """Features and labels of a whole split, in dataset order (the loader must not shuffle)."""
    feats, labels = [], []
    for imgs, y, _ in tqdm(loader.epoch(0), total=loader.steps_per_epoch, desc=desc, disable=not show_bar(progress),
                           unit="batch", dynamic_ncols=True, mininterval=1.0):
        if imgs.shape[0]:
            feats.append(frozen_features(encoder, imgs.to(device, non_blocking=True), pool, precision, device))
            labels.append(y.to(device))
    return torch.cat(feats), torch.cat(labels)


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of rows whose label is among the k highest scores, for each k (k capped at the classes)."""
    maxk = min(max(ks), scores.shape[1])
    hit = scores.topk(maxk, dim=1).indices == labels[:, None]
    return [hit[:, :min(k, maxk)].any(1).sum() for k in ks]


@torch.no_grad()
def validate(model, loader: EpochLoader, precision: str, device) -> tuple[float, float]:
    """Top-1 and top-5 accuracy in percent over the whole split."""
    model.eval()
    hits = torch.zeros(2, dtype=torch.long, device=device)
    n = 0
    for imgs, labels, _ in loader.epoch(0):
        if not imgs.shape[0]:
            continue
        imgs, labels = imgs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(precision, device):
            logits = model(imgs)
        hits += torch.stack(topk_hits(logits.float(), labels))
        n += labels.shape[0]
    if isinstance(loader, EpochLoader) and loader.world > 1:  # each rank saw its shard
        hits = all_sum(torch.cat([hits, torch.tensor([n], device=device)]))
        hits, n = hits[:2], int(hits[2])
    top1, top5 = (100.0 * hits / max(n, 1)).tolist()
    return top1, top5


# --------------------------------------------------------------------------- training loop

class Accumulate:
    """One optimizer step per `accum` consecutive batches of `loader` (gradient accumulation):
    yields lists of batches; `epoch(e, start_step)` and `steps_per_epoch` count optimizer steps."""

    def __init__(self, loader, accum: int):
        self.loader, self.accum = loader, accum
        self.steps_per_epoch = loader.steps_per_epoch // accum
        self.batch_size = loader.batch_size * accum  # images per optimizer step on this process
        self.world = getattr(loader, "world", 1)

    def epoch(self, epoch: int, start_step: int = 0):
        batches = self.loader.epoch(epoch, start_step * self.accum)
        for _ in range(start_step, self.steps_per_epoch):
            yield [next(batches) for _ in range(self.accum)]


def cosine_schedule(optimizer, epochs: int, warmup_epochs: int, steps_per_epoch: int, min_lr: float = 0.0):
    """Linear warm-up then half-cosine to min_lr, per step, as in pretraining (timm; honours lr_scale,
    which scales the floor too, as the official code does)."""
    total, warmup = epochs * steps_per_epoch, min(warmup_epochs, epochs) * steps_per_epoch
    return CosineLRScheduler(optimizer, t_initial=max(total - warmup, 1), lr_min=min_lr, warmup_t=warmup,
                             warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)


class _Trainable:
    """The state of a model whose frozen weights (a linear probe's encoder, a partial fine-tune's
    first blocks) never change: not saved every epoch, not expected back."""

    def __init__(self, model, frozen: set):
        self.model, self.frozen = model, frozen

    def state_dict(self) -> dict:
        return {k: v for k, v in self.model.state_dict().items() if k not in self.frozen}

    def load_state_dict(self, state: dict) -> None:
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - self.frozen:
            raise CheckpointError("the checkpoint does not fit this evaluation's model")


def fit(model, optimizer, scheduler, loader: EpochLoader, *, epochs: int, criterion, precision: str, device,
        scaler, seed: int, validators: dict, mixup=None, ema=None, progress: bool = True, desc: str = "",
        ses: Session | None = None) -> dict:
    """Supervised training, shared by the linear probe, (partial) fine-tuning and the scratch
    baseline. After every epoch each validator (name -> () -> (top1, top5)) runs; returns the
    history: per-epoch mean loss and val_top1/val_top5<name>.

    In a session (`ses`, default: one process, no checkpoints) with several processes the model
    trains under DDP. With a checkpoint folder it saves after every epoch and, when a stop signal
    arrives, at the next look at the flag (every `stop_every` steps of the session, and at each
    epoch's end), then raises Preempted; it resumes from the newest checkpoint, ending as an
    uninterrupted run would."""
    ses = ses or Session()
    history = {"loss": []}
    for name in validators:
        history[f"val_top1{name}"], history[f"val_top5{name}"] = [], []
    step_fn = model
    if ses.dist.world > 1 and any(p.requires_grad for p in model.parameters()):
        step_fn = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    start_epoch, start_step, step = 0, 0, 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    state = Resumable(ses.ckpt_dir, main=ses.dist.is_main, keep=1, model=_Trainable(model, frozen),
                      optimizer=optimizer, scaler=scaler, ema=ema.module if ema is not None else None)
    found = state.latest()
    if found is not None:
        try:
            st = state.load(found[0])
        except (CheckpointError, KeyError):
            raise CheckpointError(f"{found[1]} does not fit this evaluation's model") from None
        history, step, count = st["history"], st["step"], st["count"]
        start_epoch, start_step = divmod(step, loader.steps_per_epoch)
        loss_sum = st["loss_sum"].to(device)
        torch.set_rng_state(st["torch_rng"])  # drop path draws from it
        scheduler.step_update(step)

    def save():
        return state.save(step, history=history, step=step, count=count, loss_sum=loss_sum.cpu(),
                          torch_rng=torch.get_rng_state())

    with tracked(ses.record.run_id if ses.record else desc, desc=desc, epochs=epochs,
                 steps_per_epoch=loader.steps_per_epoch, step=step, tb_dir=ses.tb_dir, main=ses.dist.is_main,
                 images_per_step=loader.batch_size * getattr(loader, "world", 1), log=progress) as (bar, meter):
        loss = None  # the last batch's, for the log lines
        for epoch in range(start_epoch, epochs):
            model.train()
            first = start_step if epoch == start_epoch else 0
            for batch in itertools.islice(loader.epoch(epoch, first), loader.steps_per_epoch - first):
                # equal step counts on every rank: islice drops a shard's extra batch. An Accumulate
                # loader gives a list of micro-batches: their gradients add up to one step's
                parts = [b for b in (batch if isinstance(batch, list) else [batch])
                         if b[0].shape[0] >= 2]  # a batch of one (the last, partial) breaks BatchNorm and mixup
                for i, (imgs, labels, _) in enumerate(parts):
                    imgs, target = imgs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                    if mixup is not None:
                        n = imgs.shape[0] - imgs.shape[0] % 2  # timm's Mixup pairs a batch with its reverse
                        with seeded(sample_seed(seed, epoch, step * len(parts) + i)):
                            imgs, target = mixup(imgs[:n], target[:n])
                    sync = i == len(parts) - 1 or step_fn is model  # DDP reduces once, after the last part
                    with contextlib.nullcontext() if sync else step_fn.no_sync():
                        with autocast(precision, device):
                            out = step_fn(imgs)
                        loss = criterion(out.float(), target) / len(parts)
                        scaler.scale(loss).backward()
                    loss_sum += loss.detach().to(torch.float64)
                if parts:
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update(model, step=step + 1)
                    count += 1
                step += 1
                scheduler.step_update(step)
                bar.update(1)
                if step % LOG_EVERY == 0:
                    meter.step(step, loss.item() if loss is not None else None, optimizer.param_groups[0]["lr"])
                # the same steps on every rank; the epoch's last step is checked after its save
                if step % ses.stop_every == 0 and step % loader.steps_per_epoch:
                    stop_point(ses.stop, device, f"step {step} of {desc}", save)
            mean = epoch_mean(loss_sum, count, lambda v: f"non-finite training loss ({v}) in epoch {epoch}")
            history["loss"].append(mean)
            loss_sum.zero_()
            count = 0
            for name, fn in validators.items():
                top1, top5 = fn()
                history[f"val_top1{name}"].append(top1)
                history[f"val_top5{name}"].append(top5)
            bar.set_postfix(loss=f"{mean:.4f}", top1=f"{history['val_top1'][-1]:.1f}")
            save()
            payload = meter.epoch_end(epoch, step, mean, optimizer.param_groups[0]["lr"],
                                      **{k: v[-1] for k, v in history.items() if k.startswith("val_")})
            if ses.record is not None:
                ses.record.write("running", history=history, progress=payload)
            if epoch + 1 < epochs:
                stop_point(ses.stop, device, f"step {step} of {desc}")
    return history
