"""`smollm2 generate`: continue a prompt with a model from an HF folder or a GGUF file, streaming to stdout."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from smollm2.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        metavar="RUN_DIR|HF_DIR|GGUF",
        help="a Hugging Face model folder (with tokenizer.json) or a .gguf file",
    )
    parser.add_argument("--prompt", required=True, help="text to continue (empty: start from the bos token)")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens (0 = all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")


def _check(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens: expected a positive integer, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise UserError(f"--temperature: expected >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise UserError(f"--top-k: expected >= 0, got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise UserError(f"--top-p: expected a value in (0, 1], got {args.top_p}")


def token_printer(tokenizer: Any, out: TextIO) -> Callable[[int], None]:
    """A callback writing each new token's text to `out` as soon as it is complete text.

    A token may end inside a multi-byte character; DecodeStream holds such bytes back until the
    character is whole, so the terminal never shows half a character. Special tokens are not printed.
    """
    from tokenizers.decoders import DecodeStream

    stream = DecodeStream(skip_special_tokens=True)

    def on_token(token_id: int) -> None:
        text = stream.step(tokenizer, token_id)
        if text:
            out.write(text)
            out.flush()

    return on_token


def run(args: argparse.Namespace) -> int:
    _check(args)
    import torch

    from smollm2.weights import load_model

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise UserError(f"--device: {device} is not usable here ({exc})") from None
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the text only, not loaders' progress lines
        model, tokenizer = load_model(args.model, device=device)
    if tokenizer is None:
        raise UserError(f"{args.model}: no tokenizer.json next to the model, cannot encode the prompt")
    loaded = time.perf_counter()
    prompt_ids = tokenizer.encode(args.prompt).ids or [model.config.bos_token_id]
    input_ids = torch.tensor([prompt_ids], device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)

    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    output = model.generate(
        input_ids,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        eos_token_id=model.config.eos_token_id,
        generator=generator,
        on_token=token_printer(tokenizer, sys.stdout),
    )
    sys.stdout.write("\n")
    new_tokens = output.shape[1] - input_ids.shape[1]
    elapsed = time.perf_counter() - loaded
    print(
        f"[smollm2 generate] {new_tokens} tokens in {elapsed:.1f} s ({new_tokens / elapsed:.1f} tokens/s) "
        f"on {device}; model loaded in {loaded - start:.1f} s",
        file=sys.stderr,
    )
    return 0
