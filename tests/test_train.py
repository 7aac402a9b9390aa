"""`smollm2 train` end to end: 2 processes under torchrun, the run directory it leaves, the refusals.

The model is tiny (conftest.MINI: vocab 512, hidden 32, 2 layers) on Hamlet tokenized by a 512-token BPE
(the `tiny_data` fixture), so a 2-process DeepSpeed run costs seconds.
"""

import json
import re

import pytest
import yaml

from conftest import MINI, SCALARS, TINY_YAML, read_rows, run_train
from smollm2.perf import TIME_PARTS


@pytest.fixture(scope="module")
def two_process_run(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("train") / "run"
    result = run_train(
        2,
        f"data.path={tiny_data}",
        f"train.out_dir={run_dir}",
        "train.max_steps=16",
        "eval.eval_every=8",
        "checkpoint.save_every=4",
        "checkpoint.keep_last=2",
    )
    return run_dir, result


@pytest.mark.slow
def test_loss_falls_and_metrics_are_complete(two_process_run):
    run_dir, result = two_process_run
    rows = read_rows(run_dir, "loss")
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    for row in rows:
        assert all(
            row[k] is not None for k in ("lr", "grad_norm", "tokens_per_s", "mfu", "peak_mem_gib", "data_wait_ms")
        )
        assert row["consumed_samples"] == 8 * row["step"]
        # Goodput: the share of the window's wall time spent training, and the share of each other part.
        shares = {key.removeprefix("time_share/"): value for key, value in row.items() if key.startswith("time_share/")}
        assert set(shares) == set(TIME_PARTS) and all(share >= 0 for share in shares.values())
        assert 0 < row["goodput"] <= 1 and row["goodput"] + sum(shares.values()) <= 1 + 1e-9
    by_step = {row["step"]: row for row in rows}
    assert by_step[9]["time_share/eval"] > 0 and by_step[9]["time_share/samples"] > 0  # step 8's eval
    assert by_step[5]["time_share/save"] > 0 and by_step[2]["time_share/eval"] == 0  # step 4's save
    evals = read_rows(run_dir, "eval_loss")
    assert [r["step"] for r in evals] == [8, 16] and evals[1]["eval_loss"] < evals[0]["eval_loss"]
    assert evals[1]["eval_ppl"] == pytest.approx(2.718281828 ** evals[1]["eval_loss"])
    assert "step 16/16 (100%) | loss" in result.stdout and "ETA 0:00:00" in result.stdout
    assert re.search(r"^done: step 16; goodput \d+\.\d % of \d+ s \(data_wait ", result.stdout, re.MULTILINE)
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
    assert [(s["step"], s["prompt"]) for s in samples] == [
        (step, p) for step in (8, 16) for p in ["Once upon a time", "To be, or not to be", "The meaning of life is"]
    ]
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
    from smollm2.checkpoint import check_resumable, find_checkpoint
    from smollm2.errors import UserError

    run_dir, _ = two_process_run
    checkpoint = find_checkpoint(run_dir)
    config = load_mini_config(f"data.path={tiny_data}", f"train.out_dir={run_dir}", "model.hidden_size=64")
    with pytest.raises(UserError) as info:
        check_resumable(checkpoint, config.model.architecture(), config.deepspeed.zero_stage)
    assert str(info.value) == (
        f"model.hidden_size: the config says 64 but checkpoint {checkpoint.path} has 32; a "
        "resumed run must keep the model"
    )


@pytest.mark.slow
def test_resume_never_refuses_a_run_with_checkpoints(two_process_run):
    from smollm2.checkpoint import resolve_resume
    from smollm2.errors import UserError

    run_dir, _ = two_process_run
    with pytest.raises(UserError, match="--resume never: .* already has checkpoints"):
        resolve_resume("never", run_dir)
    assert resolve_resume("auto", run_dir).tag == "step_00000016"
    assert resolve_resume(str(run_dir / "checkpoints" / "step_00000012"), run_dir).tag == "step_00000012"


@pytest.mark.slow
def test_finished_run_has_nothing_to_do(two_process_run, tiny_data, monkeypatch, capsys):
    from smollm2.train import train

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
    from smollm2.errors import UserError
    from smollm2.mixture import open_training_data  # what the Trainer opens first, before any collective

    config = load_mini_config(f"data.path={tiny_data}", f"train.out_dir={tmp_path}", "model.eos_token_id=1")
    with pytest.raises(UserError, match="^model.eos_token_id: 1, but .*tokenizer.json ends documents with id 0$"):
        open_training_data(config)


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
