"""Fast paths for the training step, each a drop-in for a plain PyTorch expression and tested against it.

- `fused_linear_cross_entropy`: the LM head and cross-entropy in token chunks, so the
  [tokens, vocab] logits never exist whole and never in float32. SmolLM2's head is 49152 wide: at
  micro-batch 128 x 512 tokens the plain `F.cross_entropy(logits.float())` holds 6.4 GB of bf16 logits,
  12.9 GB of their float32 copy and as much again for their gradient, and it is the largest
  memory-bound part of the step. Here each chunk's logits are made, turned into their gradient in one
  fused pass and multiplied back into the hidden-state and weight gradients right away (Liger-Kernel's
  "fused linear cross-entropy" idea: cuBLAS for the matmuls; on CUDA one Triton kernel for the
  softmax/gradient pass, which writes the gradient over the logits; plain PyTorch on CPU).
  `SmolLM2ForCausalLM.forward(..., targets=)` uses it; `next_token_loss` is the plain expression, which the
  trainer takes with `train.fused_loss: false` and the validation loss always.
- `selective_checkpoint`: activation checkpointing that keeps the matmul and attention outputs and
  recomputes only the cheap elementwise ops (norms, RoPE, SwiGLU) in backward
  (`SmolLM2ForCausalLM.set_activation_checkpointing(n, selective=True)`).
- `flex_attention` with `document_block_mask`: attention within each document of a packed block
  (`model.document_masking`), the drop-in for SDPA with the boolean mask `model.document_causal_mask`.
  FlexAttention works on tiles of 128 x 128 query/key positions: the mask marks each tile empty (skipped:
  keys in earlier documents), full (no mask work) or partial: the shorter the documents, the fewer tiles
  are computed. Rows of one document skip it: plain causal SDPA is faster on the same tiles
  (`model._document_mask` puts them after the others).

Everything here runs on CPU too (the same code, uncompiled; the loss kernel in Triton's interpreter), which is
how the tests check it; FlexAttention only forward there: its CPU backward does not exist (torch 2.13), so the
model trains on CPU with SDPA.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import flex_attention as flex

# Tokens per chunk: 16384 x 49152 bf16 logits are 1.6 GB (the loss kernel writes their gradient over them). Alone,
# the whole loss is faster in chunks of 8192 (bench/loss_kernel.py), but the config's training step was faster at
# 16384 (code against code; bench/RESULTS.md), so the step decides.
DEFAULT_CHUNK_TOKENS = 16384


def _chunk_loss_and_grad(
    logits: torch.Tensor, targets: torch.Tensor, grad_scale: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of one chunk, and d(summed loss * grad_scale)/d logits in the logits' dtype.

    The gradient of -log softmax(x)[t] is softmax(x) - onehot(t); ignored rows get zero.
    """
    logits32 = logits.float()
    lse = torch.logsumexp(logits32, dim=-1, keepdim=True)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0)
    target_logits = logits32.gather(1, safe_targets[:, None])
    loss_sum = torch.where(valid[:, None], lse - target_logits, 0.0).sum()
    is_target = torch.arange(logits.shape[1], device=logits.device)[None, :] == safe_targets[:, None]
    row_scale = torch.where(valid, grad_scale, 0.0)[:, None]
    grad = (torch.exp(logits32 - lse) - is_target.to(torch.float32)) * row_scale
    return loss_sum, grad.to(logits.dtype)


# Columns a program of the loss kernel reads at a time (its registers hold one tile of a row: a variant that held
# a whole row of 49152 in registers across both passes ran slower), and its warps, as measured in the training
# step (bench/loss_kernel.py times the others, bench/RESULTS.md).
LOSS_KERNEL_TILE = 4096
LOSS_KERNEL_WARPS = 8


