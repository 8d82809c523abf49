"""Run records: one JSON file per run under <results_dir>/runs/, written atomically.

Records are the single source of truth for tables and plots. A record holds the run id, kind
(pretrain or an evaluation protocol), status (running | done | preempted | cancelled | failed, the
last three with a reason), the resolved config, per-epoch history and progress, final metrics and
the environment it ran in (on a cluster: the job id and its log files).

The run store of every unit (pretraining, evaluations, the tokenizer): the typed record
(`RunRecord`), the one writer (`write_record`; a running unit writes through a `Recorder`), the one
done-shortcut (`finished`) and the one loader of a finished pretraining run (`load_pretrain_run`).
It sits below training and evaluation, which use it; collecting records into tables is above.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from core import checkpoint
from core.config import _flat
from core.errors import CheckpointError, Preempted, TrainingFailed, UserError

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@=-]{0,199}$")


def check_id(run_id: str, what: str = "run id") -> str:
    """Ids become file names: refuse anything that could leave the results folder."""
    if not isinstance(run_id, str) or not SAFE_ID.match(run_id) or ".." in run_id:
        raise UserError(f"invalid {what} {run_id!r}: use letters, digits, '-', '_', '.', no '..' or '/'")
    return run_id


def runs_dir(results_dir: str) -> str:
    return os.path.join(results_dir, "runs")


def record_path(results_dir: str, run_id: str) -> str:
    return os.path.join(runs_dir(results_dir), check_id(run_id) + ".json")


# --------------------------------------------------------------------------- the record

UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET", "__bool__": lambda self: False})()


@dataclass
class RunRecord:
    """One run's record, typed. Fields left UNSET are absent from the JSON (a pretraining record has
    no `parent`); keys the suite adds per kind (environment, checkpoints, timings) live in `extra`.
    from_dict(d).to_dict() == d for every record, so existing files and run ids stay valid."""
    run_id: str
    kind: str | None = UNSET  # pretrain | tokenizer | an evaluation protocol
    status: str | None = UNSET  # running | done | preempted | cancelled | failed
    parent: str | None = UNSET  # an evaluation's pretraining run
    reason: str | None = UNSET  # why a unit ended other than done
    preset: str | None = UNSET
    config: dict = UNSET  # the resolved config
    history: dict | None = UNSET  # per-epoch values
    metrics: dict | None = UNSET
    progress: dict | None = UNSET  # core.progress: epoch k of N, ETA
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "RunRecord":
        why = record_problem(d)
        if why is not None:
            raise ValueError(f"not a run record: {why}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in names}, extra={k: v for k, v in d.items() if k not in names})

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**{k: v for k, v in out.items() if v is not UNSET}, **self.extra}

    @property
    def done(self) -> bool:
        return self.status == "done"


def write_record(results_dir: str, record: "RunRecord | dict") -> str:
    """THE record writer: every record of every unit (pretraining, evaluation, tokenizer, an early
    failure) is written here, atomically, as sorted JSON."""
    rec = record if isinstance(record, RunRecord) else RunRecord.from_dict(record)
    path = record_path(results_dir, rec.run_id)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        checkpoint.write_text(path, json.dumps(rec.to_dict(), indent=1, sort_keys=True, default=_json_default))
    except OSError as e:
        raise UserError(f"cannot write run record {path}: {e.strerror or e}") from None
    return path


class Recorder:
    """A running unit's record: the fields fixed at its start once, then `write(status, **fields)`
    whenever it changes (every epoch, at its end). Only the main process writes; every process
    gets the record back."""

    def __init__(self, results_dir: str, run_id: str, kind: str, cfg=None, *, main: bool = True, **base):
        self.results_dir, self.run_id, self.main = results_dir, run_id, main
        self.base = {"run_id": run_id, "kind": kind,
                     **({"preset": cfg.run.preset, "config": cfg.to_dict()} if cfg is not None else {}), **base}

    def build(self, status: str, **fields) -> dict:
        """The record as `write` would write it, not written (e.g. until the unit's weights are saved)."""
        return {**self.base, "status": status, "updated_at": now(), **fields}

    def write(self, status: str, **fields) -> dict:
        rec = self.build(status, **fields)
        if self.main:
            write_record(self.results_dir, rec)
        return rec


def finished(results_dir: str, run_id: str) -> dict | None:
    """The record of run_id if it is done (the done-shortcut: a finished unit is never run again)."""
    rec = read_record(results_dir, run_id)
    return rec if rec is not None and rec.get("status") == "done" else None


def _json_default(obj):
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_record(results_dir: str, run_id: str) -> dict | None:
    """The record of run_id; None if there is none, or if the file is valid JSON but not a record
    (said in one line: it is then treated as absent and replaced when the run is written)."""
    path = record_path(results_dir, run_id)
    try:
        with open(path) as f:
            rec = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"run record {path} is unreadable: {e}") from None
    return rec if _usable(path, rec) else None


