"""Reading a run directory: find its checkpoints, read what they hold, rebuild the model from any stage.

    RUN_DIR/
      config.yaml            resolved config of the last job
      tokenizer.json         the tokenizer of the training data (copied at the start of the run)
      metrics.jsonl, samples.jsonl, tensorboard/
      checkpoints/
        latest               the tag of the newest complete checkpoint (written atomically)
        step_00001000/       one DeepSpeed checkpoint (engine.save_checkpoint(checkpoints/, tag))

Our own state rides in DeepSpeed's client state under the key "smollm2" (see Trainer.state_dict):
step, consumed samples, every rank's RNG states, the model config and the config hash.

Weights: stage 0 keeps them whole in mp_rank_00_model_states.pt['module'] (in bf16 for a bf16 run: the
weights it computed with); stages 1-3 are consolidated with DeepSpeed's own zero_to_fp32 (the fp32 master
weights), which does not handle stage 0.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from smollm2.errors import UserError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TAG_PATTERN = re.compile(r"step_(\d+)")


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
    raise UserError(f"{path}: no checkpoint here (expected a run directory with {CHECKPOINTS}/{LATEST}, "
                    "or a checkpoint folder holding *model_states.pt)")


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
    state = read_checkpoint_state(checkpoint).get("smollm2")
    if state is None:
        raise UserError(f"{checkpoint.path}: not a smollm2 checkpoint (no 'smollm2' client state)")
    return state


def consolidated_state_dict(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a checkpoint of any ZeRO stage."""
    zero_stage = read_client_state(checkpoint)["zero_stage"]
    if zero_stage == 0:
        module = read_checkpoint_state(checkpoint)["module"]
        return {name: tensor.float().clone() for name, tensor in module.items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.root), tag=checkpoint.tag)


def load_run_model(path: str | os.PathLike):
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
        raise UserError(f"{checkpoint.path}: weights do not fit the model config stored with them "
                        f"(missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")
    tokenizer_path = checkpoint.run_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise UserError(f"{tokenizer_path}: missing; the run directory of {checkpoint.path} should hold the "
                        "tokenizer its data was prepared with")
    return model.eval(), load_tokenizer(tokenizer_path)
