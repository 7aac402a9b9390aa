"""Where a training job's checkpoints are written and restored from: the trainer's CheckpointManager.

    checkpoint = choose_resume(group, "auto", run_dir, report)   # rank 0 verifies; every rank takes its choice
    checkpoints = CheckpointManager(run_dir, config.checkpoint, group, device, report)
    state = checkpoints.restore(engine, checkpoint, zero_stage)  # weights, optimizer, schedule, RNG
    checkpoints.save(engine, step, trainer.state_dict())         # written in the background
    checkpoints.settle(anyone_writing)                           # at each step: complete a save all ranks wrote
    checkpoints.wait()                                           # before a stop, a rollback, the end

A save writes DeepSpeed's checkpoint (model, ZeRO optimizer shards, scheduler) with our client state in it
and every rank's RNG states, then, on rank 0, its manifest and `latest`, and prunes the old ones
(smollm2/checkpoint.py holds the layout and the checks). With checkpoint.background (the default) the files
are written by a thread from host copies of the state (smollm2/checkpoint_writer.py) while training goes
on; the manifest and `latest` follow once every rank's thread is done (the trainer asks at each step, in
its one per-step vote), so a save cut short is never taken for a complete one. At most one save is in
flight: the next one, a rollback, a stop and the end of the run wait for it. Weights that are not finite on
any rank are never saved: the run stops instead, its checkpoints intact. A restore of a ZeRO checkpoint
written for another world size or stage first converts it, on rank 0, into DeepSpeed's universal format
(smollm2/universal.py). On resume only rank 0 reads the checkpoints to verify them; the others take its
verdict.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smollm2 import faults
from smollm2.atomic import write_text_atomic
from smollm2.checkpoint import (
    CHECKPOINTS,
    CLIENT_STATE_KEY,
    LATEST,
    Checkpoint,
    checkpoint_tag,
    latest_good_checkpoint,
    newest_listed,
    prune_checkpoints,
    resolve_resume,
    write_manifest,
)
from smollm2.checkpoint_writer import SnapshotWriter, relative
from smollm2.collectives import CpuGroup
from smollm2.config import CheckpointConfig
from smollm2.errors import RunFailed, UserError, write_failed
from smollm2.universal import UNIVERSAL, repair_zero3_universal_load, reshard_needed, write_universal


def choose_resume(group: CpuGroup, resume: str, run_dir: Path, report: Callable[[str], None]) -> Checkpoint | None:
    """--resume for every rank of a job: "auto" (the run's newest good checkpoint, if any), "never" or a path.

    Rank 0 reads the candidates in full to verify them (smollm2.checkpoint.resolve_resume: newest first, up to
    the first good one) and the others take its verdict. Ranks that see different files first (a node-local
    train.out_dir, or a shared file system whose caches lag behind the newest save) would load different
    steps into one model: refused, in one line. A checkpoint is named by its tag: the same folder may have
    other paths on other nodes.
    """
    if resume in ("auto", "never"):
        seen = group.gather(newest_listed(run_dir))
        differing = next((rank for rank, tag in enumerate(seen) if tag != seen[0]), None)
        if differing is not None:
            raise UserError(
                f"train.out_dir: the ranks would resume from different checkpoints (rank 0: {seen[0] or 'none'}, "
                f"rank {differing}: {seen[differing] or 'none'}); every rank must see the same run directory, "
                "on a file system shared by every node"
            )
    elif any(sees := group.gather(Path(resume).exists())) and not all(sees):
        raise UserError(
            f"--resume {resume}: rank {sees.index(False)} does not see it; every rank must see the same files"
        )
    return group.from_rank0(lambda: resolve_resume(resume, run_dir, report))


class CheckpointManager:
    """Saving and restoring one job's training state, on every rank (each call is collective)."""

    def __init__(
        self,
        run_dir: Path,
        settings: CheckpointConfig,
        group: CpuGroup,
        device: torch.device,
        report: Callable[[str], None],
        still_owned: Callable[[], bool] = lambda: True,
    ) -> None:
        self.run_dir, self.settings, self.group, self.device = run_dir, settings, group, device
        self.is_main = group.rank == 0
        self.report = report if self.is_main else lambda line: None
        self.still_owned = still_owned  # rank 0's claim on the run directory (smollm2.run_dir)
        self.writer = SnapshotWriter(device)
        self.in_flight: tuple[Checkpoint, int, float] | None = None  # the save being written, its step, its start
        self.stall_s = 0.0  # how long the loop has waited for the save in flight so far

    def newest(self) -> Checkpoint | None:
        """The run's newest complete and intact checkpoint (each newer broken one reported in a line)."""
        self.wait()
        return latest_good_checkpoint(self.run_dir, report=self.report)

    def describe_newest(self) -> str:
        """`the newest checkpoint is ...` for a message that tells the user where a rerun would go on from."""
        newest = latest_good_checkpoint(self.run_dir)
        return f"the newest checkpoint is {newest.path}" if newest else "there is no checkpoint yet"

    def save(self, engine: Any, step: int, client_state: dict[str, Any]) -> Checkpoint:
        """Begin step's checkpoint: DeepSpeed's files on every rank, the manifest and `latest` on rank 0 when
        they are all written (at once without checkpoint.background). A step whose weights are not finite on
        some rank is not saved, nor one of a job that lost its run directory to another: the run stops
        (RunFailed), its checkpoints intact. Every moment is safe to die in: a folder without a manifest is an
        unfinished save, skipped on resume; `latest` moves only after the manifest."""
        self.wait()
        started = time.perf_counter()
        if bad := self.group.ranks_where(not _weights_finite(engine)):
            raise RunFailed(
                f"step {step}: non-finite weights on rank {', '.join(map(str, bad))}, not saved; "
                + self.describe_newest()
            )
        if self.group.max([int(not self.still_owned())])[0]:
            raise RunFailed(f"step {step}: another job took {self.run_dir} over (train.out_dir); not saved")
        client_state = {**client_state, "rng": self.group.gather(_rng_state(self.device))}
        checkpoint = Checkpoint(self.run_dir / CHECKPOINTS, checkpoint_tag(step))
        if self.is_main and checkpoint.path.exists():  # an interrupted save of this step: no stale file may survive
            shutil.rmtree(checkpoint.path)
        torch.distributed.barrier(group=self.group.group)
        engine.checkpoint_engine = self.writer  # DeepSpeed hands it each file's state
        try:
            engine.save_checkpoint(
                str(checkpoint.root),
                tag=checkpoint.tag,
                client_state={CLIENT_STATE_KEY: client_state},
                save_latest=False,
            )
        except Exception as exc:  # a full disk or quota: DeepSpeed's torch.save says only "unexpected pos"
            self._fail(checkpoint, step, [str(write_failed(checkpoint.path, exc))])
        self.writer.start(after=lambda: faults.delay_save(step))
        self.in_flight, self.stall_s = (checkpoint, step, started), time.perf_counter() - started
        if not self.settings.background:
            self.wait()
        return checkpoint

    def writing(self) -> bool:
        """Whether this rank's files of the save in flight are still being written."""
        return self.writer.busy()

    def settle(self, anyone_writing: bool) -> None:
        """Complete the save in flight once no rank is writing it (`anyone_writing`: the job's vote on writing())."""
        if self.in_flight is not None and not anyone_writing:
            self.wait()

    def wait(self) -> None:
        """Wait for every rank's files of the save in flight, then (rank 0) write its manifest and `latest`, and
        prune. Collective."""
        if self.in_flight is None:
            return
        waited = time.perf_counter()
        checkpoint, step, started = self.in_flight
        self.in_flight = None
        entries, error = self.writer.wait()
        errors = [e for e in self.group.gather(error and str(write_failed(checkpoint.path, error))) if e is not None]
        if errors:
            self._fail(checkpoint, step, errors)
        written = self.group.gather(relative(entries, checkpoint.path))
        if self.is_main:
            write_manifest(checkpoint, step, known={name: entry for files in written for name, entry in files.items()})
            write_text_atomic(checkpoint.root / LATEST, checkpoint.tag)
            prune_checkpoints(checkpoint.root, self.settings.keep_last, keep=checkpoint.tag)
        self.stall_s += time.perf_counter() - waited
        self.report(
            f"saved checkpoint {checkpoint.path} ({time.perf_counter() - started:.1f} s; the loop waited "
            f"{self.stall_s:.2f} s)"
        )

    def _fail(self, checkpoint: Checkpoint, step: int, failures: list[str]) -> None:
        """A save that could not be written: its folder goes (no manifest: never resumed from; the space is
        freed), and every rank stops with the same line. Collective."""
        if self.is_main:
            shutil.rmtree(checkpoint.path, ignore_errors=True)
        newest = latest_good_checkpoint(self.run_dir)
        raise UserError(
            f"checkpoint of step {step}: {failures[0]}; "
            + (f"the newest good one is {newest.path}" if newest else "no checkpoint was written before")
        )

    def restore(self, engine: Any, checkpoint: Checkpoint, zero_stage: int) -> dict[str, Any]:
        """Load a checkpoint's weights, optimizer, schedule and this rank's RNG states into `engine`; returns our
        client state (step, data position: the trainer's). One sharded for another world size or ZeRO stage is
        first converted, by rank 0 and once per checkpoint, into DeepSpeed's universal format, which any
        partitioning loads: the same weights, AdamW moments and step counts."""
        self.wait()
        universal = reshard_needed(checkpoint, zero_stage, self.group.world_size)
        if universal:
            self.group.from_rank0(lambda: _convert(checkpoint, self.report))
        root, tag = (checkpoint.path, UNIVERSAL) if universal else (checkpoint.root, checkpoint.tag)
        # DeepSpeed reads its `checkpoint.load_universal` setting only while loading: on for this load alone,
        # since a later rollback may load one of this job's own checkpoints.
        engine._config.load_universal_checkpoint = universal
        try:
            path, client_state = engine.load_checkpoint(str(root), tag=tag)
        finally:
            engine._config.load_universal_checkpoint = False
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load {root / tag}")
        if universal and engine.zero_optimization_stage() == 3:
            repair_zero3_universal_load(engine.optimizer, root / tag)
        state = client_state[CLIENT_STATE_KEY]
        _restore_rng_state(state["rng"], self.group.rank, self.group.world_size, self.device)
        return state


def _convert(checkpoint: Checkpoint, report: Callable[[str], None]) -> None:
    try:
        write_universal(checkpoint, report=report)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{checkpoint.path}: conversion to DeepSpeed's universal format failed ({exc!r})") from None


def _weights_finite(engine: Any) -> bool:
    """Whether every weight this rank holds is finite (under ZeRO 3, its shard of each parameter)."""
    weights = [getattr(p, "ds_tensor", p).detach() for p in engine.module.parameters()]
    largest = torch.stack([torch.linalg.vector_norm(w.float(), float("inf")) for w in weights if w.numel()])
    return bool(torch.isfinite(largest).all())


def _rng_state(device: torch.device) -> dict[str, Any]:
    """This rank's Python, NumPy, torch (and CUDA) RNG states."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
    }


def _restore_rng_state(states: list[dict[str, Any]], rank: int, world_size: int, device: torch.device) -> None:
    """Put this rank's RNG states back when the world size is unchanged. (The data order does not depend on
    them: it is a function of the data position. On another world size the seeded states stay.)"""
    if len(states) != world_size:
        return
    rng = states[rank]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"])
