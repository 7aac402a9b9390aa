"""The SmolLM2 model: a Llama-style causal language model in plain PyTorch, module for module as the spec names them.

Reads top to bottom like the spec: config, RMSNorm, rotary embeddings, MLP, attention (and the document
masking of packed blocks), decoder layer, the decoder stack, the LM head with loss and generation. The
state-dict keys are exactly those of transformers' LlamaForCausalLM, so weights move both ways without
renaming (smollm2/hf.py translates the config and reads and writes the files). No distributed code lives
here: smollm2/engine.py wraps this module in DeepSpeed, activation checkpointing and torch.compile from
the outside. Bad hyperparameters raise ValueError naming the field; the config and file readers turn that
into a message for the user.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask
from torch.utils.checkpoint import checkpoint

from smollm2 import ops

# One layer's KV cache: (keys, values), each [batch, num_key_value_heads, seq, head_dim], before repeat_kv.
LayerCache = tuple[torch.Tensor, torch.Tensor]

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def _not_in_weights(default: object) -> object:
    """A field the weights do not depend on: models that differ only in such fields load each other's weights."""
    return field(default=default, metadata={"in_weights": False})


@dataclass
class SmolLM2Config:
    """Model hyperparameters; the defaults are the spec's SmolLM2-135 table (134,515,008 parameters).

    The one definition of the architecture: the training config's model section is this class plus where
    the weights start (smollm2.config.ModelConfig), and WEIGHT_KEYS, the fields two sets of weights must
    agree on, and the activation names are derived from here.
    """

    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536  # the gated MLP's width
    num_hidden_layers: int = 30
    num_attention_heads: int = 9  # head_dim = hidden_size / heads
    num_key_value_heads: int = 3  # grouped-query attention
    hidden_act: str = "silu"  # a name in ACTIVATIONS
    max_position_embeddings: int = 2048  # the RoPE table
    initializer_range: float = _not_in_weights(0.041666666666666664)  # init std, 1/sqrt(hidden)
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True  # the LM head is the embedding matrix
    block_size: int = _not_in_weights(512)  # tokens per training sample (sequence length)
    bos_token_id: int = _not_in_weights(0)
    eos_token_id: int = _not_in_weights(0)  # must be the data tokenizer's end-of-document id
    # Training and evaluation forwards attend only within each document of a packed block (documents end
    # with eos_token_id); generation and padded batches are unaffected.
    document_masking: bool = _not_in_weights(False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        """Raise ValueError naming the first field this model cannot be built with ("field: what is wrong")."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and not value > 0 and not f.name.endswith("_token_id"):
                raise ValueError(f"{f.name}: must be > 0, got {value!r}")
        checks = [
            ("hidden_act", self.hidden_act in ACTIVATIONS,
             f"must be one of {list(ACTIVATIONS)}, got {self.hidden_act!r}"),
            ("num_attention_heads", self.hidden_size % self.num_attention_heads == 0,
             f"{self.num_attention_heads} does not divide hidden_size {self.hidden_size}"),
            ("num_key_value_heads", self.num_attention_heads % self.num_key_value_heads == 0,
             f"{self.num_key_value_heads} does not divide num_attention_heads {self.num_attention_heads}"),
            ("num_attention_heads", self.head_dim % 2 == 0,
             f"head_dim {self.head_dim} (hidden_size / heads) must be even for rotary embeddings"),
            ("block_size", self.block_size <= self.max_position_embeddings,
             f"{self.block_size} exceeds max_position_embeddings {self.max_position_embeddings}"),
            *((name, 0 <= getattr(self, name) < self.vocab_size,
               f"{getattr(self, name)} is not a token id (0 to vocab_size - 1 = {self.vocab_size - 1})")
              for name in ("bos_token_id", "eos_token_id")),
        ]  # fmt: skip
        for name, ok, problem in checks:
            if not ok:
                raise ValueError(f"{name}: {problem}")


# The fields two sets of weights must agree on to be the same function's (a resumed run, model.init_from).
WEIGHT_KEYS = tuple(f.name for f in fields(SmolLM2Config) if f.metadata.get("in_weights", True))


class SmolLM2RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 (as T5LayerNorm / LlamaRMSNorm)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


def _precompute_freqs_cis(dim: int, end: int, theta: float) -> torch.Tensor:
    """cos and sin of position * theta^(-2i/dim) for positions [0, end): shape [end, dim // 2, 2]."""
    # Computed on the CPU whatever the default device: the same values on every device, and no work on meta.
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    freqs = torch.outer(torch.arange(end, dtype=torch.int64, device="cpu").float(), inv_freq)
    return torch.stack([freqs.cos(), freqs.sin()], dim=-1)


class SmolLM2RotaryEmbedding(nn.Module):
    """cos/sin caches [positions, head_dim] for rotary embeddings, grown when a longer sequence comes."""

    def __init__(self, dim: int, max_position_embeddings: int, base: float) -> None:
        super().__init__()
        self.dim = dim
        self.base = base
        self.build_cache(max_position_embeddings)

    def build_cache(self, seq_len: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> None:
        """(Re)compute the caches for positions [0, seq_len), on `device` (default: the current default device)."""
        freqs_cis = _precompute_freqs_cis(self.dim, seq_len, self.base)
        # Both halves of head_dim use the same frequencies (rotate_half pairs i with i + dim/2).
        cos = torch.cat([freqs_cis[..., 0], freqs_cis[..., 0]], dim=-1)
        sin = torch.cat([freqs_cis[..., 1], freqs_cis[..., 1]], dim=-1)
        device = device if device is not None else torch.get_default_device()
        # Non-persistent: derived from the config, never part of a checkpoint (matches transformers' keys).
        self.register_buffer("cos_cached", cos.to(device, dtype), persistent=False)
        self.register_buffer("sin_cached", sin.to(device, dtype), persistent=False)
        self.max_seq_len_cached = seq_len

    def forward(self, x: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        if seq_len > self.max_seq_len_cached:
            self.build_cache(seq_len, self.cos_cached.device, self.cos_cached.dtype)
        return self.cos_cached[:seq_len].to(x.dtype), self.sin_cached[:seq_len].to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, position_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q, k [B, heads, L, head_dim] by the angles of `position_ids` [B or 1, L]."""
    cos = cos[position_ids].unsqueeze(1)  # [B, 1, L, head_dim]: broadcasts over heads
    sin = sin[position_ids].unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class SmolLM2MLP(nn.Module):
    """down_proj(act(gate_proj(x)) * up_proj(x)), no biases."""

    def __init__(self, config: SmolLM2Config) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Gate and up stay two matmuls: one on their concatenated weights ran the step slower (its fused
        # SwiGLU backward writes both gradients into one tensor; bench/RESULTS.md, levers dropped).
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def repeat_kv(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, kv_heads, L, D] -> [B, kv_heads * n_rep, L, D], each KV head serving n_rep query heads."""
    if n_rep == 1:
        return hidden_states
    batch, num_key_value_heads, seq_len, head_dim = hidden_states.shape
    hidden_states = hidden_states[:, :, None].expand(batch, num_key_value_heads, n_rep, seq_len, head_dim)
    return hidden_states.reshape(batch, num_key_value_heads * n_rep, seq_len, head_dim)


def document_ids(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """[B, L] int32: which document of its packed block each token is in, counted from 0.

    Every document ends with eos_token_id (smollm2/prepare.py writes them so) and the eos belongs to the
    document it ends, so a token's document is the number of eos tokens before it. A block that starts
    inside a document has that document's tail as its document 0.
    """
    is_eos = (input_ids == eos_token_id).to(torch.int32)
    return is_eos.cumsum(dim=1, dtype=torch.int32) - is_eos


def document_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """bool [B, 1, L, L]: query i may attend key j when j <= i and both are in the same document."""
    seq_len = document_ids.shape[1]
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=document_ids.device).tril()
    return (document_ids[:, None, :, None] == document_ids[:, None, None, :]) & causal


class SmolLM2Attention(nn.Module):
    """Grouped-query self-attention softmax(QK^T / sqrt(head_dim)) V with rotary embeddings and an optional KV cache.

    torch's scaled_dot_product_attention computes it (cuDNN / flash kernels on GPUs); the tests check it
    against the formula written out. With document masking on CUDA, FlexAttention does (ops.flex_attention).
    """

    def __init__(self, config: SmolLM2Config) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_key_value_heads * self.head_dim, bias=False)
        # Q/K/V stay three matmuls: fusing them (and gate/up) on concatenated weights ran the step slower (its
        # fused q/k/v gradient kernel alone took a large share of the step; bench/RESULTS.md, levers dropped).
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | BlockMask | None = None,
        past_key_value: LayerCache | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, LayerCache | None]:
        """`attention_mask`: None (plain causal), bool [B, 1, L, past + L] (True = may attend), or the
        document mask (no cache then): bool, or a FlexAttention BlockMask, of the first n <= B rows; the
        rows after those attend causally."""
        batch, seq_len, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden_states).view(batch, seq_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden_states).view(batch, seq_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin, position_ids)
        if past_key_value is not None:
            k = torch.cat([past_key_value[0], k], dim=2)
            v = torch.cat([past_key_value[1], v], dim=2)
        present = (k, v) if use_cache else None
        if attention_mask is not None and attention_mask.shape[0] < batch:
            # Document masking covers the first rows only; the rest hold one document each (_document_mask).
            # Each part goes through o_proj on its own and the projections are joined: joining the attention
            # outputs instead kept that join for o_proj's backward, a third copy next to the two outputs
            # the attention kernels keep (bench/RESULTS.md, document masking).
            mixed_rows = attention_mask.shape[0]
            masked = self._attend(q[:mixed_rows], k[:mixed_rows], v[:mixed_rows], attention_mask)
            whole = self._attend(q[mixed_rows:], k[mixed_rows:], v[mixed_rows:], None)
            return torch.cat([self._project(masked), self._project(whole)]), present
        return self._project(self._attend(q, k, v, attention_mask, causal=past_key_value is None)), present

    def _project(self, out: torch.Tensor) -> torch.Tensor:
        """o_proj of the attention output [B, heads, L, head_dim] -> [B, L, hidden]."""
        batch, _, seq_len, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq_len, self.num_heads * self.head_dim))

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attention_mask: torch.Tensor | BlockMask | None,
        causal: bool = True,
    ) -> torch.Tensor:
        # Without a mask, the model only calls us with no cache (causal) or one new token after the cache (it
        # sees every key: not causal). A Python bool, not `seq_len > 1`: with a dynamic length (generation's
        # prompts, compiled) that is symbolic, which SDPA refuses, and dynamo split the layer's graph there.
        if attention_mask is None:
            # SDPA takes the KV heads as they are (enable_gqa) instead of repeat_kv's copies: faster, and
            # less memory (bench/RESULTS.md, what makes it fast).
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=self.num_key_value_groups > 1)
        if isinstance(attention_mask, BlockMask):  # document masking on CUDA: skips other documents' keys
            return ops.flex_attention(q, k, v, attention_mask, enable_gqa=self.num_key_value_groups > 1)
        # Boolean masks (padding; document masking on CPU): the masked kernels want every head's K and V.
        k = repeat_kv(k, self.num_key_value_groups)
        v = repeat_kv(v, self.num_key_value_groups)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)


