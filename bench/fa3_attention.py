"""Causal attention forward and backward at the SmolLM2 family's training shapes: cuDNN (through SDPA, the model's
kernel) against FlashAttention-3 (bench/fa3_op.py), with each one's error against float32.

On the device machine, carrying .fa3 (bench/stage_fa3.sh): python3 bench/fa3_attention.py .fa3 > OUT/fa3.txt
TFLOP/s count the causal half of the score matrix: forward 2 matmuls, backward 5 (FlashAttention's count).
"""

from __future__ import annotations

import argparse

import fa3_op  # bench/ is the script's folder
import torch
import torch.nn.functional as F
from loss_kernel import timed_ms
from torch.nn.attention import SDPBackend, sdpa_kernel

# (name, micro-batch, sequence, heads, kv heads): the configs' shapes (head_dim 64 throughout).
SHAPES = [
    ("135M", 256, 512, 9, 3),
    ("135M at 2048", 64, 2048, 9, 3),
    ("360M", 128, 512, 15, 5),
    ("360M", 256, 512, 15, 5),
    ("1.7B", 32, 512, 32, 32),
    ("1.7B", 64, 512, 32, 32),
]
HEAD_DIM = 64


def cudnn(q, k, v):
    """q [B, L, H, D] etc. as the model holds them; SDPA takes [B, H, L, D] views."""
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=q.shape[2] > k.shape[2]
        )
    return out.transpose(1, 2)


def reference(q, k, v):
    """float32, every KV head repeated, the math kernel."""
    rep = q.shape[2] // k.shape[2]
    q, k, v = (t.float().transpose(1, 2) for t in (q, k, v))
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)


def errors(kernel, q, k, v, grad) -> str:
    """Max abs error of the output and of dq/dk/dv against float32 on the first 2 rows."""
    rows = [t[:2].detach().clone().requires_grad_() for t in (q, k, v)]
    ref_rows = [t.detach().clone().requires_grad_() for t in rows]
    out = kernel(*rows)
    out.backward(grad[:2])
    ref = reference(*ref_rows)
    ref.backward(grad[:2].float())
    parts = [(out - ref).abs().max().item()]
    parts += [(a.grad.float() - b.grad).abs().max().item() for a, b in zip(rows, ref_rows)]
    return " / ".join(f"{p:.4f}" for p in parts)


def forward_and_total_ms(kernel, q, k, v, grad) -> tuple[float, float]:
    """Milliseconds of the forward alone and of forward + backward, each the mean of 20 runs."""
    forward_ms = timed_ms(lambda: kernel(q, k, v).detach(), q.device, 20)
    total_ms = timed_ms(lambda: torch.autograd.grad(kernel(q, k, v), (q, k, v), grad), q.device, 20)
    return forward_ms, total_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fa3_folder", help="the folder bench/stage_fa3.sh fills (fa3.so.xz, libcudart.so.12)")
    args = parser.parse_args()
    fa3_op.load(args.fa3_folder)
    device = torch.device("cuda")
    torch.manual_seed(0)
    kernels = {"cudnn": cudnn, "fa3": fa3_op.attention}
    print(
        f"{'shape':<14} {'mb':>4} {'seq':>5} {'heads':>6} {'kernel':<6} {'fwd ms':>8} {'bwd ms':>8} {'fwd TF/s':>9} "
        f"{'bwd TF/s':>9} {'fwd+bwd':>8}  max error out / dq / dk / dv"
    )
    for name, batch, seq, heads, kv_heads in SHAPES:
        q = torch.randn(batch, seq, heads, HEAD_DIM, device=device, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(batch, seq, kv_heads, HEAD_DIM, device=device, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(batch, seq, kv_heads, HEAD_DIM, device=device, dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn(batch, seq, heads, HEAD_DIM, device=device, dtype=torch.bfloat16)
        flop_fwd = 4 * batch * heads * seq * seq * HEAD_DIM / 2
        totals = {}
        for kernel_name, kernel in kernels.items():
            fwd_ms, total_ms = forward_and_total_ms(kernel, q, k, v, grad)
            bwd_ms = total_ms - fwd_ms
            totals[kernel_name] = total_ms
            print(
                f"{name:<14} {batch:>4} {seq:>5} {heads:>3}/{kv_heads:<2} {kernel_name:<6} {fwd_ms:8.3f} "
                f"{bwd_ms:8.3f} {flop_fwd / fwd_ms / 1e9:9.1f} {2.5 * flop_fwd / bwd_ms / 1e9:9.1f} {total_ms:8.3f}  "
                f"{errors(kernel, q, k, v, grad)}"
            )
        print(f"{'':<14} fa3 / cudnn, forward + backward: {totals['fa3'] / totals['cudnn']:.3f}")
        del q, k, v, grad
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
