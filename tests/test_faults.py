"""Faults that end a job from outside, end to end on 2 CPU processes under torchrun: a rank killed with -9 in the
middle of a step, the whole job killed with -9 in the middle of a checkpoint save, a rank that stops answering
(SIGSTOP). After a kill, the same command resumes and trains exactly as an uninterrupted run; a stalled rank
ends the job within the collective timeout, with a line naming it.
"""

import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import MINI, TINY_YAML, read_rows, run_train, torchrun_cmd

STEPS = 8
# ZeRO 1: the optimizer state is sharded, so both ranks' files matter to a resume.
SETTINGS = [f"train.max_steps={STEPS}", "checkpoint.save_every=2", "eval.eval_every=0", "deepspeed.zero_stage=1"]


def start(run_dir: Path, data: Path, *settings: str, **env: str) -> subprocess.Popen:
    """`smollm2 train` on 2 processes under torchrun in a session of its own, output to files."""
    run_settings = [*MINI, f"data.path={data}", f"train.out_dir={run_dir}", *SETTINGS, *settings]
    cmd = torchrun_cmd(2, "train", "--config", TINY_YAML, "--set", *run_settings)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    out = open(run_dir.parent / f"{run_dir.name}.log", "w")
    return subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )


def ranks(job: subprocess.Popen) -> list[psutil.Process]:
    """The job's training processes, rank 0 first (torchrun starts them in rank order). A process that exits
    while it is looked at (a DataLoader worker, a compile subprocess) is left out, not an error."""

    def training(process: psutil.Process) -> bool:
        try:
            return "smollm2" in " ".join(process.cmdline())
        except psutil.NoSuchProcess:  # psutil's ZombieProcess is one too
            return False

    children = [p for p in psutil.Process(job.pid).children(recursive=True) if training(p)]
    return sorted(children, key=lambda p: p.create_time())


def wait_until(condition, job: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert job.poll() is None, f"the job ended early with status {job.returncode}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def ended(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # ended, not yet reaped by torchrun
    except psutil.NoSuchProcess:  # psutil's ZombieProcess is one too
        return True


def stopped(process: psutil.Process) -> bool:
    """Whether the process is stopped (SIGSTOP); one that has exited is not."""
    try:
        return process.status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


def kill_job(job: subprocess.Popen) -> None:
    """SIGKILL to every process of the job: its session, and the ranks torchrun put in sessions of their own."""
    try:
        launcher = psutil.Process(job.pid)
        processes = [launcher, *launcher.children(recursive=True)]
    except psutil.NoSuchProcess:  # torchrun has ended, and ended its ranks with it
        processes = []
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    job.wait(timeout=60)


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(row["step"], row["loss"]) for row in read_rows(run_dir, "loss")]


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_train(2, f"data.path={tiny_data}", f"train.out_dir={run_dir}", *SETTINGS)
    return run_dir


@pytest.mark.slow
def test_kill_9_of_one_rank_mid_step_then_the_same_command_resumes(tiny_data, tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    # The save of step 6 is held 30 s, so the run cannot have finished when rank 1 dies: on an idle machine
    # the last steps of this tiny run otherwise went by before the kill, and the job ended complete.
    job = start(run_dir, tiny_data, SMOLLM2_FAULT_SAVE_DELAY_S="30", SMOLLM2_FAULT_SAVE_DELAY_STEPS="6")
    try:
        wait_until(lambda: (run_dir / "metrics.jsonl").exists() and len(read_rows(run_dir, "loss")) >= 5, job)
        ranks(job)[1].kill()
        assert job.wait(timeout=120) != 0  # torchrun notices, ends rank 0 and fails
    finally:
        kill_job(job)
    resumed = run_train(2, f"data.path={tiny_data}", f"train.out_dir={run_dir}", *SETTINGS)
    assert "resuming from" in resumed.stdout
    assert losses(run_dir) == losses(uninterrupted)


@pytest.mark.slow
def test_kill_9_of_the_job_in_the_middle_of_a_save_then_the_same_command_resumes(tiny_data, tmp_path, uninterrupted):
    """The save of step 4 is held open in its background writer after its files are written; the job dies there.
    The half-made step 4 is reported and skipped, the same command takes the dead job's run directory over,
    resumes from step 2 and ends as if nothing had happened."""
    run_dir = tmp_path / "run"
    step4 = run_dir / "checkpoints" / "step_00000004"
    job = start(run_dir, tiny_data, SMOLLM2_FAULT_SAVE_DELAY_S="120", SMOLLM2_FAULT_SAVE_DELAY_STEPS="4")
    try:
        wait_until(lambda: (step4 / "mp_rank_00_model_states.pt").exists(), job)
        time.sleep(2)  # every rank is in the delay, after its own files
        kill_job(job)
    finally:
        kill_job(job)
    assert not (step4 / "manifest.json").exists()
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000002"
    resumed = run_train(2, f"data.path={tiny_data}", f"train.out_dir={run_dir}", *SETTINGS)
    # The killed job's claim on the run directory is taken over at once: its process is gone (smollm2.run_dir).
    assert "taking over train.out_dir from a job that is gone: " in resumed.stdout
    assert "(the process no longer exists)" in resumed.stdout
    assert f"skipping checkpoint {step4}: newer than latest (step 2): its save did not finish" in resumed.stdout
    assert f"resuming from {run_dir / 'checkpoints' / 'step_00000002'} at step 2" in resumed.stdout
    assert losses(run_dir) == losses(uninterrupted)
    # Step 4 was written again, whole, and is pruned by now (keep_last 2): what remains is complete.
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000006", "step_00000008"]
    assert all((p / "manifest.json").is_file() for p in (run_dir / "checkpoints").glob("step_*"))


@pytest.mark.slow
def test_a_rank_that_stops_answering_ends_the_job_within_the_timeout(tiny_data, tmp_path):
    """Rank 1 freezes (SIGSTOP) at the start of step 4. DeepSpeed's shared-memory all-reduce on CPU waits for it
    without a timeout: rank 0's stall watchdog ends rank 0 (exit 3) within the timeout, naming rank 1."""
    timeout = 15
    run_dir = tmp_path / "run"
    job = start(
        run_dir,
        tiny_data,
        "train.max_steps=100000",
        f"train.collective_timeout_s={timeout}",
        "checkpoint.save_every=0",
        SMOLLM2_FAULT_STALL_STEP="4",
        SMOLLM2_FAULT_STALL_RANK="1",
    )
    try:
        wait_until(lambda: len(training := ranks(job)) >= 2 and stopped(training[1]), job)
        stopped_at = time.monotonic()
        rank0 = ranks(job)[0]
        wait_until(lambda: ended(rank0), job, timeout + 60)
        elapsed = time.monotonic() - stopped_at
    finally:
        kill_job(job)
    log = (tmp_path / "run.log").read_text()
    assert elapsed < timeout + 15, (elapsed, log[-3000:])
    assert "smollm2 train: stopped: a collective failed at step 4" in log, log[-3000:]
    assert "rank 1 is behind: it finished step 3, " in log and "this rank (0) stops too" in log, log[-3000:]