class SmolLM2DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: SmolLM2Config) -> None:
        super().__init__()
        # Registration order = transformers' (same parameter order, so optimizer states line up too).
        self.self_attn = SmolLM2Attention(config)
        self.mlp = SmolLM2MLP(config)
        self.input_layernorm = SmolLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = SmolLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.selective_checkpoint = False  # keep matmul outputs, recompute the rest (set_activation_checkpointing)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | BlockMask | None = None,
        past_key_value: LayerCache | None = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, LayerCache | None]:
        if self.selective_checkpoint and torch.is_grad_enabled():
            # Inside forward, so that compiling the layer compiles the checkpoint with it and the policy
            # sees the traced matmuls. Around a compiled layer it would see none and recompute everything
            # (the memory and speed of full recompute, measured: bench/RESULTS.md, activation checkpointing).
            return ops.selective_checkpoint(
                self._block, hidden_states, cos, sin, position_ids, attention_mask, past_key_value, use_cache
            )
        return self._block(hidden_states, cos, sin, position_ids, attention_mask, past_key_value, use_cache)

    def _block(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | BlockMask | None,
        past_key_value: LayerCache | None,
        use_cache: bool,
    ) -> tuple[torch.Tensor, LayerCache | None]:
        attn_out, present = self.self_attn(
            self.input_layernorm(hidden_states), cos, sin, position_ids, attention_mask, past_key_value, use_cache
        )
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, present


