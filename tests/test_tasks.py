"""Multiple-choice evals (smollm2/tasks.py): task files in each layout and their errors, scoring on hand-made
logits, lm-evaluation-harness's token boundaries, the split over ranks, the shipped next-line task, and the
reference check: lm-evaluation-harness (`lm_eval`, model "hf") on the exported Hugging Face folder scores every
choice of every example as we do, for the real SmolLM2-135M-Instruct and for a freshly trained tiny model.
"""

import argparse
import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import ROOT, TINY_YAML
from smollm2 import evaluate, tasks
from smollm2.cli import main
from smollm2.errors import UserError
from smollm2.tokenizer import load_tokenizer

# Small models and many small forwards: one intra-op thread is faster on the shared 2-core CI machine.
pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED_TASK = ROOT / "tests" / "tasks" / "shakespeare_next_line.jsonl"
CPU = torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------
# A model whose log-likelihoods can be written out by hand


WORDS = ["<|endoftext|>", "a", "b", "c", "d"]
# P(next | previous) of a bigram model over WORDS (rows: previous token, columns: next token).
BIGRAM = torch.tensor(
    [
        [0.01, 0.60, 0.20, 0.10, 0.09],
        [0.01, 0.09, 0.50, 0.30, 0.10],
        [0.01, 0.30, 0.09, 0.10, 0.50],
        [0.01, 0.09, 0.40, 0.00, 0.50],
        [0.01, 0.59, 0.10, 0.20, 0.10],
    ]
).clamp_min(1e-6)


class BigramModel:
    """logits[b, t] = log P(. | input_ids[b, t]): log_softmax gives back exactly those log-probabilities."""

    def __init__(self) -> None:
        self.input_shapes: list[tuple[int, int]] = []

    def __call__(self, input_ids: torch.Tensor) -> SimpleNamespace:
        self.input_shapes.append(tuple(input_ids.shape))
        return SimpleNamespace(logits=BIGRAM.log()[input_ids])


