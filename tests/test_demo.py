"""`bash launch/demo.sh`, end to end as a new user runs it, and what it must show: learning.

Criteria, measured on the demo's own output files (metrics.jsonl, samples.jsonl):
  - the from-scratch tiny run's val loss falls by at least 2 nats from its start (ln 49,152 = 10.8);
  - the continued SmolLM2-135M's val loss on the held-out play falls, and its next-line accuracy is at
    least 0.35 before and after (chance 0.25; over 100 examples a chance-level model reaches 0.35 about
    1 time in 100);
  - its final samples read as the plays' English: of the words they generate (prompt excluded; letters
    and apostrophes), at least 90% occur in the plays and at least 60% of adjacent word pairs occur there
    as adjacent words too. Words drawn at random from the plays' vocabulary meet the first and fail the
    second (0% of pairs), so this is a measure of local sense, not only of spelling;
  - the console carries no DeepSpeed INFO line, one line per phase, and the before/after table.
"""

import json
import math
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import ROOT
from smollm2.errors import UserError
from smollm2.metrics import MetricsLogger, before_after_table

DEMO_TIMEOUT_S = 900


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


@pytest.fixture(scope="module")
def plays_vocabulary(shakespeare_dir) -> tuple[set[str], set[tuple[str, str]]]:
    """Every word of the 42 plays and poems, and every pair of adjacent words."""
    words, pairs = set(), set()
    for path in shakespeare_dir.glob("*_gut.txt"):
        text = _words(path.read_text(encoding="utf-8"))
        words.update(text)
        pairs.update(zip(text, text[1:]))
    return words, pairs


def english_scores(text: str, vocabulary: tuple[set[str], set[tuple[str, str]]]) -> tuple[float, float, int]:
    """(share of words found in the plays, share of adjacent word pairs found there, number of words)."""
    words, pairs = vocabulary
    text_words = _words(text)
    if len(text_words) < 2:
        return 0.0, 0.0, len(text_words)
    known = sum(word in words for word in text_words) / len(text_words)
    known_pairs = sum(pair in pairs for pair in zip(text_words, text_words[1:])) / (len(text_words) - 1)
    return known, known_pairs, len(text_words)


def test_english_scores_tell_text_from_word_salad(plays_vocabulary):
    words, _ = plays_vocabulary
    sentence = "Now is the winter of our discontent made glorious summer by this sun of York"
    assert english_scores(sentence, plays_vocabulary)[:2] == (1.0, 1.0)
    salad = " ".join(sorted(words)[::997][:30])  # real words of the plays, in no order
    known, known_pairs, _ = english_scores(salad, plays_vocabulary)
    assert known == 1.0 and known_pairs < 0.2


def test_before_after_table_compares_the_first_and_last_eval(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    logger = MetricsLogger(run, enabled=True, tensorboard=False)
    for step, loss, acc in [(0, 4.0, 0.25), (10, 3.0, 0.5)]:
        logger.log(step, {"eval_loss": loss, "eval_ppl": math.exp(loss), "eval/next_line/acc": acc})
        logger.log_samples(step, [("ROMEO.\n", f"line {step}"), ("To be", " unused")])
    logger.log(5, {"loss": 3.5})
    lines = before_after_table({"a run": run}).splitlines()
    assert lines[0].split() == ["a", "run", "(step", "0", "->", "10)"]
    assert lines[1].split() == ["val", "loss", "4.000", "->", "3.000"]
    assert lines[3].split() == ["next_line", "acc", "0.250", "->", "0.500"]
    assert lines[4:] == [
        "",
        "a run, step 0:",
        "  | ROMEO.",
        "  | line 0",
        "",
        "a run, step 10:",
        "  | ROMEO.",
        "  | line 10",
    ]
    with pytest.raises(UserError, match=r"metrics\.jsonl: no eval rows"):
        before_after_table({"empty": tmp_path / "empty"})


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_demo_learns(tmp_path, plays_vocabulary):
    started = time.monotonic()
    # A session of its own: on a timeout the whole demo goes, the launcher's ranks included.
    demo = subprocess.Popen(
        ["bash", str(ROOT / "launch" / "demo.sh")],
        env={**os.environ, "DEMO_DIR": str(tmp_path), "DS_ACCELERATOR": "cpu"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = demo.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGKILL)
        stdout, stderr = demo.communicate()
        pytest.fail(f"the demo ran past {DEMO_TIMEOUT_S} s:\n{stdout[-4000:]}")
    result = subprocess.CompletedProcess(demo.args, demo.returncode, stdout, stderr)
    seconds = time.monotonic() - started
    console = result.stdout + result.stderr
    assert result.returncode == 0, console[-6000:]
    print(f"demo: {seconds:.0f} s\n{result.stdout[-4000:]}")

    evals = {
        run: [row for row in _jsonl(tmp_path / run / "metrics.jsonl") if "eval_loss" in row]
        for run in ("tiny", "continue")
    }
    tiny_start, tiny_end = evals["tiny"][0], evals["tiny"][-1]
    assert tiny_start["step"] == 0 and tiny_end["step"] > 0
    assert tiny_end["eval_loss"] < tiny_start["eval_loss"] - 2.0
    before, after = evals["continue"][0], evals["continue"][-1]
    assert before["step"] == 0 and after["step"] > 0
    assert after["eval_loss"] < before["eval_loss"]
    acc = "eval/shakespeare_next_line/acc"
    assert before[acc] >= 0.35 and after[acc] >= 0.35, (before[acc], after[acc])

    final = [s for s in _jsonl(tmp_path / "continue" / "samples.jsonl") if s["step"] == after["step"]]
    assert final
    for sample in final:
        known, known_pairs, count = english_scores(sample["text"], plays_vocabulary)
        assert count >= 10 and known >= 0.9 and known_pairs >= 0.6, (sample, known, known_pairs)

    assert "[INFO]" not in console
    for phase in range(1, 6):
        assert f"== [{phase}/5]" in result.stdout
    assert re.search(r"^val loss .* -> .* -> ", result.stdout, re.MULTILINE)
    assert "shakespeare_next_line acc" in result.stdout
