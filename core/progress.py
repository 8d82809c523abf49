"""Progress of a training unit while it runs: what `status`, a log file and TensorBoard show.

One Progress object per trained unit (pretraining, a fine-tune or linear probe, the tokenizer)
turns the numbers its loop already reads into three outputs, on rank 0 only:
- `epoch_end()` returns the record's `progress` field (epoch k of N, step, loss, lr, images/s,
  elapsed, ETA); the loop writes its record with it, atomically, once per epoch;
- plain log lines on stdout, one every `log_every` steps and one per epoch, so `tail -f` on a
  cluster job's log shows where it is (printed through tqdm.write, so a progress bar on a
  terminal stays intact below them);
- TensorBoard scalars (torch's SummaryWriter) under <results_dir>/tensorboard/<run id>/, with the
  optimizer step as x axis everywhere, so a resumed run purges what its first session wrote after
  the checkpoint it resumes from.

Speeds and ETAs use this session's steps only: a resumed run's earlier sessions may have run on
other hardware.
"""
from __future__ import annotations

import datetime
import os
import sys
import time

from tqdm import tqdm


def tensorboard_dir(results_dir: str, run_id: str) -> str:
    """One folder per run under one root: `tensorboard --logdir <results_dir>/tensorboard` compares a sweep."""
    return os.path.abspath(os.path.join(results_dir, "tensorboard", run_id))


def show_bar(progress: bool) -> bool:
    """tqdm bars only on a terminal: in a job's log file they are carriage-return noise."""
    return progress and sys.stderr.isatty()


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    text = f"{h}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days}d {text}" if days else text


def clock(seconds_from_now: float | None) -> str | None:
    if seconds_from_now is None:
        return None
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds_from_now)
    return t.strftime("%Y-%m-%dT%H:%M:%S+0000")


class Progress:
    """Bookkeeping of one unit's progress. `main` False (ranks > 0): every method does nothing
    but return the record payload; `log` False: no log lines (`--quiet`, tests)."""

    def __init__(self, name: str, *, epochs: int, steps_per_epoch: int, images_per_step: int, step: int = 0,
                 elapsed_before: float = 0.0, tb_dir: str | None = None, main: bool = True, log: bool = True):
        self.name, self.epochs, self.steps_per_epoch = name, epochs, steps_per_epoch
        self.total_steps = epochs * steps_per_epoch
        self.images_per_step = images_per_step
        self.start_step, self.elapsed_before = step, elapsed_before
        self.main, self.log = main, log and main
        self.t0 = time.perf_counter()
        self.writer = None
        if main and tb_dir:
            from torch.utils.tensorboard import SummaryWriter  # tensorboard is slow to import: only when used
            # purge_step: events a previous session wrote after the checkpoint this one resumes from
            # (a crash between checkpoints) are dropped, so the curve holds no step twice
            self.writer = SummaryWriter(tb_dir, purge_step=step + 1 if step else None, flush_secs=30)

    # ------------------------------------------------------------------ numbers

    def session_s(self) -> float:
        return time.perf_counter() - self.t0

    def rate(self, step: int) -> float | None:
        """Images per second over this session."""
        t = self.session_s()
        return (step - self.start_step) * self.images_per_step / t if t > 0 and step > self.start_step else None

    def eta_s(self, step: int) -> float | None:
        done = step - self.start_step
        if done <= 0:
            return None
        return (self.total_steps - step) * self.session_s() / done

    # ------------------------------------------------------------------ outputs

    def line(self, epoch: int, step: int, loss: float | None, lr: float | None, what: str = "", **extra) -> str:
        """`epoch` counts from 1, as a reader does."""
        parts = [time.strftime("%Y-%m-%d %H:%M:%S"), self.name, f"epoch {epoch}/{self.epochs}" + what,
                 f"step {step}/{self.total_steps}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if lr is not None:
            parts.append(f"lr {lr:.3e}")
        parts += [f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in extra.items()]
        rate = self.rate(step)
        parts.append(f"img/s {rate:.1f}" if rate is not None else "img/s ?")
        parts.append(f"eta {duration(self.eta_s(step))}")
        return " ".join(parts)

    def _print(self, text: str) -> None:
        tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()

    def step(self, step: int, loss: float | None, lr: float | None) -> None:
        """Every `log_every` optimizer steps, where the loop reads its loss anyway."""
        if self.log:
            self._print(self.line(min((step - 1) // self.steps_per_epoch + 1, self.epochs), step, loss, lr))
        if self.writer is not None:
            if loss is not None:
                self.writer.add_scalar("train/loss_step", loss, step)
            if lr is not None:
                self.writer.add_scalar("train/lr", lr, step)
            rate = self.rate(step)
            if rate is not None:
                self.writer.add_scalar("train/images_per_s", rate, step)

    def epoch_end(self, epoch: int, step: int, loss: float | None, lr: float | None, **scalars) -> dict:
        """After epoch `epoch` (0-based) ended at optimizer step `step`: a log line, TensorBoard
        scalars (the epoch's mean loss, and e.g. val_top1) and the record's `progress` payload."""
        eta = self.eta_s(step)
        payload = {"epoch": epoch + 1, "epochs": self.epochs, "step": step, "steps": self.total_steps,
                   "loss": loss, "lr": lr, "images_per_s": self.rate(step),
                   "elapsed_s": self.elapsed_before + self.session_s(), "eta_s": eta, "eta_at": clock(eta),
                   **{k: v for k, v in scalars.items() if v is not None}}
        if self.log:
            self._print(self.line(epoch + 1, step, loss, lr, " done", **{k: v for k, v in scalars.items() if v is not None}))
        if self.writer is not None:
            if loss is not None:
                self.writer.add_scalar("train/loss", loss, step)
            for k, v in scalars.items():
                if v is not None:
                    self.writer.add_scalar(f"eval/{k}", v, step)
            self.writer.flush()  # a live `tensorboard --logdir` sees every epoch
        return payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
