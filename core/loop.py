"""The skeleton the three training loops share: pretraining (core.train), supervised evaluation
(core.eval.fit) and the dVAE tokenizer (core.targets.dvae). Small helpers, not a framework: each
loop keeps its own steps and calls these where it already did the same thing.

- `epoch_mean`: an epoch's mean loss over every process, checked for finiteness (one host sync);
- `Resumable`: a loop's checkpoint as named state dicts plus plain values: save / latest / load;
- `tracked`: the progress bar and the per-epoch progress (log lines, TensorBoard, record payload);
- `stop_point`: at a look at the stop flag, save and raise Preempted when any process got a signal.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
from tqdm import tqdm

from core import checkpoint
from core.distributed import StopFlag, all_sum
from core.errors import Preempted, TrainingFailed
from core.progress import Progress, show_bar


def check_finite(value: float, failure: Callable[[float], str]) -> float:
    """`value`, or TrainingFailed(failure(value)) if it is nan or inf: the loop says where."""
    if not math.isfinite(value):
        raise TrainingFailed(failure(value))
    return value


def epoch_mean(loss_sum: torch.Tensor, count: int, failure: Callable[[float], str], reduce: bool = True) -> float:
    """The mean of an epoch's summed step losses over every process's steps (reduce=False: this
    process's, for a job that only rank 0 runs), in loss_sum's dtype, read with one host sync;
    non-finite: TrainingFailed(failure(mean))."""
    total = torch.stack([loss_sum, torch.tensor(float(count), dtype=loss_sum.dtype, device=loss_sum.device)])
    if reduce:
        total = all_sum(total)
    return check_finite((total[0] / total[1].clamp(min=1)).item(), failure)


class Resumable:
    """A loop's resumable state: named objects with state_dict()/load_state_dict() (None: saved as
    None, nothing loaded) and plain values, one checkpoint file per save (core.checkpoint: atomic,
    the newest `keep` kept, a damaged newest one skipped with a warning). Only the main process
    saves; without a folder nothing is saved or found."""

    def __init__(self, ckpt_dir: str | None, *, main: bool = True, keep: int = 2, **objects):
        self.ckpt_dir, self.main, self.keep, self.objects = ckpt_dir, main, keep, objects

    def state(self, **values) -> dict:
        return {**{k: (o.state_dict() if o is not None else None) for k, o in self.objects.items()}, **values}

    def save(self, step: int, /, **values) -> str | None:
        if not (self.ckpt_dir and self.main):
            return None
        return checkpoint.save(self.ckpt_dir, step, self.state(**values), self.keep)

    def latest(self) -> tuple[dict, str] | None:
        return checkpoint.latest(self.ckpt_dir) if self.ckpt_dir else None

    def load(self, state: dict) -> dict:
        """Load every named object from `state`; returns `state` for the plain values."""
        for k, o in self.objects.items():
            if o is not None:
                o.load_state_dict(state[k])
        return state


@contextlib.contextmanager
def tracked(name: str, *, epochs: int, steps_per_epoch: int, images_per_step: int, step: int = 0,
            elapsed_before: float = 0.0, tb_dir: str | None = None, main: bool = True, log: bool = True,
            desc: str | None = None):
    """(bar, meter) for one loop: a tqdm bar (on a terminal, main process) and its Progress
    (core.progress); both closed however the loop ends."""
    bar = tqdm(total=epochs * steps_per_epoch, initial=step, disable=not show_bar(log and main), unit="step",
               desc=desc or name, dynamic_ncols=True, mininterval=1.0)
    meter = None
    try:
        meter = Progress(name, epochs=epochs, steps_per_epoch=steps_per_epoch, images_per_step=images_per_step,
                         step=step, elapsed_before=elapsed_before, tb_dir=tb_dir, main=main, log=log)
        yield bar, meter
    finally:
        bar.close()
        if meter is not None:
            meter.close()


def stop_point(stop: StopFlag | None, device, where: str, save: Callable[[], str | None] = lambda: None,
               reduce: bool = True) -> None:
    """A look at the stop flag (at the same step on every process: it is an all-reduce; reduce=False:
    this process's flag, for a job only rank 0 runs): if any process got a signal, `save()` (a
    checkpoint, the record) and raise Preempted."""
    if stop is not None and (stop.stopping(device) if reduce else bool(stop)):
        path = save()
        raise Preempted(f"stopped by signal {stop.signum} at {where}" + (f"; checkpoint {path}" if path else ""))
