"""MAE pretraining: the loop, its checkpoints and its run record.

`pretrain(cfg)` is the one entry point; the CLI, the sweep runner and cluster jobs all call it.
A finished run is returned from its record without training; an interrupted one resumes from its
newest checkpoint and ends with the same weights as an uninterrupted run (CPU, same thread count).
"""
from __future__ import annotations

from contextlib import nullcontext
import os
import time

import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch.nn.parallel import DistributedDataParallel as DDP

from core import checkpoint, results, runlock
from core.config import Config
from core.data import (EpochLoader, Transformed, build_dataset, check_dataset_path, check_unreadable,
                       pretrain_transform)
from core.device import (autocast, cpu_attention, grad_scaler, keep_freed_memory, resolve_device,
                         resolve_precision)
from core.distributed import (DistInfo, StopFlag, all_sum, any_rank, barrier, init as init_distributed,
                              split_batch)
from core.errors import CheckpointError, DataError
from core.ffcv.loaders import ffcv_pretrain_loader
from core.fingerprint import resolve as resolve_dataset
from core.flops import mae_forward_flops
from core.masking import make_mask
from core.model import initial_mae
from core.loop import Resumable, check_finite, epoch_mean, stop_point, tracked
from core.progress import tensorboard_dir
from core.targets import build_target
from core.targets.dvae import check_dvae_path

def ckpt_dir(cfg: Config, run_id: str | None = None) -> str:
    return os.path.join(cfg.run.work_dir, results.check_id(run_id or cfg.run_id()))


def mask_generator(seed: int, micro_step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 7_919 + micro_step) * 1_009 + rank)


def build_optimizer(model, cfg: Config, device):
    p = cfg.pretrain
    groups = param_groups_weight_decay(model, p.weight_decay)  # no decay on biases and norms (1-D)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(p.betas), fused=device.type in ("cpu", "cuda"))


def forward_backward(step_fn, target, imgs, mask, precision: str, device, scaler, accum: int = 1,
                     all_patches: bool = False) -> torch.Tensor:
    """One micro-step: forward under autocast, loss, scaled backward. The loss is returned as a
    device tensor and never read here: reading it (.item()) would stall the host every step."""
    with autocast(precision, device):
        pred = step_fn(imgs, mask)
    loss = target.loss(pred, target(imgs), mask, all_patches)
    scaler.scale(loss / accum).backward()
    return loss


def optimizer_step(model, optimizer, scaler, clip_grad: float | None = None) -> None:
    """Clip (optional), step and zero the grads. With a fused AdamW the GradScaler hands the
    inf check to the optimizer, so even fp16 needs no host sync here."""
    if clip_grad is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def build_scheduler(optimizer, cfg: Config, steps_per_epoch: int):
    """Linear warm-up then half-cosine, updated every optimizer step (as the paper's code)."""
    p = cfg.pretrain
    total, warmup = p.epochs * steps_per_epoch, p.warmup_epochs * steps_per_epoch
    return CosineLRScheduler(optimizer, t_initial=max(total - warmup, 1), lr_min=p.min_lr, warmup_t=warmup,
                             warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)


def pretrain(cfg: Config, *, progress: bool = True) -> dict:
    """Train (or resume, or skip) the run `cfg` describes; returns its final record."""
    cfg = resolve_dataset(cfg)  # the dataset's content, not its path, is part of the run id
    run_id = cfg.run_id()
    done = results.finished(cfg.run.results_dir, run_id)
    if done:
        return done
    check_dataset_path(cfg.data)  # bad input: one line, nothing written (a sweep records it: run_plan)
    if cfg.model.target == "dvae_token":
        check_dvae_path(cfg.model.dvae_path)
    fields = dict(kind="pretrain", preset=cfg.run.preset, config=cfg.to_dict())
    with results.ending_recorded(cfg.run.results_dir, run_id, **fields):
        device = resolve_device(cfg.run.device, int(os.environ.get("LOCAL_RANK", 0)))
        if device.type == "cpu":
            keep_freed_memory()  # no page faults on the activations every step
        dist = init_distributed(device)
    split_batch(cfg.pretrain.batch_size, dist.world, cfg.pretrain.accum_iter)  # one line, nothing written
    # one process at a time per run (rank 0 holds it for its DDP group): a second runner waits, then
    # finds the record done and trains nothing; its own end never touches the holder's record
    with runlock.hold(ckpt_dir(cfg, run_id), run_id, enabled=dist.is_main):
        if any_rank(bool(results.finished(cfg.run.results_dir, run_id)), device):
            return results.read_record(cfg.run.results_dir, run_id)
        with results.ending_recorded(cfg.run.results_dir, run_id, **fields), StopFlag() as stop:
            return _Run(cfg, run_id, device, dist, stop, progress).train()


