"""`smollm2 train` end to end: 2 processes under torchrun, the run directory it leaves, the refusals.

The model is tiny (vocab 512, hidden 32, 2 layers) on Hamlet tokenized by a 512-token BPE, so a
2-process DeepSpeed run costs seconds; the other trainer test files import `tiny_data`, `MINI` and
`run_train` from here.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, free_port, smollm2_cmd

TINY_YAML = ROOT / "configs" / "tiny.yaml"
# configs/tiny.yaml shrunk to a model that trains in milliseconds per step: 2 ranks x micro-batch 2 x
# accumulation 2 = 8 samples of 32 tokens per step.
MINI = ["model.vocab_size=512", "model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=2",
        "model.num_attention_heads=4", "model.num_key_value_heads=2", "model.block_size=32",
        "model.max_position_embeddings=64", "train.micro_batch_size=2", "train.global_batch_size=8",
        "train.dtype=fp32", "schedule.warmup_steps=2", "logging.log_every=1", "eval.num_blocks=16",
        "eval.max_new_tokens=8", "data.num_workers=1"]
# ZeRO-3 keeps parameters under 100K elements whole by default; at 0 the tiny model is sharded like the 135M.
SHARD_ALL = "deepspeed.overrides.zero_optimization.stage3_param_persistence_threshold=0"
SCALARS = ["train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/mfu", "perf/peak_mem_gib",
           "perf/data_wait_ms", "perf/step_time_s", "eval/loss", "eval/ppl"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, shakespeare_dir) -> Path:
    """Hamlet, tokenized with a 512-token BPE trained on it: DIR/{train,val}.bin + tokenizer.json (once a session)."""
    base = tmp_path_factory.getbasetemp() / "smollm2-tiny-data"
    if not (base / "data" / "val.bin").exists():
        text = shakespeare_dir / "hamlet_gut.txt"
        for args in (["tokenizer", "train", "--input", text, "--out", base / "tok", "--vocab-size", "512"],
                     ["prepare", "--input", text, "--tokenizer", base / "tok", "--out", base / "data",
                      "--val-fraction", "0.05", "--txt-mode", "paragraph"]):
            subprocess.run(smollm2_cmd(*args), check=True, capture_output=True, timeout=300)
    return base / "data"


def run_train(nproc: int, *settings: str, resume: str | None = None, check: bool = True,
              config: Path = TINY_YAML) -> subprocess.CompletedProcess:
    """`smollm2 train` on `nproc` processes (torchrun, its own port) or as plain `python` when nproc is 0."""
    args = ["train", "--config", config, "--set", *MINI, *settings]
    if resume is not None:
        args += ["--resume", resume]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(free_port()), "-m", "smollm2", *map(str, args)]
    else:
        cmd = smollm2_cmd(*args)
    # One thread per process: the CI machine has 2 cores (torchrun sets the same for its ranks).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def read_rows(run_dir: Path, key: str) -> list[dict]:
    return [row for line in (run_dir / "metrics.jsonl").read_text().splitlines() if key in (row := json.loads(line))]


@pytest.fixture(scope="module")
def two_process_run(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("train") / "run"
    result = run_train(2, f"data.path={tiny_data}", f"train.out_dir={run_dir}", "train.max_steps=16",
                       "eval.eval_every=8", "checkpoint.save_every=4", "checkpoint.keep_last=2")
    return run_dir, result


@pytest.mark.slow
def test_loss_falls_and_metrics_are_complete(two_process_run):
    run_dir, result = two_process_run
    rows = read_rows(run_dir, "loss")
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    for row in rows:
        assert all(row[k] is not None for k in ("lr", "grad_norm", "tokens_per_s", "mfu", "peak_mem_gib",
                                                "data_wait_ms"))
        assert row["consumed_samples"] == 8 * row["step"]
    evals = read_rows(run_dir, "eval_loss")
    assert [r["step"] for r in evals] == [8, 16] and evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert evals[1]["eval_ppl"] == pytest.approx(2.718281828 ** evals[1]["eval_loss"])
    assert "step 16/16 (100%) | loss" in result.stdout and "ETA 0:00:00" in result.stdout
    assert result.stdout.count("2 rank(s) on cpu") == 1  # rank 0 prints, rank 1 does not


@pytest.mark.slow
def test_tensorboard_holds_every_scalar_and_the_samples(two_process_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    run_dir, _ = two_process_run
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert set(SCALARS) <= set(events.Tags()["scalars"])
    losses = {e.step: e.value for e in events.Scalars("train/loss")}
    assert losses == pytest.approx({r["step"]: r["loss"] for r in read_rows(run_dir, "loss")}, rel=1e-6)
    assert [e.step for e in events.Scalars("eval/loss")] == [8, 16]
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [(s["step"], s["prompt"]) for s in samples] == [(step, p) for step in (8, 16)
                                                          for p in ["Once upon a time", "To be, or not to be",
                                                                    "The meaning of life is"]]
    assert "hidden_size: 32" in make_ndarray(events.Tensors("config/text_summary")[0].tensor_proto)[0].decode()
    for i in range(3):
        texts = events.Tensors(f"samples/{i}/text_summary")
        assert [t.step for t in texts] == [8, 16]
        assert samples[3 + i]["prompt"] + samples[3 + i]["text"] in make_ndarray(texts[1].tensor_proto)[0].decode()


@pytest.mark.slow
def test_run_directory(two_process_run, tiny_data):
    run_dir, _ = two_process_run
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["train"]["max_steps"] == 16 and resolved["model"]["hidden_size"] == 32
    assert resolved["logging"]["peak_tflops"] is None and resolved["eval"]["top_k"] == 50  # defaults filled in
    assert (run_dir / "tokenizer.json").read_bytes() == (tiny_data / "tokenizer.json").read_bytes()
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == ["step_00000012", "step_00000016"]
    assert (checkpoints / "latest").read_text() == "step_00000016"


def load_mini_config(*settings: str):
    from smollm2.config import load_config

    return load_config(TINY_YAML, [*MINI, *settings])


@pytest.mark.slow
def test_resume_refuses_another_model(two_process_run, tiny_data):
    from smollm2.errors import UserError
    from smollm2.run_dir import find_checkpoint
    from smollm2.trainer import check_resumable

    run_dir, _ = two_process_run
    checkpoint = find_checkpoint(run_dir)
    config = load_mini_config(f"data.path={tiny_data}", f"train.out_dir={run_dir}", "model.hidden_size=64")
    with pytest.raises(UserError) as info:
        check_resumable(checkpoint, config, world_size=2)
    assert str(info.value) == (f"model.hidden_size: the config says 64 but checkpoint {checkpoint.path} was trained "
                               "with 32; a resumed run must keep the model")


@pytest.mark.slow
def test_resume_never_refuses_a_run_with_checkpoints(two_process_run):
    from smollm2.errors import UserError
    from smollm2.trainer import resolve_resume

    run_dir, _ = two_process_run
    with pytest.raises(UserError, match="--resume never: .* already has checkpoints"):
        resolve_resume("never", run_dir)
    assert resolve_resume("auto", run_dir).tag == "step_00000016"
    assert resolve_resume(str(run_dir / "checkpoints" / "step_00000012"), run_dir).tag == "step_00000012"


@pytest.mark.slow
def test_finished_run_has_nothing_to_do(two_process_run, tiny_data, monkeypatch, capsys):
    from smollm2.trainer import train

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        # train() sets these; registering each with monkeypatch (set, then unset) removes them afterwards,
        # so later subprocesses are not taken for rank 0 of a launcher.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    run_dir, _ = two_process_run
    train(TINY_YAML, [*MINI, f"data.path={tiny_data}", f"train.out_dir={run_dir}", "train.max_steps=16"])
    assert capsys.readouterr().out == "step 16: already at train.stop_at/max_steps (16); nothing to do\n"


@pytest.mark.slow
def test_eos_token_mismatch_is_refused(tiny_data, tmp_path):
    from smollm2.distributed import DistEnv
    from smollm2.errors import UserError
    from smollm2.trainer import Trainer

    config = load_mini_config(f"data.path={tiny_data}", f"train.out_dir={tmp_path}", "model.eos_token_id=1")
    with pytest.raises(UserError, match="^model.eos_token_id: 1, but .*tokenizer.json ends documents with id 0$"):
        Trainer(config, DistEnv(rank=0, world_size=1, local_rank=0, launcher="single"))


def test_restarted_logger_drops_the_rows_of_an_interrupted_job(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from smollm2.metrics import MetricsLogger

    crashed = MetricsLogger(tmp_path, enabled=True, tensorboard=True)
    for step in range(1, 6):
        crashed.log(step, {"loss": float(step)})
    crashed.log_samples(5, [("p", "text")])
    crashed.close()
    resumed = MetricsLogger(tmp_path, enabled=True, tensorboard=True, start_step=3)  # the checkpoint was at 3
    resumed.log(4, {"loss": 40.0})
    resumed.close()
    assert [(r["step"], r["loss"]) for r in read_rows(tmp_path, "loss")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert (tmp_path / "samples.jsonl").read_text() == ""
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
