"""What a cluster job runs: units of a sweep plan, in order, as a submitit Checkpointable.

Preemption and time limits (docs/cluster.md):
- SLURM sends USR2 `cluster.signal_delay_s` before the time limit (and at preemption where the site
  sets PreemptParameters=send_user_signal). submitit's handler for it would save and requeue right
  there, in the middle of an optimizer step. We defer it: USR2 only asks the training loop to stop,
  as SIGUSR1 does; the loop finishes its step, writes a checkpoint and raises Preempted, and only
  then does submitit's handler run: it calls checkpoint() below (this very object, resubmitted),
  requeues the job and exits. The requeued job calls pretrain() again, which resumes from the
  newest checkpoint of the run: the one just written.
- SIGTERM (scancel, PreemptMode=REQUEUE, the hard limit): the loop still saves at the next step and
  the job exits; SLURM decides whether it comes back, and resumption is the same.
- Requeues are bounded by cluster.max_requeues, counted by SLURM across both kinds. At the bound the
  unit's record ends `failed: requeue limit reached (N)`.

Whatever ends a job, its units' records say so: a unit's own failure is recorded by pretrain(),
evaluate() or run_plan; a failure before any unit starts (an import error on the node, the requeue
bound) is recorded here for every unit of the job. Records written in a job carry its id and log
files (core.results.job_fields).
"""
from __future__ import annotations

import os
import signal
import threading
import time

import submitit

from core import results
from core.device import configure_threads
from core.distributed import export_launcher_env
from core.errors import Preempted, TrainingFailed
from core.sweep import Plan, run_evaluation, run_plan
from core.train import pretrain
from core.prepared import prepare


class ClusterJob(submitit.helpers.Checkpointable):
    def __init__(self, preset: str, units: list, max_requeues: int = 20, signal_delay_s: int = 120):
        self.preset, self.units = preset, list(units)
        self.max_requeues, self.signal_delay_s = max_requeues, signal_delay_s
        self.requeues = 0  # by checkpoint(); SLURM's own count is SLURM_RESTART_COUNT

    @property
    def run_ids(self) -> list[str]:
        return [u.run_id for u in self.units]

    def requeued(self) -> int:
        return max(self.requeues, int(os.environ.get("SLURM_RESTART_COUNT") or 0))

    def __call__(self) -> dict:
        job = submitit.JobEnvironment()
        os.environ.update({results.JOB_ENV[k]: str(v) for k, v in (
            ("job_id", job.job_id), ("job_stdout", job.paths.stdout), ("job_stderr", job.paths.stderr))})
        self.units_started = 0
        try:
            return self._run(job)
        except Preempted:
            raise
        except (Exception, KeyboardInterrupt) as e:
            if not self.units_started:  # no unit could record it itself
                self.record_ended("failed", results.reason(e))
            raise

    def record_ended(self, status: str, why: str) -> None:
        """Final status for the units of this job that have none yet (rank 0)."""
        for u in self.units:
            rec = results.read_record(u.cfg.run.results_dir, u.run_id)
            if rec is None or rec.get("status") in ("running", "preempted"):
                results.mark_ended(u.cfg.run.results_dir, u.run_id, status, why, kind=u.kind, parent=u.parent,
                                   preset=u.cfg.run.preset, config=u.cfg.to_dict())

    def _run(self, job) -> dict:
        dist = export_launcher_env(job)
        configure_threads()  # the CPUs of this task, not of the node (tasks share nodes)
        n = self.requeued()
        if n > self.max_requeues:
            raise TrainingFailed(f"requeue limit reached ({n}): requeued {n} times, more than "
                                 f"cluster.max_requeues={self.max_requeues}")
        log(f"{job}: rank {dist.rank} of {dist.world}, {len(self.units)} unit(s), requeued {n} of at most "
            f"{self.max_requeues} times")
        plan = Plan(self.preset, {u.run_id: u for u in self.units})
        with DeferredRequeue() as deferred:
            try:
                status = run_plan(plan, pretrain_fn=self._started(deferred.guard(pretrain)),
                                  eval_fn=self._started(deferred.guard(run_evaluation)),
                                  prepare_fn=self._started(deferred.guard(prepare)), log=log,
                                  progress=True)  # log lines into the job's log (no terminal: no bars)
            except Preempted as e:
                log(f"preempted: {e}")
                if deferred.asked:  # USR2: requeue ourselves (rank 0); SIGTERM: SLURM decides
                    deferred.requeue()  # rank 0 exits inside; the others return at once
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # rank > 0: wait for rank 0's
                    time.sleep(self.signal_delay_s)  # requeue to end us, then give up waiting
                raise
        failed = {rid: st for rid, st in status.items() if st != "done"}
        if failed:  # a failed job state cancels the evaluations that depend on it
            raise TrainingFailed(f"{len(failed)} of {len(status)} units not done: "
                                 + ", ".join(f"{rid} {st}" for rid, st in failed.items()))
        return status

    def _started(self, fn):
        def run(*args, **kwargs):
            self.units_started += 1
            return fn(*args, **kwargs)
        return run

    def checkpoint(self, *args, **kwargs):
        """Called by submitit (rank 0) once the loop has saved: resubmit this same object. None, at
        the bound, makes submitit end the job instead."""
        n = self.requeued()
        if n >= self.max_requeues:
            log(f"not requeued: already requeued {n} times (cluster.max_requeues={self.max_requeues})")
            self.record_ended("failed", f"requeue limit reached ({n}): cluster.max_requeues={self.max_requeues}; "
                                        "submit again to resume from the last checkpoint")
            return None
        self.requeues = n + 1
        log(f"requeueing ({self.requeues} of at most {self.max_requeues})")
        return super().checkpoint(*args, **kwargs)


def log(line: str) -> None:
    print(line, flush=True)  # the job's log file


class DeferredRequeue:
    """Hold back submitit's checkpoint-and-requeue signal handler until the loop has saved."""

    def __enter__(self):
        self.sig = submitit.JobEnvironment._usr_sig()
        self.handler = signal.getsignal(self.sig)  # submitit's, installed before our __call__
        self.asked = False
        self.installed = callable(self.handler) and threading.current_thread() is threading.main_thread()
        if self.installed:
            signal.signal(self.sig, self._on_signal)
        return self

    def _on_signal(self, signum, frame):
        self.asked = True
        loop = signal.getsignal(signal.SIGUSR1)  # core.distributed.StopFlag while a training loop runs
        if callable(loop):
            loop(signum, frame)  # stop at the next step, save, raise Preempted
        else:  # between units: nothing unsaved, requeue now
            self.handler(signum, frame)

    def requeue(self):
        if self.installed:
            self.handler(self.sig, None)

    def guard(self, fn):
        """Before each unit: a signal that came after the previous loop's last check requeues now."""
        def run(*args, **kwargs):
            if self.asked:
                self.requeue()
            return fn(*args, **kwargs)
        return run

    def __exit__(self, *exc):
        if self.installed:
            signal.signal(self.sig, self.handler)