def word_tokenizer():
    """One token per space-separated word of WORDS: the token boundaries are plain to see."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<|endoftext|>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def logp(previous: str, following: str) -> float:
    return math.log(BIGRAM[WORDS.index(previous), WORDS.index(following)].item())


def test_scores_acc_and_acc_norm_on_hand_made_logits():
    examples = (
        # "b" is likelier (acc), "c d" likelier per character (acc_norm): gold is "c d".
        tasks.Example(context="a", choices=("b", "c d"), gold=1),
        # Both metrics pick "b" over "c", which is right.
        tasks.Example(context="b a", choices=("c", "b"), gold=1),
        # An empty context is scored after the end-of-document token, as lm-eval scores it after bos.
        tasks.Example(context="", choices=("a", "c", "d"), gold=0),
    )
    task = tasks.Task("bigram", examples, "hand-made")
    scores = tasks.choice_loglikelihoods(
        BigramModel(), word_tokenizer(), task, micro_batch_size=2, device=CPU, max_length=16
    )
    expected = {
        0: [logp("a", "b"), logp("a", "c") + logp("c", "d")],
        1: [logp("a", "c"), logp("a", "b")],
        2: [logp("<|endoftext|>", "a"), logp("<|endoftext|>", "c"), logp("<|endoftext|>", "d")],
    }
    assert scores.keys() == expected.keys()
    for i, example_scores in scores.items():
        assert example_scores == pytest.approx(expected[i], abs=1e-5)
    assert tasks.predictions(scores[0], examples[0]) == (0, 1)
    assert tasks.predictions(scores[1], examples[1]) == (1, 1)
    metrics = tasks.evaluate_tasks(
        BigramModel(), word_tokenizer(), [task], micro_batch_size=2, device=CPU, max_length=16
    )
    assert metrics == {"bigram": {"acc": pytest.approx(2 / 3), "acc_norm": pytest.approx(1.0)}}


def test_ties_go_to_the_first_choice_and_acc_norm_counts_characters():
    assert tasks.predictions([-2.0, -2.0, -3.0], tasks.Example("c", ("x", "y", "z"), 0)) == (0, 0)
    # "é" is one character and two UTF-8 bytes: per character "xy" wins (-1.0 against -1.5), per byte "é" would
    # (-0.75). lm-eval's acc_norm divides by characters (its acc_bytes by bytes).
    assert tasks.predictions([-2.0, -1.5], tasks.Example("c", ("xy", "é"), 0)) == (1, 0)
    # With a continuation (partial scoring), lm-eval's choice text is the context with the choice in it: acc_norm
    # divides by len("ab" + choice), 3 and 5 here (-1.0 against -1.2); per choice alone, 1 and 3, "yyy" would win
    # (-3.0 against -2.0).
    partial = tasks.Example("ab", ("x", "yyy"), 0, continuation="rest")
    assert partial.norm_lengths() == [3.0, 5.0]
    assert tasks.predictions([-3.0, -6.0], partial) == (0, 0)
    assert tasks.predictions([-3.0, -6.0], tasks.Example("ab", ("x", "yyy"), 0)) == (0, 1)


def test_partial_scoring_scores_the_shared_continuation_after_each_filled_in_context():
    # Winogrande's way: the choice completes the context ("a " + "b" = "a b"), the continuation " b" is scored
    # after each; the context's trailing space stays with it, since "a b" has none.
    example = tasks.Example(context="a ", choices=("b", "c"), gold=1, continuation="b")
    assert example.requests() == [("a b", " b"), ("a c", " b")]
    task = tasks.Task("partial", (example,), "hand-made")
    scores = tasks.choice_loglikelihoods(
        BigramModel(), word_tokenizer(), task, micro_batch_size=4, device=CPU, max_length=16
    )
    assert scores[0] == pytest.approx([logp("b", "b"), logp("c", "b")], abs=1e-5)
    # c -> b (0.40) beats b -> b (0.09): right by acc; per character of "a b" and "a c" (3 each) too.
    assert tasks.predictions(scores[0], example) == (1, 1)


def test_micro_batches_left_truncation_and_ranks_change_no_score():
    examples = tuple(
        tasks.Example(context=" ".join("abcd"[(i + k) % 4] for k in range(3 + i)), choices=choices, gold=0)
        for i, choices in enumerate(
            [("a b", "c"), ("d", "a", "b c d"), ("b", "c"), ("a", "b", "c", "d"), ("c d a", "b")]
        )
    )
    task = tasks.Task("bigram", examples, "hand-made")
    tokenizer = word_tokenizer()
    reference = tasks.choice_loglikelihoods(
        BigramModel(), tokenizer, task, micro_batch_size=1, device=CPU, max_length=64
    )
    assert (
        tasks.choice_loglikelihoods(BigramModel(), tokenizer, task, micro_batch_size=3, device=CPU, max_length=64)
        == reference
    )
    # A window of 4 tokens cuts the oldest context: a bigram model only looks one token back, so nothing changes.
    short = BigramModel()
    assert (
        tasks.choice_loglikelihoods(short, tokenizer, task, micro_batch_size=3, device=CPU, max_length=4) == reference
    )
    assert max(width for _, width in short.input_shapes) == 4
    # One-token choices after one context are read from one row, as lm-eval groups them: example 3's four
    # choices are one row, example 2's two another, example 1's "d" and "a" one beside "b c d"'s: 8 rows, one
    # forward each, for 13 requests.
    one_by_one = BigramModel()
    tasks.choice_loglikelihoods(one_by_one, tokenizer, task, micro_batch_size=1, device=CPU, max_length=64)
    assert len(one_by_one.input_shapes) == 2 + 2 + 1 + 1 + 2
    # Two ranks: disjoint halves that make up the whole, and the same number of forwards on each (rank 0
    # holds examples 0, 2, 4 in 5 rows, rank 1 examples 1, 3 in 3: 2 and 1 micro-batches of 3, and rank 1
    # adds a one-token forward).
    models = [BigramModel(), BigramModel()]
    halves = [
        tasks.choice_loglikelihoods(
            models[r], tokenizer, task, micro_batch_size=3, device=CPU, max_length=64, rank=r, world_size=2
        )
        for r in range(2)
    ]
    assert sorted(halves[0]) == [0, 2, 4] and sorted(halves[1]) == [1, 3]
    assert {**halves[0], **halves[1]} == reference
    assert len(models[0].input_shapes) == len(models[1].input_shapes) == 2
    assert models[1].input_shapes[-1] == (1, 1) and models[0].input_shapes[-1] != (1, 1)


def _two_rank_worker(rank: int, port: int, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    examples = tuple(tasks.Example(context="a b", choices=(w, "b"), gold=i % 2) for i, w in enumerate("acdac"))
    task = tasks.Task("bigram", examples, "hand-made")
    metrics = tasks.evaluate_tasks(
        BigramModel(), word_tokenizer(), [task], micro_batch_size=1, device=CPU, max_length=8, rank=rank, world_size=2
    )
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(metrics))
    torch.distributed.destroy_process_group()


def test_two_ranks_sum_their_counts_into_the_single_process_result(tmp_path):
    from smollm2.distributed import free_port

    torch.multiprocessing.spawn(_two_rank_worker, args=(free_port(), str(tmp_path)), nprocs=2)
    examples = tuple(tasks.Example(context="a b", choices=(w, "b"), gold=i % 2) for i, w in enumerate("acdac"))
    single = tasks.evaluate_tasks(
        BigramModel(),
        word_tokenizer(),
        [tasks.Task("bigram", examples, "x")],
        micro_batch_size=1,
        device=CPU,
        max_length=8,
    )
    assert single["bigram"]["acc"] not in (0.0, 1.0)
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == single


# ---------------------------------------------------------------------------------------------------------
# Token boundaries, as lm_eval.api.model._encode_pair draws them (with the real SmolLM2 tokenizer)


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_tokenizer_dir):
    return load_tokenizer(smollm2_tokenizer_dir)


def test_token_boundaries_are_lm_eval_s(smollm2_tokenizer):
    tok = smollm2_tokenizer
    ids = lambda text: tok.encode(text).ids  # noqa: E731

    def pairs(context, choice, delimiter=" "):
        example = tasks.Example(context=context, choices=(choice, "x"), gold=0, target_delimiter=delimiter)
        return tasks.encode_requests(tok, example, prefix_token_id=0)[0]

    # Plain: the continuation is what context + continuation has beyond the context's tokens.
    assert pairs("Answer:", "yes") == (ids("Answer:"), ids(" yes"))
    # Trailing whitespace of the context moves to the continuation (here it becomes a token of its own).
    assert pairs("Answer: ", "yes") == (ids("Answer:"), ids("Answer:  yes")[2:])
    assert ids("Answer:  yes")[2:] == [216, 9805]
    # A token straddling the boundary ("mer" + "cy" = "mercy") belongs to the context's length: only the
    # tokens after it are scored, not the tokens of "cy, I say" on their own.
    context, continuation = pairs("The quality of mer", "cy, I say", delimiter="")
    assert context == ids("The quality of mer")
    assert continuation == ids("The quality of mercy, I say")[4:] == ids(", I say")
    # An empty context is the prefix token, unless the continuation starts with that very token.
    assert pairs("", "Hello") == ([0], tok.encode(" Hello", add_special_tokens=False).ids)
    assert pairs("", "<|endoftext|>Hello", delimiter="") == ([0], ids("Hello"))


def test_a_choice_with_no_tokens_of_its_own_is_a_user_error(smollm2_tokenizer):
    # "unbeliev" + "able" re-tokenizes into as many tokens as "unbeliev": nothing is left to score.
    example = tasks.Example(context="unbeliev", choices=("able", " no"), gold=0, target_delimiter="")
    task = tasks.Task("t", (example,), "t.jsonl")
    with pytest.raises(UserError, match=r"^t.jsonl: example 0, choice 0: no tokens of its own"):
        tasks.encode_task(smollm2_tokenizer, task, 0, max_length=64)
    long = tasks.Task("t", (tasks.Example(context="a", choices=(" ".join("b" * 40), "c"), gold=0),), "t.jsonl")
    with pytest.raises(UserError, match=r"^t.jsonl: example 0, choice 0: 40 tokens, more than the 16"):
        tasks.encode_task(smollm2_tokenizer, long, 0, max_length=16)


# ---------------------------------------------------------------------------------------------------------
# Task files


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_read_task_reads_the_plain_layout_and_its_aliases(tmp_path):
    path = write_lines(
        tmp_path / "mine.jsonl",
        [
            {"context": "Q: 2+2?\nA:", "choices": ["4", "5"], "gold": 0},
            "",
            {"query": "x", "choices": ["y", "z"], "label": "z", "target_delimiter": "\n"},
        ],
    )
    task = tasks.read_task(path)
    assert task.name == "mine" and task.source == str(path)
    assert task.examples == (
        tasks.Example("Q: 2+2?\nA:", ("4", "5"), 0, " "),
        tasks.Example("x", ("y", "z"), 1, "\n"),
    )
    assert tasks.read_task(path, name="other").name == "other"


def test_read_task_builds_lm_eval_s_prompts_for_hellaswag_arc_and_piqa(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    hellaswag = {
        "ind": 4,
        "activity_label": "Removing ice from car",
        "ctx_a": "Then, the man writes over the snow.",
        "ctx_b": "then",
        "ctx": "unused",
        "endings": [", the man [title] Step 2.", " the man  stops.", "x", "y"],
        "source_id": "s",
        "split": "val",
        "split_type": "indomain",
        "label": "3",
    }
    arc_hf = {
        "id": "1",
        "question": "Which is a gas?",
        "choices": {"text": ["rock", "air"], "label": ["A", "B"]},
        "answerKey": "B",
    }
    arc_allenai = {
        "id": "2",
        "question": {"stem": "Pick 1", "choices": [{"text": "one", "label": "1"}, {"text": "two", "label": "2"}]},
        "answerKey": "1",
    }
    piqa = {"goal": "Open a jar", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0}
    path = write_lines(tmp_path / "mixed.jsonl", [hellaswag, arc_hf, arc_allenai, piqa])
    expected = (
        tasks.Example(
            "Removing ice from car: Then, the man writes over the snow. Then",
            (", the man. Step 2.", "the man stops.", "x", "y"),
            3,
        ),
        tasks.Example("Question: Which is a gas?\nAnswer:", ("rock", "air"), 1),
        tasks.Example("Question: Pick 1\nAnswer:", ("one", "two"), 0),
        tasks.Example("Question: Open a jar\nAnswer:", ("Twist the lid.", "Eat the lid."), 0),
    )
    assert tasks.read_task(path).examples == expected
    # The same rows from parquet, the file type the hub serves them in (one layout per file there).
    pq.write_table(pa.Table.from_pylist([piqa, piqa]), tmp_path / "piqa.parquet")
    assert tasks.read_task(tmp_path / "piqa.parquet").examples == (expected[3], expected[3])


def test_task_files_keep_a_continuation_and_a_limit_keeps_a_seeded_subset(tmp_path):
    examples = [tasks.Example(f"ctx {i} ", (f"x{i}", f"y{i}"), i % 2, continuation=f"rest {i}") for i in range(20)]
    tasks.write_task(tmp_path / "partial.jsonl", examples)
    whole = tasks.read_task(tmp_path / "partial.jsonl")
    assert whole.examples == tuple(examples) and whole.summary() == f"partial ({tmp_path}/partial.jsonl, 20 rows)"
    some = tasks.read_task(tmp_path / "partial.jsonl", limit=5)
    assert len(some.examples) == 5 and set(some.examples) < set(examples)
    assert some.summary() == f"partial ({tmp_path}/partial.jsonl, 5 of 20 rows)"
    # In file order, and the same rows every time (every rank of a run, every eval).
    assert [examples.index(e) for e in some.examples] == tasks.subset(20, 5) == sorted(tasks.subset(20, 5))
    assert tasks.read_task(tmp_path / "partial.jsonl", limit=5) == some
    assert tasks.read_task(tmp_path / "partial.jsonl", limit=50) == whole
    with pytest.raises(UserError, match=r"^limit 0: expected at least 1 example per task"):
        tasks.read_task(tmp_path / "partial.jsonl", limit=0)


GOOD = {"context": "c", "choices": ["a", "b"], "gold": 0}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([GOOD, "{not json"], r"bad\.jsonl, line 2: not a JSON object"),
        ([GOOD, "[1, 2]"], r"bad\.jsonl, line 2: expected a JSON object, got list"),
        ([{"choices": ["a", "b"], "gold": 0}], r"bad\.jsonl, line 1: missing field 'context' \(or 'query'\)"),
        ([{"context": "c", "choices": ["a", "b"]}], r"bad\.jsonl, line 1: missing field 'gold' \(or 'label'\)"),
        ([{**GOOD, "gold": 2}], r"bad\.jsonl, line 1: gold: expected the index \(0-1\) or the text"),
        ([{**GOOD, "gold": True}], r"bad\.jsonl, line 1: gold: expected the index"),
        ([{**GOOD, "gold": "c"}], r"bad\.jsonl, line 1: gold: expected the index"),
        ([{**GOOD, "choices": "ab"}], r"bad\.jsonl, line 1: choices: expected a list of at least 2 strings"),
        ([{**GOOD, "choices": ["a"]}], r"bad\.jsonl, line 1: choices: expected a list of at least 2 strings"),
        ([{**GOOD, "choices": ["a", ""]}], r"bad\.jsonl, line 1: choices: choice 1 is empty"),
        ([{**GOOD, "context": 3}], r"bad\.jsonl, line 1: context: expected a string"),
        ([{**GOOD, "context": "  \n"}], r"bad\.jsonl, line 1: context: only whitespace"),
        ([{**GOOD, "target_delimiter": None}], r"bad\.jsonl, line 1: target_delimiter: expected a string"),
        ([{**GOOD, "continuation": 1}], r"bad\.jsonl, line 1: continuation: expected a string"),
        ([{"goal": "g", "sol1": "a", "sol2": "b", "label": ""}], r"bad\.jsonl, line 1: label: .*use the validation"),
        (
            [{"question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "C"}],
            r"bad\.jsonl, line 1: answerKey: 'C' is not one of the choice labels",
        ),
        (
            [{"ctx_a": "a", "ctx_b": 1, "activity_label": "x", "endings": ["a", "b"], "label": 0}],
            r"bad\.jsonl, line 1: ctx_b: expected a string",
        ),
        ([], r"bad\.jsonl: no examples"),
    ],
)
def test_a_bad_row_is_one_line_naming_file_line_and_field(tmp_path, rows, message):
    path = write_lines(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError, match=f"^{re.escape(str(tmp_path))}/{message}") as info:
        tasks.read_task(path)
    assert "\n" not in str(info.value)


def test_missing_and_unknown_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such task file"):
        tasks.read_task(tmp_path / "absent.jsonl")
    (tmp_path / "task.csv").write_text("a,b\n")
    with pytest.raises(UserError, match=r"task\.csv: not a task file \(expected \.jsonl, \.json, \.parquet\)"):
        tasks.read_task(tmp_path / "task.csv")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match=r"broken\.parquet: not a readable parquet file"):
        tasks.read_task(tmp_path / "broken.parquet")


# ---------------------------------------------------------------------------------------------------------
# The verb's flags


def run_verb(module, *argv) -> None:
    """`smollm2 <verb> ...` through the verb's own argument parser and run(), as smollm2.cli calls them."""
    parser = argparse.ArgumentParser(prog="smollm2")
    module.add_arguments(parser)
    module.run(parser.parse_args([str(arg) for arg in argv]))


