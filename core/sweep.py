"""The sweep runner: ablations x variants x seeds -> a plan of unique runs -> local execution.

Identical configs are one run (the Table 1 baseline shared by every ablation is trained once per
seed). Finished runs are skipped and interrupted ones resume, because pretrain() and evaluate()
do so by run id. Cluster submission (core/submit.py) executes the very same plan.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from core import results
from core.ablation import Ablation
from core.config import Config, build_config
from core.fingerprint import resolve as resolve_dataset
from core.errors import ConfigError, Preempted, TrainingFailed, UserError


@dataclass
class Unit:
    """One computation: a pretraining run or an evaluation of one."""
    kind: str  # "pretrain" or an evaluation protocol
    run_id: str
    cfg: Config
    parent: str | None = None  # the pretraining run an evaluation reads
    users: list = field(default_factory=list)  # (ablation, variant, seed) that need it


@dataclass
class Cell:
    """One (ablation, variant, seed): which runs hold its numbers."""
    ablation: str
    variant: str
    paper_variant: str | None
    seed: int
    is_baseline: bool
    pretrain_id: str | None = None
    eval_ids: dict = field(default_factory=dict)  # protocol -> eval run id
    unavailable: str | None = None  # reason, when the variant cannot be built here


@dataclass
class Plan:
    preset: str
    units: dict = field(default_factory=dict)  # run id -> Unit, pretraining before evaluations
    cells: list = field(default_factory=list)

    @property
    def pretrains(self):
        return [u for u in self.units.values() if u.kind == "pretrain"]

    @property
    def evals(self):
        return [u for u in self.units.values() if u.kind != "pretrain"]

    @property
    def unavailable(self):
        return [c for c in self.cells if c.unavailable]


def seed_overrides(seed: int) -> dict:
    return {"pretrain.seed": seed, "eval.seed": seed}


def make_plan(ablations: list[Ablation], preset: str, seeds: int = 1, overrides=()) -> Plan:
    """Expand ablation x variant x seed; CLI overrides apply to the baseline, variants on top."""
    from core.eval import eval_run_id

    if seeds < 1:
        raise UserError(f"--seeds must be a positive number, got {seeds}")
    build_config(preset, overrides)  # a bad override is an error, not an unavailable variant
    plan = Plan(preset)
    for abl in ablations:
        baseline = abl.baseline_for(preset)
        for label, (paper_label, variant) in abl.variants_for(preset).items():
            for seed in range(seeds):
                cell = Cell(abl.name, label, paper_label, seed, label == baseline)
                plan.cells.append(cell)
                try:
                    cfg = resolve_dataset(build_config(preset, overrides, {**variant, **seed_overrides(seed)}))
                except ConfigError as e:
                    cell.unavailable = str(e)
                    continue
                who = (abl.name, label, seed)
                if abl.pretrain:
                    cell.pretrain_id = cfg.run_id()
                    plan.units.setdefault(cell.pretrain_id, Unit("pretrain", cell.pretrain_id, cfg)).users.append(who)
                for protocol in abl.evals_for(preset):
                    eid = eval_run_id(cfg, protocol, parent=cell.pretrain_id)
                    cell.eval_ids[protocol] = eid
                    plan.units.setdefault(eid, Unit(protocol, eid, cfg, cell.pretrain_id)).users.append(who)
    # pretraining first, each followed by nothing else: evaluations run once their parent is done
    plan.units = dict(sorted(plan.units.items(), key=lambda kv: kv[1].kind != "pretrain"))
    return plan


def run_plan(plan: Plan, *, pretrain_fn=None, eval_fn=None, log=print, progress: bool = True) -> dict:
    """Execute every unit in this process. A failed unit is recorded and the sweep goes on; its
    evaluations are skipped. Returns {run id: status}."""
    if pretrain_fn is None:
        from core.train import pretrain as pretrain_fn
    if eval_fn is None:
        eval_fn = run_evaluation
    for cell in plan.unavailable:
        log(f"unavailable: {cell.ablation}/{cell.variant} seed {cell.seed}: {cell.unavailable}")
    status: dict[str, str] = {}
    units = list(plan.units.values())
    for i, unit in enumerate(units, 1):
        who = ", ".join(sorted({f"{a}/{v}" for a, v, _ in unit.users}))
        if unit.parent and status.get(unit.parent, "done") != "done":
            status[unit.run_id] = "skipped"
            log(f"[{i}/{len(units)}] {unit.kind} {unit.run_id}: skipped, its pretraining {unit.parent} "
                f"is {status[unit.parent]}")
            continue
        t0 = time.perf_counter()
        try:
            if unit.kind == "pretrain":
                rec = pretrain_fn(unit.cfg, progress=progress)
            else:
                rec = eval_fn(unit.cfg, unit.kind, run_id=unit.parent, progress=progress)
            status[unit.run_id] = rec.get("status", "done")
        except TrainingFailed as e:
            status[unit.run_id] = "failed"
            log(f"[{i}/{len(units)}] {unit.kind} {unit.run_id} ({who}): failed: {e}")
            continue
        except Preempted:
            raise
        log(f"[{i}/{len(units)}] {unit.kind} {unit.run_id} ({who}): {status[unit.run_id]} "
            f"in {time.perf_counter() - t0:.1f} s")
    return status


def run_evaluation(cfg: Config, protocol: str, *, run_id: str | None, progress: bool = True) -> dict:
    from core.eval import evaluate, scratch

    if protocol == "scratch":
        return scratch(cfg, progress=progress)
    return evaluate(cfg, protocol, run_id=run_id, progress=progress)


# --------------------------------------------------------------------------- status

STATES = ("done", "running", "interrupted", "preempted", "failed", "pending")


def unit_state(rec: dict | None) -> str:
    if rec is None:
        return "pending"
    state = rec.get("status", "pending")
    if state == "running" and not _alive(rec):
        return "interrupted"
    return state if state in STATES else "pending"


def _alive(rec: dict) -> bool:
    """A 'running' record of a process on this host that no longer exists was interrupted."""
    import platform

    if rec.get("host") != platform.node() or not rec.get("pid"):
        return True  # another machine: trust the record
    try:
        os.kill(int(rec["pid"]), 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def sweep_status(plan: Plan, results_dir: str) -> list[dict]:
    """Per ablation: counts of units by state, the unavailable variants and failure reasons."""
    rows = []
    by_ablation: dict[str, list[Cell]] = {}
    for cell in plan.cells:
        by_ablation.setdefault(cell.ablation, []).append(cell)
    for name, cells in by_ablation.items():
        ids = []
        for c in cells:
            ids += ([c.pretrain_id] if c.pretrain_id else []) + list(c.eval_ids.values())
        counts = {s: 0 for s in STATES}
        reasons = []
        for rid in dict.fromkeys(ids):
            rec = results.read_record(results_dir, rid)
            state = unit_state(rec)
            counts[state] += 1
            if state == "failed":
                reasons.append(f"{rid}: {rec.get('reason')}")
        rows.append({"ablation": name, **counts, "unavailable": sum(1 for c in cells if c.unavailable),
                     "reasons": reasons, "unavailable_reasons": sorted({f"{c.variant}: {c.unavailable}"
                                                                        for c in cells if c.unavailable})})
    return rows