# The fields readers use, with their types: a file with other types is not a record (it would crash
# tables, report, compare and status).
FIELD_TYPES = {"run_id": (str,), "kind": (str,), "status": (str,), "parent": (str, type(None)), "reason": (str, type(None)),
               "config": (dict,), "metrics": (dict, type(None)), "history": (dict, type(None))}


def record_problem(rec) -> str | None:
    """Why `rec` (parsed JSON) is not a run record, or None if it is one."""
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__ if rec is not None else 'null'}, not an object"
    if "run_id" not in rec:
        return "no run_id"
    for key, types in FIELD_TYPES.items():
        if key in rec and not isinstance(rec[key], types):
            return f"its {key} is a {type(rec[key]).__name__}"
    return None


_reported: set = set()


def _usable(path: str, rec) -> bool:
    """True for a record; otherwise one line naming the file (once per file and process)."""
    why = record_problem(rec)
    if why is None:
        return True
    if path not in _reported:
        _reported.add(path)
        print(f"skipping {path}: not a run record ({why})", file=sys.stderr)
    return False


def iter_records(results_dir: str):
    """Every run record under results_dir; damaged or foreign files are skipped with one line each."""
    d = runs_dir(results_dir)
    if not os.path.isdir(d):
        return
    for name in sorted(os.listdir(d)):
        if name.endswith(".json") and not name.startswith("."):
            path = os.path.join(d, name)
            try:
                with open(path) as f:
                    rec = json.load(f)
            except (OSError, json.JSONDecodeError) as e:  # a damaged file never hides the others
                if path not in _reported:
                    _reported.add(path)
                    print(f"skipping {path}: unreadable ({e})", file=sys.stderr)
                continue
            if _usable(path, rec):
                yield rec


def load_records(results_dir: str):
    """All records as a pandas DataFrame: one row per run, metrics as `metric.<name>` columns and the
    resolved config as dotted columns (`model.mask_ratio`, ...)."""
    import pandas as pd  # heavy (~1 s to import here): only tables need it

    rows = []
    for rec in iter_records(results_dir):
        row = {k: v for k, v in rec.items() if not isinstance(v, (dict, list))}
        row.update({f"metric.{k}": v for k, v in (rec.get("metrics") or {}).items()})
        row.update(_flat(rec.get("config") or {}))
        row["record"] = rec
        rows.append(row)
    return pd.DataFrame(rows)


def reason(exc: BaseException) -> str:
    """Why a unit ended, in one line: a user error's own message, else the exception's type too."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    text = " ".join(str(exc).split())
    if not isinstance(exc, (UserError, TrainingFailed)):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:500] or type(exc).__name__


def end_status(exc: BaseException) -> str:
    """The final status an exception leaves: Ctrl-C is the user's cancel, anything else a failure."""
    return "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed"


