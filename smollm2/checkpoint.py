"""Checkpoints on disk: their layout, what they hold, and how they are found, verified, listed and pruned.

    RUN_DIR/
      config.yaml            resolved config of the last job
      tokenizer.json         the tokenizer of the training data (copied at the start of the run)
      metrics.jsonl, samples.jsonl, tensorboard/
      checkpoints/
        latest               the tag of the newest complete checkpoint (written atomically, after the save)
        step_00001000/       one DeepSpeed checkpoint (engine.save_checkpoint(checkpoints/, tag))
          manifest.json      every file's size and CRC-32, written last: the save finished
          universal/         (made on a resume with another world size or ZeRO stage) the same state in
                             DeepSpeed's universal format, which any partitioning can load (smollm2/universal.py)

Our own state rides in DeepSpeed's client state under the key "smollm2" (Trainer.state_dict and
smollm2/checkpoint_manager.py): step, consumed samples and the data position, every rank's RNG states, the
model config, the config hash, the world size and the ZeRO stage. Writing and restoring a checkpoint is
smollm2/checkpoint_manager.py's job; turning one into a model, smollm2/weights.py's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from smollm2.atomic import write_text_atomic
from smollm2.errors import UserError
from smollm2.model import WEIGHT_KEYS

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MANIFEST = "manifest.json"
TAG_PATTERN = re.compile(r"step_(\d+)")
CLIENT_STATE_KEY = "smollm2"


def checkpoint_tag(step: int) -> str:
    return f"step_{step:08d}"


@dataclass(frozen=True)
class Checkpoint:
    root: Path  # the folder DeepSpeed saved into (RUN_DIR/checkpoints)
    tag: str  # the subfolder of one checkpoint

    @property
    def path(self) -> Path:
        return self.root / self.tag

    @property
    def run_dir(self) -> Path:
        return self.root.parent


# -- finding checkpoints, and telling a complete one from a broken one -----------------------------


def checkpoint_step(checkpoint: Checkpoint) -> int:
    match = TAG_PATTERN.fullmatch(checkpoint.tag)
    return int(match.group(1)) if match else -1


def write_manifest(checkpoint: Checkpoint, step: int, known: dict[str, tuple[int, int]] | None = None) -> None:
    """Record every file of a finished save (size and CRC-32) in manifest.json, written last: its presence
    says the checkpoint is complete, its contents let a reader check that nothing rotted or was cut short.
    `known`: (size, CRC-32) of files by their path in the checkpoint, taken as they were written; the others
    are read here."""
    known = known or {}
    files = sorted(p for p in checkpoint.path.rglob("*") if p.is_file() and p.name != MANIFEST)
    unknown = [p for p in files if str(p.relative_to(checkpoint.path)) not in known]
    with ThreadPoolExecutor(max_workers=8) as pool:  # zlib releases the GIL: files are checksummed in parallel
        read = {
            str(p.relative_to(checkpoint.path)): (p.stat().st_size, crc)
            for p, crc in zip(unknown, pool.map(_crc32, unknown))
        }
    entries = {name: {"size": size, "crc32": crc} for name, (size, crc) in sorted({**read, **known}.items())}
    write_text_atomic(checkpoint.path / MANIFEST, json.dumps({"step": step, "files": entries}, indent=1) + "\n")


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            crc = zlib.crc32(chunk, crc)
    return crc


def checkpoint_problem(checkpoint: Checkpoint, latest_step: int | None) -> str | None:
    """Why this checkpoint cannot be resumed from (None: it can).

    `latest` has the last word on which steps belong to the run: it moves only after a save finished, so a
    newer folder is a save cut short, or the future of a run that was resumed from an older checkpoint.
    A checkpoint with a manifest must match it file for file (sizes and checksums); one without (written
    before smollm2 wrote manifests) counts as complete when `latest` names it or a later step.
    """
    manifest_path = checkpoint.path / MANIFEST
    if latest_step is not None and checkpoint_step(checkpoint) > latest_step:
        why = "`latest` never moved to it" if manifest_path.is_file() else "its save did not finish"
        return f"newer than {LATEST} (step {latest_step}): {why}"
    if not manifest_path.is_file():
        if latest_step is None:
            return "incomplete (no manifest: its save did not finish)"
        return _unreadable(checkpoint)
    try:
        entries = json.loads(manifest_path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MANIFEST} ({exc})"
    for name, entry in entries.items():
        path = checkpoint.path / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["size"]:
            return f"{name} has {path.stat().st_size} bytes, its manifest says {entry['size']}"
    with ThreadPoolExecutor(max_workers=8) as pool:
        checksums = dict(zip(entries, pool.map(_crc32, (checkpoint.path / name for name in entries))))
    for name, entry in entries.items():
        if checksums[name] != entry["crc32"]:
            return f"{name} does not match its checksum (corrupted on disk)"
    return _unreadable(checkpoint)


def _unreadable(checkpoint: Checkpoint) -> str | None:
    """Why our client state cannot be read from the checkpoint (None: it can)."""
    try:
        read_client_state(checkpoint)
    except UserError as exc:
        return str(exc).removeprefix(f"{checkpoint.path}: ")
    return None


def _run_checkpoint_folders(run_dir: str | os.PathLike) -> tuple[list[Checkpoint], int | None]:
    """Every step_* checkpoint folder of a run, newest first, and the step `latest` names (None: none)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return [], None
    latest_step = None
    if (root / LATEST).is_file():
        latest = TAG_PATTERN.fullmatch((root / LATEST).read_text().strip())
        latest_step = int(latest.group(1)) if latest else None
    checkpoints = sorted(
        (Checkpoint(root, p.name) for p in root.iterdir() if p.is_dir() and TAG_PATTERN.fullmatch(p.name)),
        key=checkpoint_step,
        reverse=True,
    )
    return checkpoints, latest_step


