"""The backstop against silent hangs: a thread that ends its rank when the training loop stops making progress.

A collective normally fails by itself after train.collective_timeout_s (gloo's and NCCL's timeouts), and the
trainer then says which rank stopped answering. Not every wait has a timeout: DeepSpeed's shared-memory
all-reduce on CPU spins until its peer answers, and a GPU kernel stuck in NCCL can outlive the watchdog that
should abort it. So each rank also watches its own loop: no step, eval or save finished for longer than the
timeout means this rank is stuck (or waits for one that is), and it exits with code 3 and one line saying who
stopped answering. The launcher then ends the other ranks, and `--resume auto` goes on from the newest good
checkpoint. The same limit therefore bounds one step, one eval and one save: keep it above the longest.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable


class StallWatchdog:
    """`with StallWatchdog(timeout_s, report):` watches; `progress()` says the loop moved on. After timeout_s
    without progress it prints `smollm2 train: stopped: <report()>` and ends the process (exit code 3): the
    main thread is stuck, so an exception could not reach it."""

    def __init__(self, timeout_s: float, report: Callable[[], str]) -> None:
        self.timeout_s = timeout_s
        self.report = report
        self.last_progress = time.monotonic()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def __enter__(self) -> StallWatchdog:
        self.progress()
        self._stopped.clear()
        self._thread = threading.Thread(target=self._watch, name="smollm2-stall-watchdog", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        while not self._stopped.wait(min(5.0, self.timeout_s / 10)):
            stalled_for = time.monotonic() - self.last_progress
            if stalled_for > self.timeout_s:
                try:
                    line = self.report()
                except Exception as exc:  # the report reads the rendezvous store, which may be gone too
                    line = f"no progress for {stalled_for:.0f} s (train.collective_timeout_s); ({exc})"
                print(f"smollm2 train: stopped: {line}", file=sys.stderr, flush=True)
                os._exit(3)