@pytest.mark.parametrize(
    ("module", "argv", "message"),
    [
        (tasks, ["build", "--data", "d", "--out", "t.jsonl", "--num-examples", "0"], "--num-examples 0: expected"),
        (tasks, ["build", "--data", "d", "--out", "t.jsonl", "--choices", "1"], "--choices 1: expected at least 2"),
        (tasks, ["build", "--data", "d", "--out", "t.txt"], "--out t.txt: expected a .jsonl file"),
        (evaluate, ["--model", "m", "--tasks", "t.jsonl", "--micro-batch-size", "0"], "--micro-batch-size 0: expected"),
        (evaluate, ["--model", "m"], "--model: give --tasks TASK"),
        (evaluate, ["--checkpoint", "r", "--tokenizer", "t"], "--tokenizer: only with --model"),
        (evaluate, ["--checkpoint", "r", "--timeout", "5"], "--timeout: only with --watch RUN_DIR"),
        (evaluate, ["--watch", "r", "--poll", "0"], "--poll 0: expected a number above 0"),
        (evaluate, ["--watch", "r", "--max-checkpoints", "0"], "--max-checkpoints 0: expected a number above 0"),
    ],
)
def test_bad_flags_are_user_errors(module, argv, message):
    with pytest.raises(UserError, match=f"^{re.escape(message)}"):
        run_verb(module, *argv)


