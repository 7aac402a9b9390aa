"""The stability guard: non-finite steps make no update; loss spikes are logged, skipped or rolled back.

A step whose gradient norm is not finite (a non-finite loss on any rank gives one on every rank, through
the gradient average) makes no update: around the bare torch optimizer (ZeRO 0 with fp32 weights, where the
trainer steps the optimizer itself) the guard drops the gradients before engine.step(); DeepSpeed's own
optimizer wrappers skip such a step themselves. Either way the LR schedule and the data move on with the
step. `stability.max_bad_steps` such steps in a row stop the run (RunFailed, exit 3) without saving the bad
state. A loss spike is a step's loss (the mean over ranks) above the mean plus `spike_sigmas` standard
deviations of the last `spike_window` steps; `stability.spike` says what happens then: log, skip (no
update) or rollback (the trainer goes back to the newest checkpoint and on past the data that led there).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from smollm2.collectives import CpuGroup
from smollm2.config import StabilityConfig
from smollm2.engine import clip_gradients
from smollm2.errors import RunFailed, UserError


@dataclass
class StepResult:
    """What one optimizer step did, as far as the loop after it needs to know."""

    grad_norm: float | torch.Tensor | None = None  # global, before clipping
    skipped: bool = False  # no update was made (non-finite gradient norm, or a spike with stability.spike skip)
    nonfinite_loss_ranks: list[int] = field(default_factory=list)  # of a skipped step
    loss: float | None = None  # mean over ranks and micro-batches: watched for spikes (stability.spike)
    spike: bool = False


class Rollback(Exception):  # noqa: N818  (control flow, not an error)
    """A loss spike at `step`, with stability.spike rollback: the trainer rolls back and goes on."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


class SpikeDetector:
    """A loss is a spike when it exceeds the mean + `sigmas` standard deviations of the last `window` losses."""

    def __init__(self, window: int, sigmas: float) -> None:
        self.losses: deque[float] = deque(maxlen=window)
        self.sigmas = sigmas

    def add(self, loss: float) -> None:
        self.losses.append(loss)

    def limit(self) -> float | None:
        """The loss above which the next one is a spike; None until the window is full."""
        if len(self.losses) < self.losses.maxlen:
            return None
        mean = sum(self.losses) / len(self.losses)
        std = (sum((x - mean) ** 2 for x in self.losses) / len(self.losses)) ** 0.5
        return mean + self.sigmas * max(std, 1e-3 * abs(mean))  # a flat window still lets noise through

    def is_spike(self, loss: float) -> bool:
        limit = self.limit()
        return limit is not None and math.isfinite(loss) and loss > limit

    def describe(self) -> str:
        mean = sum(self.losses) / max(1, len(self.losses))
        return f"a limit of {self.limit():.4f} (mean {mean:.4f} of the last {len(self.losses)} steps)"


