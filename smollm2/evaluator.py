"""The Evaluator: val loss and perplexity, multiple-choice tasks and samples of a model, as one metrics row.

One Evaluator computes an eval, for the trainer's in-loop eval (on the DeepSpeed engine, every rank taking
its share) and for `smollm2 eval --checkpoint` and `--watch` (smollm2/evaluate.py, smollm2/eval_watch.py: on
a checkpoint's consolidated weights), so both give the same row: eval_loss, eval_ppl, each mixture source's
loss, each task's acc and acc_norm (tasks: smollm2/tasks.py).

The loss is the mean next-token cross-entropy over a fixed set of val blocks (the first
`eval.num_blocks`), split across ranks and summed with one all-reduce, so it is the same number for
any world size. Samples come from a torch.Generator of their own: an eval never moves the training
RNG, and the same checkpoint gives the same samples.

Every rank runs the same number of forward passes, real or padding, and generates the same number of
tokens (no early stop at EOS; the text is cut there afterwards): under ZeRO-3 each forward gathers
the weights collectively, and a rank that stopped early would leave the others waiting.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from smollm2 import tasks
from smollm2.config import Config, DataConfig, EvalConfig
from smollm2.errors import UserError
from smollm2.ops import next_token_loss


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


def sources_validation_loss(
    model: Callable[..., Any],
    vals: dict[str, Any],
    num_sources: int,
    num_blocks: int,
    micro_batch_size: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[float, dict[str, float]]:
    """The val loss over the first `num_blocks` val blocks of every source that has some (`vals`: name -> val
    dataset), and, for a mixture (`num_sources` > 1), each source's own as `eval/loss/<name>`."""
    losses = {
        name: validation_loss(model, val, num_blocks, micro_batch_size, device, rank, world_size)
        for name, val in vals.items()
    }
    blocks = sum(count for _, count in losses.values())
    loss = sum(value * count for value, count in losses.values()) / blocks  # every block has block_size tokens
    if num_sources == 1:
        return loss, {}
    return loss, {f"eval/loss/{name}": value for name, (value, _) in losses.items()}


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


# ---------------------------------------------------------------------------------------------------------
# One eval


@dataclass
class Evaluation:
    step: int
    row: dict[str, float]  # the metrics row: eval_loss, eval_ppl, eval/loss/<source>, eval/<task>/acc, acc_norm
    samples: list[tuple[str, str]]
    summary: str  # one line for the console
    seconds: dict[str, float]  # what its parts took: eval (val loss and tasks), samples


