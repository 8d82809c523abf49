"""Run records -> one value per (ablation, variant, seed, metric) -> mean, std and n over seeds.

The sweep plan (core/sweep.make_plan) names the run ids behind every (ablation, variant, seed), so
a number is read from exactly the runs its ablation declares: records of other presets or configs
never leak in, and a run without a record is counted as pending, never as zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from core.ablation import Ablation, select
from core.config import build_config
from core.registry import PROTOCOLS
from core.results import load_records
from core.sweep import STATES, make_plan, unit_state

def protocol_metric(protocol: str) -> str:
    """The metric a protocol's top-1 is reported as (its registration's; the paper's name where it has one)."""
    return PROTOCOLS.entry(protocol).extra.get("metric") if protocol in PROTOCOLS else f"{protocol}_top1"


PRETRAIN_METRICS = ("final_loss", "hours", "flops")  # read from the pretraining record
# metric -> (short column name, long label, number format)
METRICS = {
    "ft_top1": ("ft", "fine-tune top-1 (%)", ".2f"),
    "linprobe_top1": ("lin", "linear-probe top-1 (%)", ".2f"),
    "knn_top1": ("kNN", "kNN top-1 (%)", ".2f"),
    "flops_ratio": ("FLOPs", "FLOPs per image / baseline's", ".2f"),
    "hours": ("hours", "pretraining hours", ".4g"),
    "speedup": ("speed-up", "speed-up", ".2f"),
    "final_loss": ("loss", "final pretraining loss", ".4f"),
    "flops": ("FLOPs/img", "forward FLOPs per image", ".3g"),
}
# The label a dvae_token variant carries when it did not use DALL-E's tokenizer (docs/targets.md)
IN_SUITE_TOKENIZER = "in-suite tokenizer, not DALL-E"
# Paper Table 2 states speed-ups relative to the encoder that sees mask tokens (42.4 h / 15.4 h = 2.8x).
SPEEDUP_REFERENCE = "encoder@8"
STATE_ORDER = ("failed", "cancelled", "not run", "interrupted", "preempted", "running", "pending", "unavailable")
MAX_SEEDS = 64  # seeds looked for in the records; a stray run at seed 1000 is not a reason to plan 1000


@dataclass
class Results:
    preset: str
    results_dir: str
    cfg: object  # the preset's Config with the overrides: the sweep's baseline
    plan: object  # core.sweep.Plan
    ablations: dict  # name -> Ablation
    records: dict  # run id -> record
    values: pd.DataFrame  # one row per (ablation, variant, seed, metric)
    overrides: tuple = ()  # the command line's key=value words the sweep's run ids hold

    def summary(self) -> pd.DataFrame:
        return summarise(self.values)

    def label(self, cell) -> str:
        """The variant's label, with its caveat when it is not the paper's experiment of that name."""
        rec = self.records.get(cell.pretrain_id) if cell.pretrain_id else None
        unit = self.plan.units.get(cell.pretrain_id)
        why = caveat((rec or {}).get("config") or (unit.cfg.to_dict() if unit else None))
        return f"{cell.variant} ({why})" if why else cell.variant

    def losses(self, ablation: str) -> dict:
        """variant -> per-seed pretraining loss curves (lists of per-epoch losses) of finished runs."""
        out = {}
        for cell in self.plan.cells:
            if cell.ablation != ablation:
                continue
            curves = out.setdefault(self.label(cell), [])
            rec = self.records.get(cell.pretrain_id) if cell.pretrain_id else None
            if rec and rec.get("status") == "done" and (rec.get("history") or {}).get("loss"):
                curves.append([float(v) for v in rec["history"]["loss"]])
        return out


def collect(preset: str = "tiny", seeds: int = 1, overrides=(), names=(), results_dir: str | None = None) -> Results:
    """Every record of the sweep `preset` x `overrides` over its seeds. A seed counts for an ablation
    once any of its runs has a record at that seed; seeds 0 .. seeds-1 always count."""
    cfg = build_config(preset, overrides)
    results_dir = results_dir or cfg.run.results_dir
    frame = load_records(results_dir)  # pandas: every record, whatever wrote it
    records = dict(zip(frame["run_id"], frame["record"])) if len(frame) else {}
    abls = select(list(names))
    plan = make_plan(abls, preset, max(seeds, _max_seed(frame, preset) + 1), overrides)
    plan.cells = _expected_cells(plan.cells, records, seeds)
    registry = {a.name: a for a in abls}
    configs = {rid: u.cfg.to_dict() for rid, u in plan.units.items()}
    values = cell_values(plan.cells, registry, preset, records, configs)
    return Results(preset, results_dir, cfg, plan, registry, records, values, tuple(overrides))


