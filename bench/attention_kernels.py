"""Attention alone, forward + backward, for document masking at 135M's shape: which kernel, how fast, how exact.

Shape: micro-batch 64 x 2048 tokens, 9 query / 3 KV heads of 64 (SmolLM2-135M at block 2048), bf16. The
document ids come from real packed blocks (DATA: a `smollm2 prepare` output; the first 64 blocks of 2048).
Rows:
  sdpa causal          F.scaled_dot_product_attention(is_causal=True), torch's default backend (no masking)
  sdpa causal flash    the same, forced to FlashAttention-2 (and "cudnn": forced to cuDNN)
  flex OPTIONS         FlexAttention with the document BlockMask (smollm2.ops, compiled), with each set of
                       kernel_options of FLEX_OPTIONS; the mask build timed apart
  varlen flash         FlashAttention-2's variable-length kernel (aten._flash_attention_forward) over the
                       documents as sequences of their own: segments start at each block and document start
Each row also gives the largest difference of its output and of dq from SDPA with the boolean
document-causal mask (math kernel, fp32) on the first 2 blocks.
On the device machine: python3 bench/attention_kernels.py DATA [DATA ...] > OUT/attention.txt
"""

import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from smollm2 import ops
from smollm2.data import PackedTokenDataset
from smollm2.model import document_causal_mask, document_ids

BATCH, SEQ, HEADS, KV_HEADS, HEAD_DIM = 64, 2048, 9, 3, 64
# The documented FlexAttention options that looked safe for a document-causal mask (every row has its
# diagonal; a row's allowed key tiles run from its document's first tile to the diagonal). They are not: on
# the paragraph blocks every one of these rows came out NaN, and a trainer run with ROWS_GUARANTEED_SAFE
# alone trained on NaN (bench/RESULTS.md, "Sequence 2048 and document masking"). The model uses the defaults.
FLEX_OPTIONS = [
    {},
    {"ROWS_GUARANTEED_SAFE": True, "BLOCKS_ARE_CONTIGUOUS": True},
    {"ROWS_GUARANTEED_SAFE": True, "BLOCKS_ARE_CONTIGUOUS": True, "USE_TMA": True},
    {"ROWS_GUARANTEED_SAFE": True, "BLOCKS_ARE_CONTIGUOUS": True, "PRESCALE_QK": True},
]


def segments_of(ids: torch.Tensor) -> torch.Tensor:
    """int32 [segments + 1]: where each document piece starts in the flattened [B * L] tokens, then B * L."""
    starts = torch.ones_like(ids, dtype=torch.bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    offsets = starts.flatten().nonzero().flatten()
    return torch.cat([offsets, offsets.new_tensor([ids.numel()])]).to(torch.int32)


def timed_ms(fn, iters: int = 20, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def blocks(data: str) -> torch.Tensor:
    dataset = PackedTokenDataset(f"{data}/train.bin", SEQ)
    return torch.stack([dataset[i][0] for i in range(BATCH)]).cuda()


def main(paths: list[str]) -> None:
    torch.manual_seed(0)
    dev = torch.device("cuda")
    q = torch.randn(BATCH, HEADS, SEQ, HEAD_DIM, device=dev, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(BATCH, KV_HEADS, SEQ, HEAD_DIM, device=dev, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(BATCH, KV_HEADS, SEQ, HEAD_DIM, device=dev, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(BATCH, HEADS, SEQ, HEAD_DIM, device=dev, dtype=torch.bfloat16)
    tokens = BATCH * SEQ
    rep = HEADS // KV_HEADS

    def flat(x: torch.Tensor) -> torch.Tensor:  # [B, h, L, D] -> [B * L, h, D]
        return x.transpose(1, 2).reshape(tokens, x.shape[1], HEAD_DIM)

    def unflat(x: torch.Tensor) -> torch.Tensor:
        return x.view(BATCH, SEQ, HEADS, HEAD_DIM).transpose(1, 2)

    def step(attend):
        def run():
            q.grad = k.grad = v.grad = None
            attend().backward(grad)

        return run

    def row(name: str, attend, reference=None) -> None:
        try:
            ms = timed_ms(step(attend))
        except Exception as exc:  # a backend that cannot run here: say so and go on
            print(f"{name:90s} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}", flush=True)
            return
        note = ""
        if reference is not None:
            q.grad = None
            out = attend()
            out.backward(grad)
            ref_out, ref_dq = reference
            note = (
                f"  max|out - ref| {float((out[:2].detach().float() - ref_out).abs().max()):.4f}"
                f"  max|dq - ref| {float((q.grad[:2].float() - ref_dq).abs().max()):.4f}"
            )
        print(f"{name:90s} {ms:8.2f} ms{note}", flush=True)

    def causal():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    row("sdpa causal (default backend)", causal)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        row("sdpa causal flash", causal)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        row("sdpa causal cudnn", causal)
    flex = torch.compile(ops.flex.flex_attention, dynamic=False)
    flash = torch.ops.aten._flash_attention_forward

    def document_rows(path: str) -> None:
        ids = document_ids(blocks(path), 0)
        cu = segments_of(ids)
        count = cu.numel() - 1
        print(f"-- {path}: {count} segments in {BATCH} blocks ({count / BATCH:.2f} a block)", flush=True)
        # The reference: the boolean mask, fp32, math kernel, first 2 blocks.
        q2, k2, v2 = (x[:2].detach().float().requires_grad_() for x in (q, k, v))
        mask = document_causal_mask(ids[:2])
        with sdpa_kernel(SDPBackend.MATH):
            ref = F.scaled_dot_product_attention(
                q2, k2.repeat_interleave(rep, 1), v2.repeat_interleave(rep, 1), attn_mask=mask
            )
        ref.backward(grad[:2].float())
        reference = (ref.detach(), q2.grad)
        print(f"{'   mask build: flex BlockMask':38s} {timed_ms(lambda: ops.document_block_mask(ids)):8.2f} ms")
        print(f"{'   mask build: segments (syncs)':38s} {timed_ms(lambda: segments_of(ids)):8.2f} ms")
        block_mask = ops.document_block_mask(ids)
        for options in FLEX_OPTIONS:
            row(
                f"flex {' '.join(options) or 'defaults'}",
                lambda o=options: flex(q, k, v, block_mask=block_mask, enable_gqa=True, kernel_options=o or None),
                reference,
            )

        def varlen():
            return unflat(flash(flat(q), flat(k), flat(v), cu, cu, SEQ, SEQ, 0.0, True, False)[0])

        row("varlen flash", varlen, reference)

    for path in paths:
        document_rows(path)


if __name__ == "__main__":
    main(sys.argv[1:])
