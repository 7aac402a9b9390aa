"""Learning-rate schedules: a multiplier of the peak LR per optimizer step, as a torch LambdaLR.

Step s is the (s+1)-th optimizer update (0-based). All schedules warm up linearly over
`warmup_steps`: the first update uses lr / warmup_steps, update `warmup_steps` - 1 the full lr.

- wsd (warmup-stable-decay, SmolLM2's): constant after warmup, then the last `decay_fraction` of
  `max_steps` decays linearly to lr * min_lr_ratio, reached at max_steps.
- cosine: after warmup, half a cosine from lr down to lr * min_lr_ratio at max_steps.
- constant: lr after warmup.

The multiplier depends only on the step, and the LambdaLR keeps nothing but its step in a checkpoint:
resuming with a longer `train.max_steps` follows the new schedule from the step reached.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from smollm2.config import ScheduleConfig


def lr_multiplier(schedule: ScheduleConfig, max_steps: int) -> Callable[[int], float]:
    """The factor applied to the peak LR at each step."""
    warmup, floor = schedule.warmup_steps, schedule.min_lr_ratio
    decay_steps = round(schedule.decay_fraction * max_steps)
    decay_start = max_steps - decay_steps

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule.name == "constant":
            return 1.0
        if schedule.name == "wsd":
            if step < decay_start or decay_steps == 0:
                return 1.0
            return floor + (1 - floor) * max(0.0, (max_steps - step) / decay_steps)
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    # A plain function (not a callable object): LambdaLR then saves no schedule parameters in the
    # checkpoint, so the config in force decides the schedule after a resume.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(schedule, max_steps))


def follow_config_after_resume(scheduler: torch.optim.lr_scheduler.LambdaLR, peak_lr: float) -> None:
    """After loading a checkpoint, let the config in force set the LR from the step reached.

    The loaded optimizer and scheduler states carry the old peak LR (param group "lr"/"initial_lr",
    the scheduler's base_lrs); the schedule's shape is already the new one (see build_scheduler). This
    is what makes extending a WSD run (a larger train.max_steps) or changing optimizer.lr on resume work.
    """
    scheduler.base_lrs = [peak_lr] * len(scheduler.base_lrs)
    for group, multiplier in zip(scheduler.optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = peak_lr
        group["lr"] = peak_lr * multiplier(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]  # what get_last_lr() says