def _max_seed(frame: pd.DataFrame, preset: str) -> int:
    if not len(frame) or "run.preset" not in frame:
        return 0
    mine = frame[frame["run.preset"] == preset]
    seeds = [s for col in ("pretrain.seed", "eval.seed") if col in mine for s in mine[col].dropna()]
    seeds = [int(s) for s in seeds if 0 <= s < MAX_SEEDS]
    return max(seeds, default=0)


def _expected_cells(cells, records, seeds: int):
    seen = {(c.ablation, c.seed) for c in cells
            if any(rid in records for rid in [c.pretrain_id, *c.eval_ids.values(),
                                              *(e for ch in c.eval_choices.values() for e in ch.values())] if rid)}
    return [c for c in cells if c.seed < seeds or (c.ablation, c.seed) in seen]


def caveat(config: dict | None) -> str | None:
    """Why a variant is not the paper's experiment of the same name, from a run's config: the
    dvae_token target without model.dvae_path trains the suite's own tokenizer, not DALL-E's."""
    model = (config or {}).get("model") or {}
    if model.get("target") == "dvae_token" and not model.get("dvae_path"):
        return IN_SUITE_TOKENIZER
    return None


def best_choice(choices: dict, records: dict) -> tuple[str, str | None]:
    """(run id, detail) for an eval ladder: the finished run with the best top-1 (the paper reports
    the best schedule per point) and a line naming every alternative; without a finished one, the
    first run, whose state then stands for the cell."""
    done, parts = {}, []
    for label, eid in choices.items():
        rec = records.get(eid)
        top1 = _number(((rec or {}).get("metrics") or {}).get("top1")) if unit_state(rec) == "done" else math.nan
        if not math.isnan(top1):
            done[eid] = top1
        parts.append(f"{label} {top1:.2f}" if not math.isnan(top1) else f"{label} {unit_state(rec)}")
    if not done:
        return next(iter(choices.values())), None
    best = max(done, key=done.get)
    label = next(lab for lab, eid in choices.items() if eid == best)
    return best, f"{label} is the best of: {', '.join(parts)}"


def cell_values(cells, registry: dict, preset: str, records: dict, configs: dict | None = None) -> pd.DataFrame:
    """configs: run id -> planned config, for the runs without a record yet."""
    rows = []
    configs = configs or {}
    for cell in cells:
        abl = registry[cell.ablation]
        pt_rec = records.get(cell.pretrain_id) if cell.pretrain_id else None
        why_not = caveat((pt_rec or {}).get("config") or configs.get(cell.pretrain_id))
        base = dict(ablation=cell.ablation, variant=cell.variant, paper_variant=cell.paper_variant,
                    seed=cell.seed, is_baseline=cell.is_baseline, caveat=why_not)
        if cell.unavailable:
            for metric in cell_metrics(abl, preset):
                rows.append({**base, "metric": metric, "value": math.nan, "state": "unavailable",
                             "reason": cell.unavailable, "run_id": None})
            continue
        pt = records.get(cell.pretrain_id) if cell.pretrain_id else None
        pt_state = unit_state(pt) if cell.pretrain_id else "done"
        for protocol, eid in cell.eval_ids.items():
            detail = None
            if cell.eval_choices.get(protocol):
                eid, detail = best_choice(cell.eval_choices[protocol], records)
            rec = records.get(eid)
            if rec is None and pt_state != "done":  # an evaluation waits for its pretraining
                state, reason, rid = pt_state, (pt or {}).get("reason"), cell.pretrain_id
            else:
                state, reason, rid = unit_state(rec), (rec or {}).get("reason"), eid
            value = math.nan
            if state == "done":
                value = _number((rec.get("metrics") or {}).get("top1"))
                if math.isnan(value):
                    state, reason = "failed", "the record has no metrics.top1"
            rows.append({**base, "metric": protocol_metric(protocol), "value": value,
                         "state": state, "reason": reason, "run_id": rid, "detail": detail})
        if cell.pretrain_id:
            m = (pt or {}).get("metrics") or {}
            raw = {"final_loss": m.get("final_loss"), "flops": (pt or {}).get("flops_per_image"),
                   "hours": _number((pt or {}).get("wall_time_s")) / 3600}
            for metric in PRETRAIN_METRICS:
                value = _number(raw[metric]) if pt_state == "done" else math.nan
                rows.append({**base, "metric": metric, "value": value, "state": pt_state,
                             "reason": (pt or {}).get("reason"), "run_id": cell.pretrain_id})
    cols = ["ablation", "variant", "paper_variant", "seed", "is_baseline", "metric", "value", "state", "reason",
            "run_id", "caveat", "detail"]
    df = pd.DataFrame(rows, columns=cols)
    return add_ratios(df, registry)


