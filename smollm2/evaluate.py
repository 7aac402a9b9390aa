"""Validation loss / perplexity, generation samples and tasks: the trainer's eval, and `smollm2 eval`.

    smollm2 eval --checkpoint RUN_DIR_OR_CKPT [--data DIR] [--tasks FILE ...]  # val loss, samples, tasks
    smollm2 eval --model HF_FOLDER_OR_GGUF --tasks FILE ...                     # tasks only
    smollm2 eval --watch RUN_DIR [--tasks FILE ...] [--max-checkpoints N] [--timeout S]

Tasks (multiple-choice, smollm2/tasks.py) default to eval.tasks of the run's config.yaml.

`--watch` is a job of its own beside training (launch/slurm/eval_watch.sbatch): it evaluates each new
complete checkpoint of the run, oldest first, once each, as `--checkpoint` would, and writes what the
trainer's in-loop eval writes (the same keys and tags, at the checkpoint's step) into files of its own, so
that it never races the trainer's writer: RUN_DIR/metrics-eval.jsonl, RUN_DIR/samples-eval.jsonl, and the
TensorBoard run RUN_DIR/tensorboard/eval-watch (beside the trainer's RUN_DIR/tensorboard: `tensorboard
--logdir RUN_DIR/tensorboard` draws both runs on the same charts). The trainer rewrites its metrics.jsonl
when a job resumes, so a second writer appending there could lose rows. metrics-eval.jsonl is also the
watcher's memory: a restarted watcher starts after the newest step it holds. The steps it writes only go
up (TensorBoard reads a step that goes back as a restart and drops what followed), so a checkpoint older
than the last one evaluated is never taken. A checkpoint pruned (checkpoint.keep_last) before its turn is
skipped with a note. The watcher stops when it has evaluated step train.max_steps (config.yaml is re-read
at every look: a later job may change it), after --max-checkpoints evaluations, or when no new checkpoint
has come for --timeout seconds (a run that crashed saves no last step).

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
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from smollm2.errors import UserError


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
# One checkpoint, as the trainer's in-loop eval sees it


@dataclass
class Evaluation:
    step: int
    row: dict[str, float]  # the metrics row: eval_loss, eval_ppl, eval/<task>/acc, eval/<task>/acc_norm
    samples: list[tuple[str, str]]
    summary: str  # one line for the console


def evaluate_checkpoint(
    checkpoint: Any,
    config: Any,
    data: str | None,
    task_list: list[Any],
    device: torch.device,
    micro_batch_size: int | None = None,
    max_length: int | None = None,
) -> Evaluation:
    """Val loss, samples and tasks of one checkpoint, with the eval settings of the run's `config`.

    What the in-loop eval computes, on the checkpoint's consolidated weights in fp32: the val loss over the
    run's data (one folder or a mixture's sources; the prepared folder `data` when given), the tasks with at
    most `max_length` tokens at once (default: the model's block_size, as in training). For a run trained in
    fp32 the numbers are the trainer's own at that step (tests/test_eval_watch.py); in bf16, close to them.
    """
    from smollm2 import tasks
    from smollm2.checkpoint import load_run_model, read_client_state
    from smollm2.config import DataConfig
    from smollm2.mixture import open_mixture, resolve_sources
    from smollm2.tokenizer import eos_token_id, tokenizer_fingerprint

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
    e = config.eval
    micro_batch_size = micro_batch_size or e.micro_batch_size or config.train.micro_batch_size
    loss, source_losses = sources_validation_loss(
        model, mixture.val, len(sources), e.num_blocks, micro_batch_size, device
    )
    task_results = tasks.evaluate_tasks(
        model,
        tokenizer,
        task_list,
        micro_batch_size=micro_batch_size,
        device=device,
        max_length=max_length or model.config.block_size,
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
    summary = (
        f"{checkpoint.path} (step {step}): val loss {loss:.4f}, ppl {perplexity(loss):.2f} over the first"
        f" {e.num_blocks} blocks of {', '.join(str(s.path) for s in sources)}"
        + (f" | {tasks.describe(task_results)}" if task_results else "")
    )
    row = {"eval_loss": loss, "eval_ppl": perplexity(loss), **source_losses, **tasks.metrics_row(task_results)}
    return Evaluation(step, row, samples, summary)


def _task_list(paths: list[str] | None, config: Any) -> list[Any]:
    from smollm2.tasks import load_tasks

    if paths is None:
        return load_tasks(config.eval.tasks, "eval.tasks")
    return load_tasks(paths, "--tasks")


# ---------------------------------------------------------------------------------------------------------
# --watch


WATCH_METRICS = "metrics-eval.jsonl"
WATCH_SAMPLES = "samples-eval.jsonl"
WATCH_TENSORBOARD = "tensorboard/eval-watch"


def last_watched_step(run_dir: Path) -> int:
    """The newest step in RUN_DIR/metrics-eval.jsonl (0: none): what a watcher has evaluated so far."""
    path = run_dir / WATCH_METRICS
    if not path.is_file():
        return 0
    steps = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path}, line {number}: not a metrics row (expected JSON with a step)") from None
    return max(steps, default=0)


def next_checkpoint(
    run_dir: Path, after_step: int, seen: set[int], save_every: int
) -> tuple[Any | None, list[tuple[int, str]]]:
    """(the oldest complete checkpoint after `after_step`, or None; [(step, why), ...] of those before it that
    are skipped).

    `seen` collects the steps of the checkpoint folders found here, so that one pruned before its turn is
    noticed; steps on the checkpoint.save_every grid are expected as well (a folder saved and pruned between
    two looks). Only checkpoints after `after_step` are read (their manifest checks read every file).
    """
    from smollm2.checkpoint import CHECKPOINTS, LATEST, TAG_PATTERN, Checkpoint, checkpoint_problem, checkpoint_step

    root = run_dir / CHECKPOINTS
    latest = TAG_PATTERN.fullmatch((root / LATEST).read_text().strip()) if (root / LATEST).is_file() else None
    latest_step = int(latest.group(1)) if latest else None
    folders = sorted(
        (Checkpoint(root, p.name) for p in root.iterdir() if p.is_dir() and TAG_PATTERN.fullmatch(p.name))
        if root.is_dir()
        else (),
        key=checkpoint_step,
    )
    present = {checkpoint_step(c): c for c in folders if checkpoint_step(c) > after_step}
    seen.update(present)
    skipped, chosen = [], None
    for step, checkpoint in present.items():
        problem = checkpoint_problem(checkpoint, latest_step)
        if problem is None:
            chosen = checkpoint
            break
        if latest_step is None or step > latest_step:
            break  # a save in progress: it becomes good when `latest` moves to it
        skipped.append((step, problem))
    bound = checkpoint_step(chosen) if chosen else (latest_step or 0) + 1
    expected = seen | set(range(save_every, bound, save_every) if save_every else ())
    pruned = [(step, "pruned before being evaluated") for step in expected if after_step < step < bound]
    return chosen, sorted(skipped + [(step, why) for step, why in pruned if step not in present])


def watch(
    run_dir: str | Path,
    *,
    data: str | None = None,
    task_paths: list[str] | None = None,
    micro_batch_size: int | None = None,
    max_length: int | None = None,
    poll_s: float = 30.0,
    max_checkpoints: int | None = None,
    timeout_s: float | None = None,
    report: Callable[[str], None] = lambda line: print(line, flush=True),
) -> int:
    """Evaluate the run's checkpoints as they appear (module docstring); returns how many it evaluated."""
    from smollm2.checkpoint import checkpoint_step
    from smollm2.config import load_config
    from smollm2.metrics import MetricsLogger

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    last_step = last_watched_step(run_dir)
    report(
        f"eval --watch {run_dir}: "
        + (f"steps up to {last_step} already evaluated ({WATCH_METRICS}); " if last_step else "")
        + f"looking for newer checkpoints every {poll_s:g} s"
    )
    logger, task_list = None, None
    seen: set[int] = set()
    noted: set[int] = set()
    evaluated, said_waiting = 0, False
    waiting_since = time.monotonic()
    try:
        while True:
            if config_path.is_file():
                config = load_config(config_path)
                if task_list is None:
                    task_list = _task_list(task_paths, config)
                if last_step >= config.train.max_steps:
                    report(f"eval --watch: done: the run's last step ({last_step}, train.max_steps) is evaluated")
                    return evaluated
                checkpoint, skipped = next_checkpoint(run_dir, last_step, seen, config.checkpoint.save_every)
                skipped = [(step, why) for step, why in skipped if step not in noted]
                noted.update(step for step, _ in skipped)
                for why in dict.fromkeys(why for _, why in skipped):
                    steps = [str(step) for step, reason in skipped if reason == why]
                    report(f"eval --watch: skipped step{'s' if len(steps) > 1 else ''} {', '.join(steps)}: {why}")
                if checkpoint is not None:
                    try:
                        evaluation = evaluate_checkpoint(
                            checkpoint, config, data, task_list, device, micro_batch_size, max_length
                        )
                    except Exception:
                        if checkpoint.path.exists():
                            raise
                        noted.add(step := checkpoint_step(checkpoint))
                        report(f"eval --watch: skipped step {step}: pruned while being read")
                        continue
                    if logger is None:
                        logger = MetricsLogger(
                            run_dir,
                            enabled=True,
                            tensorboard=config.logging.tensorboard,
                            start_step=last_step,  # what an evaluation cut short left past it goes
                            metrics_file=WATCH_METRICS,
                            samples_file=WATCH_SAMPLES,
                            tensorboard_dir=WATCH_TENSORBOARD,
                        )
                    logger.log_samples(evaluation.step, evaluation.samples)
                    logger.log(evaluation.step, evaluation.row)  # the row last: it marks the step done
                    last_step, evaluated = evaluation.step, evaluated + 1
                    waiting_since = time.monotonic()
                    report(f"eval --watch: {evaluation.summary}")
                    if max_checkpoints is not None and evaluated >= max_checkpoints:
                        report(f"eval --watch: stopping after {evaluated} checkpoint(s) (--max-checkpoints)")
                        return evaluated
                    continue
            elif not said_waiting:
                said_waiting = True
                report(f"eval --watch: waiting for {config_path} (written when training starts)")
            if timeout_s is not None and time.monotonic() - waiting_since > timeout_s:
                report(
                    f"eval --watch: stopping: no new checkpoint for {timeout_s:g} s (--timeout), at step {last_step}"
                )
                return evaluated
            time.sleep(poll_s)
    finally:
        if logger is not None:
            logger.close()


# ---------------------------------------------------------------------------------------------------------
# The verb


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--checkpoint",
        metavar="RUN_DIR_OR_CKPT",
        help="a run directory (its latest checkpoint) or one checkpoint folder: val loss, samples and tasks",
    )
    what.add_argument(
        "--model", metavar="PATH", help="a Hugging Face folder, a .gguf file or a run directory: the tasks only"
    )
    what.add_argument(
        "--watch",
        metavar="RUN_DIR",
        help="evaluate each new checkpoint of a training run as it appears, once each, until its last step",
    )
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="prepared data folder whose val.bin to use (default: data.path of the run's config.yaml)",
    )
    parser.add_argument(
        "--tasks",
        nargs="*",
        metavar="FILE",
        help="multiple-choice task files (.jsonl/.json/.parquet: context/choices/gold, HellaSwag, ARC or PIQA rows);"
        " default with --checkpoint and --watch: eval.tasks of the run's config (--tasks alone: none)",
    )
    parser.add_argument("--tokenizer", metavar="PATH", help="--model: tokenizer.json or its folder, if it has none")
    parser.add_argument(
        "--micro-batch-size",
        type=int,
        help="sequences per forward (default: the run's eval.micro_batch_size or train.micro_batch_size; --model: 8)",
    )
    parser.add_argument("--max-length", type=int, help="most tokens a task forward sees (default: model block_size)")
    watching = parser.add_argument_group("--watch")
    watching.add_argument("--poll", type=float, default=30.0, metavar="S", help="seconds between looks (default 30)")
    watching.add_argument("--max-checkpoints", type=int, metavar="N", help="stop after evaluating N checkpoints")
    watching.add_argument("--timeout", type=float, metavar="S", help="stop when no new checkpoint came for S seconds")


