"""How fast is the fused loss's per-chunk softmax/gradient pass: torch expressions compiled by inductor against
smollm2.ops' Triton kernel at several tiles and warps.

The pass's minimum traffic is one read of the bf16 logits and one write of their bf16 gradient (3.2 GB for a
16384 x 49152 chunk, about 670 us at 4.8 TB/s). This times each form on the same chunk, checks that each agrees
with the first (ops._chunk_loss_and_grad compiled, which the Triton kernel replaced), and times the whole fused
linear + cross-entropy (forward and backward, 131072 tokens as in one micro-batch of 256 x 512) for a few chunk
sizes.

    python bench/loss_kernel.py            # on the GPU (torch only, no DeepSpeed needed)
    python bench/loss_kernel.py --tiny     # CPU check of every code path
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from smollm2 import ops


def chunk_log_softmax(
    logits: torch.Tensor, targets: torch.Tensor, grad_scale: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same results as ops._chunk_loss_and_grad through log_softmax, which inductor can reduce online."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0)
    loss_sum = torch.where(valid, -logp.gather(1, safe_targets[:, None])[:, 0], 0.0).sum()
    is_target = torch.arange(logits.shape[1], device=logits.device)[None, :] == safe_targets[:, None]
    row_scale = torch.where(valid, grad_scale, 0.0)[:, None]
    grad = (torch.exp(logp) - is_target.to(torch.float32)) * row_scale
    return loss_sum, grad.to(logits.dtype)


COMPILED = {"logsumexp, compiled": ops._chunk_loss_and_grad, "log_softmax, compiled": chunk_log_softmax}
# (tile, warps) of ops.chunk_loss_and_grad_in_place. (A variant that held a whole 49152-wide row in one tile across
# both passes was timed too, found slower and removed from smollm2/ops.py: bench/RESULTS.md.)
KERNEL_CONFIGS = [(2048, 4), (4096, 4), (4096, 8), (8192, 8), (8192, 16), (16384, 16)]


def timed_ms(fn, device: torch.device, repeats: int) -> float:
    fn()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) * 1e3 / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small shapes on CPU, to check the code paths")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    tokens, vocab, hidden_size, total = (64, 1000, 32, 512) if args.tiny else (16384, 49152, 576, 131072)
    repeats = 2 if args.tiny else 20
    torch.manual_seed(0)
    logits = (torch.randn(tokens, vocab, device=device) * 3).to(torch.bfloat16)
    targets = torch.randint(0, vocab, (tokens,), device=device)
    targets[::7] = -100
    scale = torch.tensor(1.0 / tokens, device=device)
    compile_ = (lambda f: torch.compile(f, dynamic=False)) if device.type == "cuda" else (lambda f: f)
    variants = {name: compile_(fn) for name, fn in COMPILED.items()}
    if device.type == "cuda":  # the Triton kernel; on CPU its test runs it in Triton's interpreter
        for tile, warps in KERNEL_CONFIGS:
            variants[f"triton {tile}/{warps}w"] = partial(ops.chunk_loss_and_grad_in_place, tile=tile, num_warps=warps)
    reference = None
    gigabytes = 4 * tokens * vocab / 1e9
    print(f"{device}: one chunk {tokens} x {vocab} bf16; minimum traffic {gigabytes:.2f} GB")
    for name, fn in variants.items():
        loss, grad = fn(logits.clone(), targets, scale, -100)  # the kernel writes over its input: a copy
        if reference is None:
            reference = (loss, grad.float())
        loss_err = abs(float(loss - reference[0])) / abs(float(reference[0]))
        grad_err = float((grad.float() - reference[1]).abs().max())
        scratch = logits.clone()  # timed in place, over and over: the same work whatever the values
        ms = timed_ms(partial(fn, scratch, targets, scale, -100), device, repeats)
        print(
            f"  {name:22} {ms * 1e3:8.1f} us  {gigabytes / ms * 1e3:7.0f} GB/s at minimum traffic  "
            f"loss rel err {loss_err:.1e}  grad max err {grad_err:.1e}"
        )
    hidden = torch.randn(total, hidden_size, device=device, dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(vocab, hidden_size, device=device) * 0.02).to(torch.bfloat16).requires_grad_()
    all_targets = torch.randint(0, vocab, (total,), device=device)
    print(f"whole fused linear + cross-entropy, {total} tokens, forward + backward:")
    for chunk in (total // 32, total // 16, total // 8):

        def step(chunk: int = chunk) -> None:
            ops.fused_linear_cross_entropy(hidden, weight, all_targets, chunk_tokens=chunk).backward()

        print(f"  chunk {chunk:6d} tokens: {timed_ms(step, device, max(1, repeats // 4)):8.2f} ms")


if __name__ == "__main__":
    main()
