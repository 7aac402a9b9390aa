"""`smollm2 eval --watch` beside a real 2-rank training run: every checkpoint the trainer saves is evaluated once,
at its step, in TensorBoard (read back with TensorBoard's own reader) and in metrics-eval.jsonl, or skipped with a
note when it was pruned first; a restarted watcher goes on where the last one stopped, and the watcher's numbers at
the last step are the trainer's own in-loop eval's. And, without training: which checkpoint the watcher takes next
and what it reports skipped, and where it remembers its progress.
"""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import MINI, TINY_YAML, read_rows, smollm2_cmd, torchrun_cmd
from smollm2.cli import main

MAX_STEPS = 20
SAVE_EVERY = 2
TASK = "next_line"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the CI machine has 2 cores
# The trainer pauses in the save of step 4, before the checkpoint counts as complete (smollm2/faults.py), long
# enough for watcher A's first evaluation (its first one imports DeepSpeed, for zero_to_fp32): otherwise the
# whole run can be over before A has read one checkpoint.
TRAIN_ENV = {**ENV, "SMOLLM2_FAULT_SAVE_DELAY_S": "15", "SMOLLM2_FAULT_SAVE_DELAY_STEPS": "4"}


def start(cmd: list, log: Path, env: dict = ENV) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def finish(process: subprocess.Popen, log: Path, timeout: float = 150) -> str:
    """Wait for a process started by start(); its output, after checking that it exited 0."""
    try:
        process.wait(timeout=timeout)
    finally:
        process.kill()
    output = log.read_text()
    assert process.returncode == 0, output[-4000:]
    return output


def watched_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics-eval.jsonl").read_text().splitlines()]


def latest_step(run_dir: Path) -> int:
    latest = run_dir / "checkpoints" / "latest"
    return int(latest.read_text().removeprefix("step_")) if latest.is_file() else 0