def test_task_files_are_checked_where_they_are_named(tmp_path, smollm2_tokenizer):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_lines(tmp_path / folder / "same.jsonl", [GOOD])
    with pytest.raises(UserError, match=r"^--tasks: two tasks named 'same': tasks are logged by name"):
        run_verb(
            evaluate, "--model", tmp_path / "absent", "--tasks", tmp_path / "a/same.jsonl", tmp_path / "b/same.jsonl"
        )
    with pytest.raises(UserError, match=r"^eval.tasks: .*absent.jsonl: no such task file"):
        tasks.load_tasks([tmp_path / "absent.jsonl"], "eval.tasks")
    # With the tokenizer, a choice that does not fit the model's window is refused when the tasks load.
    long = write_lines(tmp_path / "long.jsonl", [{"context": "a", "choices": ["b " * 40, "c"], "gold": 0}])
    assert len(tasks.load_tasks([long], "eval.tasks", smollm2_tokenizer, max_length=64)) == 1
    with pytest.raises(UserError, match=r"^eval.tasks: .*long.jsonl: example 0, choice 0: 41 tokens, more than the 16"):
        tasks.load_tasks([long], "eval.tasks", smollm2_tokenizer, max_length=16)


def test_eval_tasks_config_key_is_checked(tmp_path):
    from smollm2.config import load_config

    assert load_config(TINY_YAML, ["eval.tasks=[x/a.jsonl, b.parquet]"]).eval.tasks == [
        "x/a.jsonl",
        "b.parquet",
    ]
    assert load_config(TINY_YAML, ["eval.tasks=[hellaswag, x/mmlu.jsonl]"]).eval.tasks == ["hellaswag", "x/mmlu.jsonl"]
    for value in ("[a.csv]", "[x/a.jsonl, y/a.json]", "[Hella Swag]", "[mmlu, x/mmlu.jsonl]"):
        with pytest.raises(UserError, match=r"^eval.tasks: must be benchmark names \(hellaswag, mmlu, ...\) or .jsonl"):
            load_config(TINY_YAML, [f"eval.tasks={value}"])


