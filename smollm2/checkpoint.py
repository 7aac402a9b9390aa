"""Checkpoints: where they are written, what they hold, how they are found, loaded, pruned and turned into a model.

    RUN_DIR/
      config.yaml            resolved config of the last job
      tokenizer.json         the tokenizer of the training data (copied at the start of the run)
      metrics.jsonl, samples.jsonl, tensorboard/
      checkpoints/
        latest               the tag of the newest complete checkpoint (written atomically, after the save)
        step_00001000/       one DeepSpeed checkpoint (engine.save_checkpoint(checkpoints/, tag))
          manifest.json      every file's size and CRC-32, written last: the save finished
          universal/         (made on a resume with another world size or ZeRO stage) the same state in
                             DeepSpeed's universal format, which any partitioning can load

Our own state rides in DeepSpeed's client state under the key "smollm2" (Trainer.state_dict): step,
consumed samples (the data position), every rank's RNG states, the model config, the config hash, the
world size and the ZeRO stage.

Weights: stage 0 keeps them whole in mp_rank_00_model_states.pt['module'] (in bf16 for a run with
DeepSpeed's bf16 weights: the weights it computed with); stages 1-3 are consolidated with DeepSpeed's own
zero_to_fp32 (the fp32 master weights), which does not handle stage 0.

`load_model(path)` is the one way to get a model to evaluate, generate from or export: it takes a run
directory (or one of its checkpoints), a Hugging Face folder or a GGUF file.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smollm2 import faults
from smollm2.atomic import write_text_atomic
from smollm2.errors import UserError, write_failed

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MANIFEST = "manifest.json"
UNIVERSAL = "universal"  # a checkpoint's state in DeepSpeed's universal format (write_universal)
RESHARD_RECORD = "reshard.json"  # written last into universal/: the conversion finished
TAG_PATTERN = re.compile(r"step_(\d+)")
CLIENT_STATE_KEY = "smollm2"
# Fields that change the function a model computes: a resumed run and model.init_from weights must agree
# on these (initializer_range, block_size and the bos/eos ids may differ).
ARCHITECTURE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "tie_word_embeddings",
)


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


def write_manifest(checkpoint: Checkpoint, step: int) -> None:
    """Record every file of a finished save (size and CRC-32) in manifest.json, written last: its presence
    says the checkpoint is complete, its contents let a reader check that nothing rotted or was cut short."""
    files = sorted(p for p in checkpoint.path.rglob("*") if p.is_file() and p.name != MANIFEST)
    with ThreadPoolExecutor(max_workers=8) as pool:  # zlib releases the GIL: files are checksummed in parallel
        checksums = list(pool.map(_crc32, files))
    entries = {
        str(p.relative_to(checkpoint.path)): {"size": p.stat().st_size, "crc32": crc}
        for p, crc in zip(files, checksums)
    }
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


def check_same_checkpoint(choices: list[str | None]) -> None:
    """Every rank picks the checkpoint to resume from on its own (resolve_resume, before the process group
    exists); `choices` are their picks, gathered: the checkpoint's tag (its step; the same folder may have
    other paths on other nodes), None to start fresh. Ranks that see different files (a node-local
    train.out_dir, or a shared file system whose caches lag behind the newest save) would load different
    steps into one model: refused in one line instead."""
    differing = next((rank for rank, choice in enumerate(choices) if choice != choices[0]), None)
    if differing is not None:
        raise UserError(
            f"train.out_dir: the ranks would resume from different checkpoints (rank 0: {choices[0] or 'none'}, "
            f"rank {differing}: {choices[differing] or 'none'}); every rank must see the same run directory, "
            "on a file system shared by every node"
        )


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


def check_same_architecture(
    ours: dict[str, Any], theirs: dict[str, Any], source: str, extra_keys: tuple[str, ...] = (), hint: str = ""
) -> None:
    """Refuse weights of another architecture: `ours` is the config's model section, `theirs` the source's."""
    for name in (*ARCHITECTURE_KEYS, *extra_keys):
        if ours[name] != theirs[name]:
            raise UserError(f"model.{name}: the config says {ours[name]!r} but {source} has {theirs[name]!r}{hint}")


def check_resumable(checkpoint: Checkpoint, architecture: dict[str, Any], zero_stage: int) -> None:
    """Refuse a checkpoint this config cannot continue: another model, or ZeRO off on one side only. Another
    world size or another ZeRO stage (1-3) is fine: reshard_needed() says when the state must be converted."""
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


def reshard_needed(checkpoint: Checkpoint, zero_stage: int, world_size: int) -> bool:
    """Whether a ZeRO checkpoint was sharded for another world size or stage than this job's."""
    state = read_client_state(checkpoint)
    return state["zero_stage"] > 0 and (state["world_size"], state["zero_stage"]) != (world_size, zero_stage)


# -- RNG state -------------------------------------------------------------------------------------


def gather_rng_states(world_size: int, device: torch.device) -> list[dict[str, Any]]:
    """Every rank's Python, NumPy, torch (and CUDA) RNG states, rank by rank. Collective."""
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
    }
    states: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(states, rng)
    return states


def restore_rng_states(states: list[dict[str, Any]], rank: int, world_size: int, device: torch.device) -> None:
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


# -- saving, loading into an engine, pruning -------------------------------------------------------


