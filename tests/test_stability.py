"""The stability guard: steps with a non-finite loss or gradient norm make no update, too many in a row stop the
run, loss spikes are caught and rolled back past; metrics stay strict JSON; sampling survives bad logits.

End to end with 2 processes under torchrun (conftest.MINI's tiny model) and faults injected through the
environment (smollm2/faults.py): a NaN loss on one rank, a finite loss spike.
"""

import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import MINI, TINY_YAML, read_rows, smollm2_cmd, torchrun_cmd
from smollm2.checkpoint import find_checkpoint, read_checkpoint_state
from smollm2.config import ScheduleConfig
from smollm2.metrics import MetricsLogger
from smollm2.model import sample_next_token
from smollm2.schedule import lr_multiplier
from smollm2.stability import SpikeDetector
from smollm2.weights import consolidated_state_dict

LR = 3e-3  # configs/tiny.yaml's


def faulty_train(run_dir, *settings: str, **faults: str) -> subprocess.CompletedProcess:
    """`smollm2 train` on 2 processes under torchrun with SMOLLM2_FAULT_* set; not checked."""
    cmd = torchrun_cmd(2, "train", "--config", TINY_YAML, "--set", *MINI, f"train.out_dir={run_dir}", *settings)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **{f"SMOLLM2_FAULT_{k.upper()}": v for k, v in faults.items()}}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 3])
