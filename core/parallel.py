"""Independent units of a sweep plan on several local worker processes (`run --jobs N`).

Each worker is a fresh process with its share of the CPUs (core.device.configure_threads) that
runs whole units through the very functions a serial run calls, so the records are the ones a
serial run writes (with the same thread count per run: threads change float summation order).
Dependencies are kept: an evaluation starts once its pretraining run is done, a pretraining run
once the artifact unit it reads (the PCA basis, the in-suite tokenizer: core.prepared) is done, so
two workers never build the same artifact at once.
"""
from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from core.device import configure_threads
from core.errors import Preempted, TrainingFailed, UserError
from core.sweep import needed_what, run_unit


def _init_worker(jobs: int) -> None:
    configure_threads(share=jobs)


def _run_unit(unit) -> tuple[str, str, str | None]:
    """(run id, status, reason) of one unit, in a worker. A user error (bad data path, ...) comes
    back as ('error', message) so the parent stops the sweep with that one line, as a serial run does."""
    try:
        rec = run_unit(unit, progress=False)
        return unit.run_id, rec.get("status", "done"), None
    except TrainingFailed as e:
        return unit.run_id, "failed", str(e)
    except Preempted as e:
        return unit.run_id, "preempted", str(e)
    except UserError as e:
        return unit.run_id, "error", str(e)


def run_plan_parallel(plan, jobs: int, *, log=print) -> dict:
    """Run every unit of `plan` on `jobs` worker processes; returns {run id: status} as run_plan does."""
    for cell in plan.unavailable:
        log(f"unavailable: {cell.ablation}/{cell.variant} seed {cell.seed}: {cell.unavailable}")
    units = list(plan.units.values())
    order = {u.run_id: i for i, u in enumerate(units, 1)}
    status: dict[str, str] = {}
    waiting = list(units)
    running = {}  # future -> (unit, start time)
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch state shared with the parent
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(jobs,))
    try:
        while waiting or running:
            for unit in list(waiting):
                if len(running) >= jobs:
                    break
                parent = status.get(unit.after) if unit.after else "done"
                if parent is None:
                    continue  # the artifact or pretraining run it reads has not finished yet
                waiting.remove(unit)
                if parent != "done":
                    status[unit.run_id] = "skipped"
                    log(f"[{order[unit.run_id]}/{len(units)}] {unit.kind} {unit.run_id}: skipped, "
                        f"{needed_what(plan, unit)} {unit.after} is {parent}")
                    continue
                running[pool.submit(_run_unit, unit)] = (unit, time.perf_counter())
            if not running:
                for unit in waiting:  # a parent outside the plan: nothing will ever start them
                    status[unit.run_id] = "skipped"
                    log(f"{unit.kind} {unit.run_id}: skipped, {needed_what(plan, unit)} {unit.after} "
                        f"is not in this plan")
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                unit, t0 = running.pop(fut)
                try:
                    run_id, state, reason = fut.result()
                except BrokenProcessPool:  # killed (out of memory, a signal): no status of its own
                    raise TrainingFailed(f"the worker process running {unit.kind} {unit.run_id} died; "
                                         f"run the sweep again to resume it") from None
                who = ", ".join(sorted({f"{a}/{v}" for a, v, _ in unit.users}))
                if state == "error":
                    raise UserError(reason)
                if state == "preempted":
                    raise Preempted(reason)
                status[run_id] = state
                tail = f": {reason}" if reason else f" in {time.perf_counter() - t0:.1f} s"
                log(f"[{order[run_id]}/{len(units)}] {unit.kind} {run_id} ({who}): {state}{tail}")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return {u.run_id: status[u.run_id] for u in units}