def save_checkpoint(
    engine: Any, run_dir: Path, step: int, client_state: dict[str, Any], keep_last: int, is_main: bool, group: Any
) -> Path:
    """Write step's checkpoint on every rank, then (rank 0) its manifest, `latest`, and prune. Collective.

    The order makes every moment safe to die in: a folder without a manifest is an unfinished save,
    skipped on resume; `latest` moves only after the manifest. `group` is the gloo group the ranks use to
    agree that a leftover folder of this step is gone before DeepSpeed writes into it.
    """
    checkpoint = Checkpoint(run_dir / CHECKPOINTS, checkpoint_tag(step))
    if is_main and checkpoint.path.exists():  # an interrupted save of this step: no stale file may survive
        shutil.rmtree(checkpoint.path)
    torch.distributed.barrier(group=group)
    try:
        engine.save_checkpoint(
            str(checkpoint.root), tag=checkpoint.tag, client_state={CLIENT_STATE_KEY: client_state}, save_latest=False
        )  # returns after a barrier: every rank has written
        faults.delay_save(step)
        if is_main:
            write_manifest(checkpoint, step)
            write_text_atomic(checkpoint.root / LATEST, checkpoint.tag)
    except Exception as exc:  # a full disk or quota: DeepSpeed's torch.save says only "unexpected pos"
        failure = write_failed(checkpoint.path, exc)
        if is_main:
            shutil.rmtree(checkpoint.path, ignore_errors=True)  # no manifest: never resumed from; free the space
        newest = latest_good_checkpoint(checkpoint.run_dir)
        raise UserError(
            f"checkpoint of step {step}: {failure}; "
            + (f"the newest good one is {newest.path}" if newest else "no checkpoint was written before")
        ) from None
    if is_main:
        prune_checkpoints(checkpoint.root, keep_last, keep=checkpoint.tag)
    return checkpoint.path


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


def load_checkpoint(engine: Any, checkpoint: Checkpoint, universal: bool = False) -> dict[str, Any]:
    """Load weights, optimizer, scheduler into `engine`; returns our client state. Collective.

    universal: load the checkpoint's universal/ folder (write_universal), which DeepSpeed re-partitions for
    this job's ranks and ZeRO stage. DeepSpeed reads its `checkpoint.load_universal` setting only while
    loading, so it is switched on for this load alone: a later rollback may load one of this job's own.
    """
    root, tag = (checkpoint.path, UNIVERSAL) if universal else (checkpoint.root, checkpoint.tag)
    engine._config.load_universal_checkpoint = universal
    try:
        path, client_state = engine.load_checkpoint(str(root), tag=tag)
    finally:
        engine._config.load_universal_checkpoint = False
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load {root / tag}")
    if universal and engine.zero_optimization_stage() == 3:
        _repair_zero3_universal_load(engine.optimizer, root / tag)
    return client_state[CLIENT_STATE_KEY]


def _repair_zero3_universal_load(optimizer: Any, universal: Path) -> None:
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


# -- converting a checkpoint for another world size or ZeRO stage ----------------------------------


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


# -- a model out of a checkpoint, an HF folder or a GGUF file --------------------------------------


def consolidated_state_dict(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a checkpoint of any ZeRO stage."""
    zero_stage = read_client_state(checkpoint)["zero_stage"]
    if zero_stage == 0:
        module = read_checkpoint_state(checkpoint)["module"]
        return {name: tensor.float().clone() for name, tensor in module.items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.root), tag=checkpoint.tag)


def load_run_model(path: str | os.PathLike) -> tuple[Any, Any]:
    """(SmolLM2ForCausalLM in fp32 on CPU, eval mode; its tokenizers.Tokenizer) from a run or checkpoint."""
    from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM
    from smollm2.tokenizer import load_tokenizer

    checkpoint = find_checkpoint(path)
    state = read_client_state(checkpoint)
    model = SmolLM2ForCausalLM(SmolLM2Config(**state["model_config"]))
    weights = consolidated_state_dict(checkpoint)
    if model.config.tie_word_embeddings:
        weights.setdefault("lm_head.weight", weights["model.embed_tokens.weight"])
    result = model.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(
            f"{checkpoint.path}: weights do not fit the model config stored with them "
            f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})"
        )
    tokenizer_path = checkpoint.run_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise UserError(
            f"{tokenizer_path}: missing; the run directory of {checkpoint.path} should hold the "
            "tokenizer its data was prepared with"
        )
    return model.eval(), load_tokenizer(tokenizer_path)


def load_model(
    path: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Any, Any]:
    """(model in eval mode, `tokenizers.Tokenizer` or None) from a run directory or checkpoint, a Hugging Face
    folder (config.json, safetensors, tokenizer.json if present) or a `.gguf` file."""
    from smollm2 import hf

    path = Path(path)
    if not path.exists():
        raise UserError(
            f"{path}: no such file or directory (expected a run directory, a Hugging Face folder or a .gguf file)"
        )
    if path.is_file() and path.suffix.lower() == ".gguf":
        from smollm2.gguf import GGUFFile

        gguf_file = GGUFFile(path)
        config = gguf_file.config()
        model = hf.model_from_state_dict(config, gguf_file.state_dict(config), str(path), dtype, device)
        return model, gguf_file.tokenizer()
    if hf.is_hf_folder(path):
        from smollm2.tokenizer import load_tokenizer

        model = hf.load_hf_folder(path, dtype=dtype, device=device)
        return model, load_tokenizer(path) if (path / "tokenizer.json").is_file() else None
    if path.is_dir() and (
        (path / CHECKPOINTS).is_dir() or (path / LATEST).is_file() or any(path.glob("*model_states.pt"))
    ):
        model, tokenizer = load_run_model(path)
        return model.to(device=device, dtype=dtype), tokenizer
    raise UserError(
        f"{path}: not a model (expected a run directory, a folder with config.json and safetensors "
        f"weights, or a .gguf file)"
    )


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