# ---------------------------------------------------------------------------------------------------------
# The next-line task


SPEECHES = [
    f"SPEAKER{n % 3}.\nThis is the line number {n:03d} of the play,\nand then line {n:03d} ends.\n" for n in range(40)
]
PLAY = "\n".join(["ACT I.", "", "[Enter a CHORUS]", "", *SPEECHES])


def test_next_line_examples_pick_the_true_next_line_among_lines_of_the_same_work():
    examples = tasks.next_line_examples([PLAY], 12, num_choices=3, context_chars=120, seed=1)
    assert len(examples) == 12
    lines = PLAY.split("\n")
    for example in examples:
        assert example.target_delimiter == "\n" and len(example.choices) == 3
        right = example.choices[example.gold]
        assert PLAY.find(example.context + "\n" + right + "\n") >= 0  # the line that follows the passage
        assert len(example.context) >= 100 and not example.context.startswith("\n")
        for distractor in example.choices:
            assert distractor in lines and len(distractor) >= 20 and not distractor.startswith("[")
            assert distractor == right or distractor not in example.context
            assert 2 * len(right) <= 3 * len(distractor) and 2 * len(distractor) <= 3 * len(right)
        assert len(set(example.choices)) == 3
    assert {e.gold for e in examples} == {0, 1, 2}
    assert tasks.next_line_examples([PLAY], 12, num_choices=3, context_chars=120, seed=1) == examples
    assert tasks.next_line_examples([PLAY], 12, num_choices=3, context_chars=120, seed=2) != examples
    with pytest.raises(UserError, match="1000 examples asked for, but the documents have only"):
        tasks.next_line_examples([PLAY], 1000)