class SmolLM2Model(nn.Module):
    """Token embeddings -> decoder layers -> final RMSNorm."""

    def __init__(self, config: SmolLM2Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(SmolLM2DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = SmolLM2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = SmolLM2RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta)
        self.checkpoint_every_n_layers = 0  # whole-layer recompute (selective checkpointing lives in the layers)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Sequence[LayerCache] | None = None,
        use_cache: bool = False,
        position_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[LayerCache, ...] | None]:
        batch, seq_len = input_ids.shape
        past_len = past_key_values[0][0].shape[2] if past_key_values is not None else 0
        mask = _attention_mask(attention_mask, batch, seq_len, past_len, input_ids.device)
        restore_order = None
        if self.config.document_masking and attention_mask is None and past_key_values is None and not use_cache:
            # Positions keep counting across the documents of a block instead of restarting at each one:
            # a rotary score depends on i - j only, so a document attended to alone scores the same
            # wherever it sits (up to float rounding; tests/test_document_masking.py), and one [1, L]
            # row of positions (cos/sin) serves every block, as without masking.
            input_ids, restore_order, mask = _document_mask(input_ids, self.config.eos_token_id)
        hidden_states = self.embed_tokens(input_ids)
        if torch.is_autocast_enabled(input_ids.device.type):
            # The residual stream in the autocast dtype, as with bf16 weights: an fp32 stream would double
            # the bytes of every norm and residual add (bench/RESULTS.md, what makes it fast).
            hidden_states = hidden_states.to(torch.get_autocast_dtype(input_ids.device.type))
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + seq_len, device=input_ids.device).unsqueeze(0)
            cos, sin = self.rotary_emb(hidden_states, past_len + seq_len)
        else:
            cos, sin = self.rotary_emb(hidden_states, int(position_ids.max()) + 1)
        checkpoint_every = self.checkpoint_every_n_layers if torch.is_grad_enabled() else 0
        presents = []
        for i, layer in enumerate(self.layers):
            past = past_key_values[i] if past_key_values is not None else None
            if checkpoint_every and i % checkpoint_every == 0:
                hidden_states, present = checkpoint(
                    layer, hidden_states, cos, sin, position_ids, mask, past, use_cache, use_reentrant=False
                )
            else:
                hidden_states, present = layer(hidden_states, cos, sin, position_ids, mask, past, use_cache)
            presents.append(present)
        hidden_states = self.norm(hidden_states)
        if restore_order is not None:
            hidden_states = hidden_states.index_select(0, restore_order)
        return hidden_states, (tuple(presents) if use_cache else None)


