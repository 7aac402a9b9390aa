"""A multiple-choice example and a task of them: the types every task source builds, and the checks of a row.

Task files (smollm2/tasks.py) and the named benchmarks (smollm2/benchmarks.py) both turn their rows into
Examples here, so that a bad row is reported the same way (the file or package folder, the row, the field)
and every task is scored by one code path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from smollm2.errors import UserError

LIMIT_SEED = 0  # `limit`'s subsets: fixed, so that every run and every rank scores the same rows


@dataclass(frozen=True)
class Example:
    """One multiple-choice question: scored continuations are target_delimiter + choice after context.

    With `continuation` (partial scoring, lm-eval's winogrande), choice j completes the context instead:
    request j is (context + choices[j], target_delimiter + continuation).
    """

    context: str
    choices: tuple[str, ...]
    gold: int
    target_delimiter: str = " "
    continuation: str | None = None

    def requests(self) -> list[tuple[str, str]]:
        """(context, continuation) of each choice, as lm-eval's construct_requests makes them."""
        if self.continuation is None:
            return [(self.context, self.target_delimiter + choice) for choice in self.choices]
        return [(self.context + choice, self.target_delimiter + self.continuation) for choice in self.choices]

    def norm_lengths(self) -> list[float]:
        """What acc_norm divides each score by: the characters of lm-eval's choice text (doc_to_choice)."""
        prefix = "" if self.continuation is None else self.context
        return [float(len(prefix + choice)) for choice in self.choices]


@dataclass(frozen=True)
class Task:
    """A named list of examples; `name` is what the metrics are logged under (eval/<name>/acc)."""

    name: str
    examples: tuple[Example, ...]
    source: str  # where the examples came from, for messages: the file, or the package folder of a named task
    split: str | None = None  # a named task's split (validation, test); None for a file
    total_rows: int | None = None  # examples of the whole file or split (more than len(examples) under a limit)

    def summary(self) -> str:
        """`hellaswag (validation, 10,042 rows)`, `mmlu (test, 100 of 14,042 rows)`, `mine (mine.jsonl, 200 rows)`."""
        where = self.split or self.source
        total = self.total_rows or len(self.examples)
        rows = f"{total:,} rows" if total == len(self.examples) else f"{len(self.examples):,} of {total:,} rows"
        return f"{self.name} ({where}, {rows})"


def subset(num_rows: int, limit: int | None) -> list[int]:
    """The indices `limit` keeps, in order: all of them (None, or limit >= num_rows), else a seeded sample."""
    if limit is not None and limit < 1:
        raise UserError(f"limit {limit}: expected at least 1 example per task (or none, for all)")
    if limit is None or limit >= num_rows:
        return list(range(num_rows))
    return sorted(np.random.default_rng(LIMIT_SEED).choice(num_rows, size=limit, replace=False).tolist())


def required_field(row: dict, where: str, *names: str) -> Any:
    """row[names[0]] (or the first of its aliases it has); UserError naming `where` and the field otherwise."""
    for name in names:
        if name in row:
            return row[name]
    also = f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
    raise UserError(f"{where}: missing field {names[0]!r}{also}")


def checked_example(
    context: Any,
    choices: Any,
    gold: Any,
    where: str,
    fields: tuple[str, str, str],
    delimiter: str = " ",
    continuation: str | None = None,
) -> Example:
    """An Example, or a UserError naming `where` and the row's field (`fields`: context, choices, gold) at fault."""
    context_field, choices_field, gold_field = fields
    if not isinstance(context, str):
        raise UserError(f"{where}: {context_field}: expected a string, got {context!r}")
    if context and not context.strip() and continuation is None:
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
    return Example(context, tuple(choices), gold, delimiter, continuation)


def integer_label(value: Any, where: str, field: str) -> int:
    """HellaSwag and PIQA exports store the label as an int or a digit string ("" in unlabelled test splits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise UserError(
        f"{where}: {field}: expected the index of the right choice, got {value!r}"
        " (test splits carry no labels: use the validation split)"
    )
