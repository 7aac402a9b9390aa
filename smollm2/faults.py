"""Faults a test injects into a real run through the environment, to exercise the guards that real faults hit.

Real divergence, a node that dies in the middle of a checkpoint or a stalled rank are rare and slow to
provoke on purpose; these make them happen where a test wants them. Nothing here acts unless its variable
is set, and no config key reaches it. A fault follows the data, like a bad batch: "step N" is the step
that trains on the N-th global batch of data, which is optimizer step N until a rollback skips data.

    SMOLLM2_FAULT_NAN_STEPS=12,13     the training loss of those steps becomes NaN ...
    SMOLLM2_FAULT_NAN_RANK=1          ... on this rank only (default 0)
    SMOLLM2_FAULT_SPIKE_STEPS=9       the training loss of those steps is multiplied by 100 (a finite spike)
    SMOLLM2_FAULT_SAVE_DELAY_S=30     sleep this long in a checkpoint save, after DeepSpeed wrote its files and
                                      before the manifest marks them complete (a window for kill -9) ...
    SMOLLM2_FAULT_SAVE_DELAY_STEPS=4  ... in the saves of these optimizer steps only (default: every save)
    SMOLLM2_FAULT_STALL_STEP=6        at the start of that step the rank stops itself (SIGSTOP: a frozen node,
    SMOLLM2_FAULT_STALL_RANK=1        a stuck kernel) ... this rank (default 0)
"""

from __future__ import annotations

import os
import signal
import time

import torch

SPIKE_FACTOR = 100.0


def _steps(name: str) -> frozenset[int]:
    return frozenset(int(step) for step in os.environ.get(name, "").split(",") if step.strip())


def corrupt_loss(loss: torch.Tensor, data_step: int, rank: int) -> torch.Tensor:
    """`loss`, or what SMOLLM2_FAULT_NAN_STEPS / SMOLLM2_FAULT_SPIKE_STEPS make of it at this data step."""
    if data_step in _steps("SMOLLM2_FAULT_NAN_STEPS") and rank == int(os.environ.get("SMOLLM2_FAULT_NAN_RANK", "0")):
        return loss * float("nan")
    if data_step in _steps("SMOLLM2_FAULT_SPIKE_STEPS"):
        return loss * SPIKE_FACTOR
    return loss


def delay_save(step: int) -> None:
    delay = float(os.environ.get("SMOLLM2_FAULT_SAVE_DELAY_S", "0"))
    steps = _steps("SMOLLM2_FAULT_SAVE_DELAY_STEPS")
    if delay > 0 and (not steps or step in steps):
        time.sleep(delay)


def stall(data_step: int, rank: int) -> None:
    if str(data_step) == os.environ.get("SMOLLM2_FAULT_STALL_STEP") and rank == int(
        os.environ.get("SMOLLM2_FAULT_STALL_RANK", "0")
    ):
        os.kill(os.getpid(), signal.SIGSTOP)