def _attention_mask(
    attention_mask: torch.Tensor | None, batch: int, seq_len: int, past_len: int, device: torch.device
) -> torch.Tensor | None:
    """bool [B, 1, L, past + L] (True = may attend), or None when plain causal attention is right.

    `attention_mask` is the usual [B, past + L] padding mask of 1 (token) / 0 (padding).
    """
    if attention_mask is None and (past_len == 0 or seq_len == 1):
        return None
    total = past_len + seq_len
    query_pos = torch.arange(past_len, total, device=device)[:, None]
    mask = (torch.arange(total, device=device)[None, :] <= query_pos)[None, None]  # [1, 1, L, total]
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, :].bool()
        # A padded query row may see nothing at all; let it see everything instead, so softmax stays
        # finite (its output is never used, but a NaN would leak through 0 * NaN in later layers).
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask.expand(batch, 1, seq_len, total)


def _document_mask(
    input_ids: torch.Tensor, eos_token_id: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | BlockMask | None]:
    """The rows of a packed micro-batch reordered so that those holding more than one document come first,
    the order that restores them (None: already so), and those rows' document-causal mask (None: no such row).

    Only those rows need the document mask; a row of one document is plain causal attention, whose kernel
    is faster (cuDNN's against FlexAttention's on the same tiles: bench/RESULTS.md, document masking), and
    long documents leave most rows whole. The mask is a FlexAttention
    BlockMask where FlexAttention trains (CUDA), else the boolean mask for SDPA (CPU; the reference). The
    kernels' batch sizes depend on the documents, so this reads one bool a row back to the host.
    """
    ids = document_ids(input_ids, eos_token_id)
    several_documents = (ids[:, -1] > 0).cpu()
    mixed_rows = int(several_documents.sum())
    restore_order = None
    if not several_documents[:mixed_rows].all():
        order = torch.argsort((~several_documents).to(torch.uint8), stable=True).to(input_ids.device)
        restore_order = torch.argsort(order)
        input_ids, ids = input_ids.index_select(0, order), ids.index_select(0, order)
    if mixed_rows == 0:
        return input_ids, restore_order, None
    ids = ids[:mixed_rows]
    mask = ops.document_block_mask(ids) if ops.flex_attention_supported(input_ids.device) else document_causal_mask(ids)
    return input_ids, restore_order, mask


