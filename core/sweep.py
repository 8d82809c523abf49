"""The sweep runner: ablations x variants x seeds -> a plan of unique runs -> local execution.

Identical configs are one run (the Table 1 baseline shared by every ablation is trained once per
seed). Finished runs are skipped and interrupted ones resume, because pretrain() and evaluate()
do so by run id. Cluster submission (core/cluster/submit.py) executes the very same plan.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from core import prepared, results
from core.ablation import PAPER_PRESET, Ablation
from core.config import Config, build_config, flat_dict, parse_override
from core.presets import SCALED
from core.errors import ConfigError, Preempted, TrainingFailed, UserError
from core.eval import baselines, eval_run_id, evaluate, scratch
from core.fingerprint import resolve as resolve_dataset
from core.progress import duration
from core.train import pretrain


@dataclass
class Unit:
    """One computation: a prepared artifact (core.prepared), a pretraining run or an evaluation of one."""
    kind: str  # "pretrain", an artifact kind ("pca", "tokenizer") or an evaluation protocol
    run_id: str
    cfg: Config
    parent: str | None = None  # the pretraining run an evaluation reads
    users: list = field(default_factory=list)  # (ablation, variant, seed) that need it
    needs: str | None = None  # the artifact unit a pretraining run reads
    source: str | None = None  # an evaluation of a reference instead of a run (core.eval.baselines)

    @property
    def reads(self) -> str | None:
        """What an evaluation's record names as its parent (and its id holds): its pretraining run,
        or its reference (core.eval.baselines); None for the scratch baseline and other units."""
        return baselines.parent(self.cfg, self.source) if self.source else self.parent

    @property
    def after(self) -> str | None:
        """The unit that must be done before this one starts."""
        return self.parent or self.needs


@dataclass
class Cell:
    """One (ablation, variant, seed): which runs hold its numbers."""
    ablation: str
    variant: str
    paper_variant: str | None
    seed: int
    is_baseline: bool
    pretrain_id: str | None = None
    prepared_id: str | None = None  # the artifact unit its pretraining run reads
    eval_ids: dict = field(default_factory=dict)  # protocol -> eval run id
    # protocol -> {choice label: eval run id} for an ablation's eval_ladder: the best finished one counts
    eval_choices: dict = field(default_factory=dict)
    unavailable: str | None = None  # reason, when the variant cannot be built here


@dataclass
class Plan:
    preset: str
    units: dict = field(default_factory=dict)  # run id -> Unit: artifacts, pretraining, evaluations
    cells: list = field(default_factory=list)

    @property
    def pretrains(self):
        return [u for u in self.units.values() if u.kind == "pretrain"]

    @property
    def evals(self):
        return [u for u in self.units.values() if u.kind != "pretrain" and u.kind not in prepared.ARTIFACT_KINDS]

    @property
    def artifacts(self):
        return [u for u in self.units.values() if u.kind in prepared.ARTIFACT_KINDS]

    @property
    def unavailable(self):
        return [c for c in self.cells if c.unavailable]


def seed_overrides(seed: int) -> dict:
    return {"pretrain.seed": seed, "eval.seed": seed}


def make_plan(ablations: list[Ablation], preset: str, seeds: int = 1, overrides=()) -> Plan:
    """Expand ablation x variant x seed; CLI overrides apply to the baseline, variants on top."""
    if seeds < 1:
        raise UserError(f"--seeds must be a positive number, got {seeds}")
    build_config(preset, overrides)  # a bad override is an error, not an unavailable variant
    plan = Plan(preset)
    given = dict(parse_override(o) for o in overrides)
    for abl in ablations:
        baseline = abl.baseline_for(preset)
        base = {**abl.overrides, **given}  # the ablation's own base settings, under the command line's
        try:  # a bad base setting is the ablation's error, named once
            build_config(preset, (), base)
        except ConfigError as e:
            raise ConfigError(f"ablation {abl.name}, its overrides: {e}") from None
        for label, (paper_label, variant) in abl.variants_for(preset).items():
            for seed in range(seeds):
                cell = Cell(abl.name, label, paper_label, seed, label == baseline)
                plan.cells.append(cell)
                try:
                    cfg = resolve_dataset(build_config(preset, (), {**base, **variant, **seed_overrides(seed)}))
                except ConfigError as e:
                    cell.unavailable = str(e)
                    continue
                who = (abl.name, label, seed)
                source = abl.sources.get(label)
                if abl.pretrain and source is None:
                    cell.pretrain_id = cfg.run_id()
                    kind = prepared.artifact_kind(cfg)
                    if kind:  # one unit per artifact, made before every pretraining run that reads it
                        cell.prepared_id = prepared.artifact_id(cfg, kind)
                        plan.units.setdefault(cell.prepared_id, Unit(kind, cell.prepared_id, cfg)).users.append(who)
                    plan.units.setdefault(cell.pretrain_id, Unit("pretrain", cell.pretrain_id, cfg,
                                                                 needs=cell.prepared_id)).users.append(who)
                for protocol in abl.evals_for(preset):
                    kind = abl.substitute.get(label, {}).get(protocol, protocol)
                    values = {**base, **variant, **seed_overrides(seed)}
                    choices = ladder_configs(abl, protocol, cfg, preset, (), values) if kind == protocol else {}
                    for choice, c in (choices or {"": cfg}).items():
                        eid = eval_run_id(c, kind, parent=baselines.parent(c, source) if source else cell.pretrain_id)
                        cell.eval_ids.setdefault(protocol, eid)
                        if choice:
                            cell.eval_choices.setdefault(protocol, {})[choice] = eid
                        plan.units.setdefault(eid, Unit(kind, eid, c, cell.pretrain_id, source=source)).users.append(who)
    # artifacts, then pretraining, then evaluations: a unit runs once the one it reads is done
    plan.units = dict(sorted(plan.units.items(), key=lambda kv: stage(kv[1])))
    return plan


def id_inputs(preset: str, overrides, ablations) -> str:
    """What a sweep's run ids depend on, for a message when no run is found: runs made with other
    overrides have other ids."""
    own = {a.name: a.overrides for a in {a.name: a for a in ablations}.values() if a.overrides}
    return (f"The run ids looked for depend on --preset {preset}, the overrides given ("
            + (" ".join(overrides) or "none") + ")"
            + "".join(f", ablation {n}'s own overrides ({', '.join(f'{k}={v!r}' for k, v in o.items())})"
                      for n, o in own.items())
            + " and each variant's: runs made with other overrides are other runs; pass the same ones")


def stage(unit: Unit) -> int:
    """0 prepared artifact, 1 pretraining, 2 evaluation: the order a plan runs in."""
    return 0 if unit.kind in prepared.ARTIFACT_KINDS else 1 if unit.kind == "pretrain" else 2


def ladder_configs(abl: Ablation, protocol: str, cfg: Config, preset: str, overrides, values: dict) -> dict:
    """{'<value> <key's last part>': config} for the ablation's eval ladder of `protocol` ({} without
    one): the paper preset's values, scaled by this config's setting of the key over the paper's,
    or a small preset's own values."""
    ladder, scaled = abl.eval_ladder_for(preset)
    if protocol not in ladder:
        return {}
    key, paper_values = ladder[protocol]
    ratio = flat_dict(cfg)[key] / flat_dict(build_config(PAPER_PRESET))[key] if scaled else 1.0
    if key in SCALED.get(preset, {}):  # the rehearsal: build_config scales the paper's own values itself
        ratio = 1.0
    out = {}
    for v in paper_values:
        scaled = max(1, round(v * ratio))
        # resolved like the unit's own config: the dataset fingerprint is part of the eval id
        cfg_v = build_config(preset, overrides, {**values, key: scaled})
        out[f"{scaled} {key.rsplit('.', 1)[-1]}"] = resolve_dataset(cfg_v)
    return out


def run_plan(plan: Plan, *, pretrain_fn=None, eval_fn=None, prepare_fn=None, log=print,
             progress: bool = True, keep_going: bool = False, reasons: dict | None = None) -> dict:
    """Execute every unit in this process. A failed unit is recorded and the sweep goes on; its
    evaluations are skipped. keep_going (the rehearsal): any error of a unit, a bug or bad input
    too, fails that unit only. Returns {run id: status}; `reasons` gets {run id: why not done}."""
    reasons = {} if reasons is None else reasons
    caught = Exception if keep_going else TrainingFailed
    for cell in plan.unavailable:
        log(f"unavailable: {cell.ablation}/{cell.variant} seed {cell.seed}: {cell.unavailable}")
    status: dict[str, str] = {}
    units = list(plan.units.values())
    for i, unit in enumerate(units, 1):
        who = ", ".join(sorted({f"{a}/{v}" for a, v, _ in unit.users}))
        if unit.after and status.get(unit.after, "done") != "done":
            status[unit.run_id] = "skipped"
            reasons[unit.run_id] = f"{needed_what(plan, unit)} {unit.after} is {status[unit.after]}"
            log(f"[{i}/{len(units)}] {unit.kind} {unit.run_id}: skipped, {reasons[unit.run_id]}")
            continue
        t0 = time.perf_counter()
        try:
            rec = run_unit(unit, progress=progress, pretrain_fn=pretrain_fn, eval_fn=eval_fn, prepare_fn=prepare_fn)
            status[unit.run_id] = rec.get("status", "done")
        except Preempted:
            raise
        except caught as e:  # TrainingFailed; in a rehearsal any error: that unit fails, the sweep goes on
            status[unit.run_id] = "failed"
            reasons[unit.run_id] = str(e) if isinstance(e, (TrainingFailed, UserError)) else f"{type(e).__name__}: {e}"
            if not isinstance(e, TrainingFailed):  # however early it failed, its record says why
                results.mark_ended(unit.cfg.run.results_dir, unit.run_id, "failed", reasons[unit.run_id],
                                   kind=unit.kind, parent=unit.parent, preset=unit.cfg.run.preset,
                                   config=unit.cfg.to_dict())
            log(f"[{i}/{len(units)}] {unit.kind} {unit.run_id} ({who}): failed: {reasons[unit.run_id]}")
            continue
        except (Exception, KeyboardInterrupt) as e:  # however early: the unit's record says why (status)
            results.mark_ended(unit.cfg.run.results_dir, unit.run_id, results.end_status(e), results.reason(e),
                               kind=unit.kind, parent=unit.parent, preset=unit.cfg.run.preset,
                               config=unit.cfg.to_dict())
            raise
        log(f"[{i}/{len(units)}] {unit.kind} {unit.run_id} ({who}): {status[unit.run_id]} "
            f"in {time.perf_counter() - t0:.1f} s")
    return status


def needed_what(plan: Plan, unit: Unit) -> str:
    """'its pretraining' or 'its tokenizer' (what unit.after is), for a skipped unit's reason."""
    dep = plan.units.get(unit.after)
    return f"its {'pretraining' if dep is None or dep.kind == 'pretrain' else dep.kind}"


def run_unit(unit: Unit, *, progress: bool = True, pretrain_fn=None, eval_fn=None, prepare_fn=None) -> dict:
    """One unit through the function its kind names (None: the real one), checked to have run under
    its planned id: the serial runner and the --jobs workers (core.parallel) both run units here."""
    if unit.kind == "pretrain":
        rec = (pretrain_fn or pretrain)(unit.cfg, progress=progress)
    elif unit.kind in prepared.ARTIFACT_KINDS:
        rec = (prepare_fn or prepared.prepare)(unit.cfg, unit.kind, progress=progress)
    else:
        source = {"source": unit.source} if unit.source else {}  # a reference: raw pixels, random weights
        rec = (eval_fn or run_evaluation)(unit.cfg, unit.kind, run_id=unit.parent, progress=progress, **source)
    check_ran_as_planned(unit, rec)
    return rec


def check_ran_as_planned(unit: Unit, rec: dict) -> None:
    """A unit must run under the id it was planned with: otherwise its record is where status and
    tables never look (e.g. its dataset changed between planning and running)."""
    if rec.get("run_id", unit.run_id) != unit.run_id:
        raise UserError(f"{unit.kind} {unit.run_id} ran as {rec['run_id']}: its config changed between planning "
                        f"and running (a dataset written or changed after the plan?); plan the sweep again")


def run_evaluation(cfg: Config, protocol: str, *, run_id: str | None, progress: bool = True,
                   source: str | None = None) -> dict:
    if protocol == "scratch":
        return scratch(cfg, progress=progress)
    return evaluate(cfg, protocol, run_id=run_id, progress=progress, source=source)


# --------------------------------------------------------------------------- status

STATES = ("done", "running", "interrupted", "preempted", "cancelled", "failed", "pending", "not run")
ENDED_BY_USER = "CANCELLED"  # sacct's state of a job that scancel ended (also "CANCELLED by <uid>")


def unit_state(rec: dict | None) -> str:
    return unit_status(rec)[0]


def unit_status(rec: dict | None, job: dict | None = None) -> tuple[str, str | None]:
    """(state, reason) of one unit from its record and, when a cluster job runs it, that job
    ({"job_id", "state", "live", "cancelled", "log"}: core.cluster.status.unit_jobs). The job tells what
    the record cannot: a job cancelled (scancel, `run_all.py cancel`) while its run saved and
    stopped, or a job that ended before the unit could write anything."""
    ended = job is not None and not job["live"]
    cancelled = ended and (job["state"].startswith(ENDED_BY_USER) or job.get("cancelled"))
    where = f"job {job['job_id']}" + (f", log {job['log']}" if job and job.get("log") else "") if job else ""
    if rec is None:
        if cancelled:
            return "cancelled", f"{where} was cancelled before the unit started"
        if ended and job["state"] != "COMPLETED":
            return "failed", f"{where} ended {job['state']} before the unit started"
        return "pending", (f"{where} is {job['state']}" if job else None)
    state, reason = rec.get("status", "pending"), rec.get("reason")
    if state in ("running", "preempted") and cancelled:
        return "cancelled", f"{where} was cancelled" + (f" (the run saved and stopped: {reason})" if reason else "")
    if state == "running" and ended:
        return "failed", f"{where} ended {job['state']} while the unit ran"
    if state == "running" and job is None and not _alive(rec):
        return "interrupted", "its process is gone: run the same command again to resume"
    if state == "preempted" and ended:
        return "preempted", f"{reason}; {where} ended {job['state']}: submit again to resume"
    return (state if state in STATES else "pending"), reason


def _alive(rec: dict) -> bool:
    """A 'running' record of a process on this host that no longer exists was interrupted."""
    if rec.get("host") != platform.node() or not rec.get("pid"):
        return True  # another machine: trust the record
    try:
        os.kill(int(rec["pid"]), 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


@dataclass
class UnitStatus:
    unit: Unit
    state: str
    reason: str | None
    record: dict | None
    job: dict | None = None


def unit_statuses(plan: Plan, results_dir: str, jobs: dict | None = None) -> dict[str, UnitStatus]:
    """Every unit's state; an evaluation whose pretraining failed or was cancelled, and that has
    no record of its own, is 'not run' (on SLURM its job was cancelled by the dependency); so is a
    pretraining run whose artifact unit failed."""
    out: dict[str, UnitStatus] = {}
    for rid, unit in plan.units.items():  # artifacts, then pretraining, then evaluations
        rec = results.read_record(results_dir, rid)
        job = (jobs or {}).get(rid)
        state, reason = unit_status(rec, job)
        parent = out.get(unit.after) if unit.after else None
        if rec is None and parent is not None and parent.state in ("failed", "cancelled", "not run"):
            state, reason = "not run", f"{'parent' if unit.parent else parent.unit.kind} {parent.state}: {unit.after}"
        out[rid] = UnitStatus(unit, state, reason, rec, job)
    return out


def sweep_status(plan: Plan, results_dir: str, jobs: dict | None = None,
                 statuses: dict[str, UnitStatus] | None = None) -> list[dict]:
    """Per ablation: counts of units by state, the unavailable variants and failure reasons."""
    statuses = statuses if statuses is not None else unit_statuses(plan, results_dir, jobs)
    rows = []
    by_ablation: dict[str, list[Cell]] = {}
    for cell in plan.cells:
        by_ablation.setdefault(cell.ablation, []).append(cell)
    for name, cells in by_ablation.items():
        ids = []
        for c in cells:
            ids += [i for i in (c.prepared_id, c.pretrain_id) if i] + list(c.eval_ids.values()) + \
                [e for choices in c.eval_choices.values() for e in choices.values()]
        counts = {s: 0 for s in STATES}
        reasons = []
        for rid in dict.fromkeys(ids):
            st = statuses[rid]
            counts[st.state] += 1
            if st.state in ("failed", "cancelled", "not run"):
                reasons.append(f"{rid}: {st.reason}")
        rows.append({"ablation": name, **counts, "unavailable": sum(1 for c in cells if c.unavailable),
                     "reasons": reasons, "unavailable_reasons": sorted({f"{c.variant}: {c.unavailable}"
                                                                        for c in cells if c.unavailable})})
    return rows


def _seconds_until(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return max(0.0, (datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z") - datetime.now(timezone.utc)).total_seconds())
    except ValueError:
        return None


def running_line(st: UnitStatus) -> str:
    """`pt-... (mask_ratio/0.5): epoch 3/15, loss 0.4123, 812 img/s, ETA 0:00:40 (at 23:50:02 UTC)`."""
    rec, who = st.record or {}, ", ".join(sorted({f"{a}/{v}" for a, v, _ in st.unit.users}))
    p = rec.get("progress")
    parts = []
    if not p:
        parts.append(f"first epoch running since {rec.get('started_at', '?')}")
    else:
        parts.append(f"epoch {p['epoch']}/{p['epochs']}")
        if p.get("loss") is not None:
            parts.append(f"loss {p['loss']:.4f}")
        if p.get("val_top1") is not None:
            parts.append(f"val top-1 {p['val_top1']:.1f}%")
        if p.get("images_per_s") is not None:
            parts.append(f"{p['images_per_s']:.0f} img/s")
        left = _seconds_until(p.get("eta_at"))
        parts.append(f"ETA {duration(left)}" + (f" (at {p['eta_at'][11:19]} UTC)" if p.get("eta_at") else ""))
    if rec.get("job_id"):
        parts.append(f"job {rec['job_id']}")
    return f"{st.unit.kind} {st.unit.run_id} ({who}): " + ", ".join(parts)


def expected_finish(statuses: dict[str, UnitStatus]) -> tuple[float, int] | None:
    """(seconds left, units without an estimate) if every unit ran one after another: a running
    unit's own ETA, a waiting one the mean time of the finished units of its kind (or of the
    running one's projected time). None when nothing is left."""
    spent: dict[str, list[float]] = {}
    for st in statuses.values():
        rec = st.record or {}
        if st.state == "done" and rec.get("wall_time_s"):
            spent.setdefault(st.unit.kind, []).append(float(rec["wall_time_s"]))
        elif st.state == "running" and (rec.get("progress") or {}).get("eta_s") is not None:
            p = rec["progress"]
            spent.setdefault(st.unit.kind, []).append(p["elapsed_s"] + p["eta_s"])
    left, unknown, todo = 0.0, 0, 0
    for st in statuses.values():
        if st.state in ("done", "failed", "cancelled", "not run"):
            continue
        todo += 1
        eta = _seconds_until((st.record or {}).get("progress", {}).get("eta_at")) if st.state == "running" else None
        if eta is None and spent.get(st.unit.kind):
            eta = sum(spent[st.unit.kind]) / len(spent[st.unit.kind])
        if eta is None:
            unknown += 1
        else:
            left += eta
    return (left, unknown) if todo else None
