"""Hugging Face interop: transformers' LlamaConfig <-> SmolLM2Config, and LlamaForCausalLM and tokenizer folders.

A folder holds config.json, generation_config.json and the weights as model.safetensors, or as shards
listed in model.safetensors.index.json. Our state-dict keys are transformers' own, so no renaming happens;
a tied LM head is left out of the file, as transformers does. Whatever a file says that our model cannot
be is refused with UserError naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from smollm2.atomic import write_atomic, write_text_atomic
from smollm2.errors import UserError
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Buffers some older transformers versions saved; derived from the config, never needed.
IGNORED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)
# Imported checkpoints often declare very long contexts (SmolLM2-135M: 8192); their default training
# and generation window is capped here so that a block fits in memory on small machines.
IMPORTED_BLOCK_SIZE_CAP = 8192


def hf_config_dict(config: SmolLM2Config) -> dict[str, Any]:
    """The transformers LlamaConfig fields (config.json) describing this model."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.initializer_range,
        "rms_norm_eps": config.rms_norm_eps,
        # transformers < 5 reads rope_theta, transformers 5 reads rope_parameters: write both.
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "pretraining_tp": 1,
        "use_cache": True,
    }


def config_from_hf_dict(
    d: dict[str, Any],
    block_size: int | None = None,
    source: str = "config.json",
) -> SmolLM2Config:
    """Read a transformers LlamaConfig dict; refuse what this model cannot represent, naming `source`.

    `block_size` defaults to min(max_position_embeddings, IMPORTED_BLOCK_SIZE_CAP).
    """
    model_type = d.get("model_type")
    if model_type != "llama":
        raise UserError(f"{source}: model_type is {model_type!r}, expected 'llama'")
    for key, unsupported in (("attention_bias", True), ("mlp_bias", True)):
        if d.get(key) == unsupported:
            raise UserError(f"{source}: {key}={unsupported} is not supported (SmolLM2 has no biases)")
    if d.get("pretraining_tp", 1) != 1:
        raise UserError(f"{source}: pretraining_tp={d['pretraining_tp']} is not supported, expected 1")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise UserError(f"{source}: rope type {rope_type!r} is not supported, expected 'default'")
    rope_theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
    try:
        hidden_size, num_heads = int(d["hidden_size"]), int(d["num_attention_heads"])
        max_positions = int(d.get("max_position_embeddings", 2048))
        values = dict(
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden_size,
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=num_heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or num_heads),
            hidden_act=str(d.get("hidden_act", "silu")),
            max_position_embeddings=max_positions,
            initializer_range=float(d.get("initializer_range", 0.02)),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            block_size=block_size if block_size is not None else min(max_positions, IMPORTED_BLOCK_SIZE_CAP),
            bos_token_id=_first_id(d.get("bos_token_id"), 0),
            eos_token_id=_first_id(d.get("eos_token_id"), 0),
        )
    except KeyError as exc:
        raise UserError(f"{source}: missing key {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"{source}: bad value ({exc})") from None
    head_dim = d.get("head_dim")
    if head_dim is not None and head_dim != hidden_size // num_heads:
        raise UserError(
            f"{source}: head_dim={head_dim} is not supported, expected hidden_size / "
            f"num_attention_heads = {hidden_size // num_heads}"
        )
    return checked_config(SmolLM2Config(**values), source)


def checked_config(config: SmolLM2Config, source: str) -> SmolLM2Config:
    """`config` if the model can be built from it, else UserError naming the file it came from."""
    try:
        config.validate()
    except ValueError as exc:
        raise UserError(f"{source}: {exc}") from None
    return config


def _first_id(value: int | list[int] | None, default: int) -> int:
    """HF configs may list several eos ids; ours holds the first (generation_config keeps the full list)."""
    if value is None:
        return default
    if isinstance(value, list):
        return int(value[0]) if value else default
    return int(value)


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
    return config_from_hf_dict(d, block_size=block_size, source=str(config_path))


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


def model_from_state_dict(
    config: SmolLM2Config,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
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
            raise UserError(
                f"{source}: tensor {key} has shape {tuple(state_dict[key].shape)}, "
                f"expected {tuple(shape)} from the config"
            )
    model.to_empty(device=device)
    model.load_state_dict(state_dict, strict=False)  # strictness checked above; the tied head is absent
    return model.to(dtype).eval()


def load_hf_folder(
    path: str | Path,
    block_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> SmolLM2ForCausalLM:
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
    split = split_torch_state_dict_into_shards(
        state_dict, max_shard_size=max_shard_size or 2**62, filename_pattern="model{suffix}.safetensors"
    )
    written = set()
    for filename, keys in split.filename_to_tensors.items():
        write_atomic(
            folder / filename,
            lambda tmp, keys=keys: save_file({k: state_dict[k] for k in keys}, str(tmp), metadata={"format": "pt"}),
        )
        written.add(filename)
    if split.is_sharded:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in state_dict.values())},
            "weight_map": split.tensor_to_filename,
        }
        _write_json(folder / INDEX_FILE, index)
        written.add(INDEX_FILE)
    dtype_name = str(dtype).removeprefix("torch.")
    # transformers 5 reads "dtype", older versions "torch_dtype".
    _write_json(
        folder / "config.json", {**hf_config_dict(model.config), "dtype": dtype_name, "torch_dtype": dtype_name}
    )
    _write_json(
        folder / "generation_config.json",
        {"bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id},
    )
    for stale in [*folder.glob("model*.safetensors"), folder / INDEX_FILE]:
        if stale.name not in written and stale.exists():
            stale.unlink()


def save_hf_tokenizer(
    tokenizer: Any,
    path: str | Path,
    bos_token: str | None,
    eos_token: str | None,
    chat_template: str | None = None,
    unk_token: str | None = None,
    pad_token: str | None = None,
) -> None:
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
    write_atomic(folder / "tokenizer.json", lambda tmp: tokenizer.save(str(tmp)))
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
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
