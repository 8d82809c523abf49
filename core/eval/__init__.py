"""Evaluation protocols of a pretrained encoder, and the supervised baseline (docs/evaluation.md).

    evaluate(cfg, "linprobe", run_id="pt-...")   # or init="mae_pretrain_vit_base.pth"
    evaluate(cfg, "knn", source="random")       # or "pixels": the references (core.eval.baselines)
    scratch(cfg)

Each evaluation is one run record (<results_dir>/runs/<eval id>.json) linked to its pretraining
run by `parent`; a finished one is returned without running again.
"""
from __future__ import annotations

import dataclasses
import os
import time

from core import checkpoint, results, runlock
from core.config import Config, config_from_dict, validate as validate_config
from core.data import check_dataset_path
from core.device import resolve_device, resolve_precision
from core.distributed import StopFlag, init as init_distributed
from core.errors import ConfigError, Preempted, UserError
from core.eval import baselines, finetune, knn, linprobe
from core.eval.context import Session
from core.eval.data import eval_data
from core.eval.records import check_protocol, eval_recorder, eval_run_id, kinds, protocols
from core.eval.weights import encoder_state, load_init
from core.fingerprint import resolve as resolve_dataset
from core.progress import tensorboard_dir

from core.registry import PROTOCOLS

__all__ = ["check_one_encoder", "eval_run_id", "evaluate", "scratch", "kinds", "protocols"]


def evaluate(cfg: Config, protocol: str, *, run_id: str | None = None, init: str | None = None,
             progress: bool = True, eval_only: bool = False, source: str | None = None) -> dict:
    """Evaluate the encoder of pretraining run `run_id` (default cfg.run_id()) or of the checkpoint
    file `init` with one protocol; returns the eval record. eval_only: the fine-tuned classifier in
    `init` is evaluated on the validation split as it is (protocol finetune). source: a reference
    instead of an encoder (core.eval.baselines: raw pixels, the seed's random weights)."""
    if protocol not in protocols():
        raise UserError(f"unknown evaluation protocol {protocol!r}; choose one of: {', '.join(protocols())}")
    check_one_encoder(run_id, init, source)
    if source is not None:
        return _evaluate_source(cfg, protocol, source, progress)
    if eval_only and (protocol != "finetune" or init is None):
        raise UserError("--eval-only evaluates a fine-tuned checkpoint: `eval finetune --init PATH --eval-only`")
    extra, state = {}, None
    cfg = resolve_dataset(cfg)  # the pretraining run's id holds its dataset's fingerprint
    if init is not None:
        state, sha = load_init(init)
        parent = f"init-{sha[:12]}"
        extra = {"init": os.path.abspath(init), "init_sha256": sha}
    else:
        parent = results.check_id(run_id or cfg.run_id())
        cfg = pretrained_config(cfg, parent)
    check_protocol(cfg, protocol)
    if eval_only:  # checked before anything is read or written
        state = finetune.classifier_state(state, cfg.model.arch, cfg.model.img_size, init)
    eid = eval_run_id(cfg, protocol, parent, eval_only=eval_only)
    done = results.finished(cfg.run.results_dir, eid)
    if done:
        return done
    check_dataset_path(cfg.data)  # bad input: one line, nothing written (a sweep records it: run_plan)
    if state is None:
        _, obj, path = results.load_pretrain_run(cfg.run.results_dir, parent)
        state = checkpoint.model_state(obj, path)
    if eval_only:
        return _run(cfg, protocol, eid, parent, state, progress, {**extra, "eval_only": True}, finetune.classify)
    state = encoder_state(state, cfg.model.arch, cfg.model.img_size, init or f"run {parent}")
    return _run_once(cfg, protocol, eid, parent, state, progress, extra)


def check_one_encoder(run_id: str | None, init: str | None, source: str | None) -> None:
    """An evaluation reads one encoder: a pretraining run, a checkpoint file or a reference (run_all.py's
    preflight asks this before it checks the run id)."""
    given = [flag for flag, x in (("--run", run_id), ("--init", init), ("--baseline", source)) if x is not None]
    if len(given) > 1:
        raise UserError(f"evaluate one of: a pretraining run (--run), a checkpoint file (--init) or a baseline "
                        f"(--baseline), not several ({' and '.join(given)} given)")


def _evaluate_source(cfg: Config, protocol: str, source: str, progress: bool) -> dict:
    baselines.check(source, protocol)
    cfg = resolve_dataset(cfg)
    check_protocol(cfg, protocol)
    parent = baselines.parent(cfg, source)
    eid = eval_run_id(cfg, protocol, parent)
    done = results.finished(cfg.run.results_dir, eid)
    if done:
        return done
    check_dataset_path(cfg.data)
    return _run_once(cfg, protocol, eid, parent, baselines.features(cfg, source), progress, {"source": source})


