"""One job per run directory (smollm2.run_dir): a second job refused, a dead owner's claim taken over.

The owners are real processes (a few lines of Python that claim, print a line and hold the claim until
their stdin closes); the claims of jobs on other hosts, or with a reused pid, are claim files written as
such a job would have written them, aged with os.utime.
"""

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import MINI, ROOT, TINY_YAML, read_rows, run_train, torchrun_cmd
from smollm2.errors import UserError
from smollm2.run_dir import OWNER, claim_run_dir

CLAIMER = """
import sys, time
from pathlib import Path
from smollm2.errors import UserError
from smollm2.run_dir import claim_run_dir
run_dir, go, stale_after_s = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    pass  # a busy wait: the two claimers start within microseconds of each other
try:
    claim = claim_run_dir(run_dir, stale_after_s=stale_after_s, report=lambda line: print(line, file=sys.stderr))
except UserError as exc:
    print(f"refused: {exc}", flush=True)
    sys.exit(2)
print("claimed", flush=True)
sys.stdin.read()  # hold the claim until the test closes our stdin
claim.release()
"""


def start_claimer(run_dir: Path, go: Path, stale_after_s: float = 30.0) -> subprocess.Popen:
    """A process that claims run_dir once `go` exists; it prints "ready", then "claimed" or "refused: ...".
    Make `go` after this returns: a line behind "ready" in the pipe would sit in readline's buffer, unseen by
    select."""
    cmd = [sys.executable, "-c", CLAIMER, str(run_dir), str(go), str(stale_after_s)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert read_line(proc) == "ready"
    return proc


def read_line(proc: subprocess.Popen, timeout: float = 20.0) -> str:
    """The claimer's next line; fails, with its exit status and stderr, if it ends or stays silent instead."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        raise AssertionError(f"the claimer printed nothing (exit status {proc.wait()}): {proc.stderr.read()}")
    return line.strip()


def hold(run_dir: Path, tmp_path: Path) -> subprocess.Popen:
    """A process that owns run_dir until its stdin closes."""
    go = tmp_path / "go"
    proc = start_claimer(run_dir, go)
    go.touch()
    assert read_line(proc) == "claimed"
    return proc


def end(proc: subprocess.Popen) -> int:
    """Close the claimer's stdin (it releases its claim and exits) and return its exit status."""
    proc.stdin.close()
    try:
        return proc.wait(timeout=20)
    finally:
        proc.kill()  # no-op once it has exited


def write_claim(run_dir: Path, age_s: float = 0.0, **fields) -> Path:
    """RUN_DIR/owner/000001.json as another job would have written it, its heartbeat age_s old."""
    record = {
        "host": "node-elsewhere",
        "pid": 4321,
        "pid_start": "777",
        "slurm_job_id": None,
        "slurm_restart_count": None,
        "command": "smollm2 train --config c.yaml",
        "claimed_at": "2024-05-01T10:00:00+0000",
        **fields,
    }
    claim = run_dir / OWNER / "000001.json"
    claim.parent.mkdir(parents=True)
    claim.write_text(json.dumps(record))
    heartbeat = claim.stat().st_mtime - age_s
    os.utime(claim, (heartbeat, heartbeat))
    return claim


def snapshot(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of the run directory outside owner/: its bytes and mtime."""
    return {
        str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in run_dir.rglob("*")
        if p.is_file() and OWNER not in p.relative_to(run_dir).parts
    }


def test_second_job_refused_naming_owner_and_nothing_touched_then_claims_after_release(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_00000010").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_00000010" / "manifest.json").write_text("{}")
    (run_dir / "metrics.jsonl").write_text('{"step": 10}\n')
    before = snapshot(run_dir)
    owner = hold(run_dir, tmp_path)
    try:
        with pytest.raises(UserError) as refusal:
            claim_run_dir(run_dir, stale_after_s=30, report=print)
        message = str(refusal.value)
        assert "\n" not in message
        assert f"host {socket.gethostname()}, pid {owner.pid}," in message
        assert "last heartbeat 0 s ago" in message and "choose another train.out_dir" in message
        assert snapshot(run_dir) == before
        assert os.listdir(run_dir / OWNER) == ["000001.json"]  # the refused job left no file behind
    finally:
        exit_code = end(owner)
    assert exit_code == 0
    lines = []
    with claim_run_dir(run_dir, stale_after_s=30, report=lines.append) as claim:
        assert claim.still_owned() and lines == []  # a released claim is no news
    assert os.listdir(run_dir / OWNER) == ["000002.released"]
    assert snapshot(run_dir) == before


def test_kill_9_of_the_owner_is_taken_over_at_once_on_its_host(tmp_path):
    run_dir = tmp_path / "run"
    owner = hold(run_dir, tmp_path)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    lines = []
    with claim_run_dir(run_dir, stale_after_s=3600, report=lines.append):
        assert len(lines) == 1 and lines[0].startswith(
            f"taking over train.out_dir from a job that is gone: host {socket.gethostname()}, pid {owner.pid}, since "
        )
        assert lines[0].endswith("(the process no longer exists)")
        assert os.listdir(run_dir / OWNER) == ["000002.json"]


def test_a_silent_claim_of_another_host_is_taken_over_a_fresh_one_refused(tmp_path):
    fresh = tmp_path / "fresh"
    write_claim(fresh, age_s=20)
    with pytest.raises(UserError, match=r"host node-elsewhere, pid 4321, since 2024-05-01.*last heartbeat 20 s ago"):
        claim_run_dir(fresh, stale_after_s=30, report=print)
    silent = tmp_path / "silent"
    write_claim(silent, age_s=40)
    lines = []
    with claim_run_dir(silent, stale_after_s=30, report=lines.append):
        assert lines == [
            "taking over train.out_dir from a job that is gone: host node-elsewhere, pid 4321, "
            "since 2024-05-01T10:00:00+0000 (no heartbeat for 40 s, more than 30 s)"
        ]


def test_a_claim_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path):
    # our own pid is alive on this host, but it did not start at tick 1 after boot
    write_claim(tmp_path, host=socket.gethostname(), pid=os.getpid(), pid_start="1")
    lines = []
    with claim_run_dir(tmp_path, stale_after_s=30, report=lines.append):
        assert len(lines) == 1 and lines[0].endswith(f"(its pid {os.getpid()} now belongs to a process started later)")


def test_a_requeued_slurm_job_takes_over_its_earlier_instance_but_not_a_second_step(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    same_instance = tmp_path / "same"
    write_claim(same_instance, slurm_job_id="4242", slurm_restart_count="1")
    with pytest.raises(UserError, match=r"pid 4321, SLURM job 4242 \(restart 1\), since"):
        claim_run_dir(same_instance, stale_after_s=30, report=print)
    earlier_instance = tmp_path / "earlier"
    write_claim(earlier_instance, slurm_job_id="4242", slurm_restart_count="0")
    lines = []
    with claim_run_dir(earlier_instance, stale_after_s=30, report=lines.append) as claim:
        assert len(lines) == 1 and lines[0].endswith("(SLURM requeued job 4242: this is its restart 1)")
        record = json.loads(claim.path.read_text())
        assert (record["slurm_job_id"], record["slurm_restart_count"]) == ("4242", "1")


@pytest.mark.parametrize("dead_claim", [True, False], ids=["dead-claim", "empty-folder"])
def test_of_two_jobs_racing_for_a_run_directory_exactly_one_wins(tmp_path, dead_claim):
    for round_ in range(8):
        run_dir, go = tmp_path / f"run{round_}", tmp_path / f"go{round_}"
        if dead_claim:
            write_claim(run_dir, age_s=100)
        claimers = [start_claimer(run_dir, go) for _ in range(2)]
        try:
            go.touch()
            outcomes = [read_line(claimer) for claimer in claimers]
            assert sorted(line.split(":")[0] for line in outcomes) == ["claimed", "refused"], outcomes
            winner = claimers[outcomes.index("claimed")]
            assert f"pid {winner.pid}," in next(line for line in outcomes if line != "claimed")
            assert os.listdir(run_dir / OWNER) == ["000002.json" if dead_claim else "000001.json"]
        finally:
            exit_codes = sorted(end(claimer) for claimer in claimers)
        assert exit_codes == [0, 2]


def test_the_heartbeat_goes_on_and_a_claim_taken_over_is_left_to_its_new_owner(tmp_path):
    lines = []
    claim = claim_run_dir(tmp_path, stale_after_s=0.4, report=lines.append)
    try:
        first = claim.path.stat().st_mtime
        time.sleep(0.5)
        assert claim.path.stat().st_mtime > first
        # another job took over (as if this one had stalled for longer than stale_after_s)
        theirs = tmp_path / OWNER / "000002.json"
        theirs.write_text(json.dumps({"host": "node-elsewhere", "pid": 99, "claimed_at": "now"}))
        deadline = time.monotonic() + 5
        while not lines and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lines == [f"train.out_dir: another job took {tmp_path} over (host node-elsewhere, pid 99, since now)"]
        assert not claim.still_owned()
    finally:
        claim.release()
    assert sorted(os.listdir(tmp_path / OWNER)) == ["000001.released", "000002.json"]


def test_a_run_directory_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match=r"^train.out_dir: .*file.*: cannot write \(.*\); .* MiB free"):
        claim_run_dir(tmp_path / "file" / "run", stale_after_s=30, report=print)


@pytest.mark.slow
def test_a_second_train_job_is_refused_and_a_kill_9_owner_is_taken_over_by_the_same_command(tiny_data, tmp_path):
    """Job A trains on 2 ranks until its rank 1 freezes (SIGSTOP) at step 3, so that nothing of A's moves; job B,
    the same command, exits 2 in one line naming A's rank 0 and leaves every file as it was. After a kill -9 of A,
    the same command takes A's claim over and resumes from A's checkpoint."""
    run_dir = tmp_path / "run"
    # Saves in the loop, not in the background: step 2's is complete before step 3, where rank 1 freezes.
    settings = [f"data.path={tiny_data}", f"train.out_dir={run_dir}", "checkpoint.save_every=2", "eval.eval_every=0"]
    settings.append("checkpoint.background=false")
    cmd = torchrun_cmd(2, "train", "--config", TINY_YAML, "--set", *MINI, *settings, "train.max_steps=100")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SMOLLM2_FAULT_STALL_STEP": "3", "SMOLLM2_FAULT_STALL_RANK": "1"}
    with open(tmp_path / "a.log", "w") as log:
        job_a = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    launcher, ranks = psutil.Process(job_a.pid), []
    try:
        deadline = time.monotonic() + 180
        while not (run_dir / "checkpoints" / "step_00000002" / "manifest.json").is_file():
            assert job_a.poll() is None and time.monotonic() < deadline, (tmp_path / "a.log").read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(2)  # rank 0 waits for the frozen rank 1 in step 3's first collective
        owner = json.loads((run_dir / OWNER / "000001.json").read_text())
        before = snapshot(run_dir)
        refused = run_train(2, *settings, "train.max_steps=100", check=False)
        assert refused.returncode != 0
        assert (
            f"smollm2 train: error: train.out_dir: {run_dir} belongs to a running job (host {socket.gethostname()}, "
            f"pid {owner['pid']}, since {owner['claimed_at']}, last heartbeat "
        ) in refused.stderr, refused.stderr[-3000:]
        assert snapshot(run_dir) == before
    finally:
        # kill -9 of every process of job A, the owner included; torchrun starts each rank in a session of its own
        with contextlib.suppress(psutil.NoSuchProcess):
            ranks = launcher.children(recursive=True)
        for process in [launcher, *ranks]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        job_a.wait()
    resumed = run_train(2, *settings, "train.max_steps=100", "train.stop_at=4")
    assert f"taking over train.out_dir from a job that is gone: host {socket.gethostname()}, pid {owner['pid']}" in (
        resumed.stdout
    )
    assert f"resuming from {run_dir / 'checkpoints' / 'step_00000002'} at step 2" in resumed.stdout
    assert [row["step"] for row in read_rows(run_dir, "loss")] == [1, 2, 3, 4]
