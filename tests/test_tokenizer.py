"""`smollm2 tokenizer train|extract` and the tokenizer helpers (smollm2/tokenizer.py)."""

import json

import pytest
from tokenizers import Tokenizer

from smollm2.cli import main
from smollm2.errors import UserError
from smollm2.tokenizer import (
    SMOLLM2_SPECIAL_TOKENS,
    build_bpe_tokenizer,
    eos_token_id,
    load_tokenizer,
    tokenizer_fingerprint,
)

# Encoded by transformers' own GGUF conversion of the same file (AutoTokenizer with gguf_file=, run once by hand).
REFERENCE_TEXT = "Hello world! The quick brown fox jumps over the lazy dog. 12345 <|im_start|>"
REFERENCE_IDS = [
    19556,
    905,
    17,
    378,
    2365,
    6354,
    16438,
    27003,
    690,
    260,
    23790,
    2767,
    30,
    216,
    33,
    34,
    35,
    36,
    37,
    216,
    1,
]


@pytest.fixture(scope="module")
def small_tokenizer(shakespeare_dir):
    """A SmolLM2-style BPE of 1200 tokens trained on three plays."""
    return build_bpe_tokenizer([p.read_text() for p in sorted(shakespeare_dir.glob("*_gut.txt"))[:3]], vocab_size=1200)


def test_extracted_tokenizer_is_the_real_smollm2_one(smollm2_tokenizer_dir):
    tok = load_tokenizer(smollm2_tokenizer_dir)
    assert tok.get_vocab_size() == 49152
    assert [tok.id_to_token(i) for i in range(17)] == SMOLLM2_SPECIAL_TOKENS
    assert tok.encode(REFERENCE_TEXT, add_special_tokens=False).ids == REFERENCE_IDS
    assert eos_token_id(tok) == 0  # documents end with <|endoftext|>, not the Instruct model's <|im_end|>
    config = json.loads((smollm2_tokenizer_dir / "tokenizer_config.json").read_text())
    roles = (config["bos_token"], config["eos_token"], config["unk_token"])
    assert roles == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")  # the Instruct model's, as the GGUF says
    assert "<|im_start|>assistant" in config["chat_template"]


@pytest.mark.slow
def test_extracted_tokenizer_loads_in_transformers(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    assert hf(REFERENCE_TEXT)["input_ids"] == REFERENCE_IDS
    # A model folder saved by transformers carries the same tokenizer: init_from checks this fingerprint.
    assert tokenizer_fingerprint(hf.backend_tokenizer) == tokenizer_fingerprint(load_tokenizer(smollm2_tokenizer_dir))
    assert (hf.eos_token_id, hf.bos_token_id) == (2, 1)
    prompt = hf.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_trained_tokenizer_follows_smollm2_conventions(small_tokenizer):
    tok = small_tokenizer
    assert tok.get_vocab_size() == 1200
    assert [tok.id_to_token(i) for i in range(17)] == SMOLLM2_SPECIAL_TOKENS and eos_token_id(tok) == 0
    text = "To be, or not to be: 2024 ducats.<|endoftext|>\n\tcafé ☃ <|im_start|>"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert ids[-1] == 1 and 0 in ids  # special tokens stay whole
    assert [tok.id_to_token(i) for i in tok.encode("2024").ids] == ["2", "0", "2", "4"]  # one token per digit


def test_fingerprint_follows_the_ids_not_the_file_layout(tmp_path, smollm2_tokenizer_dir, small_tokenizer):
    real = load_tokenizer(smollm2_tokenizer_dir)
    fingerprint = tokenizer_fingerprint(real)
    assert len(fingerprint) == 64
    (tmp_path / "compact.json").write_text(real.to_str())  # same tokenizer, another layout
    assert tokenizer_fingerprint(load_tokenizer(tmp_path / "compact.json")) == fingerprint
    real.enable_truncation(128)  # a runtime setting: the ids of a token file do not change
    assert tokenizer_fingerprint(real) == fingerprint
    small = tokenizer_fingerprint(small_tokenizer)
    assert small != fingerprint
    bigger = Tokenizer.from_str(small_tokenizer.to_str())
    bigger.add_tokens(["<extra>"])
    assert tokenizer_fingerprint(bigger) != small


def test_load_tokenizer_names_the_bad_file(tmp_path):
    with pytest.raises(UserError, match=f"^{tmp_path / 'missing.json'}: no such tokenizer file"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(UserError, match=f"^{tmp_path / 'tokenizer.json'}: no such tokenizer file"):
        load_tokenizer(tmp_path)  # a folder without tokenizer.json
    (tmp_path / "bad.json").write_text('{"model": 3}')
    with pytest.raises(UserError, match=f"^{tmp_path / 'bad.json'}: not a valid tokenizer.json: "):
        load_tokenizer(tmp_path / "bad.json")


@pytest.mark.slow
def test_tokenizer_train_cli_writes_a_transformers_tokenizer(tmp_path, shakespeare_dir, capsys):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    lines = [f"Line {i}: the {i % 7} wise men." for i in range(50)]
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"text": line}) for line in lines))
    out, hamlet = tmp_path / "tok", shakespeare_dir / "hamlet_gut.txt"
    argv = [
        "tokenizer",
        "train",
        "--input",
        str(hamlet),
        str(tmp_path / "docs.jsonl"),
        "--out",
        str(out),
        "--vocab-size",
        "2000",
    ]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(
        f"tokenizer train: vocab 2000, {(hamlet.stat().st_size + len(''.join(lines))) / 1e6:.2f} MB of text in "
    )
    tok = load_tokenizer(out)
    text = "Line 42: to be or not to be<|endoftext|>"
    for hf in (AutoTokenizer.from_pretrained(out), PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))):
        assert hf(text)["input_ids"] == tok.encode(text, add_special_tokens=False).ids
    hf = AutoTokenizer.from_pretrained(out)
    assert (hf.eos_token_id, hf.bos_token_id, len(hf)) == (0, 0, 2000)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["tokenizer", "train", "--input", "{tmp}/a.txt", "--out", "{tmp}/t", "--vocab-size", "100"],
            "smollm2 tokenizer: error: --vocab-size 100: a byte-level BPE needs at least 273",
        ),
        (
            ["tokenizer", "train", "--input", "{tmp}/missing.txt", "--out", "{tmp}/t"],
            "smollm2 tokenizer: error: {tmp}/missing.txt: no such file or folder",
        ),
        (
            ["tokenizer", "extract", "--gguf", "{tmp}/a.txt", "--out", "{tmp}/t"],
            "smollm2 tokenizer: error: {tmp}/a.txt: ",
        ),  # the rest of the message is smollm2.gguf's
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys, argv, message):
    (tmp_path / "a.txt").write_text("some text")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(tmp=tmp_path)) and err.count("\n") == 1
