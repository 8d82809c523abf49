"""What the cluster settings' types and ranges cannot say: sbatch's time format and the
pass-through sbatch options. Checked with the config (core.config.validate); core.cluster.arrays uses
parse_time for the jobs' limits."""
from __future__ import annotations

import math
import re

from core.errors import ConfigError


def parse_time(text: str) -> int:
    """sbatch --time formats -> minutes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not m:
        raise ConfigError(f"cluster.time={text!r} is not an sbatch time (e.g. 48:00:00, 2-00:00:00, 90)")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # D-H[:M[:S]]
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # H:M:S
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # M:S
        seconds = a * 60 + b
    else:  # M
        seconds = a * 60
    if seconds < 60:
        raise ConfigError(f"cluster.time={text!r} is less than a minute")
    return math.ceil(seconds / 60)


def check_cluster_config(cl) -> None:
    """Called by core.config.validate: what types and ranges cannot say."""
    parse_time(cl.time)
    for item in cl.sbatch:
        if not isinstance(item, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*=.*", item):
            raise ConfigError(f"cluster.sbatch item {item!r} is not KEY=VALUE (KEY= for a flag)")
