"""Hugging Face interop: read and write transformers LlamaForCausalLM folders, and tokenizer folders.

A folder holds config.json, generation_config.json and the weights as model.safetensors, or as shards
listed in model.safetensors.index.json. Our state-dict keys are transformers' own, so no renaming happens;
a tied LM head is left out of the file, as transformers does.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from smollm2.errors import UserError
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Buffers some older transformers versions saved; derived from the config, never needed.
IGNORED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def read_hf_config(folder: Path, block_size: int | None = None) -> SmolLM2Config:
    config_path = folder / "config.json"
    try:
        d = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise UserError(f"{folder}: no config.json (expected a Hugging Face model folder)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(d, dict):
        raise UserError(f"{config_path}: expected a JSON object")
    return SmolLM2Config.from_hf_dict(d, block_size=block_size, source=str(config_path))


def read_hf_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, or of every shard the index lists."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index_path = folder / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{index_path}: expected a JSON object with a 'weight_map' ({exc})") from None
        shard_names = sorted(set(weight_map.values()))
    elif (folder / SINGLE_FILE).is_file():
        shard_names = [SINGLE_FILE]
    else:
        raise UserError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors weights are supported)")
    state_dict: dict[str, torch.Tensor] = {}
    for name in shard_names:
        shard = folder / name
        if not shard.is_file():
            raise UserError(f"{index_path}: lists shard {name}, which does not exist")
        try:
            state_dict.update(load_file(shard))
        except (SafetensorError, OSError) as exc:
            raise UserError(f"{shard}: not a readable safetensors file ({exc})") from None
    return state_dict


def model_from_state_dict(config: SmolLM2Config, state_dict: Mapping[str, torch.Tensor], source: str,
                          dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                          ) -> SmolLM2ForCausalLM:
    """A model with exactly these weights; refuses missing, unexpected or misshapen tensors, naming `source`."""
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith(IGNORED_KEY_SUFFIXES)}
    if config.tie_word_embeddings:
        # Some writers store the tied head anyway; the embedding is the one that counts.
        state_dict.pop("lm_head.weight", None)
    with torch.device("meta"):  # no memory, no random init: every weight is overwritten below
        model = SmolLM2ForCausalLM(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        del expected["lm_head.weight"]
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing:
        raise UserError(f"{source}: missing tensor {missing[0]} ({len(missing)} missing)")
    if unexpected:
        raise UserError(f"{source}: unexpected tensor {unexpected[0]} ({len(unexpected)} unexpected)")
    for key, shape in expected.items():
        if state_dict[key].shape != shape:
            raise UserError(f"{source}: tensor {key} has shape {tuple(state_dict[key].shape)}, "
                            f"expected {tuple(shape)} from the config")
    model.to_empty(device=device)
    model.load_state_dict(state_dict, strict=False)  # strictness checked above; the tied head is absent
    return model.to(dtype).eval()


def load_hf_folder(path: str | Path, block_size: int | None = None, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu") -> SmolLM2ForCausalLM:
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a directory (expected a Hugging Face model folder)")
    config = read_hf_config(folder, block_size)
    return model_from_state_dict(config, read_hf_state_dict(folder), str(folder), dtype, device)


def save_hf_folder(model: SmolLM2ForCausalLM, path: str | Path, max_shard_size: int | str | None = None) -> None:
    """Write config.json, generation_config.json and safetensors weights (sharded above max_shard_size).

    Every file is written under a temporary name and renamed, so a crash never leaves a file that
    looks complete; weight files of an earlier save that the new one does not use are removed.
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        del state_dict["lm_head.weight"]  # transformers re-ties it from the embedding
    dtype = next(iter(state_dict.values())).dtype
    split = split_torch_state_dict_into_shards(state_dict, max_shard_size=max_shard_size or 2**62,
                                               filename_pattern="model{suffix}.safetensors")
    written = set()
    for filename, keys in split.filename_to_tensors.items():
        write_atomic(folder / filename, lambda tmp, keys=keys: save_file(
            {k: state_dict[k] for k in keys}, tmp, metadata={"format": "pt"}))
        written.add(filename)
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state_dict.values())},
                 "weight_map": split.tensor_to_filename}
        _write_json(folder / INDEX_FILE, index)
        written.add(INDEX_FILE)
    dtype_name = str(dtype).removeprefix("torch.")
    # transformers 5 reads "dtype", older versions "torch_dtype".
    _write_json(folder / "config.json", {**model.config.to_hf_dict(), "dtype": dtype_name, "torch_dtype": dtype_name})
    _write_json(folder / "generation_config.json",
                {"bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id})
    for stale in [*folder.glob("model*.safetensors"), folder / INDEX_FILE]:
        if stale.name not in written and stale.exists():
            stale.unlink()


def save_hf_tokenizer(tokenizer: Any, path: str | Path, bos_token: str | None, eos_token: str | None,
                      chat_template: str | None = None, unk_token: str | None = None,
                      pad_token: str | None = None) -> None:
    """tokenizer.json + tokenizer_config.json that transformers.AutoTokenizer.from_pretrained loads as is.

    `tokenizer` is a `tokenizers.Tokenizer`; the special tokens are given by their text (None: not set).
    """
    special = {"bos_token": bos_token, "eos_token": eos_token, "unk_token": unk_token, "pad_token": pad_token}
    special = {name: token for name, token in special.items() if token is not None}
    for name, token in special.items():
        if tokenizer.token_to_id(token) is None:
            raise UserError(f"{name} {token!r} is not in the tokenizer's vocabulary")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "tokenizer.json", lambda tmp: tokenizer.save(tmp))
    config: dict[str, Any] = {
        # The generic fast tokenizer takes tokenizer.json as it is (a named class may rebuild it).
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    _write_json(folder / "tokenizer_config.json", config)


def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def write_atomic(path: Path, write: Callable[[str], object]) -> None:
    """Call write(temporary path) next to `path`, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
