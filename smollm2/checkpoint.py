"""Checkpoints: where they are written, what they hold, how they are found, loaded, pruned and turned into a model.

    RUN_DIR/
      config.yaml            resolved config of the last job
      tokenizer.json         the tokenizer of the training data (copied at the start of the run)
      metrics.jsonl, samples.jsonl, tensorboard/
      checkpoints/
        latest               the tag of the newest complete checkpoint (written atomically, after the save)
        step_00001000/       one DeepSpeed checkpoint (engine.save_checkpoint(checkpoints/, tag))

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

import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smollm2.atomic import write_text_atomic
from smollm2.errors import UserError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
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


# -- finding checkpoints ---------------------------------------------------------------------------


def latest_checkpoint(run_dir: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint `latest` points to in RUN_DIR/checkpoints, or None when there is none yet."""
    root = Path(run_dir) / CHECKPOINTS
    return _from_latest(root) if (root / LATEST).is_file() else None


def _from_latest(root: Path) -> Checkpoint:
    tag = (root / LATEST).read_text().strip()
    if not (root / tag).is_dir():
        raise UserError(f"{root / LATEST}: points to {tag!r}, which is not a folder in {root}")
    return Checkpoint(root, tag)


def find_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A run directory (its latest checkpoint), its checkpoints/ folder, or one checkpoint's folder."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such run directory or checkpoint folder")
    if (path / CHECKPOINTS).is_dir():
        path = path / CHECKPOINTS
    if (path / LATEST).is_file():
        return _from_latest(path)
    if any(path.glob("*model_states.pt")):
        return Checkpoint(path.parent, path.name)
    raise UserError(
        f"{path}: no checkpoint here (expected a run directory with {CHECKPOINTS}/{LATEST}, "
        "or a checkpoint folder holding *model_states.pt)"
    )


def resolve_resume(resume: str, run_dir: Path) -> Checkpoint | None:
    """--resume: "auto" (the run's latest checkpoint, if any), "never" (refuses a run that has some) or a path."""
    if resume == "auto":
        return latest_checkpoint(run_dir)
    if resume == "never":
        if latest_checkpoint(run_dir) is not None:
            raise UserError(
                f"--resume never: {run_dir} already has checkpoints; use --resume auto to continue "
                "it, or another train.out_dir"
            )
        return None
    return find_checkpoint(resume)


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


def check_resumable(checkpoint: Checkpoint, architecture: dict[str, Any], zero_stage: int, world_size: int) -> None:
    """Refuse a checkpoint this config cannot continue: another model, ZeRO stage or (ZeRO 1-3) world size."""
    state = read_client_state(checkpoint)
    # block_size too: the data position counts blocks of that many tokens.
    check_same_architecture(
        architecture,
        state["model_config"],
        f"checkpoint {checkpoint.path}",
        extra_keys=("block_size",),
        hint="; a resumed run must keep the model",
    )
    if state["zero_stage"] != zero_stage:
        raise UserError(
            f"deepspeed.zero_stage: the config says {zero_stage} but checkpoint {checkpoint.path} was "
            f"written with stage {state['zero_stage']}"
        )
    if state["zero_stage"] > 0 and state["world_size"] != world_size:
        # ZeRO shards the optimizer state by rank; DeepSpeed cannot re-shard it on load.
        raise UserError(
            f"{checkpoint.path}: written by {state['world_size']} ranks with ZeRO stage "
            f"{state['zero_stage']}, cannot resume on {world_size}; resume on "
            f"{state['world_size']} ranks (stage 0 checkpoints resume on any number)"
        )


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
    engine: Any, run_dir: Path, step: int, client_state: dict[str, Any], keep_last: int, is_main: bool
) -> Path:
    """Write step's checkpoint on every rank, then (rank 0) point `latest` at it and prune old ones. Collective."""
    root, tag = run_dir / CHECKPOINTS, checkpoint_tag(step)
    engine.save_checkpoint(
        str(root), tag=tag, client_state={CLIENT_STATE_KEY: client_state}, save_latest=False
    )  # returns after a barrier: every rank has written
    if is_main:
        write_text_atomic(root / LATEST, tag)  # `latest` never names a half-written checkpoint
        prune_checkpoints(root, keep_last, keep=tag)
    return root / tag


def prune_checkpoints(root: Path, keep_last: int, keep: str) -> None:
    """Delete all but the newest `keep_last` step_* folders; never `keep` (the one just written)."""
    tags = sorted(
        (int(m.group(1)), p.name) for p in root.iterdir() if p.is_dir() and (m := TAG_PATTERN.fullmatch(p.name))
    )
    for _, name in tags[:-keep_last]:
        if name != keep:
            shutil.rmtree(root / name)


def load_checkpoint(engine: Any, checkpoint: Checkpoint) -> dict[str, Any]:
    """Load weights, optimizer, scheduler into `engine`; returns our client state. Collective."""
    path, client_state = engine.load_checkpoint(str(checkpoint.root), tag=checkpoint.tag)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load {checkpoint.path}")
    return client_state[CLIENT_STATE_KEY]


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
