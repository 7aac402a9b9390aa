"""LR schedules: warmup, WSD's flat top and linear decay, cosine, and their LambdaLR under resume."""

import math

import pytest
import torch

from smollm2.config import ScheduleConfig
from smollm2.schedule import build_scheduler, follow_config_after_resume, lr_multiplier


def test_wsd_shape():
    f = lr_multiplier(ScheduleConfig(name="wsd", warmup_steps=10, decay_fraction=0.2), max_steps=100)
    assert [f(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert all(f(s) == 1.0 for s in range(10, 80))  # stable until the last 20%
    decay = [f(s) for s in range(80, 101)]
    assert decay == pytest.approx([(100 - s) / 20 for s in range(80, 101)])  # linear, 0 at max_steps


def test_wsd_min_lr_ratio_and_no_decay():
    f = lr_multiplier(ScheduleConfig(name="wsd", warmup_steps=0, decay_fraction=0.5, min_lr_ratio=0.1), 10)
    assert f(0) == 1.0 and f(5) == 1.0 and f(10) == pytest.approx(0.1) and f(9) == pytest.approx(0.1 + 0.9 / 5)
    flat = lr_multiplier(ScheduleConfig(name="wsd", warmup_steps=0, decay_fraction=0.0), 10)
    assert [flat(s) for s in range(11)] == [1.0] * 11


def test_cosine_shape():
    f = lr_multiplier(ScheduleConfig(name="cosine", warmup_steps=4, min_lr_ratio=0.1), max_steps=104)
    assert f(3) == 1.0 and f(4) == 1.0
    assert f(54) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway down
    assert f(104) == pytest.approx(0.1)
    values = [f(s) for s in range(4, 105)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert f(30) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 26 / 100)))


def test_constant():
    f = lr_multiplier(ScheduleConfig(name="constant", warmup_steps=2), max_steps=10)
    assert [f(s) for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]


def _lrs(scheduler, optimizer, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])  # the LR this update uses
        optimizer.step()
        scheduler.step()
    return out


def test_lambdalr_gives_step_s_the_multiplier_of_s():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=2.0)
    schedule = ScheduleConfig(name="wsd", warmup_steps=4, decay_fraction=0.5)
    lrs = _lrs(build_scheduler(optimizer, schedule, 8), optimizer, 8)
    assert lrs == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0, 1.5, 1.0, 0.5])


def test_resume_follows_the_config_in_force():
    """After a resume, a longer max_steps and a new peak LR take effect from the step reached."""
    schedule = ScheduleConfig(name="wsd", warmup_steps=2, decay_fraction=0.5)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, schedule, 10)
    _lrs(scheduler, optimizer, 4)
    states = optimizer.state_dict(), scheduler.state_dict()

    optimizer2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    resumed = build_scheduler(optimizer2, schedule, 20)
    optimizer2.load_state_dict(states[0])
    resumed.load_state_dict(states[1])
    assert optimizer2.param_groups[0]["lr"] == 1.0  # the checkpoint's, before:
    follow_config_after_resume(resumed, 0.5)
    longer = lr_multiplier(schedule, 20)
    assert resumed.get_last_lr() == [0.5 * longer(4)]
    assert _lrs(resumed, optimizer2, 8) == pytest.approx([0.5 * longer(s) for s in range(4, 12)])
