"""No silent hangs: each rank's heartbeat, the ranks that stopped answering named, a thread that ends a stalled rank.

Every rank notes in the rendezvous store how far it got (RankWatchdog.beat: steps done and forward passes of
the next). A collective normally fails by itself after train.collective_timeout_s (gloo's and NCCL's
timeouts), and the trainer then names the ranks whose heartbeat is behind. Not every wait has a timeout:
DeepSpeed's shared-memory all-reduce on CPU spins until its peer answers, and a GPU kernel stuck in NCCL can
outlive the watchdog that should abort it. So each rank also watches its own loop: no step, eval or save
finished for longer than the timeout means this rank is stuck (or waits for one that is), and it exits with
code 3 and one line saying who stopped answering. The launcher then ends the other ranks, and `--resume
auto` goes on from the newest good checkpoint. The same limit therefore bounds one step, one eval and one
save: keep it above the longest.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from smollm2.errors import RunFailed


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


class RankWatchdog(StallWatchdog):
    """A StallWatchdog for one rank of a job that also keeps the rank's heartbeat in the rendezvous store (`store`,
    which lives in rank 0's process) and names the ranks behind when a collective fails or the loop stalls."""

    def __init__(self, store: Any, rank: int, world_size: int, timeout_s: float) -> None:
        super().__init__(
            timeout_s, lambda: self.who_stopped_answering(TimeoutError(f"no step finished for {timeout_s:g} s"))
        )
        self.store, self.rank, self.world_size = store, rank, world_size
        self.position = (0, 0)  # steps done, forward passes of the next

    def beat(self, step: int, forwards: int = 0) -> None:
        """`step` steps done and `forwards` forward passes of the next: one small store write (per micro-batch,
        against the tens of milliseconds a micro-batch takes)."""
        self.position = (step, forwards)
        self.progress()
        self.store.set(f"smollm2/heartbeat/{self.rank}", f"{step} {forwards} {time.time()}")

    def who_stopped_answering(self, exc: Exception) -> str:
        """One line for a collective that failed: the ranks whose last heartbeat is behind this rank's."""
        step = self.position[0]
        try:
            beats = {}
            for rank in range(self.world_size):
                key = f"smollm2/heartbeat/{rank}"
                if self.store.check([key]):
                    done, forwards, at = self.store.get(key).decode().split()
                    beats[rank] = (int(done), int(forwards), float(at))
        except Exception:  # the store lives in rank 0's process: this is how its death shows
            return (
                f"a collective failed at step {step + 1} and rank 0, which hosts the rendezvous store, does "
                f"not answer (dead or stalled); this rank ({self.rank}) stops too"
            )
        behind = [
            f"rank {rank} is behind: it never reported" if rank not in beats else
            f"rank {rank} is behind: it finished step {beats[rank][0]}"
            + (f" and {beats[rank][1]} forward pass(es) of the next" if beats[rank][1] else "")
            + f", {time.time() - beats[rank][2]:.0f} s ago"
            for rank in range(self.world_size)
            if beats.get(rank, (-1, 0, 0))[:2] < self.position
        ]  # fmt: skip
        cause = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return (
            f"a collective failed at step {step + 1} (train.collective_timeout_s is {self.timeout_s:g}): "
            + ("; ".join(behind) if behind else "every rank got as far as this one (the collective itself hangs)")
            + f" (dead, stalled or unreachable); this rank ({self.rank}) stops too [{cause}]"
        )


class RankLost(RunFailed):
    """A collective timed out or lost its peer: some rank died or stopped answering."""


def is_collective_failure(exc: Exception) -> bool:
    """Whether an exception out of a step is a collective that timed out or lost its peer (gloo's words)."""
    text = str(exc).lower()
    return any(
        words in text
        for words in ("timed out", "timeout", "connection closed by peer", "connection reset by peer", "broken pipe")
    )
