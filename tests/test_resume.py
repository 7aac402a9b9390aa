"""Exact resume: N steps straight and N/2 + resume N/2 log bit-identical losses (2 processes, accumulation 2).

ZeRO 1 goes through `train.stop_at` and `--resume auto` in the same run directory; ZeRO 2 and 3 resume
(`--resume PATH`) from the mid-run checkpoint of the straight run into a new directory. The same
checkpoints resumed on another number of ranks (1, 3) or another ZeRO stage go through DeepSpeed's
universal format and match to float tolerance.
"""

import os
import shutil
import subprocess

import pytest

from conftest import MINI, SHARD_ALL, TINY_YAML, free_port, read_rows, run_train, smollm2_cmd

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
@pytest.mark.parametrize(
    "saved_stage, resumed_stage, nproc",
    [(2, 2, 1), (3, 1, 1), (2, 3, 2)],
    ids=["zero2-2to1-ranks", "zero3to1-2to1-ranks", "zero2to3-2-ranks"],
)
def test_resume_on_another_world_size_or_zero_stage(
    tiny_data, tmp_path, straight_run, saved_stage, resumed_stage, nproc
):
    """The checkpoint is converted to DeepSpeed's universal format once and training goes on as if nothing
    changed: same steps, LR and (up to the order of the sums over ranks) the same losses."""
    checkpoint = straight_run(saved_stage) / "checkpoints" / f"step_{STEPS // 2:08d}"
    resumed = tmp_path / "resumed"
    result = run_train(
        nproc,
        f"data.path={tiny_data}",
        f"train.out_dir={resumed}",
        f"train.max_steps={STEPS}",
        "eval.eval_every=0",
        *stage_settings(resumed_stage),
        resume=str(checkpoint),
    )
    # The first of these tests on a checkpoint converts it; the others reuse the conversion.
    assert f"converting {checkpoint} to DeepSpeed's universal format" in result.stdout or (
        f"resharding from {checkpoint / 'universal'}" in result.stdout
    )
    assert (checkpoint / "universal" / "reshard.json").is_file()
    assert not (checkpoint / "universal.partial").exists() and not (checkpoint / "latest_universal").exists()
    # The converted weights are the checkpoint's fp32 master weights, tensor for tensor.
    import torch

    from smollm2.checkpoint import Checkpoint
    from smollm2.weights import consolidated_state_dict

    saved = consolidated_state_dict(Checkpoint(checkpoint.parent, checkpoint.name))
    for name, tensor in saved.items():
        if name == "lm_head.weight":
            continue  # tied: the embedding's tensor under a second name (converted as that)
        converted = torch.load(checkpoint / "universal" / "zero" / name / "fp32.pt", weights_only=False)
        converted = converted["param"] if isinstance(converted, dict) else converted
        assert torch.equal(converted.view(tensor.shape), tensor), name
    want = losses(straight_run(saved_stage))[STEPS // 2 :]
    got = losses(resumed)
    assert [(step, lr) for step, _, lr, _ in got] == [(step, lr) for step, _, lr, _ in want]
    for (step, loss, _, grad_norm), (_, want_loss, _, want_norm) in zip(got, want):
        # A wrong AdamW moment, step count or weight decay moves these by 1e-3 or more within 4 steps.
        assert loss == pytest.approx(want_loss, rel=1e-5, abs=1e-5), step
        assert grad_norm == pytest.approx(want_norm, rel=1e-4), step


@pytest.mark.slow
def test_resume_on_more_ranks_than_wrote_it(tiny_data, tmp_path):
    """ZeRO 2 on 2 ranks, resumed on 3 (a global batch of 12: accumulation 3, then 2)."""
    common = [f"data.path={tiny_data}", f"train.max_steps={STEPS}", "eval.eval_every=0", "deepspeed.zero_stage=2",
              "train.global_batch_size=12"]  # fmt: skip
    straight = tmp_path / "straight"
    run_train(2, *common, f"train.out_dir={straight}", f"checkpoint.save_every={STEPS // 2}")
    resumed = tmp_path / "resumed"
    result = run_train(3, *common, f"train.out_dir={resumed}",
                       resume=str(straight / "checkpoints" / f"step_{STEPS // 2:08d}"))  # fmt: skip
    assert "3 rank(s)" in result.stdout and "universal format" in result.stdout, result.stdout[-2000:]
    got, want = losses(resumed), losses(straight)[STEPS // 2 :]
    assert [(step, lr) for step, _, lr, _ in got] == [(step, lr) for step, _, lr, _ in want]
    assert [loss for _, loss, _, _ in got] == pytest.approx([loss for _, loss, _, _ in want], rel=1e-5, abs=1e-5)


@pytest.mark.slow
def test_zero_checkpoint_refuses_zero_off(tiny_data, straight_run):
    from smollm2.checkpoint import check_resumable, find_checkpoint
    from smollm2.config import load_config
    from smollm2.errors import UserError

    checkpoint = find_checkpoint(straight_run(2))
    config = load_config(TINY_YAML, [*MINI, f"data.path={tiny_data}", "train.out_dir=x", "deepspeed.zero_stage=0"])
    with pytest.raises(UserError, match="^deepspeed.zero_stage: the config says 0 but checkpoint .* stage 2; stages"):
        check_resumable(checkpoint, config.model.architecture(), 0)


@pytest.mark.slow
def test_ranks_that_see_different_checkpoints_refuse_to_resume(tiny_data, tmp_path, straight_run):
    """A node-local train.out_dir, or a shared file system whose caches lag behind the newest save: each rank
    picks the newest checkpoint it sees before the process group exists. Here rank 0's folder holds step 4 and
    rank 1's nothing (two processes started by hand, one command line each but for the folder): both stop in
    one line, exit 2, instead of training one model from two states."""
    seen = tmp_path / "seen"
    shutil.copytree(straight_run(1), seen)
    shutil.rmtree(seen / "checkpoints" / f"step_{STEPS:08d}")
    (seen / "checkpoints" / "latest").write_text(f"step_{STEPS // 2:08d}")
    port = str(free_port())
    ranks = []
    for rank, out_dir in enumerate([seen, tmp_path / "empty"]):
        launcher = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
        args = ["train", "--config", TINY_YAML, "--set", *MINI, f"data.path={tiny_data}", f"train.out_dir={out_dir}",
                f"train.max_steps={STEPS}", "deepspeed.zero_stage=1", "eval.eval_every=0"]  # fmt: skip
        env = {**os.environ, **launcher, "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}
        ranks.append(
            subprocess.Popen(smollm2_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    try:
        # Without the check the two ranks hung (past 300 s when tried): one resumed at step 4, one began at 0.
        outputs = [process.communicate(timeout=120) for process in ranks]
    finally:
        for process in ranks:
            process.kill()
    for process, (out, err) in zip(ranks, outputs):
        assert process.returncode == 2, (out + err)[-3000:]
        assert "the ranks would resume from different checkpoints (rank 0: step_00000004, rank 1: none)" in err, err
    assert not (tmp_path / "empty" / "checkpoints").exists()
