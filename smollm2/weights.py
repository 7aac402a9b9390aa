"""Weights from a run's checkpoint, a Hugging Face folder or a GGUF file, and the model a training run starts from.

`load_model(path)` is the one way to get a model to evaluate, generate from or export. From a checkpoint,
stage 0 keeps the weights whole in mp_rank_00_model_states.pt['module'] (in bf16 for a run with
DeepSpeed's bf16 weights: the weights it computed with); stages 1-3 are consolidated with DeepSpeed's own
zero_to_fp32 (the fp32 master weights), which does not handle stage 0. `build_model(config)` is the model
a training run starts from: freshly initialized, or the weights of model.init_from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from smollm2 import hf
from smollm2.checkpoint import (
    CHECKPOINTS,
    LATEST,
    Checkpoint,
    check_same_architecture,
    find_checkpoint,
    read_checkpoint_state,
    read_client_state,
)
from smollm2.errors import UserError
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM
from smollm2.tokenizer import load_tokenizer, tokenizer_fingerprint


def build_model(config: Any, data_tokenizer_fingerprint: str) -> SmolLM2ForCausalLM:
    """A freshly initialized model (seeded: every rank builds the same one), or the model.init_from weights.

    `config` is the training config (smollm2.config.Config); the weights of model.init_from must have its
    architecture and come with the data's tokenizer, if they bring one."""
    architecture = SmolLM2Config(**config.model.architecture())
    torch.manual_seed(config.train.seed)
    if config.model.init_from is None:
        return SmolLM2ForCausalLM(architecture)
    source = config.model.init_from
    loaded, tokenizer = load_model(source)
    check_same_architecture(config.model.architecture(), vars(loaded.config), f"model.init_from {source}")
    if tokenizer is not None and tokenizer_fingerprint(tokenizer) != data_tokenizer_fingerprint:
        raise UserError(
            f"model.init_from: {source} comes with another tokenizer than data.path's; prepare the "
            "data with the model's tokenizer (smollm2 tokenizer extract / the folder's tokenizer.json)"
        )
    model = SmolLM2ForCausalLM(architecture)  # our block size, initializer and token ids
    model.load_state_dict(loaded.state_dict())
    return model


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
