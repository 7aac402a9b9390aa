"""Would an FP8 LM head pay? The three GEMMs of one loss chunk (smollm2.ops.fused_linear_cross_entropy: 16384
tokens against the 49152-wide tied head) in bf16 against FP8 (torch._scaled_mm, e4m3 operands, bf16 output),
with the casts FP8 needs, at the hidden sizes of the three configs.

  fwd    logits = h @ w.T         [T, H] x [H, V]
  dgrad  dh = g @ w               [T, V] x [V, H]    g: the logits' gradient, written by the loss kernel
  wgrad  dw = g.T @ h             [V, T] x [T, H]

torch._scaled_mm takes its first operand row-major and its second column-major. fwd fits as it is; dgrad needs
w transposed once per chunk (small); wgrad needs g transposed (a copy of the whole [T, V] gradient), because
g.T is column-major. Each FP8 row also counts what FP8 adds: quantizing its operands (amax, scale, cast) and the
transposes; the cast of g could live in the loss kernel, so it is listed apart. Scaling: one scale per tensor,
and per row (scale_a [M, 1], scale_b [1, N]). Times are means of `repeats` calls on CUDA events
(loss_kernel.timed_ms); errors are max |fp8 - bf16| over max |bf16|.
On the device machine: python3 bench/fp8_head.py > OUT/fp8_head.txt   (`--tiny`: small shapes on CPU, to check
the code paths.)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial

import torch
from loss_kernel import timed_ms  # bench/ is the script's folder: one timing helper for the kernel benches

from smollm2.ops import DEFAULT_CHUNK_TOKENS

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
VOCAB = 49152
HIDDEN_SIZES = {"135M": 576, "360M": 960, "1.7B": 2048}


def quantize(x: torch.Tensor, rowwise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x in e4m3 and the fp32 scale that undoes it (per row [M, 1], or one for the tensor)."""
    amax = x.abs().amax(dim=1, keepdim=True) if rowwise else x.abs().amax()
    scale = amax.float().clamp(min=1e-12) / FP8_MAX
    return (x / scale).to(FP8), scale


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max())


def fp8_product(
    name: str, h: torch.Tensor, w: torch.Tensor, g: torch.Tensor, rowwise: bool
) -> tuple[Callable[[], torch.Tensor], dict[str, Callable[[], object]]]:
    """The FP8 form of one of the chunk's GEMMs, its operands quantized beforehand, and what FP8 adds to it."""
    scaled_mm = partial(torch._scaled_mm, out_dtype=torch.bfloat16)
    if name == "fwd":  # h [T, H] row-major; w.T [H, V] column-major, scaled per vocab entry
        (h8, sh), (w8, sw) = quantize(h, rowwise), quantize(w, rowwise)
        return partial(scaled_mm, h8, w8.t(), sh, sw.t()), {"quantize h, w": partial(quantize_all, (h, w), rowwise)}
    if name == "dgrad":  # g [T, V] row-major; w [V, H] column-major: w.T made row-major, scaled per hidden unit
        (g8, sg), (wt8, swt) = quantize(g, rowwise), quantize(w.t().contiguous(), rowwise)
        extras = {
            "quantize w.T": partial(quantize_all, (w.t().contiguous(),), rowwise),
            "quantize g (the loss kernel could)": partial(quantize_all, (g,), rowwise),
        }
        return partial(scaled_mm, g8, wt8.t(), sg, swt.t()), extras
    # wgrad: g.T [V, T] must be row-major: a transposed copy of g; h [T, H] column-major: h.T made row-major
    (gt8, sgt), (ht8, sht) = quantize(g.t().contiguous(), rowwise), quantize(h.t().contiguous(), rowwise)
    extras = {
        "transpose + quantize g": partial(quantize_all, (g.t().contiguous(),), rowwise),
        "transpose + quantize h": partial(quantize_all, (h.t().contiguous(),), rowwise),
    }
    return partial(scaled_mm, gt8, ht8.t(), sgt, sht.t()), extras


def quantize_all(tensors: tuple[torch.Tensor, ...], rowwise: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [quantize(t, rowwise) for t in tensors]


def rows_for(hidden: int, tokens: int, vocab: int, device: torch.device, repeats: int) -> list[str]:
    torch.manual_seed(0)
    h = torch.randn(tokens, hidden, device=device, dtype=torch.bfloat16)
    w = torch.randn(vocab, hidden, device=device, dtype=torch.bfloat16) * hidden**-0.5
    # A realistic gradient: softmax - onehot over a random row, scaled by 1/tokens as the loss does.
    logits = torch.randn(tokens, vocab, device=device) * 2
    g = (torch.softmax(logits, dim=1) - torch.nn.functional.one_hot(logits.argmax(1), vocab)) / tokens
    g = g.to(torch.bfloat16)
    del logits
    flop = 2 * tokens * hidden * vocab
    bf16_products = {
        "fwd": partial(torch.mm, h, w.t()),
        "dgrad": partial(torch.mm, g, w),
        "wgrad": partial(torch.mm, g.t(), h),
    }
    lines = []
    for name, bf16 in bf16_products.items():
        ms = timed_ms(bf16, device, repeats)
        lines.append(f"  {name:6s} bf16                 {ms:7.3f} ms  {flop / ms / 1e9:6.0f} TFLOP/s")
        reference = bf16()
        for rowwise in (False, True):
            kind = "rowwise" if rowwise else "tensorwise"
            gemm, extras = fp8_product(name, h, w, g, rowwise)
            try:
                result = gemm()
            except RuntimeError as exc:  # a scaling torch or the card does not offer
                lines.append(f"  {name:6s} fp8 {kind:10s}       refused: {str(exc).splitlines()[0][:100]}")
                continue
            gemm_ms = timed_ms(gemm, device, repeats)
            extra_ms = ", ".join(f"{label} {timed_ms(fn, device, repeats):.3f} ms" for label, fn in extras.items())
            lines.append(
                f"  {name:6s} fp8 {kind:10s}       {gemm_ms:7.3f} ms  {flop / gemm_ms / 1e9:6.0f} TFLOP/s"
                f"  error {relative_error(result, reference):.2e}  + {extra_ms}"
            )
            del gemm, extras, result
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small shapes on CPU, to check the code paths")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    if args.tiny:
        tokens, vocab, sizes, repeats = 64, 256, {"tiny": 32}, 2
    else:
        tokens, vocab, sizes, repeats = DEFAULT_CHUNK_TOKENS, VOCAB, HIDDEN_SIZES, 20
    name = "CPU" if args.tiny else torch.cuda.get_device_name()
    print(f"{name}, torch {torch.__version__}; one chunk of {tokens} tokens, vocab {vocab}")
    for size, hidden in sizes.items():
        print(f"{size} (hidden {hidden}):")
        for line in rows_for(hidden, tokens, vocab, device, repeats):
            print(line, flush=True)


if __name__ == "__main__":
    main()