def _check_flags(args: argparse.Namespace) -> None:
    positive = {
        "--micro-batch-size": args.micro_batch_size,
        "--max-length": args.max_length,
        "--poll": args.poll,
        "--max-checkpoints": args.max_checkpoints,
        "--timeout": args.timeout,
    }
    for flag, value in positive.items():
        if value is not None and value <= 0:
            raise UserError(f"{flag} {value:g}: expected a number above 0")
    if not args.watch:
        for flag, value in {"--max-checkpoints": args.max_checkpoints, "--timeout": args.timeout}.items():
            if value is not None:
                raise UserError(f"{flag}: only with --watch RUN_DIR")
    if args.tokenizer and not args.model:
        raise UserError("--tokenizer: only with --model (a run's tokenizer is its tokenizer.json)")
    if args.model and not args.tasks:
        raise UserError("--model: give --tasks FILE ... (val loss and samples need a run: --checkpoint)")


def run(args: argparse.Namespace) -> None:
    _check_flags(args)
    if args.watch:
        watch(
            args.watch,
            data=args.data,
            task_paths=args.tasks,
            micro_batch_size=args.micro_batch_size,
            max_length=args.max_length,
            poll_s=args.poll,
            max_checkpoints=args.max_checkpoints,
            timeout_s=args.timeout,
        )
    elif args.model:
        _evaluate_model(args)
    else:
        _evaluate_run(args)