class _Run:
    def __init__(self, cfg, run_id, device, dist: DistInfo, stop, progress):
        self.cfg, self.run_id, self.device, self.dist, self.stop = cfg, run_id, device, dist, stop
        p = cfg.pretrain
        self.precision = resolve_precision(p.precision, device)
        self.ckpt_dir = os.path.abspath(ckpt_dir(cfg, run_id))  # records hold absolute paths
        self.micro_batch = split_batch(p.batch_size, dist.world, p.accum_iter)  # before anything is written

        train_set = build_dataset(cfg.data, "train", cfg.model.img_size)
        self.target = build_target(cfg.model, cfg.data)
        self.target.prepare(train_set, os.path.join(cfg.run.work_dir, "cache"), device,
                            results_dir=cfg.run.results_dir, run_cfg=cfg)
        self.loader = self._loader(train_set)
        self.steps_per_epoch = self.loader.steps_per_epoch // p.accum_iter  # optimizer steps
        if self.steps_per_epoch < 1:
            raise DataError(f"one epoch of {len(train_set)} images is less than one batch of {p.batch_size}")

        self.model = initial_mae(cfg.model, self.target.dim, p.seed).to(device)
        cpu_attention(self.model, device, self.precision)  # bf16 on CPUs: the faster attention path
        self.optimizer = build_optimizer(self.model, cfg, device)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps_per_epoch)
        self.scaler = grad_scaler(self.precision, device)
        self.step_fn = self.model
        if dist.world > 1:
            self.step_fn = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if p.compile:
            self.step_fn = torch.compile(self.step_fn)
        self.progress = progress and dist.is_main
        self.resumable = Resumable(self.ckpt_dir, main=dist.is_main, keep=p.keep_checkpoints, model=self.model,
                                   optimizer=self.optimizer, scaler=self.scaler)
        self.history: list[float] = []
        self.global_step = 0  # optimizer steps done
        self.epoch_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.epoch_count = 0

    def _loader(self, train_set):
        cfg = self.cfg
        if cfg.data.backend == "ffcv":
            return ffcv_pretrain_loader(cfg, self.micro_batch, self.dist)
        tf = pretrain_transform(cfg.data.augmentation, cfg.model.img_size, cfg.data.mean, cfg.data.std)
        return EpochLoader(Transformed(train_set, tf), self.micro_batch, cfg.pretrain.seed, shuffle=True,
                           drop_last=True, num_workers=cfg.data.num_workers, rank=self.dist.rank,
                           world=self.dist.world, pin_memory=self.device.type == "cuda")

    # ------------------------------------------------------------------ state

    def values(self) -> dict:
        """The checkpoint's plain values besides the model, optimizer and scaler state dicts."""
        return {"format": "mae-suite/1", "run_id": self.run_id, "config": self.cfg.to_dict(),
                "global_step": self.global_step, "history": list(self.history), "epoch_sum": self.epoch_sum.cpu(),
                "epoch_count": self.epoch_count, "torch_rng": torch.get_rng_state(),
                "train_time_s": self.train_time(), "images_seen": self.images_seen, "images_skipped": self.skipped}

    def resume(self) -> str | None:
        found = self.resumable.latest()
        if found is None:
            return None
        state, path = found
        if state.get("run_id") != self.run_id:
            raise CheckpointError(f"{path} belongs to run {state.get('run_id')}, not {self.run_id}")
        self.resumable.load(state)
        self.global_step, self.history = state["global_step"], list(state["history"])
        self.epoch_sum = state["epoch_sum"].to(self.device)
        self.epoch_count = state["epoch_count"]
        torch.set_rng_state(state["torch_rng"])
        # wall time and throughput cover every session of the run, not only the last one
        self.time_before = float(state.get("train_time_s", 0.0))
        self.images_seen, self.skipped = int(state.get("images_seen", 0)), int(state.get("images_skipped", 0))
        return path

    def train_time(self) -> float:
        return self.time_before + time.perf_counter() - self.t_start

    def save(self) -> str | None:
        return self.resumable.save(self.global_step, **self.values())

    def write_record(self, status: str, **extra) -> dict:
        return self.recorder.write(status, history={"loss": list(self.history)}, resumed_from=self.resumed_from,
                                   **extra)

    # ------------------------------------------------------------------ loop

    def train(self) -> dict:
        cfg, p = self.cfg, self.cfg.pretrain
        self.time_before, self.images_seen, self.skipped = 0.0, 0, 0
        self.resumed_from = self.resume()
        flops = mae_forward_flops(cfg.model, self.target.dim)
        self.recorder = results.Recorder(
            cfg.run.results_dir, self.run_id, "pretrain", cfg, main=self.dist.is_main, checkpoint_dir=self.ckpt_dir,
            precision=self.precision, tensorboard_dir=tensorboard_dir(cfg.run.results_dir, self.run_id),
            world_size=self.dist.world, started_at=results.now(), **results.environment(self.device))
        self.write_record("running")
        total_steps = p.epochs * self.steps_per_epoch
        self.t_start = time.perf_counter()
        self.model.train()
        # a failure's status and reason: pretrain()'s ending_recorded
        with tracked(f"pretrain {self.run_id}", epochs=p.epochs, steps_per_epoch=self.steps_per_epoch,
                     images_per_step=p.batch_size, step=self.global_step, elapsed_before=self.time_before,
                     tb_dir=tensorboard_dir(cfg.run.results_dir, self.run_id), main=self.dist.is_main,
                     log=self.progress) as (bar, self.meter):
            while self.global_step < total_steps:
                epoch, step_in_epoch = divmod(self.global_step, self.steps_per_epoch)
                step_before = self.global_step
                n, k = self._train_epoch(epoch, step_in_epoch, bar)
                self.images_seen, self.skipped = self.images_seen + n, self.skipped + k
                stop_point(self.stop, self.device, f"step {self.global_step}", self._save_preempted)
                check_unreadable(epoch, self.global_step - step_before, n,
                                 int(all_sum(torch.tensor(float(k), dtype=torch.float64)).item()), cfg.data)
                self._end_epoch(epoch)
        elapsed = self.train_time()
        barrier()
        final = os.path.join(self.ckpt_dir, checkpoint.NAME.format(step=self.global_step))
        metrics = {"final_loss": self.history[-1] if self.history else None,
                   "first_loss": self.history[0] if self.history else None}
        rec = self.write_record("done", finished_at=results.now(), metrics=metrics,
                                wall_time_s=elapsed, images_per_s=self.images_seen / elapsed if elapsed > 0 else None,
                                flops_per_image=flops, images_skipped=self.skipped,
                                last_checkpoint=final,  # evaluations load exactly this file, checked by its hash
                                last_checkpoint_sha256=checkpoint.sha256(final) if self.dist.is_main else None)
        barrier()  # no rank goes on (to an evaluation that reads this record) before rank 0 has written it
        return rec

    def _save_preempted(self) -> str | None:
        path = self.save()
        self.write_record("preempted", reason=f"signal {self.stop.signum}", last_checkpoint=path)
        return path

    def _end_epoch(self, epoch: int):
        # the epoch's loss over every rank's images, not rank 0's alone
        mean = epoch_mean(self.epoch_sum, self.epoch_count, lambda v: self._non_finite(v, epoch))
        self.history.append(mean)
        self.write_record("running", progress=self.meter.epoch_end(epoch, self.global_step, mean, self._lr()))
        self.epoch_sum.zero_()
        self.epoch_count = 0
        last = self.global_step >= self.cfg.pretrain.epochs * self.steps_per_epoch
        if last or (epoch + 1) % self.cfg.pretrain.checkpoint_every == 0:
            self.save()

    def _lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _stopping(self) -> bool:
        # With several processes an all-reduce and a host sync: asked every log_every steps and at the
        # end of every epoch, at the same step on every rank (a rank that asked alone would block)
        return self.stop.stopping(self.device)

    def _non_finite(self, value: float, epoch: int) -> str:
        saved = checkpoint.list_checkpoints(self.ckpt_dir)
        where = (f"the last good checkpoint is kept: {saved[-1]}" if saved else
                 "no checkpoint was written yet (the run restarts from scratch)")
        return f"non-finite loss ({value}) in epoch {epoch} before step {self.global_step}; {where}"

    def _train_epoch(self, epoch: int, start_step: int, bar) -> tuple[int, int]:
        """Optimizer steps from `start_step` to the end of the epoch (or to a stop signal)."""
        cfg, p = self.cfg, self.cfg.pretrain
        accum = p.accum_iter
        images = skipped = 0
        micro = 0
        end = (epoch + 1) * self.steps_per_epoch  # leftover micro-batches never straddle epochs
        for imgs, _, n_bad in self.loader.epoch(epoch, start_step * accum):
            skipped += n_bad
            if imgs.shape[0] == 0:
                continue
            imgs = imgs.to(self.device, non_blocking=True)
            micro_step = self.global_step * accum + micro
            mask = make_mask(cfg.model.mask_strategy, imgs.shape[0], self.model.grid, cfg.model.mask_ratio,
                             mask_generator(p.seed, micro_step, self.dist.rank)).to(self.device, non_blocking=True)
            final_micro = micro == accum - 1
            sync_ctx = self.step_fn.no_sync() if (not final_micro and hasattr(self.step_fn, "no_sync")) else nullcontext()
            with sync_ctx:
                loss = forward_backward(self.step_fn, self.target, imgs, mask, self.precision, self.device,
                                        self.scaler, accum, cfg.model.loss_on_all_patches)
            self.epoch_sum += loss.detach().to(torch.float64)
            self.epoch_count += 1
            images += imgs.shape[0]
            micro += 1
            if not final_micro:
                continue
            micro = 0
            optimizer_step(self.model, self.optimizer, self.scaler, p.clip_grad)
            self.global_step += 1
            self.scheduler.step_update(self.global_step)
            bar.update(1)
            if self.global_step % p.log_every == 0:  # the only host sync inside an epoch
                value = check_finite(loss.item(), lambda v: self._non_finite(v, epoch))
                rate = (self.images_seen + images * self.dist.world) / self.train_time()
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                                img_s=f"{rate:.0f}")
                self.meter.step(self.global_step, value, self._lr())
            if self.global_step >= end:
                break  # the epoch's end checks for a stop signal (train)
            if self.global_step % p.log_every == 0 and self._stopping():
                break
        return images * self.dist.world, skipped