class StabilityGuard:
    """Watches every optimizer step of one rank's engine (each call below is collective)."""

    def __init__(
        self, settings: StabilityConfig, engine: Any, grad_clip: float, group: CpuGroup, report: Callable[[str], None]
    ) -> None:
        self.settings, self.engine, self.grad_clip, self.group = settings, engine, grad_clip, group
        self.report = report if group.rank == 0 else lambda line: None
        # DeepSpeed's optimizer wrappers (ZeRO, bf16 weights) clip and report the gradient norm; around the
        # bare torch optimizer (stage 0, fp32 weights) the guard clips (grad_clip) and takes the norm.
        self.bare_optimizer = not hasattr(engine.optimizer, "_global_grad_norm")
        if settings.spike == "skip" and not self.bare_optimizer:
            raise UserError(
                f"stability.spike: skip needs the trainer to step the optimizer, but DeepSpeed wraps it in "
                f"{type(engine.optimizer).__name__} (deepspeed.overrides); use rollback or log"
            )
        self.spikes = SpikeDetector(settings.spike_window, settings.spike_sigmas)
        self.skipped_steps = 0  # steps that made no update, over the whole run (kept in checkpoints)
        self.bad_in_a_row = 0
        self.rollbacks = 0  # in this job
        self._engine_skips = 0

    def before_update(self, step_loss: torch.Tensor, accumulation: int) -> StepResult:
        """Between the step's last backward and its engine.step(): the spike check (one all-reduce and one device
        sync per step, only when stability.spike is set) and, around the bare optimizer, the clipping and the
        decision to skip (the norm read on the host: one device sync, before the optimizer's kernels)."""
        result = StepResult()
        self._engine_skips = self.engine.skipped_steps
        if self.settings.spike != "none":
            total = step_loss.detach().clone()
            torch.distributed.all_reduce(total)
            result.loss = total.item() / self.group.world_size / accumulation
            result.spike = self.spikes.is_spike(result.loss)
        if self.bare_optimizer:
            result.grad_norm = clip_gradients(self.engine, self.grad_clip)
            skip_for_spike = result.spike and self.settings.spike == "skip"
            result.skipped = not bool(torch.isfinite(result.grad_norm)) or skip_for_spike
            if result.skipped:
                for param in self.engine.module.parameters():
                    param.grad = None  # torch's AdamW leaves a parameter without a gradient untouched
        return result

    def after_update(self, result: StepResult, step_loss: torch.Tensor) -> None:
        """After the step's engine.step(): DeepSpeed's own skips, and which ranks had a non-finite loss."""
        if not self.bare_optimizer:
            result.grad_norm = self.engine.get_global_grad_norm()
            if self.engine.skipped_steps > self._engine_skips:
                result.skipped = True
                self.engine.lr_scheduler.step()  # DeepSpeed holds the schedule back; ours moves on with the step
        if result.skipped:
            result.nonfinite_loss_ranks = self.group.ranks_where(not bool(torch.isfinite(step_loss)))
        elif result.loss is not None and not result.spike:
            self.spikes.add(result.loss)

    def check(self, step: int, result: StepResult, describe_newest: Callable[[], str]) -> None:
        """Report spikes and skipped steps, count them; RunFailed after stability.max_bad_steps in a row
        (`describe_newest()` says where a rerun would go on from)."""
        if result.spike:
            self.report(
                f"step {step}: loss spike: {result.loss:.4f} against {self.spikes.describe()}"
                + {"log": "", "skip": "; no update", "rollback": "; rolling back"}[self.settings.spike]
            )
        if not result.skipped:
            self.bad_in_a_row = 0
            return
        self.skipped_steps += 1
        self.bad_in_a_row += 1
        if not result.spike:
            where = (
                f"a non-finite loss on rank {', '.join(map(str, result.nonfinite_loss_ranks))}"
                if result.nonfinite_loss_ranks
                else f"a non-finite gradient norm ({float(result.grad_norm)})"
            )
            self.report(f"step {step}: skipped, no update: {where}")
        limit = self.settings.max_bad_steps
        if self.bad_in_a_row >= limit:
            raise RunFailed(
                f"steps {step - limit + 1}-{step}: {limit} steps in a row (stability.max_bad_steps) made "
                f"no update (non-finite loss or gradient norm); nothing was saved, {describe_newest()}"
                ": lower optimizer.lr, check those steps' data, or raise stability.max_bad_steps"
            )

    @property
    def healthy(self) -> bool:
        """Whether the last step made an update: a checkpoint is written only then."""
        return self.bad_in_a_row == 0

    def wants_rollback(self, result: StepResult) -> bool:
        return result.spike and self.settings.spike == "rollback"

    def allow_rollback(self, spike_step: int, has_checkpoint: bool) -> None:
        """RunFailed when a spike cannot be rolled back: no checkpoint, or stability.max_rollbacks used up."""
        if not has_checkpoint or self.rollbacks >= self.settings.max_rollbacks:
            reason = (
                "no checkpoint to roll back to"
                if not has_checkpoint
                else f"{self.rollbacks} rollbacks already in this job (stability.max_rollbacks)"
            )
            raise RunFailed(f"loss spike at step {spike_step} and {reason}; lower optimizer.lr or check the data")
        self.rollbacks += 1