def test_held_out_documents_are_the_val_split_as_text(tiny_data, shakespeare_dir):
    documents = tasks.held_out_documents(tiny_data)
    hamlet = (shakespeare_dir / "hamlet_gut.txt").read_text()
    # tiny_data holds out 5 % of Hamlet's paragraphs: each one decodes back to text of the play.
    assert len(documents) > 10 and all(doc and doc in hamlet for doc in documents)


@pytest.mark.slow
def test_the_shipped_task_is_what_tasks_build_makes_from_the_demo_s_held_out_play(
    tmp_path, shakespeare_dir, smollm2_tokenizer_dir
):
    # The demo's corpus (launch/demo.sh): the 42 works, the real tokenizer, prepare's default split.
    plays = sorted(str(p) for p in shakespeare_dir.glob("*_gut.txt"))
    assert main(["prepare", "--input", *plays, "--tokenizer", str(smollm2_tokenizer_dir), "--out", str(tmp_path)]) == 0
    run_verb(tasks, "build", "--data", tmp_path, "--out", tmp_path / "task.jsonl")  # every default
    assert (tmp_path / "task.jsonl").read_bytes() == SHIPPED_TASK.read_bytes()
    assert "THE TEMPEST" in tasks.held_out_documents(tmp_path)[0][:200]


