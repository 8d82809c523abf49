"""The supervised training loop shared by the linear probe, (partial) fine-tuning and the scratch
baseline, on the loop skeleton of core.loop: gradient accumulation, the lr schedule and `fit`."""
from __future__ import annotations

import contextlib
import itertools

import torch
from timm.scheduler import CosineLRScheduler
from torch.nn.parallel import DistributedDataParallel as DDP

from core.data import EpochLoader, sample_seed
from core.device import autocast
from core.errors import CheckpointError
from core.eval.context import Session
from core.eval.data import seeded
from core.loop import Resumable, epoch_mean, stop_point, tracked

LOG_EVERY = 50  # steps between the training loop's log lines (one host sync each)


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