def scalars(event_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(event_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def fake_checkpoint(run_dir: Path, step: int, complete: bool = True) -> None:
    """A checkpoint folder that smollm2.checkpoint can judge: our client state, and a manifest when complete."""
    import torch

    from smollm2.checkpoint import Checkpoint, checkpoint_tag, write_manifest

    checkpoint = Checkpoint(run_dir / "checkpoints", checkpoint_tag(step))
    checkpoint.path.mkdir(parents=True)
    torch.save({"smollm2": {"step": step}}, checkpoint.path / "mp_rank_00_model_states.pt")
    if complete:
        write_manifest(checkpoint, step)
        (checkpoint.root / "latest").write_text(checkpoint.tag)


def test_next_checkpoint_takes_the_oldest_complete_one_and_names_what_it_skips(tmp_path):
    from smollm2.eval_watch import next_checkpoint

    seen: set[int] = set()
    assert next_checkpoint(tmp_path, 0, seen, 2) == (None, [])  # nothing saved yet
    for step in (5, 6, 8, 10):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 12, complete=False)  # a save in progress: newer than `latest`
    checkpoint, skipped = next_checkpoint(tmp_path, 0, seen, 2)
    assert checkpoint.tag == "step_00000005" and seen == {5, 6, 8, 10, 12}
    assert skipped == [(2, "pruned before being evaluated"), (4, "pruned before being evaluated")]  # save_every 2
    # Step 5 evaluated; 6 pruned since it was seen, 8 corrupted on disk: 10 is next.
    shutil.rmtree(tmp_path / "checkpoints" / "step_00000006")
    with (tmp_path / "checkpoints" / "step_00000008" / "mp_rank_00_model_states.pt").open("ab") as f:
        f.write(b"x")
    checkpoint, skipped = next_checkpoint(tmp_path, 5, seen, 0)
    assert checkpoint.tag == "step_00000010"
    assert [step for step, _ in skipped] == [6, 8] and skipped[0][1] == "pruned before being evaluated"
    assert re.fullmatch(r"mp_rank_00_model_states.pt has \d+ bytes, its manifest says \d+", skipped[1][1])
    # After the newest complete one: nothing to do until the save in progress completes.
    assert next_checkpoint(tmp_path, 10, seen, 2) == (None, [])


def test_the_watcher_remembers_its_last_step_in_the_run_directory(tmp_path):
    from smollm2.errors import UserError
    from smollm2.eval_watch import WATCH_METRICS, last_watched_step

    assert last_watched_step(tmp_path) == 0
    (tmp_path / WATCH_METRICS).write_text('{"step": 4, "eval_loss": 6.0}\n{"step": 8, "eval_loss": 5.0}\n')
    assert last_watched_step(tmp_path) == 8
    (tmp_path / WATCH_METRICS).write_text('{"step": 4}\n{"loss": 5.0}\n')
    with pytest.raises(UserError, match=r"metrics-eval.jsonl, line 2: not a metrics row"):
        last_watched_step(tmp_path)


@pytest.mark.slow
def test_watch_evaluates_each_checkpoint_once_at_its_step_beside_training(tmp_path, tiny_data):
    task_file = tmp_path / f"{TASK}.jsonl"
    assert main(["tasks", "build", "--data", str(tiny_data), "--out", str(task_file), "--num-examples", "16",
                 "--context-chars", "100"]) == 0  # fmt: skip
    run_dir = tmp_path / "run"
    settings = [
        *MINI,
        "model.block_size=64",  # the task's longest choice is 36 tokens of the 512-token vocabulary
        f"data.path={tiny_data}",
        f"train.out_dir={run_dir}",
        f"train.max_steps={MAX_STEPS}",
        f"checkpoint.save_every={SAVE_EVERY}",
        "checkpoint.keep_last=2",  # a checkpoint lives for two saves: the watcher misses some
        "eval.eval_every=0",  # the in-loop eval runs at the last step only
        f"eval.tasks=[{task_file}]",
    ]
    watch = ["eval", "--watch", run_dir, "--poll", "0.2", "--timeout", "120"]
    # Watcher A starts first (it waits for the run's config.yaml) and stops after two checkpoints.
    first = start(smollm2_cmd(*watch, "--max-checkpoints", "2"), tmp_path / "watch-a.log")
    training = start(
        torchrun_cmd(2, "train", "--config", TINY_YAML, "--set", *settings),
        tmp_path / "train.log",
        TRAIN_ENV,
    )  # fmt: skip
    try:
        first_output = finish(first, tmp_path / "watch-a.log")
        evaluated_by_first = [row["step"] for row in watched_rows(run_dir)]
        assert len(evaluated_by_first) == 2 and "stopping after 2 checkpoint(s)" in first_output
        # Watcher B starts once the checkpoint after A's last is certainly pruned (two newer ones are saved).
        gap = evaluated_by_first[-1] + 3 * SAVE_EVERY
        assert gap <= MAX_STEPS, f"watcher A fell behind: {evaluated_by_first}"
        while latest_step(run_dir) < gap and training.poll() is None:
            time.sleep(0.1)
        second_output = finish(start(smollm2_cmd(*watch), tmp_path / "watch-b.log"), tmp_path / "watch-b.log")
        train_output = finish(training, tmp_path / "train.log")
    finally:
        for process in (first, training):
            process.kill()

    saved = [int(step) for step in re.findall(r"saved checkpoint .*step_(\d+)", train_output)]
    assert saved == list(range(SAVE_EVERY, MAX_STEPS + 1, SAVE_EVERY))
    rows = watched_rows(run_dir)
    evaluated = [row["step"] for row in rows]
    # Each step once, in order, B after A; the last step among them; B said it was done.
    assert evaluated == sorted(set(evaluated)) and evaluated[:2] == evaluated_by_first
    assert (
        evaluated[-1] == MAX_STEPS and "done: the run's last step (20, train.max_steps) is evaluated" in second_output
    )
    # Every saved checkpoint was evaluated or skipped with a note; the one after A's last was pruned under B.
    notes = {
        int(step): why
        for steps, why in re.findall(r"eval --watch: skipped steps? ([\d, ]+): (.*)", first_output + second_output)
        for step in steps.split(", ")
    }
    assert notes[evaluated_by_first[-1] + SAVE_EVERY] == "pruned before being evaluated"
    assert sorted([*evaluated, *notes]) == saved
    assert all(why.startswith("pruned") for why in notes.values())

    # TensorBoard: the watcher's own run beside the trainer's, one point per evaluated step for every tag.
    watched = scalars(run_dir / "tensorboard" / "eval-watch")
    assert set(watched) == {"eval/loss", "eval/ppl", f"eval/{TASK}/acc", f"eval/{TASK}/acc_norm"}
    for tag, key in [("eval/loss", "eval_loss"), (f"eval/{TASK}/acc", f"eval/{TASK}/acc")]:
        assert [step for step, _ in watched[tag]] == evaluated
        assert [value for _, value in watched[tag]] == pytest.approx([row[key] for row in rows], rel=1e-6)
    samples = [json.loads(line) for line in (run_dir / "samples-eval.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [step for step in evaluated for _ in range(3)]  # three prompts each
    # The trainer's own TensorBoard and metrics.jsonl hold its in-loop eval only, at the last step, and the
    # watcher's numbers there are the same: the consolidated weights of the checkpoint, scored the same way.
    trained = scalars(run_dir / "tensorboard")
    assert [step for step, _ in trained[f"eval/{TASK}/acc"]] == [MAX_STEPS]
    (in_loop,) = read_rows(run_dir, "eval_loss")
    assert in_loop["step"] == MAX_STEPS
    assert rows[-1]["eval_loss"] == pytest.approx(in_loop["eval_loss"], rel=1e-5)
    for metric in ("acc", "acc_norm"):
        assert rows[-1][f"eval/{TASK}/{metric}"] == in_loop[f"eval/{TASK}/{metric}"]