@functools.cache
def _loss_kernel() -> Any:
    """The Triton kernel of `chunk_loss_and_grad_in_place` (built on first use: Triton is there wherever
    torch.compile runs on CUDA, and nowhere else is it needed)."""
    import triton
    import triton.language as tl

    @triton.jit
    def cross_entropy_grad_in_place(
        logits_ptr, targets_ptr, row_loss_ptr, grad_scale_ptr, n_cols, row_stride, ignore_index, TILE: tl.constexpr
    ):  # fmt: skip
        row = tl.program_id(0).to(tl.int64)
        row_ptr = logits_ptr + row * row_stride
        target = tl.load(targets_ptr + row).to(tl.int64)
        valid = target != ignore_index
        safe_target = tl.where(valid, target, 0)
        offsets = tl.arange(0, TILE)
        # Pass 1, the row's log-sum-exp online: each lane keeps its own max and its sum of exp(x - max).
        lane_max = tl.full([TILE], float("-inf"), tl.float32)
        lane_sum = tl.zeros([TILE], tl.float32)
        for start in range(0, n_cols, TILE):
            cols = start + offsets
            x = tl.load(row_ptr + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(lane_max, x)
            # A lane that has seen only padding has max -inf, and exp(-inf - -inf) would be NaN.
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            lane_sum = lane_sum * tl.exp(lane_max - shift) + tl.exp(x - shift)
            lane_max = new_max
        row_max = tl.max(lane_max, 0)
        lse = row_max + tl.log(tl.sum(lane_sum * tl.exp(lane_max - row_max), 0))
        # Read before pass 2 writes the gradient over the logits.
        target_logit = tl.load(row_ptr + safe_target).to(tl.float32)
        tl.store(row_loss_ptr + row, tl.where(valid, lse - target_logit, 0.0))
        scale = tl.where(valid, tl.load(grad_scale_ptr), 0.0)
        # Pass 2: softmax - onehot(target), scaled, over the same tiles (each row is read twice, written once).
        for start in range(0, n_cols, TILE):
            cols = start + offsets
            x = tl.load(row_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
            grad = (tl.exp(x - lse) - tl.where(cols == safe_target, 1.0, 0.0)) * scale
            tl.store(row_ptr + cols, grad.to(logits_ptr.dtype.element_ty), mask=cols < n_cols)

    return cross_entropy_grad_in_place


def chunk_loss_and_grad_in_place(
    logits: torch.Tensor,
    targets: torch.Tensor,
    grad_scale: torch.Tensor,
    ignore_index: int,
    tile: int = LOSS_KERNEL_TILE,
    num_warps: int = LOSS_KERNEL_WARPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`_chunk_loss_and_grad` as one Triton kernel that writes the gradient over `logits` and returns it.

    A program per row: the row's log-sum-exp, its loss, then its gradient: one read and one write of each row,
    where the torch expression compiled by inductor reads each row three times and writes a new tensor for
    the gradient (both timed by bench/loss_kernel.py; bench/RESULTS.md).
    """
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError(f"expected row-major logits [tokens, vocab], got shape {tuple(logits.shape)}")
    rows, cols = logits.shape
    row_loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
    _loss_kernel()[(rows,)](
        logits, targets, row_loss, grad_scale, cols, logits.stride(0), ignore_index,
        TILE=tile, num_warps=num_warps,
    )  # fmt: skip
    return row_loss.sum(), logits


def _use_loss_kernel(hidden: torch.Tensor) -> bool:
    # Inside a compiled model, inductor fuses the plain function into that graph itself.
    return hidden.is_cuda and not torch.compiler.is_compiling()


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """mean CE(hidden @ weight.T, targets) whose backward only scales gradients made in forward."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk_tokens: int,
        ignore_index: int,
    ) -> torch.Tensor:
        chunk_fn = chunk_loss_and_grad_in_place if _use_loss_kernel(hidden) else _chunk_loss_and_grad
        num_tokens = hidden.shape[0]
        # 1 / (number of counted tokens), kept on the device: no host sync inside the step.
        grad_scale = 1.0 / (targets != ignore_index).sum().clamp(min=1).to(torch.float32)
        grad_hidden = torch.empty_like(hidden)
        # float32 across chunks: each chunk's weight gradient is rounded to the weight's dtype once only.
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        num_chunks = -(-num_tokens // chunk_tokens)
        step = -(-num_tokens // num_chunks)  # equal chunks (the last may be shorter): at most 2 shapes
        for start in range(0, num_tokens, step):
            h = hidden[start : start + step]
            chunk_loss, grad_logits = chunk_fn(h @ weight.t(), targets[start : start + step], grad_scale, ignore_index)
            loss_sum += chunk_loss
            grad_hidden[start : start + step] = grad_logits @ weight
            grad_weight += (grad_logits.t() @ h).float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss_sum * grad_scale

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            grad_hidden * grad_output.to(grad_hidden.dtype),
            grad_weight * grad_output.to(grad_weight.dtype),
            None,
            None,
            None,
        )


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    ignore_index: int = -100,
) -> torch.Tensor:
    """`F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=ignore_index)` without the logits.

    hidden [tokens, hidden_size], weight [vocab, hidden_size], targets [tokens] (int). Mean over the
    tokens whose target is not `ignore_index` (0, not NaN, when there are none). Under autocast the
    matmuls run in the autocast dtype, as the plain expression's would. The loss must be the end of
    the graph (its backward only scales the gradients computed in forward), as a training loss is.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(
            f"expected hidden [N, H], weight [V, H], targets [N]; got {tuple(hidden.shape)}, "
            f"{tuple(weight.shape)}, {tuple(targets.shape)}"
        )
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        # Cast outside the Function, so autograd casts the gradients back to the inputs' dtypes.
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    elif hidden.dtype != weight.dtype:
        weight = weight.to(hidden.dtype)
    with torch.autocast(device_type, enabled=False):
        return _FusedLinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens, ignore_index)


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits [B, T, V] in float32 against targets [B, T] that are already the next tokens.

    The packed data gives (inputs, next tokens) pairs, so there is no shift here (the model's own `labels=`
    shifts, Hugging Face style, and would drop the last position of every block); -100 is ignored.
    """
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction=reduction)


def flex_attention_supported(device: torch.device) -> bool:
    """Whether the model's document masking runs on FlexAttention here: on CUDA. On CPU FlexAttention has
    no backward (torch 2.13 raises "FlexAttention does not support backward on CPU"), so SDPA with a
    boolean mask trains there."""
    return device.type == "cuda"


def document_causal_mask_mod(document_ids: torch.Tensor) -> Callable[..., torch.Tensor]:
    """FlexAttention's mask_mod of `model.document_causal_mask`: key j <= query i, both in one document."""

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return (document_ids[b, q_idx] == document_ids[b, kv_idx]) & (kv_idx <= q_idx)

    return mask_mod


def _document_block_mask(document_ids: torch.Tensor) -> flex.BlockMask:
    batch, seq_len = document_ids.shape
    # H=None: one mask for all heads (every head of a token sees the same keys).
    return flex.create_block_mask(
        document_causal_mask_mod(document_ids), batch, None, seq_len, seq_len, device=document_ids.device
    )


@functools.cache
def _compiled_document_block_mask() -> Callable[[torch.Tensor], flex.BlockMask]:
    # Eager, create_block_mask materializes the whole [B, L, L] boolean mask (256 MiB at 64 x 2048^2) and
    # reduces it per tile; compiled, inductor fuses the mask_mod into those reductions. The closure is
    # made inside, so the only input is the tensor of document ids: new documents do not recompile, and
    # the number of rows (those holding several documents, model._document_mask) becomes dynamic at its
    # second value (one recompile).
    return torch.compile(_document_block_mask)


def document_block_mask(document_ids: torch.Tensor) -> flex.BlockMask:
    """The FlexAttention BlockMask of document-causal attention for document ids [B, L] (one per forward,
    shared by every layer)."""
    build = _compiled_document_block_mask() if document_ids.is_cuda else _document_block_mask
    return build(document_ids)


@functools.cache
def _compiled_flex_attention() -> Callable[..., torch.Tensor]:
    return torch.compile(flex.flex_attention, dynamic=False)


def flex_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: flex.BlockMask, enable_gqa: bool
) -> torch.Tensor:
    """softmax(QK^T / sqrt(head_dim) + mask) V over the allowed (query, key) pairs of `block_mask`.

    q [B, heads, L, D], k and v [B, kv_heads, L, D] (enable_gqa: each KV head serves heads / kv_heads query
    heads, without copies). FlexAttention is fast only compiled: inside a compiled decoder layer
    (train.compile, smollm2/engine.py) inductor fuses it there; otherwise it is compiled on its own here,
    on CUDA (eager, it computes the whole score matrix).
    """
    compile_here = q.is_cuda and not torch.compiler.is_compiling()
    attend = _compiled_flex_attention() if compile_here else flex.flex_attention
    return attend(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)


# Ops whose outputs selective checkpointing keeps: the expensive ones (matmuls, attention kernels).
# Everything else in a decoder layer is elementwise and cheap to recompute from them.
@functools.cache
def _saved_ops() -> frozenset[Any]:
    aten = torch.ops.aten
    names = [
        "mm",
        "addmm",
        "bmm",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    ]
    saved = [getattr(aten, n).default for n in names if hasattr(aten, n)]
    # FlexAttention (document masking) is a higher-order op, not an aten one.
    return frozenset([*saved, torch.ops.higher_order.flex_attention])


def _selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op in _saved_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def selective_checkpoint(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`, recomputing in backward only what is not a matmul or attention output."""
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    return checkpoint(
        fn,
        *args,
        use_reentrant=False,
        context_fn=functools.partial(create_selective_checkpoint_contexts, _selective_policy),
    )
