"""`smollm2 generate` and `smollm2 import` end to end: the real CLI on the real GGUF, tiny HF folders, bad input."""

import io
import os
import subprocess

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from conftest import smollm2_cmd
from smollm2.cli import main
from smollm2.generate import token_printer
from smollm2.hf import load_hf_folder, save_hf_folder, save_hf_tokenizer
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM

# One intra-op thread per CLI process: the 2-core CI machine is shared with other test jobs.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_tokenizer() -> Tokenizer:
    """Byte-level BPE trained on ASCII only: any other character is several byte tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 50, trainer=trainer)
    return tokenizer


def test_streaming_prints_whole_characters_only():
    tokenizer = tiny_tokenizer()
    text = "the fox: héllo 日本語 🙂 done"
    ids = tokenizer.encode(text).ids
    assert len(ids) > len(text.split())  # multi-byte characters are split over several tokens
    chunks = []

    class Recorder(io.StringIO):
        def write(self, s: str) -> int:
            chunks.append(s)
            return len(s)

    on_token = token_printer(tokenizer, Recorder())
    for token_id in [*ids, tokenizer.token_to_id("<|endoftext|>")]:
        on_token(token_id)
    assert "".join(chunks) == text  # special tokens are not printed
    assert not any("\ufffd" in chunk for chunk in chunks)
    assert "語" in chunks or any(chunk.endswith("語") for chunk in chunks)


@pytest.mark.slow
def test_generate_cli_on_the_real_gguf(gguf_path):
    prompt = "The capital of France is"
    result = subprocess.run(
        smollm2_cmd(
            "generate", "--model", gguf_path, "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "8"
        ),
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(prompt + " Paris")
    assert "tokens/s" in result.stderr


@pytest.mark.slow
def test_import_cli_round_trip(gguf_path, tmp_path):
    """GGUF -> `smollm2 import` -> a folder transformers loads and greedily continues with " Paris"."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "imported"
    result = subprocess.run(
        smollm2_cmd("import", "--model", gguf_path, "--out", out), capture_output=True, text=True, timeout=300, env=ENV
    )
    assert result.returncode == 0, result.stderr
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    hf_model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf_model.config.rope_parameters["rope_theta"] == 100000.0 and hf_model.config.eos_token_id == 2
    assert (hf_tokenizer.bos_token, hf_tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert hf_tokenizer.chat_template and "<|im_start|>" in hf_tokenizer.chat_template
    prompt = hf_tokenizer("The capital of France is", return_tensors="pt")
    generated = hf_model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert hf_tokenizer.decode(generated[0, prompt["input_ids"].shape[1] :]).startswith(" Paris")


def tiny_hf_folder(folder) -> tuple[SmolLM2ForCausalLM, Tokenizer]:
    torch.manual_seed(0)
    config = SmolLM2Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        block_size=16,
    )
    model = SmolLM2ForCausalLM(config).eval()
    tokenizer = tiny_tokenizer()
    save_hf_folder(model, folder)
    save_hf_tokenizer(tokenizer, folder, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    return model, tokenizer


def test_import_of_a_hf_folder_keeps_weights_and_tokenizer(tmp_path):
    model, tokenizer = tiny_hf_folder(tmp_path / "src")
    assert (
        main(["import", "--model", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--max-shard-size", "20KB"])
        == 0
    )
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()
    assert Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json")).get_vocab() == tokenizer.get_vocab()
    imported = load_hf_folder(tmp_path / "out")
    for (name, a), b in zip(model.state_dict().items(), imported.state_dict().values()):
        assert torch.equal(a, b), name


def test_generate_cli_on_a_hf_folder_streams_the_greedy_continuation(tmp_path, capsys):
    model, tokenizer = tiny_hf_folder(tmp_path)
    prompt = "the quick brown fox"
    expected = model.generate(torch.tensor([tokenizer.encode(prompt).ids]), 20, temperature=0, eos_token_id=0)
    printed = io.StringIO()
    on_token = token_printer(tokenizer, printed)
    for token_id in expected[0, len(tokenizer.encode(prompt).ids) :].tolist():
        on_token(token_id)

    assert (
        main(["generate", "--model", str(tmp_path), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "20"])
        == 0
    )
    assert capsys.readouterr().out == prompt + printed.getvalue() + "\n"
    # Sampling is seeded: the same seed gives the same text, another seed (almost surely) another one.
    runs = []
    for seed in (1, 1, 2):
        assert (
            main(
                [
                    "generate",
                    "--model",
                    str(tmp_path),
                    "--prompt",
                    prompt,
                    "--max-new-tokens",
                    "20",
                    "--temperature",
                    "1.0",
                    "--top-k",
                    "0",
                    "--seed",
                    str(seed),
                ]
            )
            == 0
        )
        runs.append(capsys.readouterr().out)
    assert runs[0] == runs[1] != runs[2]


def test_bad_path_exits_2_with_one_line_from_the_real_cli(tmp_path):
    result = subprocess.run(
        smollm2_cmd("generate", "--model", tmp_path / "nope", "--prompt", "hi"),
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("smollm2 generate: error: ") and "nope" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["import", "--model", "{tmp}/notes.txt", "--out", "{tmp}/out"], "notes.txt: not a model"),
        (["import", "--model", "{tmp}/nope", "--out", "{tmp}/out"], "nope: no such file or directory"),
        (
            ["import", "--model", "{tmp}/fake.gguf", "--out", "{tmp}/notes.txt"],
            "notes.txt: exists and is not a directory",
        ),
        (["import", "--model", "{tmp}/fake.gguf", "--out", "{tmp}/out"], "fake.gguf: not a readable GGUF file"),
        (["generate", "--model", "{tmp}/fake.gguf"], "fake.gguf: not a readable GGUF file"),
        (["generate", "--model", "{tmp}"], "not a model"),
        (["generate", "--model", "{tmp}/notes.txt"], "notes.txt: not a model"),
        (["generate", "--model", "{tmp}/fake.gguf", "--max-new-tokens", "0"], "--max-new-tokens: expected a positive"),
        (["generate", "--model", "{tmp}/fake.gguf", "--top-p", "1.5"], "--top-p: expected a value in (0, 1]"),
        (["generate", "--model", "{tmp}/fake.gguf", "--temperature", "-1"], "--temperature: expected >= 0"),
        (["generate", "--model", "{tmp}/fake.gguf", "--device", "nodevice"], "--device: nodevice is not usable here"),
    ],
)
def test_bad_input_is_refused_in_one_line(tmp_path, capsys, args, message):
    (tmp_path / "fake.gguf").write_text("hello")
    (tmp_path / "notes.txt").write_text("hello")
    argv = [a.format(tmp=tmp_path) for a in args]
    if argv[0] == "generate":
        argv += ["--prompt", "hi"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"smollm2 {argv[0]}: error: ") and message in err and err.count("\n") == 1