def mark_ended(results_dir: str, run_id: str, status: str, why: str, **fields) -> dict | None:
    """Give a unit's record its final status and reason, keeping what the record already holds
    (config, history, progress), or create a small one for a unit that failed before it had any.
    A done record is never changed. Rank 0 only. Never raises: it runs while another error is on
    its way to the user, and that error matters more than this record."""
    if int(os.environ.get("RANK", 0)) != 0:
        return None
    try:
        rec = read_record(results_dir, run_id) or {"run_id": run_id, "started_at": now()}
        if rec.get("status") == "done":
            return rec
        rec.update({**job_fields(), **fields, "status": status, "reason": why, "updated_at": now()})
        write_record(results_dir, rec)
        return rec
    except Exception:  # noqa: BLE001 - an unreadable or unwritable record: the original error goes on
        return None


@contextlib.contextmanager
def ending_recorded(results_dir: str, run_id: str, **fields):
    """Around all a unit does once its id is known: however early it fails (its data missing at run
    time, its target failing to prepare, a bug), or if Ctrl-C stops it, its record ends `failed`
    (or `cancelled`) with the reason, and the exception goes on. Preempted passes untouched: the
    loop saved a checkpoint and wrote `preempted` itself."""
    try:
        yield
    except Preempted:
        raise
    except (Exception, KeyboardInterrupt) as e:
        mark_ended(results_dir, run_id, end_status(e), reason(e), **fields)
        raise


# Set by a cluster job (core.cluster.job) for every process it starts: which job wrote a record and
# where its log is, so a failure's reason leads to the full traceback.
JOB_ENV = {"job_id": "MAE_JOB_ID", "job_stdout": "MAE_JOB_STDOUT", "job_stderr": "MAE_JOB_STDERR"}


def job_fields() -> dict:
    return {k: os.environ[v] for k, v in JOB_ENV.items() if os.environ.get(v)}


def pretrain_record(results_dir: str, run_id: str) -> dict:
    """The record of a finished pretraining run; a one-line error if there is none, it is another
    kind or it is not done."""
    rec = read_record(results_dir, check_id(run_id))
    if rec is None:
        raise UserError(f"no run record for {run_id} in {runs_dir(results_dir)}")
    if rec.get("kind") != "pretrain":
        raise UserError(f"{run_id} is a {rec.get('kind')} record, not a pretraining run")
    if rec.get("status") != "done":
        raise UserError(f"pretraining run {run_id} is {rec.get('status')}, not done")
    return rec


def load_pretrain_run(results_dir: str, run_id: str) -> tuple[dict, dict, str]:
    """(record, checkpoint, its path) of a finished pretraining run: exactly its final weights,
    checked by their hash. Evaluations and reconstruction figures all load a run through here."""
    rec = pretrain_record(results_dir, run_id)
    state, path = final_checkpoint(rec)
    return rec, state, path


def final_checkpoint(rec: dict) -> tuple[dict, str]:
    """(state, path) of exactly the checkpoint a finished pretraining record names, verified against
    the record's checksum. Never an older one: evaluating other weights than the run's would be a
    silently wrong result, so a missing or damaged file is a one-line error."""
    rid, path, sha = rec.get("run_id"), rec.get("last_checkpoint"), rec.get("last_checkpoint_sha256")
    if not path:
        raise CheckpointError(f"the record of run {rid} names no final checkpoint")
    if not os.path.isfile(path):
        raise CheckpointError(f"the final checkpoint of run {rid}, {path}, is missing; an older one is not used")
    if sha and checkpoint.sha256(path) != sha:
        raise CheckpointError(f"the final checkpoint of run {rid}, {path}, does not match the checksum in its record "
                              f"(damaged or replaced); an older one is not used: pretrain it again after removing "
                              f"its record")
    return checkpoint.load_file(path), path


def git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device) -> dict:
    env = {"torch_version": torch.__version__, "device": str(device), "host": platform.node(), "pid": os.getpid(),
           "python": platform.python_version(), "git_commit": git_commit(),
           "torch_threads": torch.get_num_threads(), **job_fields()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["device_name"] = torch.cuda.get_device_name()
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
