"""The run directory (train.out_dir): one job at a time owns it; checked writable; its config and tokenizer.

A job claims the folder before it writes anything in it and holds the claim for its lifetime; a second job
is refused in one line naming the owner. The claim of a job that is gone is taken over, with a line saying
whose and why, so a requeue after a crash or a kill -9 resumes by itself. A claim is gone when
- its process no longer exists on its host (or its pid now belongs to a process started later): seen at once
  by a job on the same host;
- its heartbeat is older than `stale_after_s`: the owner's host is down, or its process frozen;
- SLURM requeued this job: the claim holds our SLURM_JOB_ID with another SLURM_RESTART_COUNT (SLURM ends the
  old instance before it starts the new one).

The claims are RUN_DIR/owner/NNNNNN.json (the JSON of `_this_process`), numbered; the highest number is the
current claim, its mtime is the heartbeat, and `release` renames it to NNNNNN.released. A claim is made by
writing a uniquely named file and hard-linking it to the next number: link() fails when the name exists,
atomically on NFS too, so of two jobs taking over the same dead claim exactly one gets the number. No file
locks (flock is unreliable on NFS); heartbeat ages are read on the file system's clock (a claim's mtime
against that of a file just written beside it), so the clocks of the nodes need not agree.

Rank 0 claims for the whole job (`claim_for_job`), then every rank checks that it can write there (its
checkpoint shards). The rest of the layout is smollm2/checkpoint.py's docstring: config.yaml and
tokenizer.json are written here, metrics.jsonl, samples.jsonl and tensorboard/ by smollm2/metrics.py,
checkpoints/ by smollm2/checkpoint_manager.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smollm2.atomic import write_atomic
from smollm2.errors import UserError, write_failed

OWNER = "owner"  # the folder of claims inside the run directory
CLAIM_NAME = re.compile(r"(\d{6,})\.(json|released)")
ATTEMPTS = 20  # claims made or released by others while we look: each one means look again


class RunDirClaim:
    """This job's claim on its run directory, its heartbeat refreshed by a daemon thread until `release()`.

    `with claim_run_dir(...):` releases it on the way out. A job that stalls for longer than stale_after_s may
    be taken over; its heartbeat thread then reports so once, and `still_owned()` says False.
    """

    def __init__(self, path: Path, heartbeat_s: float, report: Callable[[str], None]) -> None:
        self.path = path  # RUN_DIR/owner/NNNNNN.json
        self._report = report
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), name="smollm2-run-dir", daemon=True)
        self._thread.start()

    def still_owned(self) -> bool:
        """Whether our claim is still the newest one: no other job took the run directory over."""
        return _newest(self.path.parent) == self.path

    def release(self) -> None:
        """Stop the heartbeat and mark the claim released (a claim taken over is another job's: left alone)."""
        self._stopped.set()
        self._thread.join()
        with contextlib.suppress(FileNotFoundError):  # removed by the job that took over
            os.replace(self.path, self.path.with_suffix(".released"))

    def __enter__(self) -> RunDirClaim:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _beat(self, heartbeat_s: float) -> None:
        while not self._stopped.wait(heartbeat_s):
            try:
                if not self.still_owned():
                    newest = _newest(self.path.parent)
                    owner = _describe(_read(newest)[0]) if newest else "its claim was removed"
                    self._report(f"train.out_dir: another job took {self.path.parent.parent} over ({owner})")
                    return
                os.utime(self.path)  # now, on the file system's clock (NFS sets the server's time)
            except OSError:
                continue  # a passing file-system error: the next beat tries again


def claim_run_dir(run_dir: Path, *, stale_after_s: float, report: Callable[[str], None]) -> RunDirClaim:
    """Take the run directory for this job, or raise UserError naming its owner. Creates RUN_DIR/owner/ and
    our claim in it, and touches nothing else; `report` gets the line that says a dead claim was taken over
    (and, later, the line that says another job took ours)."""
    folder = Path(run_dir) / OWNER
    try:
        folder.mkdir(parents=True, exist_ok=True)
        mine = folder / f".claim-{uuid.uuid4().hex}.tmp"
        try:
            mine.write_text(json.dumps(_this_process(), indent=1) + "\n")
            return _claim(folder, mine, stale_after_s, report)
        finally:
            mine.unlink(missing_ok=True)  # our claim, if made, is the link
    except OSError as exc:
        raise UserError(f"train.out_dir: {write_failed(run_dir, exc)}") from None


def claim_for_job(group: Any, run_dir: Path, stale_after_s: float, report: Callable[[str], None]) -> RunDirClaim | None:
    """Rank 0 claims the run directory for the job (claim_run_dir; its claim is returned there, None elsewhere),
    then every rank checks that it can write into it. Collective over `group` (smollm2.collectives.CpuGroup):
    a refusal, or a rank that cannot write, stops every rank with the same one line."""
    claims = []
    group.from_rank0(lambda: claims.append(claim_run_dir(run_dir, stale_after_s=stale_after_s, report=report)))
    problems = group.gather(_write_problem(run_dir))
    problem = next((p for p in problems if p is not None), None)
    if problem is not None:
        if claims:
            claims[0].release()
        raise UserError(problem)
    return claims[0] if claims else None


def _write_problem(run_dir: Path) -> str | None:
    """Why this rank cannot write into the run directory (None: it can): found here, in one line, not at the first
    save after hours of training."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            return None
    except OSError as exc:
        return f"train.out_dir: {write_failed(run_dir, exc)}"


def write_run_files(config: Any, tokenizer_path: Path) -> None:
    """The run directory's config.yaml (this job's resolved config, smollm2.config.Config) and tokenizer.json
    (the data's)."""
    from smollm2.config import save_config  # imports the model, and torch: the claim needs neither

    run_dir = Path(config.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)  # a bench's temporary run directory has no claim that made it
    save_config(config, run_dir / "config.yaml", header="Resolved by `smollm2 train`: every key, defaults filled in.")
    write_atomic(run_dir / "tokenizer.json", lambda tmp: shutil.copyfile(tokenizer_path, tmp))


def _claim(folder: Path, mine: Path, stale_after_s: float, report: Callable[[str], None]) -> RunDirClaim:
    """Link `mine` to the number after the newest claim if that one is gone; look again when another job
    claimed or released in between."""
    for _ in range(ATTEMPTS):
        os.utime(mine)
        now = mine.stat().st_mtime  # the file system's clock
        newest, record, why_gone = _newest(folder), {}, ""
        if newest is not None and newest.suffix == ".json":  # a released claim is free to take
            try:
                record, heartbeat = _read(newest)
            except FileNotFoundError:
                continue  # released or taken over since the listing
            why_gone = _why_gone(record, now - heartbeat, stale_after_s)
            if why_gone is None:
                raise UserError(_refusal(folder.parent, newest, record, now - heartbeat, stale_after_s))
        number = int(CLAIM_NAME.fullmatch(newest.name)[1]) + 1 if newest else 1
        target = folder / f"{number:06d}.json"
        if not _link(mine, target):
            continue  # another job got this number first
        if _newest(folder) != target:  # our listing was behind: the number was free, yet a newer claim exists
            target.unlink()
            continue
        if why_gone:
            report(f"taking over train.out_dir from a job that is gone: {_describe(record)} ({why_gone})")
        _remove_older(folder, number, now - stale_after_s)
        return RunDirClaim(target, stale_after_s / 4, report)
    raise UserError(f"train.out_dir: {folder.parent}: other jobs claimed it {ATTEMPTS} times while this one tried")


def _why_gone(record: dict[str, Any], age_s: float, stale_after_s: float) -> str | None:
    """Why the job that made this claim is gone, or None while it may be running."""
    me = _this_process()
    job = record.get("slurm_job_id")
    if job and job == me["slurm_job_id"] and record.get("slurm_restart_count") != me["slurm_restart_count"]:
        return f"SLURM requeued job {job}: this is its restart {me['slurm_restart_count']}"
    if record.get("host") == me["host"] and (gone := _process_gone(record.get("pid"), record.get("pid_start"))):
        return gone
    if age_s > stale_after_s:
        return f"no heartbeat for {age_s:.0f} s, more than {stale_after_s:g} s"
    return None


def _refusal(run_dir: Path, claim: Path, record: dict[str, Any], age_s: float, stale_after_s: float) -> str:
    return (
        f"train.out_dir: {run_dir} belongs to a running job ({_describe(record)}, last heartbeat "
        f"{max(age_s, 0):.0f} s ago); wait for it to end, stop it, or choose another train.out_dir (a job "
        f"that is gone is taken over at once on its host, elsewhere after {stale_after_s:g} s; its claim: {claim})"
    )


def _describe(record: dict[str, Any]) -> str:
    """host, pid, SLURM job and the time of a claim, as far as it says."""
    job = record.get("slurm_job_id")
    return ", ".join(
        [f"host {record.get('host', '?')}", f"pid {record.get('pid', '?')}"]
        + ([f"SLURM job {job} (restart {record.get('slurm_restart_count')})"] if job else [])
        + [f"since {record.get('claimed_at', '?')}"]
    )


def _this_process() -> dict[str, Any]:
    """What a claim records about the job that makes it."""
    job = os.environ.get("SLURM_JOB_ID")
    stat = _proc_stat(os.getpid())
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": stat[19] if stat else None,  # clock ticks after boot: tells a reused pid apart
        "slurm_job_id": job,
        "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "0") if job else None,
        "command": shlex.join(sys.argv),
        "claimed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _process_gone(pid: Any, start: str | None) -> str | None:
    """Why process `pid` of this host, started at `start`, is no longer running; None while it may be."""
    if not isinstance(pid, int) or not 0 < pid < 2**31:
        return None  # an unreadable claim: its heartbeat decides
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "the process no longer exists"
    except PermissionError:
        pass  # another user's process
    stat = _proc_stat(pid)
    if stat is None:
        return None  # no /proc (not Linux): the pid exists, and that is all we know
    if stat[0] in ("Z", "X"):  # a zombie: dead, not yet reaped by its parent
        return "the process no longer exists"
    if stat[19] != start:
        return f"its pid {pid} now belongs to a process started later"
    return None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3 and on of /proc/<pid>/stat: the state first, the start time (clock ticks after boot) at index 19;
    None without such a file."""
    with contextlib.suppress(OSError):
        # split after the command name, which may hold spaces and parentheses
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return None


def _newest(folder: Path) -> Path | None:
    numbered = [(int(m[1]), name) for name in os.listdir(folder) if (m := CLAIM_NAME.fullmatch(name))]
    return folder / max(numbered)[1] if numbered else None


def _read(claim: Path) -> tuple[dict[str, Any], float]:
    """A claim's record (empty if unreadable) and heartbeat. Opening the file makes an NFS client fetch its
    attributes afresh instead of from its cache."""
    with open(claim, "rb") as f:
        text, heartbeat = f.read(), os.fstat(f.fileno()).st_mtime
    with contextlib.suppress(ValueError):
        record = json.loads(text)
        if isinstance(record, dict):
            return record, heartbeat
    return {}, heartbeat


def _link(source: Path, target: Path) -> bool:
    """Hard-link source to target unless target exists; whether this call made it. An NFS client retries a
    link whose reply was lost and gets EEXIST though it succeeded: the link count of source tells."""
    with contextlib.suppress(FileExistsError):
        os.link(source, target)
    return source.stat().st_nlink == 2


def _remove_older(folder: Path, number: int, abandoned_before: float) -> None:
    """Claims before ours, and temporary files of claimers that died while claiming."""
    for name in os.listdir(folder):
        path, match = folder / name, CLAIM_NAME.fullmatch(name)
        with contextlib.suppress(FileNotFoundError):
            if match and int(match[1]) < number:
                path.unlink()
            elif name.startswith(".claim-") and path.stat().st_mtime < abandoned_before:
                path.unlink()