@dataclass
class SmolLM2Output:
    logits: torch.Tensor | None  # None on the `targets=` training path
    loss: torch.Tensor | None = None
    past_key_values: tuple[LayerCache, ...] | None = None


class SmolLM2ForCausalLM(nn.Module):
    """SmolLM2Model + LM head (tied to the embeddings by default), shifted cross-entropy and generate."""

    def __init__(self, config: SmolLM2Config) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.model = SmolLM2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init_weights)

    def to_empty(self, *, device: torch.device | str | None, recurse: bool = True) -> SmolLM2ForCausalLM:
        """Materialize a model built under `torch.device("meta")` (no memory, no init cost): weights are
        left uninitialized (load a state dict next), the LM head is re-tied and the rotary caches rebuilt."""
        super().to_empty(device=device, recurse=recurse)
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        rotary = self.model.rotary_emb
        rotary.build_cache(rotary.max_seq_len_cached, rotary.cos_cached.device)
        return self

    def _init_weights(self, module: nn.Module) -> None:
        # As transformers' LlamaPreTrainedModel: N(0, initializer_range) for matrices, ones for norms.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, SmolLM2RMSNorm):
            nn.init.ones_(module.weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: Sequence[LayerCache] | None = None,
        use_cache: bool = False,
        position_ids: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> SmolLM2Output:
        """`labels` are aligned with `input_ids` (HF convention): token t predicts labels[t + 1]; -100 is ignored.

        `targets` are the next tokens already shifted (targets[:, t] follows input_ids[:, t], as the packed
        data gives them; -100 ignored): the training path. The loss then comes from the hidden states in
        chunks (ops.fused_linear_cross_entropy), the [B, L, vocab] logits are never made, and `.logits` is None.
        """
        hidden_states, presents = self.model(input_ids, attention_mask, past_key_values, use_cache, position_ids)
        if targets is not None:
            loss = ops.fused_linear_cross_entropy(hidden_states.flatten(0, 1), self.lm_head.weight, targets.flatten())
            return SmolLM2Output(logits=None, loss=loss, past_key_values=presents)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            # Shift the labels rather than the logits: no copy of the [B, L, vocab] tensor.
            targets = F.pad(labels, (0, 1), value=-100)[:, 1:]
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        return SmolLM2Output(logits=logits, loss=loss, past_key_values=presents)

    def set_activation_checkpointing(self, every_n_layers: int, selective: bool = False) -> None:
        """Recompute activations in backward for every N-th layer (0: off, 1: all layers).

        `selective`: those layers keep their matmul and attention outputs and recompute only the
        elementwise ops (norms, RoPE, SwiGLU): a little speed for much memory (bench/RESULTS.md,
        activation checkpointing).
        """
        if every_n_layers < 0:
            raise ValueError(f"every_n_layers must be >= 0, got {every_n_layers}")
        self.model.checkpoint_every_n_layers = 0 if selective else every_n_layers
        for i, layer in enumerate(self.model.layers):
            layer.selective_checkpoint = selective and every_n_layers > 0 and i % every_n_layers == 0

    def num_parameters(self) -> int:
        """Unique parameters: the tied LM head shares the embedding and counts once."""
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Append up to `max_new_tokens` sampled tokens to `input_ids` [B, T]; return [B, T + new].

        temperature 0 is greedy. The KV cache holds at most block_size positions: when the next token
        would not fit, the context is cropped to its last block_size tokens and the cache recomputed
        (positions restart at 0, so they never exceed what the model was trained on). Stops when every
        row has produced an eos token (finished rows are padded with it). `on_token(id)` streams each
        new token of a single sequence.
        """
        if on_token is not None and input_ids.shape[0] != 1:
            raise ValueError(f"on_token streams a single sequence; input_ids has batch size {input_ids.shape[0]}")
        block_size = self.config.block_size
        eos_ids = torch.tensor(
            [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or []),
            dtype=torch.long,
            device=input_ids.device,
        )
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        tokens, cache = input_ids, None
        for _ in range(max_new_tokens):
            if cache is None or cache[0][0].shape[2] + 1 > block_size:
                out = self(tokens[:, -block_size:], use_cache=True)
            else:
                out = self(tokens[:, -1:], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            next_token = sample_next_token(out.logits[:, -1, :], temperature, top_k, top_p, generator)
            if len(eos_ids):
                next_token = torch.where(finished, eos_ids[0], next_token)
                finished |= torch.isin(next_token, eos_ids)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            if on_token is not None:
                on_token(int(next_token[0]))
            if finished.all():
                break
        return tokens


def sample_next_token(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of `logits` [B, vocab]: greedy at temperature 0, else top-k / top-p sampling.

    Logits that are not finite (a diverged model) never crash the sampler: NaN and -inf count as
    impossible tokens, +inf as certain ones, and a row with no possible token falls back to id 0.
    """
    logits = logits.float() / (temperature or 1.0)
    logits = torch.nan_to_num(logits, nan=-math.inf, posinf=torch.finfo(torch.float32).max, neginf=-math.inf)
    if temperature == 0:
        return logits.argmax(dim=-1)
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the more likely ones already cover top_p; the best token always stays.
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    hopeless = ~torch.isfinite(logits).any(dim=-1, keepdim=True)
    probs = logits.masked_fill(hopeless, 0.0).softmax(dim=-1)  # uniform where nothing was possible
    choice = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
    return torch.where(hopeless.squeeze(-1), 0, choice)
