"""Multiple-choice downstream evals: task files, scoring by log-likelihood, and the shipped next-line task.

    smollm2 tasks build --data DIR --out FILE.jsonl     # the next-line task, from DIR/val.bin (held-out text)
    smollm2 eval --model PATH --tasks FILE ...           # acc / acc_norm of a run, HF folder or GGUF file
    eval.tasks: [FILE, ...]                              # in the config: at every in-loop eval, and `eval --watch`

A task is a file of examples, one JSON object per line (.jsonl / .json) or one row each (.parquet):

    {"context": "...", "choices": ["...", "..."], "gold": 0, "target_delimiter": " "}

`gold` is the index of the right choice (or its text); `target_delimiter` (default " ", as in
lm-evaluation-harness) goes between the context and every choice; `query` and `label` are accepted for
`context` and `gold`. Rows of HellaSwag, ARC and PIQA as their Hugging Face datasets export them (and
ARC's original AllenAI JSONL) are recognised by their fields and turned into the prompts
lm-evaluation-harness's own hellaswag, arc_easy / arc_challenge and piqa tasks build, so the numbers
compare with published ones (zero-shot).

Scoring is lm-evaluation-harness's (`lm_eval.api.model._encode_pair`, `lm_eval.models.huggingface.
_loglikelihood_tokens` and the multiple_choice branch of `ConfigurableTask.process_results`, 0.4.x), so
that `lm_eval --model hf` on the exported Hugging Face folder and the same file picks the same choice for
every example (tests/test_tasks.py checks it):
  - request i, j is (context, target_delimiter + choices[j]); trailing whitespace of the context moves to
    the front of the continuation; the context and context + continuation are tokenized separately and
    the continuation tokens are those of the latter beyond the former's length (so a token straddling the
    boundary, "mer|cy" -> "mercy", is scored by no one: the model reads the context's own tokens, then
    those); an empty context becomes one prefix token (lm-eval: the tokenizer's bos, else eos; here the
    end-of-document token unless given);
  - the input is (context + continuation)[-(max_length + 1):][:-1], right-padded, with no attention mask
    (padding after the causal positions cannot change them); the score is the sum of the continuation
    tokens' log-probabilities;
  - acc: argmax of the scores is gold; acc_norm: argmax of score / len(choice), the choice's length in
    characters without the delimiter (lm-eval's acc_bytes would divide by UTF-8 bytes; for ASCII text,
    such as the shipped task, the two are the same); ties go to the first choice (numpy's argmax).

Distributed: every rank tokenizes the whole task (the checks, and so any error, are the same on every
rank), scores the examples i with i % world_size == rank, and the counts are summed with one all-reduce
per call. Every rank runs the same number of forward passes, padding with one-token forwards, since under
ZeRO-3 each forward gathers the weights collectively.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from smollm2.config import TASK_FILE_SUFFIXES
from smollm2.errors import UserError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# What `smollm2 tasks build` writes by default: lines of text after a passage of the same work.
NEXT_LINE_DELIMITER = "\n"


@dataclass(frozen=True)
class Example:
    """One multiple-choice question: scored continuations are target_delimiter + choice after context."""

    context: str
    choices: tuple[str, ...]
    gold: int
    target_delimiter: str = " "


@dataclass(frozen=True)
class Task:
    """A named list of examples; `name` is what the metrics are logged under (eval/<name>/acc)."""

    name: str
    examples: tuple[Example, ...]
    source: str  # the file it came from, for messages


# ---------------------------------------------------------------------------------------------------------
# Reading task files


def read_task(path: str | Path, name: str | None = None) -> Task:
    """All examples of a task file; `name` defaults to the file name without its suffix."""
    path = Path(path)
    if path.suffix not in TASK_FILE_SUFFIXES:
        raise UserError(f"{path}: not a task file (expected {', '.join(TASK_FILE_SUFFIXES)})")
    if not path.is_file():
        raise UserError(f"{path}: no such task file")
    examples = tuple(example_from_row(row, f"{path}, {where}") for where, row in _rows(path))
    if not examples:
        raise UserError(f"{path}: no examples")
    return Task(name=name or path.stem, examples=examples, source=str(path))


def load_tasks(
    paths: Sequence[str | Path],
    what: str,
    tokenizer: Tokenizer | None = None,
    max_length: int | None = None,
) -> list[Task]:
    """read_task of every file, each error prefixed with `what` (the config key or flag that named the files).

    Tasks are logged by file name (eval/<name>/acc), so two files of one name are refused. With a tokenizer,
    every choice is also checked to have tokens of its own and to fit `max_length` (encode_task), so that a
    training run refuses a bad task before its first step, not at its first eval.
    """
    try:
        loaded = [read_task(path) for path in paths]
        if tokenizer is not None:
            from smollm2.tokenizer import eos_token_id

            for task in loaded:
                encode_task(tokenizer, task, eos_token_id(tokenizer), max_length)
    except UserError as exc:
        raise UserError(f"{what}: {exc}") from None
    names = [task.name for task in loaded]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"{what}: two files named {name!r}: tasks are logged by file name (eval/{name}/acc)")
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
    if "ctx_a" in row and "endings" in row:
        return _hellaswag_example(row, where)
    if "goal" in row and "sol1" in row:
        return _piqa_example(row, where)
    if "answerKey" in row:
        return _arc_example(row, where)
    context = _field(row, where, "context", "query")
    choices = _field(row, where, "choices")
    gold = _field(row, where, "gold", "label")
    delimiter = row.get("target_delimiter", " ")
    if not isinstance(delimiter, str):
        raise UserError(f"{where}: target_delimiter: expected a string, got {delimiter!r}")
    return _checked_example(context, choices, gold, delimiter, where, "context", "choices", "gold")


def _field(row: dict, where: str, *names: str) -> Any:
    for name in names:
        if name in row:
            return row[name]
    also = f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
    raise UserError(f"{where}: missing field {names[0]!r}{also}")


def _checked_example(
    context: Any,
    choices: Any,
    gold: Any,
    delimiter: str,
    where: str,
    context_field: str,
    choices_field: str,
    gold_field: str,
) -> Example:
    if not isinstance(context, str):
        raise UserError(f"{where}: {context_field}: expected a string, got {context!r}")
    if context and not context.strip():
        # lm-eval moves the whitespace to the continuation and is left with no context token at all.
        raise UserError(f"{where}: {context_field}: only whitespace (leave it empty or give it text)")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise UserError(f"{where}: {choices_field}: expected a list of at least 2 strings, got {choices!r}")
    if not all(choices):
        raise UserError(f"{where}: {choices_field}: choice {choices.index('')} is empty")
    if isinstance(gold, str) and gold in choices:
        gold = choices.index(gold)
    if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
        raise UserError(
            f"{where}: {gold_field}: expected the index (0-{len(choices) - 1}) or the text of the right"
            f" choice, got {gold!r}"
        )
    return Example(context=context, choices=tuple(choices), gold=gold, target_delimiter=delimiter)


def _integer_label(value: Any, where: str, field: str) -> int:
    """HellaSwag and PIQA exports store the label as an int or a digit string ("" in unlabelled test splits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise UserError(
        f"{where}: {field}: expected the index of the right choice, got {value!r}"
        " (test splits carry no labels: use the validation split)"
    )


def _hellaswag_text(text: str) -> str:
    """lm-eval's hellaswag cleanup: WikiHow's " [title]" becomes ". ", other [tags] go, double spaces close."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _hellaswag_example(row: dict, where: str) -> Example:
    parts = {}
    for key in ("activity_label", "ctx_a", "ctx_b"):
        if not isinstance(row.get(key), str):
            raise UserError(f"{where}: {key}: expected a string, got {row.get(key)!r}")
        parts[key] = row[key]
    endings = row["endings"]
    if not isinstance(endings, list) or not all(isinstance(e, str) for e in endings):
        raise UserError(f"{where}: endings: expected a list of strings, got {endings!r}")
    context = _hellaswag_text(f"{parts['activity_label']}: {parts['ctx_a']} {parts['ctx_b'].capitalize()}")
    gold = _integer_label(_field(row, where, "label"), where, "label")
    return _checked_example(
        context, [_hellaswag_text(e) for e in endings], gold, " ", where, "ctx_a", "endings", "label"
    )


def _piqa_example(row: dict, where: str) -> Example:
    goal = row["goal"]
    if not isinstance(goal, str):
        raise UserError(f"{where}: goal: expected a string, got {goal!r}")
    choices = [row["sol1"], _field(row, where, "sol2")]
    gold = _integer_label(_field(row, where, "label"), where, "label")
    return _checked_example(f"Question: {goal}\nAnswer:", choices, gold, " ", where, "goal", "sol1/sol2", "label")


def _arc_example(row: dict, where: str) -> Example:
    question = _field(row, where, "question")
    if isinstance(question, dict):  # AllenAI's own JSONL: {"stem": ..., "choices": [{"text", "label"}, ...]}
        stem, options = question.get("stem"), question.get("choices")
        try:
            texts, labels = [o["text"] for o in options], [o["label"] for o in options]
        except (TypeError, KeyError):
            raise UserError(
                f"{where}: question.choices: expected a list of {{text, label}} objects, got {options!r}"
            ) from None
    else:  # the Hugging Face export: "question": str, "choices": {"text": [...], "label": [...]}
        stem, options = question, _field(row, where, "choices")
        if not isinstance(options, dict) or "text" not in options or "label" not in options:
            raise UserError(f"{where}: choices: expected {{'text': [...], 'label': [...]}}, got {options!r}")
        texts, labels = options["text"], options["label"]
    if not isinstance(stem, str):
        raise UserError(f"{where}: question: expected a string, got {stem!r}")
    answer = row["answerKey"]
    if not isinstance(labels, list) or answer not in labels:
        raise UserError(f"{where}: answerKey: {answer!r} is not one of the choice labels {labels!r}")
    return _checked_example(
        f"Question: {stem}\nAnswer:", texts, labels.index(answer), " ", where, "question", "choices", "answerKey"
    )


def write_task(path: str | Path, examples: Sequence[Example]) -> None:
    """One JSON object per line, in the layout read_task reads first; written under a temporary name."""
    from smollm2.atomic import write_text_atomic

    rows = (
        json.dumps(
            {"context": e.context, "choices": list(e.choices), "gold": e.gold, "target_delimiter": e.target_delimiter},
            ensure_ascii=False,
        )
        for e in examples
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(path), "".join(row + "\n" for row in rows))


# ---------------------------------------------------------------------------------------------------------
# Scoring


def encode_requests(
    tokenizer: Tokenizer,
    example: Example,
    prefix_token_id: int,
) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) of each choice, split at the token boundary lm-eval splits at."""
    continuations = [example.target_delimiter + choice for choice in example.choices]
    if not example.context:
        pairs = []
        for ids in (e.ids for e in tokenizer.encode_batch(continuations, add_special_tokens=False)):
            # lm-eval conditions on the prefix token, unless the continuation already starts with it.
            pairs.append(([prefix_token_id], ids) if ids[0] != prefix_token_id else (ids[:1], ids[1:]))
        return pairs
    context = example.context.rstrip()
    moved = example.context[len(context) :]  # trailing whitespace joins each continuation
    context_ids = tokenizer.encode(context).ids
    wholes = tokenizer.encode_batch([context + moved + c for c in continuations])
    return [(context_ids, whole.ids[len(context_ids) :]) for whole in wholes]


def encode_task(
    tokenizer: Tokenizer,
    task: Task,
    prefix_token_id: int,
    max_length: int,
) -> list[list[tuple[list[int], list[int]]]]:
    """encode_requests for every example, refusing continuations that have no tokens or do not fit max_length."""
    encoded = []
    for i, example in enumerate(task.examples):
        pairs = encode_requests(tokenizer, example, prefix_token_id)
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
        encoded.append(pairs)
    return encoded


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
    caller sets eval mode). `max_length`: the most tokens one forward sees; longer requests lose their
    oldest context tokens (lm-eval takes max_position_embeddings; a model's block_size is what it was
    trained on). `prefix_token_id`: what an empty context becomes (default: the end-of-document token).
    """
    if prefix_token_id is None:
        from smollm2.tokenizer import eos_token_id

        prefix_token_id = eos_token_id(tokenizer)
    encoded = encode_task(tokenizer, task, prefix_token_id, max_length)
    requests = [
        (i, j, context + continuation, len(continuation))
        for i in range(rank, len(encoded), world_size)
        for j, (context, continuation) in enumerate(encoded[i])
    ]
    # Longest first, as lm-eval orders them: each micro-batch holds requests of similar length, little padding.
    requests.sort(key=lambda request: -len(request[2]))
    requests_per_rank = [sum(len(encoded[i]) for i in range(r, len(encoded), world_size)) for r in range(world_size)]
    num_batches = max(math.ceil(count / micro_batch_size) for count in requests_per_rank)
    scores = {i: [0.0] * len(encoded[i]) for i in range(rank, len(encoded), world_size)}
    for b in range(num_batches):
        batch = requests[b * micro_batch_size : (b + 1) * micro_batch_size]
        if not batch:  # this rank is done: a one-token forward keeps it in step with the others
            model(torch.full((1, 1), prefix_token_id, dtype=torch.long, device=device))
            continue
        windows = [tokens[-(max_length + 1) :][:-1] for _, _, tokens, _ in batch]
        input_ids = torch.full((len(batch), max(map(len, windows))), prefix_token_id, dtype=torch.long)
        for row, window in enumerate(windows):
            input_ids[row, : len(window)] = torch.tensor(window)
        logits = model(input_ids.to(device)).logits
        sums = []
        for row, ((_, _, tokens, continuation_length), window) in enumerate(zip(batch, windows)):
            # Position t predicts token t + 1: the continuation's logits are the last ones of the window.
            positions = slice(len(window) - continuation_length, len(window))
            logprobs = F.log_softmax(logits[row, positions].float(), dim=-1)
            targets = torch.tensor(tokens[-continuation_length:]).to(logprobs.device, non_blocking=True)
            sums.append(logprobs.gather(-1, targets[:, None]).sum())
        for (i, j, _, _), value in zip(batch, torch.stack(sums).tolist()):  # one device sync per micro-batch
            scores[i][j] = value
    return scores


def predictions(scores: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(the acc choice, the acc_norm choice): argmax of the scores, and of the scores per character of choice."""
    scores = np.asarray(scores, dtype=np.float64)
    lengths = np.array([float(len(choice)) for choice in choices])
    return int(np.argmax(scores)), int(np.argmax(scores / lengths))


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
            pred, pred_norm = predictions(example_scores, example.choices)
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
    targets = []  # (document, target line, first context line)
    for d, lines in enumerate(documents_lines):
        for i in candidate_lines[d]:
            start, chars = i, 0
            while start > 0 and chars < context_chars:
                start -= 1
                chars += len(lines[start]) + 1
            if chars >= context_chars:
                targets.append((d, i, start))
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
