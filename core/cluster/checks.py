"""What the cluster settings' types and ranges cannot say: sbatch's time format and the
pass-through sbatch options. Checked with the config (core.config.validate); core.cluster.arrays uses
parse_time for the jobs' limits."""
from __future__ import annotations

import math
import re

from core.errors import ConfigError


def parse_time(text: str) -> int:
    """sbatch --time formats -> minutes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S. The leading field may be
    any size (90 minutes, 48:00:00); the fields after it are clock fields, so minutes and seconds
    above 59 and hours above 23 after days are refused: sbatch would add them up (its own parser takes
    1:60:15), but 99:99:99 is a typo, not a time limit anyone meant."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not m:
        raise ConfigError(f"cluster.time={text!r} is not an sbatch time (e.g. 48:00:00, 2-00:00:00, 90)")
    days, a, b, c = (int(g) if g is not None else None for g in m.groups())
    if days is not None:  # D-H[:M[:S]]
        fields = {"hours": (a, 24), "minutes": (b, 60), "seconds": (c, 60)}
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # H:M:S
        fields = {"minutes": (b, 60), "seconds": (c, 60)}
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # M:S
        fields = {"seconds": (b, 60)}
        seconds = a * 60 + b
    else:  # M
        fields = {}
        seconds = a * 60
    for name, (value, limit) in fields.items():
        if value is not None and value >= limit:
            raise ConfigError(f"cluster.time={text!r} has {value} {name}, at most {limit - 1} after the "
                              f"{'days' if name == 'hours' else 'first field'} (sbatch times: M, M:S, H:M:S, D-H, "
                              f"D-H:M, D-H:M:S)")
    if seconds < 60:
        raise ConfigError(f"cluster.time={text!r} is less than a minute")
    return math.ceil(seconds / 60)


def check_cluster_config(cl) -> None:
    """Called by core.config.validate: what types and ranges cannot say."""
    parse_time(cl.time)
    for item in cl.sbatch:
        if not isinstance(item, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*=.*", item):
            raise ConfigError(f"cluster.sbatch item {item!r} is not KEY=VALUE (KEY= for a flag)")