def newest_listed(run_dir: str | os.PathLike) -> str | None:
    """The tag of the checkpoint a resume would look at first, by listing alone (nothing is read): the one
    `latest` names, else the newest folder; None when the run has none."""
    checkpoints, latest_step = _run_checkpoint_folders(run_dir)
    listed = [c.tag for c in checkpoints if latest_step is None or checkpoint_step(c) <= latest_step]
    return listed[0] if listed else (checkpoints[0].tag if checkpoints else None)


def run_checkpoints(run_dir: str | os.PathLike) -> Iterator[tuple[Checkpoint, str | None]]:
    """Every step_* checkpoint of a run, newest first, each with checkpoint_problem's verdict. Lazily: a
    verdict reads every byte of its checkpoint, so a caller that stops at the first good one reads no other."""
    checkpoints, latest_step = _run_checkpoint_folders(run_dir)
    for checkpoint in checkpoints:
        yield checkpoint, checkpoint_problem(checkpoint, latest_step)


def latest_good_checkpoint(
    run_dir: str | os.PathLike,
    report: Callable[[str], None] = lambda line: None,
) -> Checkpoint | None:
    """The newest checkpoint that is complete and intact; each newer one that is not is reported in one line."""
    for checkpoint, problem in run_checkpoints(run_dir):
        if problem is None:
            return checkpoint
        report(f"skipping checkpoint {checkpoint.path}: {problem}")
    return None


