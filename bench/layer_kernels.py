"""The matmuls and the attention of one decoder layer, each alone, at a config's training shape: how close to
the card's peak each runs, and whether another cuBLAS entry point or kernel does better.

For each linear of the layer (and one 16384-token chunk of the tied LM head) the three GEMMs autograd runs:
  fwd    y = x @ w.T      [T, in] x [in, out]
  dgrad  dx = dy @ w      [T, out] x [out, in]
  wgrad  dw = dy.T @ x    [out, T] x [T, in]   (the reduction runs over all T tokens of the micro-batch)
each through torch's default BLAS (cuBLAS) and through cuBLASLt (`torch.backends.cuda.preferred_blas_library`),
and wgrad also as (x.T @ dy).T (the same product with the operands' roles swapped). Then SDPA forward +
backward at the config's heads and sequence length through cuDNN, FlashAttention-2 and memory-efficient
attention, with the KV heads shared (enable_gqa) and repeated. TFLOP/s against the bf16 peak measured first in
the same process (smollm2.perf.measure_peak_tflops: 8192^3 products).
On the device machine: python3 bench/layer_kernels.py CONFIG.yaml [MICRO_BATCH] > OUT/kernels.txt
(`--tiny`: small shapes on CPU, to check the code paths.)
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from loss_kernel import timed_ms  # bench/ is the script's folder: one timing helper for the kernel benches
from torch.nn.attention import SDPBackend, sdpa_kernel

from smollm2.config import load_config
from smollm2.ops import DEFAULT_CHUNK_TOKENS
from smollm2.perf import measure_peak_tflops


def gemm_rows(name: str, tokens: int, d_in: int, d_out: int, device: torch.device, repeats: int) -> list[tuple]:
    x = torch.randn(tokens, d_in, device=device, dtype=torch.bfloat16)
    w = torch.randn(d_out, d_in, device=device, dtype=torch.bfloat16)
    dy = torch.randn(tokens, d_out, device=device, dtype=torch.bfloat16)
    flop = 2 * tokens * d_in * d_out
    products = {
        "fwd": lambda: x @ w.t(),
        "dgrad": lambda: dy @ w,
        "wgrad": lambda: dy.t() @ x,
        "wgrad swapped": lambda: (x.t() @ dy).t(),
    }
    rows = []
    for library in ("cublas", "cublaslt") if device.type == "cuda" else ("cpu",):
        if device.type == "cuda":
            torch.backends.cuda.preferred_blas_library(library)
        for kind, fn in products.items():
            rows.append((name, f"{tokens}x{d_in}->{d_out}", kind, library, timed_ms(fn, device, repeats), flop))
    if device.type == "cuda":
        torch.backends.cuda.preferred_blas_library("cublas")
    return rows


def attention_rows(batch: int, seq: int, heads: int, kv_heads: int, head_dim: int, device: torch.device, repeats: int):
    q = torch.randn(batch, heads, seq, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(batch, kv_heads, seq, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(batch, kv_heads, seq, head_dim, device=device, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(batch, heads, seq, head_dim, device=device, dtype=torch.bfloat16)
    rep = heads // kv_heads
    # Causal: half the score matrix; forward 2 matmuls, backward 5 (FlashAttention's count).
    flop_fwd = 4 * batch * heads * seq * seq * head_dim / 2
    backends = {
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    if device.type != "cuda":
        backends = {"math": SDPBackend.MATH}
    rows = []
    for name, backend in backends.items():
        for kv_mode in ("enable_gqa", "repeat_kv"):

            def forward(kv_mode: str = kv_mode) -> torch.Tensor:
                if kv_mode == "enable_gqa":
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=rep > 1)
                kk, vv = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
                return F.scaled_dot_product_attention(q, kk, vv, is_causal=True)

            def both() -> None:
                torch.autograd.grad(forward(), (q, k, v), grad)

            try:
                with sdpa_kernel(backend):
                    fwd_ms = timed_ms(lambda: forward().detach(), device, repeats)
                    total_ms = timed_ms(both, device, repeats)
            except RuntimeError as error:  # a backend that refuses this shape or GQA
                rows.append((f"{name} {kv_mode}", None, None, str(error).splitlines()[0][:100]))
                continue
            rows.append((f"{name} {kv_mode}", fwd_ms, total_ms - fwd_ms, ""))
    return rows, flop_fwd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("micro_batch", nargs="?", type=int, help="default: the config's train.micro_batch_size")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    config = load_config(args.config)
    model = config.model
    micro_batch = args.micro_batch or config.train.micro_batch_size
    device = torch.device("cpu" if args.tiny else "cuda")
    repeats, seq = (1, 64) if args.tiny else (10, model.block_size)
    if args.tiny:
        micro_batch = 2
    tokens = micro_batch * seq
    peak = measure_peak_tflops(device, torch.bfloat16)
    print(f"{args.config}: micro-batch {micro_batch} x {seq} = {tokens} tokens; bf16 peak {peak:.1f} TFLOP/s")
    head_dim = model.hidden_size // model.num_attention_heads
    linears = [
        ("q_proj", model.hidden_size, model.num_attention_heads * head_dim),
        ("k_proj/v_proj", model.hidden_size, model.num_key_value_heads * head_dim),
        ("o_proj", model.num_attention_heads * head_dim, model.hidden_size),
        ("gate/up_proj", model.hidden_size, model.intermediate_size),
        ("down_proj", model.intermediate_size, model.hidden_size),
    ]
    rows = []
    for name, d_in, d_out in linears:
        rows += gemm_rows(name, tokens, d_in, d_out, device, repeats)
    chunk = min(DEFAULT_CHUNK_TOKENS, tokens)
    rows += gemm_rows("lm_head chunk", chunk, model.hidden_size, 64 if args.tiny else model.vocab_size, device, repeats)
    print(f"{'linear':<14} {'shape':<22} {'product':<14} {'library':<9} {'ms':>8} {'TFLOP/s':>8} {'of peak':>8}")
    for name, shape, kind, library, ms, flop in rows:
        tflops = flop / ms / 1e9
        print(f"{name:<14} {shape:<22} {kind:<14} {library:<9} {ms:8.3f} {tflops:8.1f} {tflops / peak:8.1%}")
    for library in sorted({r[3] for r in rows}):
        # Per layer: q, k, v, o, gate, up, down, each fwd + dgrad + wgrad (wgrad as autograd writes it).
        layer = [r for r in rows if r[3] == library and r[2] in ("fwd", "dgrad", "wgrad") and r[0] != "lm_head chunk"]
        counts = {"k_proj/v_proj": 2, "gate/up_proj": 2}
        ms = sum(r[4] * counts.get(r[0], 1) for r in layer)
        flop = sum(r[5] * counts.get(r[0], 1) for r in layer)
        tflops = flop / ms / 1e9
        print(f"one layer's GEMMs, {library}: {ms:.3f} ms, {tflops:.1f} TFLOP/s ({tflops / peak:.1%})")
    attention, flop_fwd = attention_rows(
        micro_batch, seq, model.num_attention_heads, model.num_key_value_heads, head_dim, device, repeats
    )
    print(f"attention, causal, {micro_batch} x {model.num_attention_heads}/{model.num_key_value_heads} heads x {seq}:")
    for name, fwd_ms, bwd_ms, error in attention:
        if fwd_ms is None:
            print(f"  {name:<22} refused: {error}")
            continue
        print(
            f"  {name:<22} fwd {fwd_ms:7.3f} ms ({flop_fwd / fwd_ms / 1e9:6.1f} TFLOP/s)  "
            f"bwd {bwd_ms:7.3f} ms ({2.5 * flop_fwd / bwd_ms / 1e9:6.1f} TFLOP/s)"
        )


if __name__ == "__main__":
    main()