def scratch(cfg: Config, progress: bool = True) -> dict:
    """The supervised baseline: the fine-tune code from random initialisation (eval.scratch recipe)."""
    cfg = resolve_dataset(cfg)
    check_protocol(cfg, "scratch")
    eid = eval_run_id(cfg, "scratch")
    done = results.finished(cfg.run.results_dir, eid)
    if done:
        return done
    check_dataset_path(cfg.data)
    return _run_once(cfg, "scratch", eid, None, None, progress, {})


def pretrained_config(cfg: Config, run_id: str) -> Config:
    """cfg with the model and pretraining settings of run `run_id`, so an evaluation builds the
    encoder that run trained and its record carries the run's settings (tables group by them)."""
    rec = results.pretrain_record(cfg.run.results_dir, run_id)
    try:
        run_cfg = config_from_dict(rec["config"])
    except (ConfigError, KeyError) as e:
        raise UserError(f"the config in the record of {run_id} cannot be read: {e}") from None
    cfg = dataclasses.replace(cfg, model=run_cfg.model, pretrain=run_cfg.pretrain,
                              data=dataclasses.replace(cfg.data, augmentation=run_cfg.data.augmentation))
    validate_config(cfg)
    return cfg


def _run_once(cfg: Config, kind: str, eid: str, *args) -> dict:
    """_run under the evaluation's lock (core.runlock): a second runner of the same sweep waits, then
    returns the record the first one wrote. Rank 0 holds it for a DDP group."""
    with runlock.hold(os.path.join(cfg.run.work_dir, eid), eid, enabled=int(os.environ.get("RANK", 0)) == 0):
        done = results.finished(cfg.run.results_dir, eid)
        if done:
            return done
        return _run(cfg, kind, eid, *args)


def _finetune(kind: str):
    def run(cfg, *args):
        return finetune.run(cfg, kind, *args)
    run.__qualname__ = f"finetune_{kind}"  # one definition per registered name
    return run


# The protocols: (cfg, encoder state, data, device, precision, progress, Session) -> the record's fields.
# section: the eval.<section> settings it reads (and its id holds); metric: the name its top-1 is reported
# as (the paper's where it has one); pretrained=False: it trains from scratch, no pretraining run.
PROTOCOLS.register("linprobe", linprobe.run, help="linear probe on frozen features", section="linprobe",
                   metric="linprobe_top1")
PROTOCOLS.register("finetune", _finetune("finetune"), help="end-to-end fine-tuning", section="finetune",
                   metric="ft_top1")
PROTOCOLS.register("partial", _finetune("partial"), help="fine-tune the last eval.finetune.blocks blocks",
                   section="finetune", metric="ft_top1")
PROTOCOLS.register("knn", knn.run, help="k-nearest-neighbour classification on frozen features", section="knn",
                   metric="knn_top1")
PROTOCOLS.register("scratch", _finetune("scratch"), help="the supervised baseline from random initialisation",
                   section="scratch", metric="ft_top1", pretrained=False)


def _run(cfg: Config, kind: str, eid: str, parent, state, progress: bool, extra: dict, runner=None) -> dict:
    # however early it fails from here on (data unreadable, a bug) or if Ctrl-C stops it, the
    # record ends with its status and reason
    with results.ending_recorded(cfg.run.results_dir, eid, kind=kind, parent=parent, preset=cfg.run.preset,
                                 config=cfg.to_dict()):
        return _run_recorded(cfg, kind, eid, parent, state, progress, extra, runner)


def _run_recorded(cfg: Config, kind: str, eid: str, parent, state, progress: bool, extra: dict, runner=None) -> dict:
    device = resolve_device(cfg.run.device, int(os.environ.get("LOCAL_RANK", 0)))
    precision = resolve_precision(cfg.pretrain.precision, device)
    data = eval_data(cfg)  # a missing or damaged split is an error before anything is written
    dist = init_distributed(device)  # torchrun or a cluster job: DDP over its processes
    # kNN trains nothing: no checkpoints; the others save every epoch and at a stop signal
    ckpt = None if kind == "knn" or runner else os.path.join(cfg.run.work_dir, eid)
    tb = tensorboard_dir(cfg.run.results_dir, eid)
    record = eval_recorder(cfg, eid, kind, parent, device, dist.is_main, precision=precision, world_size=dist.world,
                           tensorboard_dir=tb, **extra)
    with StopFlag() as stop:
        ses = Session(dist, stop, ckpt, record=record, tb_dir=tb, stop_every=cfg.pretrain.log_every)
        record.write("running")
        t0 = time.perf_counter()
        try:
            out = (runner or PROTOCOLS[kind])(cfg, state, data, device, precision, progress, ses)
        except Preempted:  # saved; the same command (or the requeued job) resumes
            record.write("preempted", reason=f"signal {stop.signum}", wall_time_s=time.perf_counter() - t0)
            raise
        except BaseException as e:  # recorded, then raised on: TrainingFailed, a bad batch size, Ctrl-C, a bug
            record.write(results.end_status(e), reason=results.reason(e), wall_time_s=time.perf_counter() - t0)
            raise
        return record.write("done", finished_at=results.now(), wall_time_s=time.perf_counter() - t0,
                            checkpoint_dir=os.path.abspath(ckpt) if ckpt else None, **out)
