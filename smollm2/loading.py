"""Load a model (and its tokenizer, when one comes with it) from whatever a user points at.

One dispatch function, `load_model`, decides by what the path is: a training run directory (or one of
its checkpoints), a Hugging Face folder (config.json, safetensors, tokenizer.json if present) or a
`.gguf` file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from smollm2.errors import UserError
from smollm2.model import SmolLM2ForCausalLM


def load_model(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               ) -> tuple[SmolLM2ForCausalLM, Any]:
    """(model in eval mode, `tokenizers.Tokenizer` or None) from a run directory, an HF folder or a GGUF file."""
    from smollm2 import hf, run_dir

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory (expected a run directory, a Hugging Face folder "
                        f"or a .gguf file)")
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _load_gguf(path, dtype, device)
    if hf.is_hf_folder(path):
        model = hf.load_hf_folder(path, dtype=dtype, device=device)
        return model, load_tokenizer_file(path / "tokenizer.json") if (path / "tokenizer.json").is_file() else None
    if path.is_dir() and _is_run_or_checkpoint(path):
        model, tokenizer = run_dir.load_run_model(path)
        return model.to(device=device, dtype=dtype), tokenizer
    raise UserError(f"{path}: not a model (expected a run directory, a folder with config.json and safetensors "
                    f"weights, or a .gguf file)")


def _is_run_or_checkpoint(path: Path) -> bool:
    from smollm2.run_dir import CHECKPOINTS, LATEST

    return (path / CHECKPOINTS).is_dir() or (path / LATEST).is_file() or any(path.glob("*model_states.pt"))


def _load_gguf(path: Path, dtype: torch.dtype, device: str | torch.device) -> tuple[SmolLM2ForCausalLM, Any]:
    from smollm2.gguf import GGUFFile
    from smollm2.hf import model_from_state_dict

    gguf_file = GGUFFile(path)
    config = gguf_file.config()
    model = model_from_state_dict(config, gguf_file.state_dict(config), str(path), dtype, device)
    return model, gguf_file.tokenizer()


def load_tokenizer_file(path: Path) -> Any:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for unreadable files
        raise UserError(f"{path}: not a readable tokenizer.json ({exc})") from None
