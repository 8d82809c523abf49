"""Prepared artifacts: what a pretraining run reads that is fitted or trained once and shared by
runs (the `pca` target's basis, the `dvae_token` target's in-suite tokenizer), as units of the
sweep plan. A sweep prepares each one in a unit of its own, with its own record, before the
pretraining runs that read it, which depend on it (locally by run order, on SLURM by an array
dependency): no manual step, and no rank waits for another process to train it.

An artifact unit's id is a hash of the settings the artifact is made from, known from the config
alone (the artifact's own cache key also counts the dataset's images, which would mean opening
the dataset to plan): identical settings are one unit. The artifact stays where a pretraining run
looks for it (<work_dir>/cache, under its own cache key), so a run started alone still finds it,
or prepares it itself as before.
"""
from __future__ import annotations

import os
import platform
import time

from core import results
from core.config import config_hash
from core.distributed import from_env
from core.errors import TrainingFailed
from core.model import ARCHS
from core.targets.base import wait_for_rank0
from core.targets.tokenizer import VERSION as TOKENIZER_VERSION
from core.targets.tokenizer import tokenizer_job
from core.targets.pca import pca_job

KINDS = {"pca": "pca", "dvae_token": "tokenizer"}  # target -> the kind of artifact it reads
ARTIFACT_KINDS = tuple(KINDS.values())
# data settings that change what an artifact is fitted on (not num_workers, on_corrupt, ...)
DATA_KEYS = ("dataset", "path", "backend", "augmentation", "mean", "std", "synthetic_size", "fingerprint")
# how a user prepares one again after a failed or lost wait
HINT = {"tokenizer": "train it first: python run_all.py tokenizer, with the same --preset and overrides",
        "pca": "run the same command again: the basis is fitted by the first process that finds none"}
POLL_S = 2.0


def artifact_kind(cfg) -> str | None:
    """The artifact a pretraining run of `cfg` reads, or None (DALL-E's encoder is a file: nothing to train)."""
    m = cfg.model
    if m.target == "dvae_token" and m.dvae_path:
        return None
    return KINDS.get(m.target)


def artifact_spec(cfg, kind: str) -> dict:
    """Every setting the artifact is made from: the same spec is the same artifact."""
    m, d = cfg.model, cfg.data
    data = {k: getattr(d, k) for k in DATA_KEYS}
    data["path"] = os.path.abspath(d.path) if d.path else ""
    spec = {"kind": kind, "data": data, "img_size": m.img_size, "patch": ARCHS[m.arch]["patch_size"],
            "cache": os.path.abspath(os.path.join(cfg.run.work_dir, "cache"))}
    if kind == "tokenizer":
        spec.update(version=TOKENIZER_VERSION, vocab=m.dvae_vocab, width=m.dvae_width, epochs=m.dvae_epochs)
    else:
        spec.update(samples=m.pca_samples)  # the basis holds every component: pca_components is not in it
    return spec


def artifact_id(cfg, kind: str) -> str:
    return f"{kind}-{config_hash(artifact_spec(cfg, kind))}"


def prepare(cfg, kind: str, *, progress: bool = True) -> dict:
    """The artifact unit of `cfg`: fitted or trained now (rank 0; found in the cache if made before),
    its record written; a finished one is not made again. Other ranks wait for rank 0's record."""
    rid, results_dir = artifact_id(cfg, kind), cfg.run.results_dir
    rec = results.finished(results_dir, rid)
    if rec and os.path.isfile(rec.get("artifact") or ""):
        return rec
    dist = from_env()
    if dist.rank != 0:
        return _wait_for_rank0(results_dir, rid, kind)
    # world_size: the processes that ran the unit; rank 0 made the artifact
    recorder = results.Recorder(results_dir, rid, kind, cfg, spec=artifact_spec(cfg, kind), world_size=dist.world)
    t0, started = time.perf_counter(), results.now()
    fields = {k: v for k, v in recorder.base.items() if k != "run_id"}  # what a failure's record keeps
    with results.ending_recorded(results_dir, rid, **fields):
        recorder.write("running", started_at=started, host=platform.node(), pid=os.getpid(), **results.job_fields())
        if kind == "tokenizer":
            tok = tokenizer_job(cfg, progress=progress)
            made = {"artifact": tok["weights"], "tokenizer_id": tok["run_id"], "metrics": tok["metrics"]}
        else:
            made = {"artifact": pca_job(cfg)}
    return recorder.write("done", **made, started_at=started, finished_at=results.now(),
                          wall_time_s=time.perf_counter() - t0, **results.job_fields())


def _wait_for_rank0(results_dir: str, rid: str, kind: str) -> dict:
    def done():
        rec = results.read_record(results_dir, rid) or {}
        if rec.get("status") in ("failed", "cancelled"):
            raise TrainingFailed(f"{kind} {rid}: rank 0 could not prepare it: {rec.get('reason')}")
        return rec if rec.get("status") == "done" else None
    return wait_for_rank0(done, f"{kind} {rid}", HINT[kind], POLL_S)
