"""FlashAttention-3 (the Hopper kernels of Dao-AILab's flash-attention) as a torch custom op, for bench/fa3_attention.py
and for trying it inside the model (the experiment of bench/RESULTS.md routed the model's unmasked causal attention
through `attention` below; its patch is in git history, bench/fa3_experiment.patch at 5f804d0); not used by smollm2/.

FA3 has no wheel for torch 2.11 on the package index; xformers 0.0.34 bundles a build of it
(xformers/flash_attn_3/_C.so, 355 MB, built against torch's stable C ABI and CUDA 12's runtime, so it loads in
torch 2.11 + CUDA 13 given libcudart.so.12). bench/stage_fa3.sh puts it, xz-compressed (37 MB), and that runtime
into .fa3/ for a device call to carry.

load(folder) registers torch.ops.flash_attn_3.{fwd,bwd}; attention(q, k, v) is then causal attention of
q [B, L, heads, D], k, v [B, L, kv_heads, D] (FA3's layout; grouped-query when kv_heads < heads), with autograd
and a fake (meta) implementation so that torch.compile traces through it as one opaque call.
"""

from __future__ import annotations

import ctypes
import lzma
import pathlib
import shutil

import torch


def load(folder: str | pathlib.Path, unpack_to: str | pathlib.Path = "/tmp/fa3") -> None:
    """Unpack folder/fa3.so.xz (once) and load it with folder/libcudart.so.12 (its runtime) already in the process."""
    folder, unpack_to = pathlib.Path(folder), pathlib.Path(unpack_to)
    library = unpack_to / "flash_attn_3_C.so"
    if not library.exists():
        unpack_to.mkdir(parents=True, exist_ok=True)
        partial = library.with_suffix(".partial")
        with lzma.open(folder / "fa3.so.xz") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
        partial.rename(library)
    ctypes.CDLL(str(folder / "libcudart.so.12"), mode=ctypes.RTLD_GLOBAL)
    torch.ops.load_library(str(library))


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@torch.library.custom_op("smollm2_fa3::forward", mutates_args=())
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse, *_ = torch.ops.flash_attn_3.fwd(
        _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v), softmax_scale=scale, is_causal=True
    )
    return out, lse


@_forward.register_fake
def _(q, k, v, scale):
    batch, seq, heads, _ = q.shape
    return q.new_empty(batch, seq, heads, v.shape[-1]), q.new_empty(batch, heads, seq, dtype=torch.float32)


@torch.library.custom_op("smollm2_fa3::backward", mutates_args=())
def _backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    torch.ops.flash_attn_3.bwd(
        _last_dim_contiguous(grad_out), q, k, v, out, lse, dq, dk, dv, softmax_scale=scale, is_causal=True
    )
    return dq, dk, dv


@_backward.register_fake
def _(grad_out, q, k, v, out, lse, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, ctx.scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)


def _autograd_backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _backward(grad_out, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax(q k^T / sqrt(D)) v over [B, L, heads, D] tensors; returns [B, L, heads, D]."""
    return _forward(q, k, v, q.shape[-1] ** -0.5)[0]
