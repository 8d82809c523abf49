"""One process at a time per run: a lock file in the run's work directory (<work_dir>/<run id>/run.lock).

A second runner of the same run (the same sweep started twice, a requeued job meeting its
predecessor) waits, saying which host:pid holds the run, then finds the record done and trains
nothing; checkpoint pruning therefore never races.

The lock is fcntl.lockf, a POSIX record lock: the kernel drops it when its holder dies, however it
dies, so a crashed runner never leaves it stuck, and NFS (lockd / NFSv4) and Lustre mounted with
`flock` pass it between hosts. Where the filesystem refuses such locks, an O_EXCL marker file
holding host:pid takes its place; a marker left by a dead process on this host is removed, one
from another host is reported with its path (remove it once that host's job is gone).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time

from core.errors import UserError

NAME = "run.lock"
POLL_S = 1.0
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def hold(run_dir: str, run_id: str, *, enabled: bool = True, log=None, poll_s: float = POLL_S):
    """Hold run `run_id`'s lock for the block, waiting while another process holds it."""
    if not enabled:  # ranks > 0 of a DDP run: rank 0 holds it for all
        yield
        return
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    try:
        os.makedirs(run_dir, exist_ok=True)
        fd = os.open(os.path.join(run_dir, NAME), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot create the lock of run {run_id} in {run_dir}: {e.strerror or e}") from None
    try:
        release = _acquire(fd, run_dir, run_id, log, poll_s)
        try:
            yield
        finally:
            release()
    finally:
        os.close(fd)


def _acquire(fd: int, run_dir: str, run_id: str, log, poll_s: float):
    said = False
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in UNSUPPORTED:
                return _acquire_marker(run_dir, run_id, log, poll_s)
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise UserError(f"cannot lock run {run_id} in {run_dir}: {e.strerror or e}") from None
            if not said:
                log(f"run {run_id} is held by {_holder(fd) or 'another process'}; waiting for it")
                said = True
            time.sleep(poll_s)
            continue
        os.ftruncate(fd, 0)  # who holds it, for the message a second runner prints
        os.pwrite(fd, me().encode(), 0)

        def release():
            os.ftruncate(fd, 0)
            fcntl.lockf(fd, fcntl.LOCK_UN)
        return release


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        return ""


def _acquire_marker(run_dir: str, run_id: str, log, poll_s: float):
    """The fallback where lockf is refused: create a host:pid marker exclusively."""
    path = os.path.join(run_dir, NAME + ".held")
    said = False
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    holder = f.read().strip()
            except FileNotFoundError:
                continue  # released meanwhile
            host, _, pid = holder.rpartition(":")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)  # its holder crashed on this host
                continue
            if not said:
                log(f"run {run_id} is held by {holder or 'another process'} (marker {path}; if that job is gone, "
                    f"remove it); waiting for it")
                said = True
            time.sleep(poll_s)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me())

        def release():
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        return release


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
