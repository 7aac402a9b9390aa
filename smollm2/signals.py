"""Stopping on SIGTERM and SIGUSR1: the signals are noted, and the ranks agree at a step boundary to stop there.

SLURM sends SIGUSR1 ahead of the time limit (sbatch --signal) and SIGTERM on preemption and scancel.
The trainer finishes the optimizer step in progress; its one vote a step (a maximum over the ranks of
`received`, smollm2/trainer.py) tells every rank of a signal any of them got; all save a checkpoint and
the job exits 0.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """While active, SIGTERM and SIGUSR1 only note their number in `received`, for the training loop to act on.

    The step in progress and a checkpoint being written go on undisturbed by any number of signals.
    The handlers replace whatever was there, SIG_IGN included (launch/slurm/multi_node.sbatch starts the
    DeepSpeed launcher ignoring both, and the ranks inherit that), and what was there comes back on
    exit. Python installs handlers only in the main thread; elsewhere the signals keep their effect.
    """

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._note) for sig in STOP_SIGNALS}
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc_info: Any) -> None:
        for sig, handler in self._previous.items():
            # None: a handler installed outside Python, which Python cannot put back.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """SIGTERM and SIGUSR1 do nothing from now on. The DataLoader's worker_init_fn: the trainer decides when
    to stop, and stops its workers itself."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