def test_a_nan_on_one_rank_skips_the_step_on_every_rank(tiny_data, tmp_path, zero_stage):
    """Stage 0: the trainer drops the gradients; stage 3: DeepSpeed's wrapper skips. Either way the weights and
    (stage 0) the optimizer state after the step equal those before it, and the LR schedule moves on."""
    run_dir = tmp_path / "run"
    result = faulty_train(
        run_dir,
        f"data.path={tiny_data}",
        "train.max_steps=6",
        "checkpoint.save_every=1",
        "checkpoint.keep_last=10",
        "eval.eval_every=0",
        "schedule.warmup_steps=5",
        f"deepspeed.zero_stage={zero_stage}",
        nan_steps="3",
        nan_rank="1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 3: skipped, no update: a non-finite loss on rank 1" in result.stdout
    rows = {row["step"]: row for row in read_rows(run_dir, "lr")}
    assert rows[3]["loss"] is None and rows[3]["grad_norm"] is None and rows[3]["nonfinite"] == ["grad_norm"]
    assert [rows[s]["skipped_steps"] for s in range(1, 7)] == [0, 0, 1, 1, 1, 1]
    assert all(math.isfinite(rows[s]["loss"]) for s in (1, 2, 4, 5, 6))
    # Step s uses lr * f(s - 1): the skipped step 3 took its place in the warmup, step 4 the next one.
    schedule = lr_multiplier(ScheduleConfig(warmup_steps=5), max_steps=6)
    assert [rows[s]["lr"] for s in range(1, 7)] == pytest.approx([LR * schedule(s - 1) for s in range(1, 7)])
    checkpoints = run_dir / "checkpoints"
    # No checkpoint of step 3: a save waits for a step that makes an update (issue 30's "no save while bad").
    assert sorted(p.name for p in checkpoints.glob("step_*")) == [f"step_{s:08d}" for s in (1, 2, 4, 5, 6)]
    # Steps 1, 2 and 4 made the updates: the optimizer has counted 2 at step 2 and 3 at step 4.
    assert [optimizer_steps(checkpoints / f"step_{s:08d}", zero_stage) for s in (2, 4)] == [2, 3]
    assert not torch.equal(
        consolidated_state_dict(find_checkpoint(checkpoints / "step_00000002"))["model.norm.weight"],
        consolidated_state_dict(find_checkpoint(checkpoints / "step_00000004"))["model.norm.weight"],
    )
    assert read_checkpoint_state(find_checkpoint(checkpoints / "step_00000004"))["smollm2"]["skipped_steps"] == 1


def optimizer_steps(checkpoint: Path, zero_stage: int) -> int:
    """How many updates AdamW has made, by the step count of every parameter (group) in the checkpoint."""
    if zero_stage == 0:
        state = read_checkpoint_state(find_checkpoint(checkpoint))["optimizer"]["state"]
    else:  # DeepSpeed's own file of rank 0's optimizer partition
        saved = torch.load(checkpoint / "zero_pp_rank_0_mp_rank_00_optim_states.pt", weights_only=False)
        state = saved["optimizer_state_dict"]["optimizer_state_dict"]["state"]
    (steps,) = {int(param["step"]) for param in state.values()}
    return steps


@pytest.mark.slow
def test_bad_steps_in_a_row_stop_the_run_with_its_checkpoints_good(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    result = faulty_train(
        run_dir,
        f"data.path={tiny_data}",
        "train.max_steps=20",
        "checkpoint.save_every=2",
        "eval.eval_every=0",
        "deepspeed.zero_stage=1",
        "stability.max_bad_steps=3",
        nan_steps="3,4,5,6",
    )
    assert result.returncode != 0 and "exitcode  : 3" in result.stderr, result.stderr[-3000:]  # torchrun's report
    newest = run_dir / "checkpoints" / "step_00000002"  # step 4's save waited for a healthy step, which never came
    assert (
        f"smollm2 train: stopped: steps 3-5: 3 steps in a row (stability.max_bad_steps) made no update "
        f"(non-finite loss or gradient norm); nothing was saved, the newest checkpoint is {newest}: lower "
        "optimizer.lr, check those steps' data, or raise stability.max_bad_steps"
    ) in result.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000002"]
    listing = subprocess.run(smollm2_cmd("checkpoints", run_dir), capture_output=True, text=True, check=True).stdout
    assert "step_00000002  step        2" in listing and "good  <- --resume auto continues from here" in listing
    weights = consolidated_state_dict(find_checkpoint(run_dir))
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


@pytest.mark.slow
def test_a_run_that_ends_on_a_step_without_update_saves_nothing_of_it(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    result = faulty_train(
        run_dir, f"data.path={tiny_data}", "train.max_steps=6", "checkpoint.save_every=2", "eval.eval_every=0",
        nan_steps="6",
    )  # fmt: skip
    assert result.returncode != 0 and "exitcode  : 3" in result.stderr, result.stderr[-3000:]
    newest = run_dir / "checkpoints" / "step_00000004"
    assert (
        "smollm2 train: stopped: step 6: the last 1 step(s) made no update (non-finite loss or gradient norm); "
        f"the run's end is not saved, the newest checkpoint is {newest}"
    ) in result.stderr
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000004"
    assert not (run_dir / "checkpoints" / "step_00000006").exists()


@pytest.mark.slow
def test_a_diverging_run_points_at_a_checkpoint_that_evaluates_finite(tiny_data, tmp_path):
    """optimizer.lr 1000 without clipping (issue 30): the loss goes non-finite, and no checkpoint is written from the
    first step that makes no update on. The stop names the newest checkpoint, from before it; that one evaluates
    finite, and --resume auto would continue from it."""
    run_dir = tmp_path / "run"
    result = faulty_train(
        run_dir,
        f"data.path={tiny_data}",
        "train.max_steps=60",
        "optimizer.lr=1000",
        "optimizer.grad_clip=0",
        "schedule.warmup_steps=20",
        "checkpoint.save_every=5",
        "checkpoint.keep_last=20",
        "eval.eval_every=0",
    )
    assert result.returncode != 0 and "exitcode  : 3" in result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    stop = re.search(
        r"stopped: steps (\d+)-\d+: 5 steps in a row .* the newest checkpoint is (\S+): lower", result.stderr
    )
    assert stop, result.stderr[-3000:]
    skipped = [int(step) for step in re.findall(r"^step (\d+): skipped, no update", result.stdout, re.MULTILINE)]
    saved = sorted(int(p.name.removeprefix("step_")) for p in (run_dir / "checkpoints").glob("step_*"))
    assert saved and all(step < skipped[0] for step in saved), (skipped, saved)  # none from the first bad step on
    newest = Path(stop.group(2))
    assert newest == run_dir / "checkpoints" / f"step_{saved[-1]:08d}"
    evaluation = subprocess.run(
        smollm2_cmd("eval", "--checkpoint", newest), capture_output=True, text=True, check=True
    ).stdout
    assert math.isfinite(float(re.search(r"val loss (\S+),", evaluation).group(1))), evaluation
    listing = subprocess.run(smollm2_cmd("checkpoints", run_dir), capture_output=True, text=True, check=True).stdout
    assert re.search(rf"^  {newest.name} .* good  <- --resume auto continues from here$", listing, re.MULTILINE)


@pytest.mark.slow
def test_a_loss_spike_rolls_back_and_goes_on_past_its_data(tiny_data, tmp_path):
    """A spike at step 8: back to step 5's checkpoint, then on from the 9th global batch of data. Each step
    is logged once; the run still ends at max_steps."""
    run_dir = tmp_path / "run"
    result = faulty_train(
        run_dir,
        f"data.path={tiny_data}",
        "train.max_steps=10",
        "checkpoint.save_every=5",
        "eval.eval_every=0",
        "stability.spike=rollback",
        "stability.spike_window=4",
        "stability.spike_sigmas=3",
        spike_steps="8",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 8: loss spike: " in result.stdout and "; rolling back" in result.stdout
    assert (
        f"rolled back to {run_dir / 'checkpoints' / 'step_00000005'} (step 5); the 24 samples after it" in result.stdout
    )
    train_rows = read_rows(run_dir, "loss")
    assert [row["step"] for row in train_rows] == list(range(1, 11))  # steps 6-8 of the spiked branch are gone
    batch = 8  # conftest.MINI's global batch
    assert [row["consumed_samples"] for row in train_rows] == [batch * s for s in range(1, 6)] + [
        batch * (s + 3) for s in range(6, 11)
    ]  # after the rollback, the data is 3 batches ahead of the step
    assert [row for row in read_rows(run_dir, "rollback_from_step")] == [
        {"step": 5, "rollback_from_step": 8, "skipped_samples": 24}
    ]
    assert all(math.isfinite(row["loss"]) and row["loss"] < 20 for row in train_rows)


def test_spike_detector():
    detector = SpikeDetector(window=4, sigmas=3.0)
    for loss in (5.0, 4.9, 4.8, 4.7):
        assert not detector.is_spike(100.0)  # nothing is a spike before the window is full
        detector.add(loss)
    assert detector.is_spike(5.3) and not detector.is_spike(5.0) and not detector.is_spike(float("nan"))
    flat = SpikeDetector(window=2, sigmas=3.0)
    flat.add(2.0)
    assert not flat.is_spike(1e9)  # the window is not full yet
    flat.add(2.0)
    assert flat.is_spike(2.1) and not flat.is_spike(2.005)  # a flat window: 0.1 % of the mean is the spread


def test_metrics_are_strict_json_with_nonfinite_values_flagged(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True, tensorboard=False)
    logger.log(1, {"loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-3})
    logger.log(2, {"loss": 2.5, "grad_norm": 1.0, "lr": 1e-3})
    logger.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(row, parse_constant=lambda name: pytest.fail(f"bare {name} in metrics.jsonl")) for row in lines]
    assert rows == [
        {"step": 1, "loss": None, "grad_norm": None, "lr": 1e-3, "nonfinite": ["loss", "grad_norm"]},
        {"step": 2, "loss": 2.5, "grad_norm": 1.0, "lr": 1e-3},
    ]


def test_sampling_survives_non_finite_logits():
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[nan] * 4, [1.0, inf, 2.0, nan], [-inf] * 4, [0.0, 1.0, 2.0, 3.0]])
    generator = torch.Generator().manual_seed(0)
    for temperature, top_k, top_p in ((0.0, None, None), (1.0, None, None), (0.7, 2, 0.9)):
        tokens = sample_next_token(logits, temperature, top_k, top_p, generator)
        assert tokens[:3].tolist() == [0, 1, 0]  # nothing possible: 0; +inf: certain
        assert 0 <= int(tokens[3]) < 4