def cell_metrics(abl: Ablation, preset: str) -> list[str]:
    out = [protocol_metric(p) for p in abl.evals_for(preset)]
    return out + (list(PRETRAIN_METRICS) if abl.pretrain else [])


def add_ratios(df: pd.DataFrame, registry: dict) -> pd.DataFrame:
    """flops_ratio (this run's FLOPs / the baseline's) and speedup (the reference's time / this run's)
    for the ablations that report them; the reference is the mean over its finished seeds."""
    extra = []
    for abl in registry.values():
        for metric, raw, ref_of, invert in (("flops_ratio", "flops", "baseline", False),
                                            ("speedup", "hours", "speedup_ref", True)):
            if metric not in abl.metrics:
                continue
            mine = df[(df.ablation == abl.name) & (df.metric == raw)]
            if ref_of == "baseline":
                ref = mine[mine.is_baseline]
            else:
                ref = mine[mine.paper_variant == SPEEDUP_REFERENCE]
            ref_label = ref.variant.iloc[0] if len(ref) else SPEEDUP_REFERENCE
            ref_mean = ref.value[ref.state == "done"].mean() if len(ref) else math.nan
            for r in mine.to_dict("records"):
                r = {**r, "metric": metric}
                if r["state"] == "done" and not (ref_mean > 0):
                    r.update(state="pending", reason=f"no finished run of the reference {ref_label}")
                if r["state"] == "done":
                    r["value"] = ref_mean / r["value"] if invert else r["value"] / ref_mean
                extra.append(r)
    return pd.concat([df, pd.DataFrame(extra, columns=df.columns)], ignore_index=True) if extra else df


def summarise(values: pd.DataFrame) -> pd.DataFrame:
    """Per (ablation, variant, metric): mean, sample std (ddof=1; NaN for one seed) and n over the
    finished seeds, the count of seeds in every other state, and the failure reasons."""
    keys = ["ablation", "variant", "metric"]
    if not len(values):
        return pd.DataFrame(columns=keys + ["paper_variant", "is_baseline", "mean", "std", "n", *STATES,
                                            "unavailable", "reasons"]).set_index(keys)
    out = values.groupby(keys, sort=False).agg(paper_variant=("paper_variant", "first"),
                                               is_baseline=("is_baseline", "first"))
    if "caveat" in values:  # the variant label's qualifier, and each seed's choice of an eval ladder
        out["caveat"] = values.groupby(keys, sort=False)["caveat"].agg(lambda v: next((c for c in v if c), None))
        out["details"] = values.groupby(keys, sort=False).apply(
            lambda g: [f"seed {s}: {d}" for s, d in zip(g.seed, g.detail) if isinstance(d, str)], include_groups=False)
    done = values[values.state == "done"].groupby(keys, sort=False)["value"]
    out = out.join(done.agg(["mean", "std", "count"]).rename(columns={"count": "n"}))
    counts = values.pivot_table(index=keys, columns="state", values="seed", aggfunc="count", fill_value=0)
    for state in (*STATES, "unavailable"):
        out[state] = counts[state].reindex(out.index).fillna(0).astype(int) if state in counts else 0
    out["n"] = out["n"].fillna(0).astype(int)
    bad = values[values.state.isin(["failed", "unavailable"])]
    reasons = bad.groupby(keys, sort=False).apply(
        lambda g: [f"seed {s} ({rid or 'no run'}): {why}" for s, rid, why in zip(g.seed, g.run_id, g.reason)],
        include_groups=False)
    out["reasons"] = reasons.reindex(out.index) if len(bad) else None
    out["reasons"] = out["reasons"].apply(lambda v: v if isinstance(v, list) else [])
    return out


def ours_text(s, fmt: str) -> str:
    """mean ± std (n=k), then any seeds not finished; no finished seed reads '— (2 pending)', never 0."""
    parts = [f"{int(s[st])} {st}" for st in STATE_ORDER if st in s and s[st]]
    if s.get("done", 0) > s["n"]:  # finished, but the record lacks this number
        parts.append(f"{int(s['done'] - s['n'])} done without a value")
    if not s["n"]:
        return "— (" + ", ".join(parts) + ")"
    text = f"{s['mean']:{fmt}}" + (f" ± {s['std']:{fmt}}" if s["n"] > 1 else "") + f" (n={int(s['n'])})"
    return text + (f"; {', '.join(parts)}" if parts else "")


def _number(v) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan
