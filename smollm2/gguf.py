"""Read a llama-architecture GGUF file (llama.cpp's format): config, dequantized weights and tokenizer.

Needs the optional `gguf` package (`pip install smollm2[gguf]`) for its quantization tables and numpy
dequantizer. The header (metadata and tensor index) is parsed here directly: gguf.GGUFReader builds a
numpy view for every vocabulary string and took 4-10 s on SmolLM2's 98k strings on the 2-core CI
machine, against under a second for this reader. The whole SmolLM2-135M load took about 4 s there
(transformers' own GGUF loader: 15-60 s).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smollm2.errors import UserError
from smollm2.hf import IMPORTED_BLOCK_SIZE_CAP, checked_config
from smollm2.model import SmolLM2Config

# llama.cpp tensor names -> transformers LlamaForCausalLM keys ("{i}" is the layer).
TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
TOKEN_TYPE_CONTROL = 3  # llama.cpp's token types: 1 normal, 3 control (special), 4 user-defined
TOKEN_TYPE_USER_DEFINED = 4

GGUF_MAGIC = b"GGUF"
# GGUF metadata value types -> struct format of one scalar (8 string, 9 array are handled apart).
SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


@dataclass
class GGUFTensor:
    name: str
    qtype: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # PyTorch order: [rows, columns]
    data: np.ndarray  # the raw bytes, [rows, bytes per row], a view of the memory-mapped file


class _Header:
    """Sequential little-endian reads over the memory-mapped file."""

    def __init__(self, buffer: mmap.mmap) -> None:
        self.buffer = buffer
        self.offset = 0

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.buffer, self.offset)
        self.offset += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.scalar("Q")
        end = self.offset + length
        if end > len(self.buffer):
            raise struct.error("string runs past the end of the file")
        text = self.buffer[self.offset : end].decode("utf-8")
        self.offset = end
        return text

    def value(self, value_type: int) -> Any:
        if value_type == STRING:
            return self.string()
        if value_type == ARRAY:
            item_type, count = self.scalar("I"), self.scalar("Q")
            if item_type in SCALAR_FORMATS and item_type != 7:  # numbers: one numpy read
                dtype = np.dtype("<" + SCALAR_FORMATS[item_type])
                values = np.frombuffer(self.buffer, dtype, count, self.offset)
                self.offset += dtype.itemsize * count
                return values.tolist()
            return [self.value(item_type) for _ in range(count)]
        if value_type not in SCALAR_FORMATS:
            raise ValueError(f"unknown metadata value type {value_type}")
        return self.scalar(SCALAR_FORMATS[value_type])


class GGUFFile:
    """One memory-mapped llama GGUF file: metadata (`fields`), tensor index (`tensors`), read once."""

    def __init__(self, path: str | Path) -> None:
        try:
            from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
        except ImportError:
            raise UserError("reading GGUF needs the gguf package: pip install smollm2[gguf]") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such file (expected a GGUF model file)")
        try:
            with open(self.path, "rb") as f:
                buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            if buffer[:4] != GGUF_MAGIC:
                raise ValueError("no GGUF magic number at the start")
            header = _Header(buffer)
            header.offset = 4
            version, tensor_count, kv_count = header.scalar("I"), header.scalar("Q"), header.scalar("Q")
            if version not in (2, 3):
                raise ValueError(f"GGUF version {version}, expected 2 or 3")
            self.fields: dict[str, Any] = {}
            for _ in range(kv_count):
                key = header.string()
                self.fields[key] = header.value(header.scalar("I"))
            index = []
            for _ in range(tensor_count):
                name = header.string()
                dims = [header.scalar("Q") for _ in range(header.scalar("I"))]
                index.append((name, GGMLQuantizationType(header.scalar("I")), dims, header.scalar("Q")))
            alignment = int(self.fields.get("general.alignment", 32))
            data_start = -(-header.offset // alignment) * alignment
            self.tensors = []
            for name, qtype, dims, offset in index:
                # GGUF lists dimensions innermost first: [columns, rows].
                block_size, block_bytes = GGML_QUANT_SIZES[qtype]
                row_bytes = dims[0] // block_size * block_bytes
                rows = int(np.prod(dims[1:], dtype=np.int64))
                start = data_start + offset
                if start + rows * row_bytes > len(buffer):
                    raise ValueError(f"tensor {name} runs past the end of the file (truncated?)")
                data = np.frombuffer(buffer, np.uint8, rows * row_bytes, start).reshape(rows, row_bytes)
                self.tensors.append(GGUFTensor(name, qtype, tuple(reversed(dims)), data))
        except (ValueError, struct.error, UnicodeDecodeError, KeyError, OSError) as exc:
            raise UserError(f"{self.path}: not a readable GGUF file ({exc})") from None

    def field(self, key: str, default: Any = None) -> Any:
        """A metadata value; a missing key is an error unless a default is given."""
        if key not in self.fields:
            if default is None:
                raise UserError(f"{self.path}: GGUF metadata key {key} is missing")
            return default
        return self.fields[key]

    def config(self, block_size: int | None = None) -> SmolLM2Config:
        """The model config; block_size defaults to min(context length, 8192)."""
        arch = self.field("general.architecture")
        if arch != "llama":
            raise UserError(f"{self.path}: general.architecture is {arch!r}, expected 'llama'")
        hidden = int(self.field("llama.embedding_length"))
        heads = int(self.field("llama.attention.head_count"))
        rope_dim = int(self.field("llama.rope.dimension_count", hidden // heads))
        if rope_dim != hidden // heads:
            raise UserError(
                f"{self.path}: llama.rope.dimension_count {rope_dim} is not head_dim {hidden // heads} "
                f"(partial rotary embeddings are not supported)"
            )
        scaling = self.field("llama.rope.scaling.type", "none")
        if scaling != "none":
            raise UserError(f"{self.path}: llama.rope.scaling.type {scaling!r} is not supported, expected 'none'")
        context = int(self.field("llama.context_length"))
        config = SmolLM2Config(
            vocab_size=int(self.field("llama.vocab_size", len(self.fields.get("tokenizer.ggml.tokens", [])) or None)),
            hidden_size=hidden,
            intermediate_size=int(self.field("llama.feed_forward_length")),
            num_hidden_layers=int(self.field("llama.block_count")),
            num_attention_heads=heads,
            num_key_value_heads=int(self.field("llama.attention.head_count_kv", heads)),
            max_position_embeddings=context,
            # GGUF stores float32: 1e-5 comes back as 9.99999974e-06; keep the value that was meant.
            rms_norm_eps=_float32_value(self.field("llama.attention.layer_norm_rms_epsilon")),
            rope_theta=_float32_value(self.field("llama.rope.freq_base", 10000.0)),
            tie_word_embeddings=not any(t.name == "output.weight" for t in self.tensors),
            block_size=block_size if block_size is not None else min(context, IMPORTED_BLOCK_SIZE_CAP),
            bos_token_id=int(self.field("tokenizer.ggml.bos_token_id", 0)),
            eos_token_id=int(self.field("tokenizer.ggml.eos_token_id", 0)),
        )
        return checked_config(config, str(self.path))

    def state_dict(self, config: SmolLM2Config) -> dict[str, torch.Tensor]:
        """float32 weights under transformers' key names, dequantized by gguf's own dequantizer."""
        from gguf.quants import dequantize

        names = {
            gguf_name.format(i=i): hf_name.format(i=i)
            for gguf_name, hf_name in TENSOR_NAMES.items()
            for i in (range(config.num_hidden_layers) if "{i}" in gguf_name else [0])
        }
        state_dict: dict[str, torch.Tensor] = {}
        for tensor in self.tensors:
            if tensor.name not in names:
                raise UserError(
                    f"{self.path}: unexpected tensor {tensor.name} for a llama model of "
                    f"{config.num_hidden_layers} layers"
                )
            try:
                weight = dequantize(tensor.data, tensor.qtype).reshape(tensor.shape)
            except (NotImplementedError, ValueError) as exc:
                raise UserError(f"{self.path}: cannot dequantize {tensor.name} ({tensor.qtype.name}: {exc})") from None
            if tensor.name.endswith("attn_q.weight"):
                weight = _unpermute(weight, config.num_attention_heads)
            elif tensor.name.endswith("attn_k.weight"):
                weight = _unpermute(weight, config.num_key_value_heads)
            # A copy: unquantized tensors come back as read-only views of the memory map.
            state_dict[names[tensor.name]] = torch.tensor(weight, dtype=torch.float32)
        return state_dict

    def tokenizer(self) -> Any:
        """The byte-level BPE tokenizer as a `tokenizers.Tokenizer`, built as transformers builds it."""
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

        model_kind = self.field("tokenizer.ggml.model")
        if model_kind != "gpt2":
            raise UserError(
                f"{self.path}: tokenizer.ggml.model is {model_kind!r}; only byte-level BPE ('gpt2') is supported"
            )
        tokens = self.field("tokenizer.ggml.tokens")
        token_types = self.field("tokenizer.ggml.token_type", [])
        alphabet = _bytes_to_unicode()
        spelled = set(alphabet.values())
        # Vocabulary entries are in GPT-2's byte alphabet; one stored as raw text is re-spelled byte by byte.
        vocab = {
            token if set(token) <= spelled else "".join(alphabet[b] for b in token.encode("utf-8")): i
            for i, token in enumerate(tokens)
        }
        merges = [tuple(merge.split(" ", 1)) for merge in self.field("tokenizer.ggml.merges")]
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        # Control tokens (<|im_start|>, ...) must stay whole. A "control" token outside the byte alphabet
        # is a llama.cpp mislabel, skipped as transformers does.
        tokenizer.add_special_tokens(
            [
                AddedToken(t, normalized=False, special=True)
                for t, token_type in zip(tokens, token_types)
                if token_type == TOKEN_TYPE_CONTROL and set(t) <= spelled
            ]
        )
        tokenizer.add_tokens(
            [
                AddedToken(t, normalized=False, special=False)
                for t, token_type in zip(tokens, token_types)
                if token_type == TOKEN_TYPE_USER_DEFINED and t in vocab
            ]
        )
        return tokenizer

    def special_tokens(self) -> dict[str, str | None]:
        """bos/eos/unk/pad token texts and the chat template the file stores (None where absent)."""
        tokens = self.field("tokenizer.ggml.tokens")
        out: dict[str, str | None] = {}
        for name, key in (
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("unk_token", "unknown_token_id"),
            ("pad_token", "padding_token_id"),
        ):
            token_id = self.fields.get(f"tokenizer.ggml.{key}")
            out[name] = tokens[token_id] if token_id is not None else None
        out["chat_template"] = self.fields.get("tokenizer.chat_template")
        return out


def _float32_value(value: float) -> float:
    """The shortest decimal that rounds to the same float32: what the writer of the file meant."""
    return float(str(np.float32(value)))


def _unpermute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: HF rotates halves of a head, GGML interleaved pairs."""
    rows = weight.shape[0]
    return weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map: the alphabet of byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(b for b in range(256) if b not in table)})
    return table