def find_checkpoint(path: str | os.PathLike, report: Callable[[str], None] = lambda line: None) -> Checkpoint:
    """A run directory (its newest good checkpoint), its checkpoints/ folder, or one checkpoint's folder."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such run directory or checkpoint folder")
    if path.name == CHECKPOINTS and not (path / CHECKPOINTS).is_dir():
        path = path.parent
    if (path / CHECKPOINTS).is_dir():
        checkpoint = latest_good_checkpoint(path, report)
        if checkpoint is None:
            raise UserError(f"{path / CHECKPOINTS}: no complete checkpoint (`smollm2 checkpoints {path}` lists them)")
        return checkpoint
    if any(path.glob("*model_states.pt")):
        checkpoint = Checkpoint(path.parent, path.name)
        latest = path.parent / LATEST
        latest_tag = TAG_PATTERN.fullmatch(latest.read_text().strip()) if latest.is_file() else None
        problem = checkpoint_problem(checkpoint, int(latest_tag.group(1)) if latest_tag else None)
        if problem is not None and (path / MANIFEST).is_file():
            raise UserError(f"{path}: {problem}")
        return checkpoint
    raise UserError(
        f"{path}: no checkpoint here (expected a run directory with {CHECKPOINTS}/, "
        "or a checkpoint folder holding *model_states.pt)"
    )


def resolve_resume(
    resume: str,
    run_dir: Path,
    report: Callable[[str], None] = lambda line: None,
) -> Checkpoint | None:
    """--resume: "auto" (the run's newest good checkpoint, if any), "never" (refuses a run that has some) or a
    path (a run directory or one checkpoint folder)."""
    if resume == "auto":
        return latest_good_checkpoint(run_dir, report)
    if resume == "never":
        if _run_checkpoint_folders(run_dir)[0]:
            raise UserError(
                f"--resume never: {run_dir} already has checkpoints; use --resume auto to continue "
                "it, or another train.out_dir"
            )
        return None
    return find_checkpoint(resume, report)


# -- reading what a checkpoint holds ---------------------------------------------------------------


def _model_states_file(checkpoint: Checkpoint) -> Path:
    # Stages 0-2: one file for the model and client state; stage 3: one per rank, rank 0's suffices.
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        if (checkpoint.path / name).is_file():
            return checkpoint.path / name
    raise UserError(f"{checkpoint.path}: incomplete checkpoint (no mp_rank_00_model_states.pt)")


def read_checkpoint_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """DeepSpeed's model-states dict of a checkpoint (memory-mapped: weights are not read)."""
    path = _model_states_file(checkpoint)
    try:
        # DeepSpeed pickles its own objects in this file and loads it the same way (weights_only=False).
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as exc:
        raise UserError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None


def read_client_state(checkpoint: Checkpoint) -> dict[str, Any]:
    """Our part of the checkpoint: what Trainer.state_dict() returned when it was saved."""
    state = read_checkpoint_state(checkpoint).get(CLIENT_STATE_KEY)
    if state is None:
        raise UserError(f"{checkpoint.path}: not a smollm2 checkpoint (no {CLIENT_STATE_KEY!r} client state)")
    return state


def data_state(client_state: dict[str, Any]) -> dict[str, Any]:
    """The data position part of a checkpoint's client state (before mixtures: step and consumed_samples)."""
    return client_state.get("data", client_state)


def check_same_architecture(
    ours: dict[str, Any], theirs: dict[str, Any], source: str, extra_keys: tuple[str, ...] = (), hint: str = ""
) -> None:
    """Refuse weights of another architecture: `ours` is the config's model section, `theirs` the source's."""
    for name in (*WEIGHT_KEYS, *extra_keys):
        if ours[name] != theirs[name]:
            raise UserError(f"model.{name}: the config says {ours[name]!r} but {source} has {theirs[name]!r}{hint}")


def check_resumable(checkpoint: Checkpoint, architecture: dict[str, Any], zero_stage: int) -> None:
    """Refuse a checkpoint this config cannot continue: another model, or ZeRO off on one side only. Another
    world size or another ZeRO stage (1-3) is fine: smollm2.universal converts the state for it."""
    state = read_client_state(checkpoint)
    # block_size too: the data position counts blocks of that many tokens.
    check_same_architecture(
        architecture,
        state["model_config"],
        f"checkpoint {checkpoint.path}",
        extra_keys=("block_size",),
        hint="; a resumed run must keep the model",
    )
    if (state["zero_stage"] == 0) != (zero_stage == 0):
        # Stage 0 saves the torch optimizer's state whole, stages 1-3 DeepSpeed's flat partitions: DeepSpeed
        # converts between stages 1-3 (the universal format), not to or from stage 0.
        raise UserError(
            f"deepspeed.zero_stage: the config says {zero_stage} but checkpoint {checkpoint.path} was "
            f"written with stage {state['zero_stage']}; stages 1-3 resume from each other, stage 0 only from 0"
        )


# -- pruning ---------------------------------------------------------------------------------------


def prune_checkpoints(root: Path, keep_last: int, keep: str) -> None:
    """Keep `keep` (the checkpoint just written, now `latest`) and the newest `keep_last` - 1 before it; delete
    the older ones and every folder after it (a save cut short, or the future of a run resumed from an older
    checkpoint: its steps are written again when training gets there)."""
    keep_step = checkpoint_step(Checkpoint(root, keep))
    older = sorted(
        (
            Checkpoint(root, p.name)
            for p in root.iterdir()
            if p.is_dir() and TAG_PATTERN.fullmatch(p.name) and p.name != keep
        ),
        key=checkpoint_step,
        reverse=True,
    )
    before = [checkpoint for checkpoint in older if checkpoint_step(checkpoint) < keep_step]
    for checkpoint in [c for c in older if checkpoint_step(c) > keep_step] + before[keep_last - 1 :]:
        shutil.rmtree(checkpoint.path)


# -- `smollm2 checkpoints RUN_DIR` -----------------------------------------------------------------


def add_arguments(parser: Any) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (train.out_dir)")


def run(args: Any) -> None:
    """List a run's checkpoints, newest first: step, size, and whether it is complete and intact."""
    root = Path(args.run_dir) / CHECKPOINTS
    if not root.is_dir():
        raise UserError(f"{args.run_dir}: no {CHECKPOINTS}/ folder (not a run directory, or nothing saved yet)")
    latest = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else None
    print(f"{root} (latest: {latest or 'none'})")
    resumes = None
    for checkpoint, problem in run_checkpoints(args.run_dir):
        size = sum(p.stat().st_size for p in checkpoint.path.rglob("*") if p.is_file())
        if problem is None and resumes is None:
            resumes = checkpoint
        state = "good" + ("  <- --resume auto continues from here" if checkpoint == resumes else "")
        print(
            f"  {checkpoint.tag}  step {checkpoint_step(checkpoint):>8}  {size / 2**20:10.1f} MiB  "
            f"{state if problem is None else problem}"
        )
    if resumes is None:
        print("  no complete checkpoint: a run started here begins from step 0")