def test_the_shipped_task_file_reads():
    task = tasks.read_task(SHIPPED_TASK)
    assert task.name == "shakespeare_next_line" and len(task.examples) == 200
    assert all(len(e.choices) == 4 and e.target_delimiter == "\n" for e in task.examples)


# ---------------------------------------------------------------------------------------------------------
# The reference: lm-evaluation-harness on the exported Hugging Face folder


def lm_eval_results(model_dir: Path, task_files: dict[str, tuple[Path, str]], work_dir: Path) -> dict:
    """lm_eval.simple_evaluate with model "hf" on `model_dir` and a local task YAML per file.

    `task_files`: task name -> (JSONL file, its target delimiter). Returns {name: (per-example samples in
    file order, aggregate results)}.
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    yaml_dir = work_dir / "lm_eval_tasks"
    yaml_dir.mkdir(parents=True)
    for name, (path, delimiter) in task_files.items():
        config = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(path)}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "context",
            "doc_to_choice": "choices",
            "doc_to_target": "gold",
            "target_delimiter": delimiter,
            "metric_list": [
                {"metric": metric, "aggregation": "mean", "higher_is_better": True} for metric in ("acc", "acc_norm")
            ],
        }
        (yaml_dir / f"{name}.yaml").write_text(yaml.safe_dump(config))
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(model_dir), "dtype": "float32", "device": "cpu"},
        tasks=list(task_files),
        task_manager=TaskManager(include_path=str(yaml_dir), include_defaults=False),
        batch_size=16,
        bootstrap_iters=0,
        log_samples=True,
    )
    return {
        name: (sorted(results["samples"][name], key=lambda s: s["doc_id"]), results["results"][name])
        for name in task_files
    }


def assert_same_as_lm_eval(
    model, tokenizer, task: tasks.Task, samples: list, aggregate: dict, max_length: int
) -> float:
    """Every example: the same choice log-likelihoods (1e-4), the same choices, right and wrong alike, by acc and by
    acc_norm, hence the same task accuracy. Returns the largest log-likelihood gap."""
    ours = tasks.choice_loglikelihoods(model, tokenizer, task, micro_batch_size=16, device=CPU, max_length=max_length)
    assert [s["doc_id"] for s in samples] == list(range(len(task.examples)))
    largest_gap, right = 0.0, []
    for i, (example, sample) in enumerate(zip(task.examples, samples)):
        theirs = [float(loglikelihood) for loglikelihood, _ in sample["filtered_resps"]]
        largest_gap = max(largest_gap, *(abs(a - b) for a, b in zip(ours[i], theirs)))
        assert ours[i] == pytest.approx(theirs, abs=1e-4, rel=0), f"example {i}"
        assert tasks.predictions(ours[i], example) == tasks.predictions(theirs, example), f"example {i}"
        pred, pred_norm = tasks.predictions(ours[i], example)
        right.append((float(pred == example.gold), float(pred_norm == example.gold)))
        assert right[-1] == (sample["acc"], sample["acc_norm"]), f"example {i}"
    acc, acc_norm = (sum(column) / len(right) for column in zip(*right))
    assert (acc, acc_norm) == (aggregate["acc,none"], aggregate["acc_norm,none"])
    return largest_gap


@pytest.mark.slow
def test_lm_eval_agrees_on_every_example_for_the_real_smollm2_135m_instruct(tmp_path, gguf_path):
    from smollm2.weights import load_model

    folder = tmp_path / "hf"
    assert main(["import", "--model", str(gguf_path), "--out", str(folder)]) == 0
    model, tokenizer = load_model(folder)
    # The first 4 examples of the shipped task: 16 requests to the 135M model on each side.
    task = tasks.Task("shakespeare_next_line_head", tasks.read_task(SHIPPED_TASK).examples[:4], "head")
    tasks.write_task(tmp_path / "head.jsonl", task.examples)
    samples, aggregate = lm_eval_results(folder, {task.name: (tmp_path / "head.jsonl", "\n")}, tmp_path)[task.name]
    gap = assert_same_as_lm_eval(model, tokenizer, task, samples, aggregate, model.config.max_position_embeddings)
    print(f"SmolLM2-135M-Instruct, {len(task.examples)} examples: largest log-likelihood gap to lm-eval {gap:.2e}")


def train_tiny_model(data_dir: Path, steps: int = 60):
    """A 2-layer SmolLM2 on tiny_data's 512-token vocabulary, trained with plain AdamW for a few steps."""
    from smollm2.data import PackedTokenDataset
    from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM

    torch.manual_seed(0)
    config = SmolLM2Config(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        block_size=512,
        initializer_range=0.18,
    )
    model = SmolLM2ForCausalLM(config)
    data = PackedTokenDataset(data_dir / "train.bin", 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        inputs, targets = map(torch.stack, zip(*(data[int(i)] for i in torch.randint(len(data), (16,)))))
        loss = model(inputs, targets=targets).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), loss.item()