def _evaluate_run(args: argparse.Namespace) -> None:
    from smollm2.checkpoint import find_checkpoint
    from smollm2.config import load_config

    checkpoint = find_checkpoint(args.checkpoint)
    config = load_config(checkpoint.run_dir / "config.yaml")
    task_list = _task_list(args.tasks, config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    evaluation = evaluate_checkpoint(
        checkpoint, config, args.data, task_list, device, args.micro_batch_size, args.max_length
    )
    print(evaluation.summary)
    for prompt, text in evaluation.samples:
        print(f"--- {prompt!r}\n{prompt}{text}")


def _evaluate_model(args: argparse.Namespace) -> None:
    from smollm2 import tasks
    from smollm2.checkpoint import load_model
    from smollm2.tokenizer import load_tokenizer

    task_list = tasks.load_tasks(args.tasks, "--tasks")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(args.model, device=device)
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    if tokenizer is None:
        raise UserError(f"{args.model}: comes with no tokenizer: give --tokenizer")
    for task in task_list:
        start = time.perf_counter()
        metrics = tasks.evaluate_tasks(
            model,
            tokenizer,
            [task],
            micro_batch_size=args.micro_batch_size or 8,
            device=device,
            max_length=args.max_length or model.config.block_size,
        )[task.name]
        print(
            f"{task.name}: acc {metrics['acc']:.4f}, acc_norm {metrics['acc_norm']:.4f} over {len(task.examples)}"
            f" examples of {task.source} ({time.perf_counter() - start:.1f} s)"
        )
