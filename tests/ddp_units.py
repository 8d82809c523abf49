"""Pretraining runs and evaluations in one process group: launched under `torchrun
--nproc_per_node 2` by tests/test_ddp_variants.py, tests/test_distributed.py and
tests/test_train_step.py, and called in-process for their 1-process references. One launch runs
many units: starting torchrun (two interpreters importing torch) costs more than a tiny unit.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_units.py MODE OUT.json key=value ...

MODE: `variants` (every registered ablation variant at the tiny preset, with every evaluation
protocol), `protocols` (one pretraining run and each trained protocol on it), `baselines` (the
raw-pixel and random-weight evaluations of the learning check) or `syncs` (the
host syncs inside the pretraining step loop, per rank). Rank 0 writes the result to OUT.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed

from core import results
from core.ablation import load_all
from core.config import apply_overrides, build_config
from core.eval import eval_run_id
from core.prepared import ARTIFACT_KINDS
from core.sweep import Plan, Unit, make_plan, run_plan
from core.train import pretrain

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launch(mode: str, out, *overrides, cwd, timeout: int = 600) -> subprocess.CompletedProcess:
    """This script under `torchrun --nproc_per_node 2` (gloo on the CPU, one thread a process)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           os.path.abspath(__file__), mode, str(out), *overrides],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def result(out) -> object:
    with open(out) as f:
        return json.load(f)


def run_plan_on_two_processes(mode: str, plan: Plan, overrides, tmp_path) -> dict:
    """`mode`'s plan under `torchrun --nproc_per_node 2`: every unit done, each record of world size 2;
    run id -> record."""
    out = launch(mode, tmp_path / "status.json", *overrides, cwd=tmp_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert result(tmp_path / "status.json") == {rid: "done" for rid in plan.units}
    recs = {rid: results.read_record(str(tmp_path / "results"), rid) for rid in plan.units}
    for rid, rec in recs.items():
        assert rec["status"] == "done" and rec["world_size"] == 2, rid
    return recs


# --------------------------------------------------------------------------- host syncs

SYNCING = ("item", "__bool__", "__float__", "__int__", "tolist", "nonzero", "numpy", "cpu")
HOST_SIDE = (os.sep + "torchvision" + os.sep, os.path.join("torch", "utils", "data"),
             os.path.join("core", "data.py"), os.path.join("core", "masking.py"))


def count_syncs_in_step_loop(monkeypatch) -> list[str]:
    """Patch the Tensor methods that wait for the device; record each call made inside
    _Run._train_epoch, except by the data pipeline and the mask sampler (CPU tensors by design)."""
    calls = []
    for name in SYNCING:
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **k):
            f, in_loop = sys._getframe(1), False
            caller = f"{f.f_code.co_filename}:{f.f_lineno}"
            while f is not None:
                path = f.f_code.co_filename
                if any(h in path for h in HOST_SIDE):
                    break
                if f.f_code.co_name == "_train_epoch" and path.endswith(os.path.join("core", "train.py")):
                    in_loop = True
                    break
                f = f.f_back
            if in_loop:
                calls.append(f"{_name} at {caller}")
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, spy)
    return calls


# --------------------------------------------------------------------------- plans

# The paper's evaluation recipes where the tiny preset departs from them: the linear probe's
# fresh crops every epoch (per-process BatchNorm statistics) and fine-tuning's mixup, cutmix and
# drop path (per-process pairs and draws).
PAPER_RECIPES = {"linprobe": {"eval.linprobe.augment": True},
                 "finetune": {"eval.finetune.mixup": 0.8, "eval.finetune.cutmix": 1.0,
                              "eval.finetune.drop_path": 0.1}}


def add_eval(plan: Plan, kind: str, cfg, parent: str, who=("ddp", "extra", 0)) -> str:
    eid = eval_run_id(cfg, kind, parent)
    plan.units[eid] = Unit(kind, eid, cfg, parent, [who])
    return eid


