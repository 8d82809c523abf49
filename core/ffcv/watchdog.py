"""The writer's watchdog: ffcv.writer's Process, Queue and sleep, replaced while a .beton is written
by ones that notice a worker that died."""
from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import os
import queue
import time

# A writer worker that dies (e.g. killed for memory) leaves ffcv's writer waiting forever: its main
# thread polls a done-counter with sleep(0.1), then blocks on each worker's allocations queue. Both
# waits are replaced below by ones that check the workers' exit codes on that same thread. (An earlier
# watchdog thread called _thread.interrupt_main(), which does nothing where SIGINT is ignored, as in
# every job a non-interactive shell starts with '&' or nohup: there the conversion hung.)


class WorkerDied(Exception):
    pass


class TrackedProcess(multiprocessing.Process):
    """ffcv.writer's Process, remembered as it starts, so that a worker that died is noticed."""
    started: list = []

    def start(self):
        super().start()
        TrackedProcess.started.append(self)


def check_workers():
    for p in TrackedProcess.started:
        code = p.exitcode  # waitpid(WNOHANG): needs SIGCHLD not ignored (write_beton sees to it)
        if code not in (None, 0):
            raise WorkerDied(code)


def watching_sleep(seconds: float):
    """ffcv's progress loop (`while done != num_samples: sleep(0.1)`) with a look at the workers."""
    time.sleep(seconds)
    check_workers()


class WatchedQueue(multiprocessing.queues.Queue):
    """ffcv's Queue: in the process that made it, a blocking get() polls and checks the workers, so
    a worker that died before handing over its allocations is an error, not a wait forever."""
    made: list = []

    def __init__(self, maxsize: int = 0):
        super().__init__(maxsize, ctx=multiprocessing.get_context())
        self._owner = os.getpid()
        WatchedQueue.made.append(self)

    def get(self, block=True, timeout=None):
        if not block or timeout is not None or getattr(self, "_owner", None) != os.getpid():
            return super().get(block, timeout)
        while True:
            try:
                return super().get(timeout=0.2)
            except queue.Empty:
                check_workers()
