"""The training loop's own small collectives over a CPU (gloo) group: votes, agreements and rank 0's verdicts.

The engine's collectives (gradients, ZeRO's gathers) go over NCCL on GPUs. The loop's decisions (stop on a
signal, which ranks saw a non-finite loss, which checkpoint to resume from, a conversion only rank 0 runs)
go over a gloo group of CPU tensors: reading a result back then never waits for the GPU to finish the step.
A group of its own on CPU-only runs too, so that every run takes one code path. Every call is collective:
all ranks make it, in the same order.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from smollm2.errors import UserError

T = TypeVar("T")


class CpuGroup:
    """A gloo group of every rank of the job, whose collectives fail after `timeout_s`."""

    def __init__(self, rank: int, world_size: int, timeout_s: float) -> None:
        self.rank, self.world_size = rank, world_size
        self.group = torch.distributed.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))

    def max(self, values: list[int]) -> list[int]:
        """The element-wise maximum of every rank's `values` (one small all-reduce)."""
        tensor = torch.tensor(values, dtype=torch.int64)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX, group=self.group)
        return tensor.tolist()

    def ranks_where(self, condition: bool) -> list[int]:
        """The ranks on which `condition` holds."""
        flags = [0] * self.world_size
        flags[self.rank] = int(condition)
        return [rank for rank, flag in enumerate(self.max(flags)) if flag]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (picklable), rank by rank."""
        values: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(values, value, group=self.group)
        return values

    def from_rank0(self, compute: Callable[[], T]) -> T:
        """What `compute()` returns on rank 0, on every rank; the others wait (up to the group's timeout).

        A UserError on rank 0 is raised on every rank, with its message; any other exception too, as a
        UserError naming it, so that no rank waits for a verdict that never comes."""
        verdict: list[Any] = [None, None]  # (value, error message)
        if self.rank == 0:
            try:
                verdict = [compute(), None]
            except UserError as exc:
                verdict = [None, str(exc)]
            except Exception as exc:
                verdict = [None, f"{exc!r} (on rank 0)"]
        torch.distributed.broadcast_object_list(verdict, src=0, group=self.group)
        if verdict[1] is not None:
            raise UserError(verdict[1])
        return verdict[0]
