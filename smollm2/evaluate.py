"""Validation loss / perplexity and generation samples: the trainer's eval, and `smollm2 eval`.

    smollm2 eval --checkpoint RUN_DIR_OR_CKPT [--data DIR]

The loss is the mean next-token cross-entropy over a fixed set of val blocks (the first
`eval.num_blocks`), split across ranks and summed with one all-reduce, so it is the same number for
any world size. Samples come from a torch.Generator of their own: an eval never moves the training
RNG, and the same checkpoint gives the same samples.

Every rank runs the same number of forward passes, real or padding, and generates the same number of
tokens (no early stop at EOS; the text is cut there afterwards): under ZeRO-3 each forward gathers
the weights collectively, and a rank that stopped early would leave the others waiting.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits [B, T, V] against labels [B, T] that are already the next tokens.

    The data gives (inputs, next tokens) pairs, so no shift here (the model's own `labels=` shifts,
    HF style, and would drop the last position of every block); -100 is ignored.
    """
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction=reduction)


@torch.no_grad()
def validation_loss(
    model: Callable[..., Any],
    dataset,
    num_blocks: int,
    micro_batch_size: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[float, int]:
    """(mean loss per token, blocks evaluated) over the first `num_blocks` blocks of `dataset`.

    `model` is the DeepSpeed engine or a plain SmolLM2ForCausalLM; the caller sets eval mode.
    """
    blocks = min(num_blocks, len(dataset))
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, token count
    for start in range(0, blocks, micro_batch_size * world_size):
        first = start + rank * micro_batch_size
        indices = list(range(first, min(first + micro_batch_size, blocks)))
        real = len(indices)
        # Pad to a full micro-batch with ignored labels: same forward count on every rank.
        pairs = [dataset[i] for i in indices + [0] * (micro_batch_size - real)]
        input_ids = torch.stack([p[0] for p in pairs]).to(device)
        labels = torch.stack([p[1] for p in pairs]).to(device)
        labels[real:] = -100
        logits = model(input_ids).logits
        totals[0] += next_token_loss(logits, labels, reduction="sum").double()
        totals[1] += (labels != -100).sum()
    if world_size > 1:
        torch.distributed.all_reduce(totals)
    return (totals[0] / totals[1]).item(), blocks


@torch.no_grad()
def generate_samples(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    device: torch.device,
    eos_id: int,
) -> list[tuple[str, str]]:
    """(prompt, continuation) per prompt; the continuation is cut at the first EOS."""
    generator = torch.Generator(device=device).manual_seed(seed)
    samples = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt).ids or [eos_id]  # an empty prompt starts from a document boundary
        tokens = model.generate(
            torch.tensor([ids], device=device),
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            eos_token_id=None,
            generator=generator,
        )
        new = tokens[0, len(ids) :].tolist()
        if eos_id in new:
            new = new[: new.index(eos_id)]
        samples.append((prompt, tokenizer.decode(new)))
    return samples


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else math.inf


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN_DIR_OR_CKPT",
        help="a run directory (its latest checkpoint) or one checkpoint folder",
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="prepared data folder whose val.bin to use (default: data.path of the run's config.yaml)",
    )


def run(args: argparse.Namespace) -> None:
    from smollm2.checkpoint import find_checkpoint, load_run_model, read_client_state
    from smollm2.config import load_config
    from smollm2.data import PackedTokenDataset
    from smollm2.tokenizer import eos_token_id, tokenizer_fingerprint

    checkpoint = find_checkpoint(args.checkpoint)
    config = load_config(checkpoint.run_dir / "config.yaml")
    step = read_client_state(checkpoint)["step"]
    model, tokenizer = load_run_model(checkpoint.path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    data_dir = Path(args.data or config.data.path)
    val = PackedTokenDataset(
        data_dir / "val.bin",
        model.config.block_size,
        expected_vocab_size=model.config.vocab_size,
        expected_fingerprint=tokenizer_fingerprint(tokenizer),
    )
    e = config.eval
    loss, blocks = validation_loss(
        model, val, e.num_blocks, e.micro_batch_size or config.train.micro_batch_size, device
    )
    print(
        f"{checkpoint.path} (step {step}): val loss {loss:.4f}, ppl {perplexity(loss):.2f} "
        f"over {blocks} blocks of {model.config.block_size} tokens of {data_dir / 'val.bin'}"
    )
    samples = generate_samples(
        model,
        tokenizer,
        e.prompts,
        max_new_tokens=e.max_new_tokens,
        temperature=e.temperature,
        top_k=e.top_k,
        seed=e.seed,
        device=device,
        eos_id=eos_token_id(tokenizer),
    )
    for prompt, text in samples:
        print(f"--- {prompt!r}\n{prompt}{text}")
