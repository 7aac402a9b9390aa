"""Exact resume: N steps straight and N/2 + resume N/2 log bit-identical losses (2 processes, accumulation 2).

ZeRO 1 goes through `train.stop_at` and `--resume auto` in the same run directory; ZeRO 2 and 3 resume
(`--resume PATH`) from the mid-run checkpoint of the straight run into a new directory.
"""

import pytest

from conftest import MINI, SHARD_ALL, TINY_YAML, read_rows, run_train

STEPS = 8


def stage_settings(zero_stage: int) -> list[str]:
    return [f"deepspeed.zero_stage={zero_stage}", *([SHARD_ALL] if zero_stage == 3 else [])]


def losses(run_dir):
    return [(row["step"], row["loss"], row["lr"], row["grad_norm"]) for row in read_rows(run_dir, "loss")]


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory):
    """N steps in one job, checkpointing at N/2, once per ZeRO stage: stage -> run directory."""
    runs = {}

    def run(zero_stage: int):
        if zero_stage not in runs:
            run_dir = tmp_path_factory.mktemp(f"straight{zero_stage}") / "run"
            run_train(
                2,
                f"data.path={tiny_data}",
                f"train.out_dir={run_dir}",
                f"train.max_steps={STEPS}",
                f"checkpoint.save_every={STEPS // 2}",
                "eval.eval_every=0",
                *stage_settings(zero_stage),
            )
            runs[zero_stage] = run_dir
        return runs[zero_stage]

    return run


@pytest.mark.slow
def test_zero1_stop_and_resume_auto(tiny_data, tmp_path, straight_run):
    split = tmp_path / "split"
    common = [
        f"data.path={tiny_data}",
        f"train.out_dir={split}",
        f"train.max_steps={STEPS}",
        "deepspeed.zero_stage=1",
        "eval.eval_every=0",
    ]
    first = run_train(2, *common, f"train.stop_at={STEPS // 2}")
    assert (split / "checkpoints" / "latest").read_text() == f"step_{STEPS // 2:08d}"
    assert "eval step 4:" in first.stdout  # the end of a job evaluates too
    second = run_train(2, *common)
    assert f"resuming from {split / 'checkpoints' / 'step_00000004'} at step 4" in second.stdout
    assert losses(split) == losses(straight_run(1))
    assert [r["step"] for r in read_rows(split, "eval_loss")] == [4, 8]


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_resume_from_a_mid_run_checkpoint(tiny_data, tmp_path, straight_run, zero_stage):
    straight = straight_run(zero_stage)
    resumed = tmp_path / "resumed"
    run_train(
        2,
        f"data.path={tiny_data}",
        f"train.out_dir={resumed}",
        f"train.max_steps={STEPS}",
        "eval.eval_every=0",
        *stage_settings(zero_stage),
        resume=str(straight / "checkpoints" / f"step_{STEPS // 2:08d}"),
    )
    assert losses(resumed) == losses(straight)[STEPS // 2 :]


@pytest.mark.slow
def test_zero_checkpoint_refuses_another_world_size_or_stage(tiny_data, straight_run):
    from smollm2.checkpoint import check_resumable, find_checkpoint
    from smollm2.config import load_config
    from smollm2.errors import UserError

    checkpoint = find_checkpoint(straight_run(2))
    config = load_config(TINY_YAML, [*MINI, f"data.path={tiny_data}", "train.out_dir=x", "deepspeed.zero_stage=2"])
    with pytest.raises(UserError, match="written by 2 ranks with ZeRO stage 2, cannot resume on 1"):
        check_resumable(checkpoint, config.model.architecture(), 2, world_size=1)
    with pytest.raises(UserError, match="^deepspeed.zero_stage: the config says 1 but checkpoint .* stage 2$"):
        check_resumable(checkpoint, config.model.architecture(), 1, world_size=2)
