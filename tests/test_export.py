"""Checkpoints out of the trainer: `smollm2 export` (ZeRO-3 and stage 0) -> transformers gives our logits;
DeepSpeed's own zero_to_fp32 on our checkpoints; `model.init_from` continues from an exported model."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import SHARD_ALL, read_rows, run_train, smollm2_cmd
from smollm2.data import PackedTokenDataset
from smollm2.evaluator import validation_loss
from smollm2.model import SmolLM2ForCausalLM
from smollm2.weights import load_run_model

EVAL_BLOCKS = 16  # conftest.MINI's eval.num_blocks


@pytest.fixture(scope="module")
def zero3_run(tiny_data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("zero3") / "run"
    run_train(
        2,
        f"data.path={tiny_data}",
        f"train.out_dir={run_dir}",
        "train.max_steps=6",
        "deepspeed.zero_stage=3",
        "eval.eval_every=0",
        SHARD_ALL,
    )
    return run_dir


@pytest.fixture(scope="module")
def exported(zero3_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    subprocess.run(
        smollm2_cmd("export", "--checkpoint", zero3_run, "--out", out), check=True, capture_output=True, timeout=300
    )
    return out


def val_input_ids(data_dir, blocks=4):
    val = PackedTokenDataset(data_dir / "val.bin", 32)
    return torch.stack([val[i][0] for i in range(blocks)])


@pytest.mark.slow
def test_zero3_export_loads_in_transformers_with_our_logits(zero3_run, exported, tiny_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(exported).eval()
    ours, tokenizer = load_run_model(zero3_run)
    ids = val_input_ids(tiny_data)
    with torch.no_grad():
        assert torch.allclose(hf_model(ids).logits, ours(ids).logits, atol=1e-5)
    # The run's own eval (fp32 engine, 2 ranks) on the same val blocks, reproduced by transformers.
    val = PackedTokenDataset(tiny_data / "val.bin", 32)
    hf_loss, _ = validation_loss(hf_model, val, EVAL_BLOCKS, micro_batch_size=4, device=torch.device("cpu"))
    assert hf_loss == pytest.approx(read_rows(zero3_run, "eval_loss")[-1]["eval_loss"], rel=1e-5)
    hf_tokenizer = AutoTokenizer.from_pretrained(exported)
    assert hf_tokenizer("To be, or not to be")["input_ids"] == tokenizer.encode("To be, or not to be").ids
    assert hf_tokenizer.eos_token == "<|endoftext|>"


@pytest.mark.slow
def test_eval_verb_reproduces_the_runs_eval(zero3_run, tiny_data):
    result = subprocess.run(
        smollm2_cmd("eval", "--checkpoint", zero3_run, "--data", tiny_data),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    run_eval = read_rows(zero3_run, "eval_loss")[-1]
    assert (
        f"(step 6): val loss {run_eval['eval_loss']:.4f}, ppl {run_eval['eval_ppl']:.2f} over the first "
        f"{EVAL_BLOCKS} blocks of {tiny_data}" in result.stdout
    )
    samples = [json.loads(line) for line in (zero3_run / "samples.jsonl").read_text().splitlines()]
    for sample in samples:  # the same generator seed and weights: the same samples
        assert f"--- {sample['prompt']!r}\n{sample['prompt']}{sample['text']}\n" in result.stdout


@pytest.mark.slow
def test_deepspeed_zero_to_fp32_reads_our_checkpoint(zero3_run, tmp_path):
    checkpoints = zero3_run / "checkpoints"
    # Its default pickle output: --safe_serialization refuses the tied embedding / LM head pair.
    subprocess.run(
        [sys.executable, checkpoints / "zero_to_fp32.py", checkpoints, tmp_path],
        check=True,
        capture_output=True,
        timeout=300,
    )
    ours, _ = load_run_model(zero3_run)
    model = SmolLM2ForCausalLM(ours.config)
    model.load_state_dict(torch.load(tmp_path / "pytorch_model.bin", weights_only=True), strict=True)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


@pytest.mark.slow
def test_stage0_single_process_export(tiny_data, tmp_path):
    """Plain `python -m smollm2 train` (one process), ZeRO stage 0: weights come from mp_rank_00_model_states.pt.

    This run also takes the plain loss path (logits + cross-entropy) instead of the fused LM-head loss."""
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    result = run_train(
        0,
        f"data.path={tiny_data}",
        f"train.out_dir={run_dir}",
        "train.max_steps=3",
        "deepspeed.zero_stage=0",
        "train.global_batch_size=4",
        "eval.eval_every=0",
        "train.fused_loss=false",
    )
    assert "1 rank(s) on cpu (single), ZeRO 0" in result.stdout
    assert all(row["grad_norm"] > 0 for row in read_rows(run_dir, "loss"))  # measured by us at stage 0 fp32
    states = torch.load(run_dir / "checkpoints" / "step_00000003" / "mp_rank_00_model_states.pt", weights_only=False)
    subprocess.run(
        smollm2_cmd("export", "--checkpoint", run_dir, "--out", tmp_path / "hf"),
        check=True,
        capture_output=True,
        timeout=300,
    )
    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(hf_model.state_dict()[name], states["module"][name])
    ours, _ = load_run_model(run_dir)
    ids = val_input_ids(tiny_data)
    with torch.no_grad():
        assert torch.allclose(hf_model(ids).logits, ours(ids).logits, atol=1e-5)


@pytest.mark.slow
def test_export_refuses_a_non_empty_folder(zero3_run, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = subprocess.run(
        smollm2_cmd("export", "--checkpoint", zero3_run, "--out", tmp_path), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2 and "already exists and is not an empty folder" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_init_from_continues_from_the_exported_weights(zero3_run, exported, tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    # One step at a negligible LR: the eval at its end sees the exported weights.
    run_train(
        0,
        f"data.path={tiny_data}",
        f"train.out_dir={run_dir}",
        f"model.init_from={exported}",
        "train.max_steps=1",
        "schedule.warmup_steps=0",
        "optimizer.lr=1e-12",
        "deepspeed.zero_stage=0",
        "train.global_batch_size=4",
        "eval.eval_every=0",
    )
    continued = read_rows(run_dir, "eval_loss")[0]["eval_loss"]
    assert continued == pytest.approx(read_rows(zero3_run, "eval_loss")[-1]["eval_loss"], rel=1e-5)
    assert json.loads((exported / "config.json").read_text())["num_hidden_layers"] == 2


@pytest.mark.slow
def test_init_from_refuses_another_architecture(exported, tiny_data, tmp_path):
    result = run_train(
        0,
        f"data.path={tiny_data}",
        f"train.out_dir={tmp_path / 'run'}",
        f"model.init_from={exported}",
        "model.num_hidden_layers=3",
        check=False,
    )
    assert result.returncode == 2
    assert (
        f"smollm2 train: error: model.num_hidden_layers: the config says 3 but model.init_from {exported} has 2"
        in result.stderr
    )