def variant_plan(overrides) -> Plan:
    """The sweep of every ablation at the tiny preset: every pretraining run; of its evaluations
    those of the mask token ablation (its encoder-[M] variant is the one whose model is built
    differently), partial fine-tuning and scratch. Every variant's encoder is evaluated by the same
    code, so the linear probes and kNN of the others would add time, not coverage. On the mask
    token runs also full fine-tuning, which only the paper preset plans, and the paper's linear
    probe and fine-tuning recipes."""
    plan = make_plan(list(load_all().values()), "tiny", overrides=overrides)
    keep = ("mask_token", "partial_finetune", "scratch_baseline")
    plan.units = {rid: u for rid, u in plan.units.items()
                  if u.kind == "pretrain" or u.kind in ARTIFACT_KINDS or any(a in keep for a, _, _ in u.users)}
    for unit in list(plan.pretrains):
        if any(a == "mask_token" for a, _, _ in unit.users):
            add_eval(plan, "finetune", unit.cfg, unit.run_id)
            for kind, values in PAPER_RECIPES.items():
                add_eval(plan, kind, apply_overrides(unit.cfg, values), unit.run_id)
    return plan


# partial fine-tuning trains the last 2 of the tiny encoder's 4 blocks
PROTOCOLS = {"linprobe": ("linprobe", {}), "linprobe_augment": ("linprobe", PAPER_RECIPES["linprobe"]),
             "finetune": ("finetune", {}), "partial": ("partial", {"eval.finetune.blocks": 2})}


def write_done_late(write_record, delay_s: float = 1.0):
    """results.write_record for rank 0 of a process group: the 'done' record of a pretraining run
    written `delay_s` late (as on a slow shared filesystem). The other ranks must not go on to an
    evaluation, which reads that record, before it says done."""
    def write(results_dir, record):
        if record.get("kind") == "pretrain" and record.get("status") == "done":
            time.sleep(delay_s)
        return write_record(results_dir, record)
    return write


def protocol_plan(overrides) -> Plan:
    """One pretraining run, then each protocol of PROTOCOLS on it."""
    cfg = build_config("tiny", overrides)
    pid = cfg.run_id()
    plan = Plan("tiny")
    plan.units[pid] = Unit("pretrain", pid, cfg)
    for name, (kind, values) in PROTOCOLS.items():
        add_eval(plan, kind, apply_overrides(cfg, values), pid, ("ddp", name, 0))
    return plan


def protocol_ids(overrides) -> dict:
    """name -> run id of protocol_plan's units ('pretrain' and the keys of PROTOCOLS)."""
    return {("pretrain" if u.kind == "pretrain" else u.users[0][1]): rid
            for rid, u in protocol_plan(overrides).units.items()}


def host_syncs(overrides) -> dict:
    """The host syncs inside the step loop of two short runs, per rank: log_every=100 (no loss
    read, no stop vote inside the epoch) and log_every=2."""
    out = {}
    for name, extra in (("quiet", ["pretrain.log_every=100"]), ("logged", ["pretrain.log_every=2", "pretrain.seed=1"])):
        with pytest.MonkeyPatch.context() as mp:
            calls = count_syncs_in_step_loop(mp)
            pretrain(build_config("tiny", [*overrides, *extra]), progress=False)
        per_rank = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(per_rank, calls)
        out[name] = per_rank
    return out


def baseline_plan(overrides) -> Plan:
    """The learning check's references at the tiny preset (raw pixels, random weights: linear probe
    and kNN, two seeds), without MAE's own runs (those are every variant's baseline)."""
    plan = make_plan([load_all()["learning_check"]], "tiny", 2, overrides)
    plan.units = {rid: u for rid, u in plan.units.items() if u.source}
    return plan


def scenes_plan(overrides) -> Plan:
    """The learning check on the scenes preset's data and encoder (core/scenes.py), one seed: MAE's
    pretraining, its linear probe and kNN, and those of raw pixels and random weights."""
    return make_plan([load_all()["learning_check"]], "scenes", 1, overrides)


PLANS = {"variants": variant_plan, "protocols": protocol_plan, "baselines": baseline_plan, "scenes": scenes_plan}


def run(mode: str, overrides, log=lambda *a: None):
    if mode == "syncs":
        return host_syncs(overrides)
    with pytest.MonkeyPatch.context() as mp:
        if mode == "protocols" and os.environ.get("RANK") == "0":
            mp.setattr(results, "write_record", write_done_late(results.write_record))
        return run_plan(PLANS[mode](overrides), log=log, progress=False)


if __name__ == "__main__":
    from core.distributed import shutdown

    mode, out, *overrides = sys.argv[1:]
    main = int(os.environ.get("RANK", 0)) == 0
    try:
        value = run(mode, overrides, log=print if main else (lambda *a: None))
        if main:
            with open(out, "w") as f:
                json.dump(value, f)
    finally:
        shutdown()
