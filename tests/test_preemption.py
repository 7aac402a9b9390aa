"""Graceful stop on SIGUSR1 / SIGTERM: the ranks agree on a step, checkpoint it, exit 0, and a rerun resumes.

End to end, `smollm2 train` on 2 processes under torchrun (conftest's tiny model): SIGUSR1 to
one rank only (the other learns of it through the per-step all_reduce), then a rerun that resumes;
SIGTERM to every process of both ranks, DataLoader workers included, as SLURM signals a job step.
Unit level: the handler (notes, never re-enters, restores), the DataLoader workers, which must
outlive the stop signals, and fit stopping those workers itself when training fails.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch

import smollm2.trainer
from conftest import MINI, ROOT, TINY_YAML, free_port, read_rows, run_train, torchrun_cmd
from smollm2.signals import StopSignals, ignore_stop_signals
from smollm2.trainer import Trainer

MAX_STEPS = 1_000_000  # never reached: only the signal ends the first job


def start_train(log_dir, *settings: str, script: bool = False, **environ: str) -> subprocess.Popen:
    """`smollm2 train` on 2 processes under torchrun, output to files, in a session of its own; through
    launch/torchrun.sh with `script` (its process is then torchrun's); `environ` added to its environment."""
    port = str(free_port())
    args = ["--config", str(TINY_YAML), "--set", *MINI, *settings]
    if script:
        cmd = ["bash", str(ROOT / "launch" / "torchrun.sh"), *args[1:]]
        env = {
            **os.environ,
            "NPROC": "2",
            "MASTER_PORT": port,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
    else:
        cmd = torchrun_cmd(2, "train", *args, port=port)
        env = os.environ.copy()
    env.update(OMP_NUM_THREADS="1", **environ)
    with open(log_dir / "stdout", "w") as out, open(log_dir / "stderr", "w") as err:
        return subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True)


def wait_for_steps(run_dir, job: subprocess.Popen, steps: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.poll() is None:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and sum('"loss"' in line for line in metrics.read_text().splitlines()) >= steps:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {steps} logged steps after {timeout} s (exit status {job.poll()})")


def stop_with_signals(tmp_path, job: subprocess.Popen, run_dir, after_steps: int, send) -> tuple[int, str, str]:
    """Once `after_steps` steps are logged, call send(); the job's exit status, stdout and stderr.

    Whatever happens, no process of the job is left running: torchrun starts each rank in a session of its
    own, which outlives torchrun if torchrun dies first."""
    ranks: list[psutil.Process] = []
    try:
        wait_for_steps(run_dir, job, after_steps)
        ranks = psutil.Process(job.pid).children(recursive=True)
        send()
        status = job.wait(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        for process in ranks:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    return status, (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()


def rank_process(job: subprocess.Popen, rank: int) -> psutil.Process:
    """The torchrun worker with RANK=rank."""
    for child in psutil.Process(job.pid).children():
        if child.environ().get("RANK") == str(rank):
            return child
    raise AssertionError(f"torchrun has no worker with RANK={rank}")


@pytest.mark.slow
def test_one_rank_signalled_stops_every_rank_on_a_checkpoint_and_a_rerun_resumes(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    settings = [
        f"data.path={tiny_data}",
        f"train.out_dir={run_dir}",
        f"train.max_steps={MAX_STEPS}",
        "checkpoint.save_every=0",
        "eval.eval_every=0",
    ]
    job = start_train(tmp_path, *settings)
    # Rank 1 only: rank 0 learns of it from the all_reduce.
    status, stdout, stderr = stop_with_signals(
        tmp_path, job, run_dir, 3, lambda: rank_process(job, 1).send_signal(signal.SIGUSR1)
    )
    assert status == 0, stdout[-3000:] + stderr[-6000:]
    stopped = re.search(
        r"^stopped at step (\d+) on SIGUSR1, checkpoint saved: run the same `smollm2 train` command "
        r"to resume from it \(--resume auto, the default\)$",
        stdout,
        re.MULTILINE,
    )
    assert stopped, stdout[-3000:]
    step = int(stopped.group(1))
    assert 3 <= step < MAX_STEPS
    checkpoints = run_dir / "checkpoints"
    tag = f"step_{step:08d}"
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == [tag]
    assert (checkpoints / "latest").read_text() == tag
    # Each rank names the folder after its own step count: both shards there, both ranks stopped at `step`.
    assert {p.name for p in (checkpoints / tag).glob("zero_pp_rank_*_optim_states.pt")} == {
        f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)
    }
    assert [row["step"] for row in read_rows(run_dir, "loss")] == list(range(1, step + 1))

    resumed = run_train(2, *settings, f"train.stop_at={step + 2}")
    header = next(line for line in resumed.stdout.splitlines() if line.startswith(("starting", "resuming")))
    assert header.startswith(f"resuming from {checkpoints / tag} at step {step}:")
    assert f"done: step {step + 2};" in resumed.stdout
    assert (checkpoints / "latest").read_text() == f"step_{step + 2:08d}"
    assert [row["step"] for row in read_rows(run_dir, "loss")] == list(range(1, step + 3))


@pytest.mark.slow
def test_sigterm_to_every_process_of_the_ranks_stops_on_a_checkpoint(tiny_data, tmp_path):
    """As srun delivers scancel's or a preemption's SIGTERM: to each rank and its DataLoader workers."""
    run_dir = tmp_path / "run"
    job = start_train(
        tmp_path,
        f"data.path={tiny_data}",
        f"train.out_dir={run_dir}",
        f"train.max_steps={MAX_STEPS}",
        "checkpoint.save_every=0",
        "eval.eval_every=0",
    )

    def sigterm_every_process():
        ranks = [rank_process(job, rank) for rank in (0, 1)]
        processes = [process for rank in ranks for process in (rank, *rank.children(recursive=True))]
        assert len(processes) >= 4  # each rank has a DataLoader worker (data.num_workers=1)
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):  # a short-lived helper process may be gone
                process.send_signal(signal.SIGTERM)

    status, stdout, stderr = stop_with_signals(tmp_path, job, run_dir, 2, sigterm_every_process)
    assert status == 0, stdout[-3000:] + stderr[-6000:]
    step = int(re.search(r"^stopped at step (\d+) on SIGTERM, checkpoint saved", stdout, re.MULTILINE).group(1))
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step_{step:08d}"


@pytest.mark.slow
def test_usr1_to_torchrun_of_the_launch_script_reaches_the_ranks(tiny_data, tmp_path):
    """As SLURM's --signal=USR1@300 reaches a job step that runs launch/torchrun.sh: torchrun only. Without
    --signals-to-handle, USR1 killed torchrun and the ranks saved nothing."""
    run_dir = tmp_path / "run"
    job = start_train(
        tmp_path,
        f"data.path={tiny_data}",
        f"train.out_dir={run_dir}",
        f"train.max_steps={MAX_STEPS}",
        "checkpoint.save_every=0",
        "eval.eval_every=0",
        script=True,
    )
    _, stdout, stderr = stop_with_signals(tmp_path, job, run_dir, 2, lambda: job.send_signal(signal.SIGUSR1))
    # torchrun itself then exits 1 (it re-raises the signal as an error once the ranks have ended).
    stopped = re.search(r"^stopped at step (\d+) on SIGUSR1, checkpoint saved", stdout, re.MULTILINE)
    assert stopped, stdout[-3000:] + stderr[-6000:]
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step_{int(stopped.group(1)):08d}"


def test_stop_signals_are_noted_and_the_previous_handlers_come_back():
    def previous(signum, frame):
        raise AssertionError("the previous handler ran inside StopSignals")

    saved = [signal.signal(sig, previous) for sig in (signal.SIGTERM, signal.SIGUSR1)]
    try:
        with StopSignals() as signals:
            assert signals.received == 0
            os.kill(os.getpid(), signal.SIGUSR1)
            assert signals.received == signal.SIGUSR1
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal (while saving, say) is noted, nothing more
            assert signals.received == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is previous and signal.getsignal(signal.SIGUSR1) is previous
    finally:
        for sig, handler in zip((signal.SIGTERM, signal.SIGUSR1), saved):
            signal.signal(sig, handler)


def test_stop_signals_outside_the_main_thread_leave_the_handlers_alone():
    before = signal.getsignal(signal.SIGUSR1)
    during = []

    def fit_in_a_thread():
        with StopSignals():
            during.append(signal.getsignal(signal.SIGUSR1))

    thread = threading.Thread(target=fit_in_a_thread)
    thread.start()
    thread.join()
    assert during == [before]


class Counting(torch.utils.data.Dataset):
    def __len__(self):
        return 1_000_000

    def __getitem__(self, index):
        time.sleep(0.002)
        return index


def test_fit_stops_its_dataloader_workers_when_training_fails(monkeypatch):
    """They ignore SIGTERM, with which Python's exit ends them: unless fit does, a failed job hangs at exit."""
    monkeypatch.setattr(smollm2.trainer, "format_start", lambda trainer, stop: "")

    class FailingTrainer:  # what Trainer.fit uses of its trainer
        config = SimpleNamespace(
            train=SimpleNamespace(stop_at=None, max_steps=10), eval=SimpleNamespace(at_start=False)
        )
        data = SimpleNamespace(mixture=SimpleNamespace(summary_lines=lambda max_steps: []))
        watchdog = contextlib.nullcontext()

        def _print(self, text):
            pass

        def batches(self, worker_init_fn):
            self.iterator = iter(
                torch.utils.data.DataLoader(Counting(), batch_size=4, num_workers=1, worker_init_fn=worker_init_fn)
            )
            return self.iterator

        def _train_until(self, stop, batches, signals):
            next(batches)
            raise ValueError("a failed step")

    trainer = FailingTrainer()
    try:
        with pytest.raises(ValueError, match="a failed step"):
            Trainer.fit(trainer, StopSignals())
        assert not trainer.iterator._workers[0].is_alive()
    finally:
        trainer.iterator._shutdown_workers()  # else this test's own exit would hang on a failure


@pytest.mark.slow
def test_a_stop_during_a_background_save_ends_with_that_save_complete(tiny_data, tmp_path):
    """The save of step 3 is held 10 s in its writer thread (after the files, before it reports them written) while
    the loop trains on; a SIGUSR1 then stops the job at a later step, which waits for step 3 and saves its own."""
    run_dir = tmp_path / "run"
    step3 = run_dir / "checkpoints" / "step_00000003"
    job = start_train(
        tmp_path, f"data.path={tiny_data}", f"train.out_dir={run_dir}", f"train.max_steps={MAX_STEPS}",
        "checkpoint.save_every=3", "checkpoint.keep_last=5", "eval.eval_every=0",
        SMOLLM2_FAULT_SAVE_DELAY_S="10", SMOLLM2_FAULT_SAVE_DELAY_STEPS="3",
    )  # fmt: skip

    def stop_while_step_3_is_written() -> None:
        assert (step3 / "mp_rank_00_model_states.pt").is_file() and not (step3 / "manifest.json").exists()
        rank_process(job, 1).send_signal(signal.SIGUSR1)

    status, stdout, stderr = stop_with_signals(tmp_path, job, run_dir, 5, stop_while_step_3_is_written)
    assert status == 0, stdout[-3000:] + stderr[-6000:]
    stopped = int(re.search(r"^stopped at step (\d+) on SIGUSR1, checkpoint saved", stdout, re.MULTILINE).group(1))
    assert stopped >= 5  # the loop went on while step 3 was being written
    for step in (3, stopped):
        assert (run_dir / "checkpoints" / f"step_{step:08d}" / "manifest.json").is_file(), step
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step_{stopped:08d}"
    assert stdout.index(f"saved checkpoint {step3}") < stdout.index(f"stopped at step {stopped}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_dataloader_workers_outlive_the_stop_signals(sig):
    """SLURM signals every process of the step; torch's SIGTERM handler would end the worker, failing the step."""
    batches = iter(
        torch.utils.data.DataLoader(Counting(), batch_size=4, num_workers=1, worker_init_fn=ignore_stop_signals)
    )
    try:
        next(batches)
        # From another process, as SLURM sends it: torch's worker exits quietly on its parent's SIGTERM.
        kill = f"import os; os.kill({batches._workers[0].pid}, {int(sig)})"
        subprocess.run([sys.executable, "-c", kill], check=True)
        time.sleep(0.5)
        assert [next(batches).tolist() for _ in range(50)][-1] == [200, 201, 202, 203]
    finally:
        batches._shutdown_workers()
