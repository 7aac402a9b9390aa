"""`smollm2 eval`: val loss, samples and multiple-choice tasks of a checkpoint, a Hugging Face folder or a GGUF file.

    smollm2 eval --checkpoint RUN_DIR_OR_CKPT [--data DIR] [--tasks TASK ...]  # val loss, samples, tasks
    smollm2 eval --model HF_FOLDER_OR_GGUF --tasks TASK ... [--limit N]         # tasks only
    smollm2 eval --watch RUN_DIR [--tasks TASK ...] [--max-checkpoints N] [--timeout S]

A TASK is a benchmark name (hellaswag, arc_easy, arc_challenge, piqa, openbookqa, winogrande, mmlu:
smollm2/benchmarks.py) or a task file (smollm2/tasks.py). --limit N scores a fixed, seeded subset of N
examples of each; without it, --checkpoint takes the run's eval.task_limit (what its in-loop eval scored),
--watch and --model score the full sets.

--checkpoint computes what the trainer's in-loop eval computes (smollm2/evaluator.py) on the checkpoint's
consolidated weights; --watch is a job beside training that does so for each new checkpoint of a run
(smollm2/eval_watch.py). Tasks (multiple-choice, smollm2/tasks.py) default to eval.tasks of the run's
config.yaml.
"""

from __future__ import annotations

import argparse
import time

import torch

from smollm2 import tasks
from smollm2.errors import UserError
from smollm2.evaluator import evaluate_checkpoint, task_list


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
        metavar="TASK",
        help=f"multiple-choice tasks: benchmark names ({', '.join(tasks.TASK_NAMES)}) or task files (.jsonl/.json/"
        ".parquet: context/choices/gold, or the benchmarks' rows); default with --checkpoint and --watch: eval.tasks "
        "of the run's config (--tasks alone: none)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="a fixed, seeded subset of N examples of each task (default: --checkpoint the run's eval.task_limit, "
        "--watch and --model every example)",
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
        "--limit": args.limit,
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
        raise UserError("--model: give --tasks TASK ... (val loss and samples need a run: --checkpoint)")


def run(args: argparse.Namespace) -> None:
    _check_flags(args)
    if args.watch:
        from smollm2.eval_watch import watch

        watch(
            args.watch,
            data=args.data,
            task_paths=args.tasks,
            limit=args.limit,
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
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    evaluation = evaluate_checkpoint(
        checkpoint,
        config,
        args.data,
        task_list(args.tasks, config, args.limit or config.eval.task_limit),
        device,
        args.micro_batch_size,
        args.max_length,
    )
    print(evaluation.summary)
    for prompt, text in evaluation.samples:
        print(f"--- {prompt!r}\n{prompt}{text}")


def _evaluate_model(args: argparse.Namespace) -> None:
    from smollm2.tokenizer import load_tokenizer
    from smollm2.weights import load_model

    loaded_tasks = tasks.load_tasks(args.tasks, "--tasks", limit=args.limit)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(args.model, device=device)
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    if tokenizer is None:
        raise UserError(f"{args.model}: comes with no tokenizer: give --tokenizer")
    for task in loaded_tasks:
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
            f"{task.summary()}: acc {metrics['acc']:.4f}, acc_norm {metrics['acc_norm']:.4f}"
            f" ({time.perf_counter() - start:.1f} s)"
        )
