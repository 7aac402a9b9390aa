"""Where a training job's checkpoints are written and restored from: the trainer's CheckpointManager.

    checkpoints = CheckpointManager(run_dir, config.checkpoint.keep_last, group, device, report=print)
    checkpoints.agree_on(resume)                      # every rank resumes from the same checkpoint, or none
    state = checkpoints.restore(engine, resume)       # weights, optimizer, schedule, RNG; returns the client state
    checkpoints.save(engine, step, trainer.state_dict())

A save writes DeepSpeed's checkpoint (model, ZeRO optimizer shards, scheduler) with our client state in it,
every rank's RNG states added, then, on rank 0, its manifest and `latest`, and prunes the old ones
(smollm2/checkpoint.py holds the layout and the checks). Weights that are not finite on any rank are never
saved: the run stops instead, its checkpoints intact. A restore of a ZeRO checkpoint written for another
world size or stage first converts it, on rank 0, into DeepSpeed's universal format (smollm2/universal.py).
"""

from __future__ import annotations

import random
import shutil
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
    prune_checkpoints,
    write_manifest,
)
from smollm2.collectives import CpuGroup
from smollm2.errors import RunFailed, UserError, write_failed
from smollm2.universal import UNIVERSAL, repair_zero3_universal_load, reshard_needed, write_universal


class CheckpointManager:
    """Saving and restoring one job's training state, on every rank (each call is collective)."""

    def __init__(
        self, run_dir: Path, keep_last: int, group: CpuGroup, device: torch.device, report: Callable[[str], None]
    ) -> None:
        self.run_dir, self.keep_last, self.group, self.device = run_dir, keep_last, group, device
        self.is_main = group.rank == 0
        self.report = report if self.is_main else lambda line: None

    def newest(self) -> Checkpoint | None:
        """The run's newest complete and intact checkpoint (each newer broken one reported in a line)."""
        return latest_good_checkpoint(self.run_dir, report=self.report)

    def describe_newest(self) -> str:
        """`the newest checkpoint is ...` for a message that tells the user where a rerun would go on from."""
        newest = latest_good_checkpoint(self.run_dir)
        return f"the newest checkpoint is {newest.path}" if newest else "there is no checkpoint yet"

    def agree_on(self, choice: Checkpoint | None) -> None:
        """Every rank picked the checkpoint to resume from on its own, before the process group existed
        (smollm2.checkpoint.resolve_resume): refuse, in one line, ranks that see different files (a node-local
        train.out_dir, or a shared file system whose caches lag behind the newest save), which would load
        different steps into one model. The tag names the checkpoint: the same folder may have other paths
        on other nodes."""
        choices = self.group.gather(choice and choice.tag)
        differing = next((rank for rank, tag in enumerate(choices) if tag != choices[0]), None)
        if differing is not None:
            raise UserError(
                f"train.out_dir: the ranks would resume from different checkpoints (rank 0: {choices[0] or 'none'}, "
                f"rank {differing}: {choices[differing] or 'none'}); every rank must see the same run directory, "
                "on a file system shared by every node"
            )

    def save(self, engine: Any, step: int, client_state: dict[str, Any]) -> Path:
        """Write step's checkpoint: DeepSpeed's files on every rank, then (rank 0) the manifest, `latest`, and prune.

        The order makes every moment safe to die in: a folder without a manifest is an unfinished save,
        skipped on resume; `latest` moves only after the manifest. A step whose weights are not finite on some
        rank is not saved: the run stops (RunFailed), its checkpoints intact.
        """
        if bad := self.group.ranks_where(not _weights_finite(engine)):
            raise RunFailed(
                f"step {step}: non-finite weights on rank {', '.join(map(str, bad))}, not saved; "
                + self.describe_newest()
            )
        client_state = {**client_state, "rng": self.group.gather(_rng_state(self.device))}
        checkpoint = Checkpoint(self.run_dir / CHECKPOINTS, checkpoint_tag(step))
        if self.is_main and checkpoint.path.exists():  # an interrupted save of this step: no stale file may survive
            shutil.rmtree(checkpoint.path)
        torch.distributed.barrier(group=self.group.group)
        try:
            engine.save_checkpoint(
                str(checkpoint.root),
                tag=checkpoint.tag,
                client_state={CLIENT_STATE_KEY: client_state},
                save_latest=False,
            )  # returns after a barrier: every rank has written
            faults.delay_save(step)
            if self.is_main:
                write_manifest(checkpoint, step)
                write_text_atomic(checkpoint.root / LATEST, checkpoint.tag)
        except Exception as exc:  # a full disk or quota: DeepSpeed's torch.save says only "unexpected pos"
            failure = write_failed(checkpoint.path, exc)
            if self.is_main:
                shutil.rmtree(checkpoint.path, ignore_errors=True)  # no manifest: never resumed from; free the space
            newest = latest_good_checkpoint(self.run_dir)
            raise UserError(
                f"checkpoint of step {step}: {failure}; "
                + (f"the newest good one is {newest.path}" if newest else "no checkpoint was written before")
            ) from None
        if self.is_main:
            prune_checkpoints(checkpoint.root, self.keep_last, keep=checkpoint.tag)
        return checkpoint.path

    def restore(self, engine: Any, checkpoint: Checkpoint, zero_stage: int) -> dict[str, Any]:
        """Load a checkpoint's weights, optimizer, schedule and this rank's RNG states into `engine`; returns our
        client state (step, data position: the trainer's). One sharded for another world size or ZeRO stage is
        first converted, by rank 0 and once per checkpoint, into DeepSpeed's universal format, which any
        partitioning loads: the same weights, AdamW moments and step counts."""
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