class Evaluator:
    """The val loss over the first eval.num_blocks val blocks of every source that has some (and each source's
    own, for a mixture: eval/loss/<name>), the tasks, and a sample of each eval.prompts, with one rank's share."""

    def __init__(
        self,
        settings: EvalConfig,
        mixture: Any,  # smollm2.mixture.Mixture: its val datasets and sources
        task_list: list[tasks.Task],
        tokenizer: Any,
        eos_id: int,
        *,
        micro_batch_size: int,
        max_length: int,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.settings, self.mixture, self.tasks, self.tokenizer, self.eos_id = (
            settings,
            mixture,
            task_list,
            tokenizer,
            eos_id,
        )
        self.micro_batch_size, self.max_length, self.device = micro_batch_size, max_length, device
        self.rank, self.world_size = rank, world_size

    @classmethod
    def for_training(
        cls, config: Config, data: Any, task_list: list[tasks.Task], device: torch.device, rank: int, world_size: int
    ) -> Evaluator:
        """The trainer's: eval.* settings over the training data (smollm2.mixture.TrainingData), this rank's share."""
        e = config.eval
        return cls(
            e, data.mixture, task_list, data.tokenizer, data.eos_id,
            micro_batch_size=e.micro_batch_size or config.train.micro_batch_size,
            max_length=config.model.block_size, device=device, rank=rank, world_size=world_size,
        )  # fmt: skip

    def __call__(
        self, model: Callable[..., Any], step: int, generator: Any = None, dtype: torch.dtype = torch.float32
    ) -> Evaluation:
        """Evaluate `model` (a DeepSpeed engine or a SmolLM2ForCausalLM, in eval mode) at `step`. `generator`
        is the module that generates (the engine's module: the engine autocasts only its own forward), under
        autocast to `dtype` when that is not float32."""
        s, started = self.settings, time.perf_counter()
        loss, source_losses = sources_validation_loss(
            model, self.mixture.val, len(self.mixture.sources), s.num_blocks, self.micro_batch_size, self.device,
            self.rank, self.world_size,
        )  # fmt: skip
        task_results = tasks.evaluate_tasks(
            model, self.tokenizer, self.tasks, micro_batch_size=self.micro_batch_size, device=self.device,
            max_length=self.max_length, rank=self.rank, world_size=self.world_size,
        )  # fmt: skip
        scored = time.perf_counter()
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        with autocast:
            samples = generate_samples(
                generator or model, self.tokenizer, s.prompts, max_new_tokens=s.max_new_tokens,
                temperature=s.temperature, top_k=s.top_k, seed=s.seed, device=self.device, eos_id=self.eos_id,
            )  # fmt: skip
        row = {"eval_loss": loss, "eval_ppl": perplexity(loss), **source_losses, **tasks.metrics_row(task_results)}
        summary = (
            f"val loss {loss:.4f}, ppl {perplexity(loss):.2f} over the first {s.num_blocks} blocks of"
            f" {', '.join(str(source.path) for source in self.mixture.sources)}"
            + (f" | {tasks.describe(task_results)}" if task_results else "")
        )
        seconds = {"eval": scored - started, "samples": time.perf_counter() - scored}
        return Evaluation(step, row, samples, summary, seconds)


def evaluate_checkpoint(
    checkpoint: Any,
    config: Config,
    data: str | None,
    task_list: list[tasks.Task],
    device: torch.device,
    micro_batch_size: int | None = None,
    max_length: int | None = None,
) -> Evaluation:
    """The in-loop eval of one checkpoint, on its consolidated weights in fp32, with the eval settings of the
    run's `config`: the val loss over the run's data (one folder or a mixture's sources; the prepared folder
    `data` when given), the tasks with at most `max_length` tokens at once (default: the model's block_size,
    as in training). For a run trained in fp32 the numbers are the trainer's own at that step
    (tests/test_eval_watch.py); in bf16, close to them."""
    from smollm2.checkpoint import read_client_state
    from smollm2.mixture import open_mixture, resolve_sources
    from smollm2.tokenizer import eos_token_id, tokenizer_fingerprint
    from smollm2.weights import load_run_model

    step = read_client_state(checkpoint)["step"]
    model, tokenizer = load_run_model(checkpoint.path)
    model.to(device)
    sources, stages = resolve_sources(DataConfig(path=str(data)) if data else config.data, config.train.max_steps)
    mixture = open_mixture(
        sources,
        stages,
        block_size=model.config.block_size,
        global_batch_size=config.train.global_batch_size,
        expected_vocab_size=model.config.vocab_size,
        expected_fingerprint=tokenizer_fingerprint(tokenizer),
    )
    if not mixture.val:
        raise UserError(f"{', '.join(str(s.path) for s in sources)}: no validation data (val.bin) to evaluate on")
    evaluator = Evaluator(
        config.eval,
        mixture,
        task_list,
        tokenizer,
        eos_token_id(tokenizer),
        micro_batch_size=micro_batch_size or config.eval.micro_batch_size or config.train.micro_batch_size,
        max_length=max_length or model.config.block_size,
        device=device,
    )
    evaluation = evaluator(model, step)
    evaluation.summary = f"{checkpoint.path} (step {step}): {evaluation.summary}"
    return evaluation


def task_list(specs: list[str] | None, config: Config, limit: int | None) -> list[tasks.Task]:
    """--tasks, or the run's eval.tasks when it is not given; `limit` examples of each (None: all)."""
    if specs is None:
        return tasks.load_tasks(config.eval.tasks, "eval.tasks", limit=limit)
    return tasks.load_tasks(specs, "--tasks", limit=limit)
