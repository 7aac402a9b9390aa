"""Resharding: a ZeRO checkpoint written by N ranks, converted once into DeepSpeed's universal format to resume on M.

DeepSpeed's universal format holds one fp32 file per parameter and per AdamW moment, which any number of
ranks and any ZeRO stage (1-3) load, each taking its share. The conversion runs on rank 0 while the
others wait (smollm2/checkpoint_manager.py), writes into the checkpoint's own folder (universal/, the
checkpoint's size again on disk, pruned with it), and records in reshard.json what it came from and how
long it took. Two slips of DeepSpeed 0.19's converter and loader are repaired on the way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from smollm2.atomic import write_text_atomic
from smollm2.checkpoint import Checkpoint, read_client_state
from smollm2.errors import UserError

UNIVERSAL = "universal"  # a checkpoint's state in DeepSpeed's universal format (write_universal)
RESHARD_RECORD = "reshard.json"  # written last into universal/: the conversion finished


def reshard_needed(checkpoint: Checkpoint, zero_stage: int, world_size: int) -> bool:
    """Whether a ZeRO checkpoint was sharded for another world size or stage than this job's."""
    state = read_client_state(checkpoint)
    return state["zero_stage"] > 0 and (state["world_size"], state["zero_stage"]) != (world_size, zero_stage)


def write_universal(checkpoint: Checkpoint, report: Callable[[str], None] = lambda line: None) -> None:
    """Convert a ZeRO checkpoint into DeepSpeed's universal format (one fp32 file per parameter and per AdamW
    moment, any partitioning) in its folder's universal/, once: a later resume on yet another world size
    reuses it. Rank 0 only, while the others wait. It costs the checkpoint's size again on disk; it goes
    when the checkpoint is pruned."""
    target = checkpoint.path / UNIVERSAL
    if (target / RESHARD_RECORD).is_file():
        report(f"resharding from {target} (converted to DeepSpeed's universal format by an earlier job)")
        return
    partial = checkpoint.path / (UNIVERSAL + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    report(f"converting {checkpoint.path} to DeepSpeed's universal format for another world size or ZeRO stage")
    started = time.perf_counter()
    workers = str(max(1, min(4, os.cpu_count() or 1)))
    command = [
        sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
        "--input_folder", str(checkpoint.path), "--output_folder", str(partial),
        "--num_extract_workers", workers, "--num_merge_workers", workers,
        # Our AdamW state lacks fields DeepSpeed's Megatron-oriented converter expects; it fills them in.
        "--inject_missing_state",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    (checkpoint.path / "latest_universal").unlink(missing_ok=True)  # the converter's pointer; we keep our own
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise UserError(f"{checkpoint.path}: DeepSpeed's ds_to_universal could not convert it ({last})")
    _loadable_by_every_stage(partial)
    # DeepSpeed looks for the model-states file under its stage's name: give it both.
    names = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
    have = [name for name in names if (partial / name).is_file()]
    for name in names:
        if have and not (partial / name).exists():
            os.link(partial / have[0], partial / name)
    state = read_client_state(checkpoint)
    record = {"from_world_size": state["world_size"], "from_zero_stage": state["zero_stage"],
              "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    write_text_atomic(partial / RESHARD_RECORD, json.dumps(record) + "\n")
    os.replace(partial, target)  # complete or absent: a kill during the conversion leaves only .partial
    report(f"converted in {record['seconds']} s: {target}")


def _loadable_by_every_stage(universal: Path) -> None:
    """DeepSpeed's converter writes what the saving stage's loader reads. Stages 1-2 read each parameter's
    AdamW step from its step.pt, its tensors as {"param": full-shape tensor}, and DeepSpeed's version from
    optimizer_state.pt; stage 3 reads flat tensors or that dict, and one step and the parameter groups from
    optimizer_state.pt's torch-optimizer state. Add whatever is missing, so that any stage loads it."""
    zero = universal / "zero"

    # The converter's own files, loaded the way DeepSpeed loads them.
    def load(path: Path) -> Any:
        return torch.load(path, map_location="cpu", weights_only=False)

    state = load(zero / "optimizer_state.pt")
    params = sorted(p for p in zero.iterdir() if p.is_dir())
    if "optimizer_state_dict" not in state:  # from stage 1 or 2
        step = load(next(p / "step.pt" for p in params if (p / "step.pt").is_file()))
        state["optimizer_state_dict"] = {"state": {0: {"step": step}}, "param_groups": state["param_groups"]}
    else:  # from stage 3
        model_states = load(next(universal.glob("*model_states.pt")))
        state.setdefault("ds_version", model_states["ds_version"])
        shapes = {name: shape for group in model_states["param_shapes"] for name, shape in group.items()}
        step = state["optimizer_state_dict"]["state"][0]["step"]
        for param in params:
            torch.save(step, param / "step.pt")
            for name in ("fp32", "exp_avg", "exp_avg_sq"):
                if not (param / f"{name}.pt").is_file():
                    continue  # a tied weight's second name: an empty folder
                tensor = load(param / f"{name}.pt")
                if torch.is_tensor(tensor):
                    torch.save({"param": tensor.view(shapes[param.name])}, param / f"{name}.pt")
    torch.save(state, zero / "optimizer_state.pt")


def repair_zero3_universal_load(optimizer: Any, universal: Path) -> None:
    """Undo two slips of DeepSpeed 0.19's ZeRO-3 universal load, found by comparing losses with a run that was
    never resharded: it gives every parameter group the settings of the first saved group (so the no-decay
    group decays), and one shared `step` tensor to every partition's AdamW state (so the step count, and with
    it Adam's bias correction, advances once per partition per step)."""
    # The converter's own file; DeepSpeed pickles its objects in it and loads it the same way.
    saved = torch.load(universal / "zero" / "optimizer_state.pt", map_location="cpu", weights_only=False)
    for group, settings in zip(optimizer.optimizer.param_groups, saved["optimizer_state_dict"]["param_groups"]):
        group.update({name: value for name, value in settings.items() if name != "params"})
    for state in optimizer.optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()
