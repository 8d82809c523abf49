"""The context an evaluation runs in, passed explicitly to its protocol's runner and from there to
its loaders and the supervised loop (core.eval.supervised.fit)."""
from __future__ import annotations

from dataclasses import dataclass

from core import results
from core.distributed import DistInfo, StopFlag


@dataclass
class Session:
    """Where an evaluation runs, passed to the protocol's runner and on to its loaders and `fit`: its
    processes (DDP when launched by torchrun or a cluster job), the stop flag that SIGTERM/SIGUSR1/USR2
    set, and the folder of its checkpoints. The default: one process, no stop flag, no checkpoints."""
    dist: DistInfo = DistInfo()
    stop: StopFlag | None = None  # None: never stops early
    ckpt_dir: str | None = None  # None: no checkpoints (nothing to resume)
    record: "results.Recorder | None" = None  # the evaluation's record: `fit` writes its progress every epoch
    tb_dir: str | None = None  # TensorBoard event files of the evaluation
    # Training steps between looks at the stop flag (and at every epoch's end). With several
    # processes a look is an all-reduce and a host sync, so not every step (pretrain.log_every).
    stop_every: int = 1