@pytest.mark.slow
def test_lm_eval_agrees_on_every_example_for_a_freshly_trained_tiny_model(tmp_path, tiny_data, capsys):
    from smollm2.hf import save_hf_folder, save_hf_tokenizer

    model, loss = train_tiny_model(tiny_data)
    assert loss < 5.0  # below ln(512) = 6.24: it learned something, so its choices are not arbitrary
    tokenizer = load_tokenizer(tiny_data)
    folder = tmp_path / "hf"
    save_hf_folder(model, folder)
    save_hf_tokenizer(tokenizer, folder, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    # The token-boundary cases, with the choices' own spaces (target_delimiter ""): an empty context, a
    # context's trailing whitespace, a word split between context and choice.
    boundary_examples = [
        ("", [" To be", " or not"]),
        ("HAMLET. ", ["To be", "Not to be"]),
        ("The quality of mer", ["cy is not strain'd", "ry old king"]),
        ("Words, words, words.\n\n", ["POLONIUS.", "HAMLET."]),
    ]
    rows = [
        {"context": c, "choices": ch, "gold": i % 2, "target_delimiter": ""}
        for i, (c, ch) in enumerate(boundary_examples)
    ]
    files = {
        "shakespeare_next_line": (SHIPPED_TASK, "\n"),
        "boundaries": (write_lines(tmp_path / "boundaries.jsonl", rows), ""),
    }
    results = lm_eval_results(folder, files, tmp_path)
    loaded = [tasks.read_task(path) for path, _ in files.values()]
    for task in loaded:
        gap = assert_same_as_lm_eval(model, tokenizer, task, *results[task.name], model.config.max_position_embeddings)
        print(
            f"tiny model, {task.name}, {len(task.examples)} examples: largest log-likelihood gap to lm-eval {gap:.2e}"
        )
    # The distributed entry point gives lm-eval's task accuracy too (one rank here; tests above split it).
    metrics = tasks.evaluate_tasks(
        model, tokenizer, loaded, micro_batch_size=16, device=CPU, max_length=model.config.max_position_embeddings
    )
    for task in loaded:
        _, aggregate = results[task.name]
        assert metrics[task.name] == {"acc": aggregate["acc,none"], "acc_norm": aggregate["acc_norm,none"]}
    # And so does `smollm2 eval --model` on the exported folder (its tokenizer.json, its block_size).
    capsys.readouterr()
    run_verb(evaluate, "--model", folder, "--tasks", SHIPPED_TASK, "--micro-batch-size", 16)
    _, aggregate = results["shakespeare_next_line"]
    assert capsys.readouterr().out.startswith(
        f"shakespeare_next_line ({SHIPPED_TASK}, 200 rows): acc {aggregate['acc,none']:.4f}, acc_norm "
        f"{aggregate['acc_norm,none']:.4f} ("
    )
