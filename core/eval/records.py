"""Evaluation protocols, their run ids and their records: which config section a protocol reads,
the id of an evaluation, the settings only some protocols take, and the record it writes."""
from __future__ import annotations

import dataclasses

from core import results
from core.config import Config, _plain, config_hash, identity
from core.errors import ConfigError, UserError
from core.registry import PROTOCOLS


def protocols() -> list[str]:
    """The registered protocols that evaluate a pretrained encoder (core/eval/__init__.py registers them)."""
    return [e.name for e in PROTOCOLS.entries() if e.extra.get("pretrained", True)]


def kinds() -> list[str]:
    """Every evaluation kind: the protocols and the supervised baseline from scratch."""
    return list(PROTOCOLS)


def section_name(kind: str) -> str:
    """The eval.<name> config section a protocol reads; partial fine-tuning reads the fine-tune section."""
    if kind not in PROTOCOLS:
        raise UserError(f"unknown evaluation protocol {kind!r}; choose one of: {', '.join(kinds())}")
    return PROTOCOLS.entry(kind).extra["section"]


def section(cfg: Config, kind: str):
    """The config section a protocol reads."""
    return getattr(cfg.eval, section_name(kind))


def eval_run_id(cfg: Config, protocol: str, parent: str | None = None, eval_only: bool = False) -> str:
    """'<protocol>-<12 hex>' from the parent run, the protocol's section, eval.seed and the
    model/data settings evaluation depends on. Paths never enter it. The scratch baseline has no parent."""
    sec = section(cfg, protocol)
    parent = None if protocol == "scratch" else (parent or cfg.run_id())
    m, d = cfg.model, cfg.data
    data = {"dataset": d.dataset, "mean": d.mean, "std": d.std}
    if d.dataset == "synthetic":
        data["synthetic_size"] = d.synthetic_size
    if d.fingerprint:  # a folder's content (core.fingerprint); the scratch baseline has no parent that holds it
        data["fingerprint"] = d.fingerprint
    # the id rule of core.config: a setting added later enters only away from its default
    sec = identity(dataclasses.asdict(sec), f"eval.{section_name(protocol)}.")
    ident = {"protocol": protocol, "parent": parent, "section": sec, "seed": cfg.eval.seed,
             "model": {"arch": m.arch, "img_size": m.img_size}, "data": data}
    if eval_only:  # a fine-tuned classifier evaluated as it is
        ident["eval_only"] = True
    return f"{protocol}-{config_hash(ident)}"


def check_protocol(cfg: Config, kind: str) -> None:
    """Settings that only make sense for some protocols (the rest is checked by core.config)."""
    section(cfg, kind)
    blocks = cfg.eval.finetune.blocks
    if kind == "partial" and blocks is None:
        raise ConfigError("the partial protocol needs eval.finetune.blocks=K (the last K blocks train)")
    if kind == "finetune" and blocks is not None:
        raise ConfigError(f"eval.finetune.blocks={blocks} is for the partial protocol: run `eval partial`, "
                          "or set eval.finetune.blocks=None for full fine-tuning")
    for key, value in (("eval.knn.pool", cfg.eval.knn.pool), ("eval.scratch.pool", cfg.eval.scratch.pool)):
        if value not in ("cls", "avg"):
            raise ConfigError(f"{key}={value!r} is not one of: cls, avg")
    for key, value in (("eval.finetune.crop_scale", cfg.eval.finetune.crop_scale),
                       ("eval.scratch.crop_scale", cfg.eval.scratch.crop_scale)):
        if len(value) != 2 or not 0 < value[0] <= value[1] <= 1:
            raise ConfigError(f"{key} must be two numbers 0 < lo <= hi <= 1, got {value}")


def eval_recorder(cfg: Config, run_id: str, kind: str, parent: str | None, device, main: bool,
                  **extra) -> results.Recorder:
    """An evaluation's run record: 'running' when it starts, then 'done', or 'failed' with a reason."""
    return results.Recorder(cfg.run.results_dir, run_id, kind, cfg, main=main, parent=parent,
                            protocol_config=_plain(dataclasses.asdict(section(cfg, kind))),
                            started_at=results.now(), **results.environment(device), **extra)
