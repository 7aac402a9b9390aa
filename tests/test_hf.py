"""Hugging Face folders both ways: ours -> transformers, transformers -> ours, sharded too; tokenizer folders."""

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from smollm2.errors import UserError
from smollm2.hf import config_from_hf_dict, hf_config_dict, load_hf_folder, save_hf_folder, save_hf_tokenizer
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM
from smollm2.weights import load_model

TINY = dict(
    vocab_size=300,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=128,
    block_size=64,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def assert_same_logits(a, b, vocab: int) -> None:
    ids = torch.randint(0, vocab, (2, 17), generator=torch.Generator().manual_seed(0))
    la, lb = logits_of(a, ids), logits_of(b, ids)
    assert ((la - lb).abs().max() / lb.abs().max()).item() <= 1e-5


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "tie_word_embeddings": False,
            "rope_theta": 100000.0,
            "rms_norm_eps": 1e-6,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    ],
)
@pytest.mark.parametrize("shard", [None, "40KB"])
def test_save_pretrained_loads_in_transformers(tmp_path, overrides, shard):
    config = SmolLM2Config(**{**TINY, **overrides})
    torch.manual_seed(0)
    model = SmolLM2ForCausalLM(config).eval()
    save_hf_folder(model, tmp_path, max_shard_size=shard)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert ("model.safetensors.index.json" in files) == (shard is not None)
    assert not [f for f in files if f.startswith(".")]  # no temporary files left behind
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(hf, LlamaForCausalLM)
    assert hf.config.rope_parameters["rope_theta"] == config.rope_theta
    assert (hf.config.rms_norm_eps, hf.config.max_position_embeddings, hf.config.tie_word_embeddings) == (
        config.rms_norm_eps,
        config.max_position_embeddings,
        config.tie_word_embeddings,
    )
    assert (hf.generation_config.bos_token_id, hf.generation_config.eos_token_id) == (
        config.bos_token_id,
        config.eos_token_id,
    )
    assert_same_logits(model, hf, config.vocab_size)
    back = load_hf_folder(tmp_path, block_size=config.block_size)
    assert back.config == config
    assert_same_logits(back, model, config.vocab_size)


def test_saved_weights_leave_out_the_tied_head(tmp_path):
    from safetensors import safe_open

    save_hf_folder(SmolLM2ForCausalLM(SmolLM2Config(**TINY)), tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["model_type"], config["architectures"], config["torch_dtype"]) == (
        "llama",
        ["LlamaForCausalLM"],
        "float32",
    )


@pytest.mark.parametrize("shard", [None, "30KB"])
def test_transformers_folder_loads_in_ours(tmp_path, shard):
    """A folder written by transformers itself (bf16 weights, untied head, other rope_theta and eos)."""
    torch.manual_seed(0)
    hf_config = LlamaConfig(
        **{
            **TINY,
            "rope_theta": 100000.0,
            "eos_token_id": 2,
            "bos_token_id": 1,
            "tie_word_embeddings": False,
            "rms_norm_eps": 1e-6,
        }
    )
    hf = LlamaForCausalLM(hf_config).eval().to(torch.bfloat16)
    hf.save_pretrained(tmp_path, max_shard_size=shard or "5GB")
    assert (tmp_path / "model.safetensors.index.json").exists() == (shard is not None)
    hf = hf.float()  # the reference: the same bf16 values, computed in fp32 like ours
    ours = load_hf_folder(tmp_path)
    assert ours.model.embed_tokens.weight.dtype == torch.float32
    assert ours.config.rope_theta == 100000.0 and ours.config.eos_token_id == 2 and ours.config.bos_token_id == 1
    assert ours.config.rms_norm_eps == 1e-6 and not ours.config.tie_word_embeddings
    assert ours.config.block_size == 128  # min(max_position_embeddings, 8192) for imported models
    assert_same_logits(ours, hf, TINY["vocab_size"])
    model, tokenizer = load_model(tmp_path)
    assert tokenizer is None and model.config == ours.config


def test_bad_folders_are_refused_with_the_file_named(tmp_path):
    model = SmolLM2ForCausalLM(SmolLM2Config(**TINY))
    save_hf_folder(model, tmp_path / "ok")
    config_path = tmp_path / "ok" / "config.json"
    good = json.loads(config_path.read_text())

    config_path.write_text(json.dumps({**good, "model_type": "gpt_neox"}))
    with pytest.raises(UserError, match=r"config\.json: model_type is 'gpt_neox', expected 'llama'"):
        load_hf_folder(tmp_path / "ok")
    config_path.write_text(json.dumps({**good, "num_hidden_layers": 3}))
    with pytest.raises(UserError, match="missing tensor model.layers.2"):
        load_hf_folder(tmp_path / "ok")
    config_path.write_text(json.dumps({**good, "intermediate_size": 64}))
    with pytest.raises(UserError, match=r"tensor model.layers.0.mlp.gate_proj.weight has shape \(80, 48\)"):
        load_hf_folder(tmp_path / "ok")
    config_path.write_text("{not json")
    with pytest.raises(UserError, match=r"config\.json: not valid JSON"):
        load_hf_folder(tmp_path / "ok")
    config_path.write_text(json.dumps(good))
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"model\.safetensors: not a readable safetensors file"):
        load_hf_folder(tmp_path / "ok")
    (tmp_path / "ok" / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no model.safetensors or model.safetensors.index.json"):
        load_hf_folder(tmp_path / "ok")
    with pytest.raises(UserError, match="no such file or directory"):
        load_model(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a model"):
        load_model(tmp_path / "notes.txt")


def tiny_tokenizer() -> Tokenizer:
    """A byte-level BPE trained in milliseconds, with the special tokens SmolLM2 uses."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(
        ["the quick brown fox jumps over the lazy dog"] * 50 + ["héllo wörld 123"] * 20, trainer=trainer
    )
    return tokenizer


def test_save_hf_tokenizer_loads_in_transformers(tmp_path):
    tokenizer = tiny_tokenizer()
    save_hf_tokenizer(
        tokenizer,
        tmp_path,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        chat_template="{{ messages[0]['content'] }}",
    )
    hf = AutoTokenizer.from_pretrained(tmp_path)
    text = "the lazy fox<|im_end|> héllo 日本 42\n\tend"
    assert hf(text)["input_ids"] == tokenizer.encode(text).ids
    assert (hf.bos_token, hf.eos_token, hf.eos_token_id) == ("<|im_start|>", "<|im_end|>", 2)
    assert hf.decode(tokenizer.encode(text).ids) == text
    assert hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi"
    with pytest.raises(UserError, match="eos_token '<eos>' is not in the tokenizer's vocabulary"):
        save_hf_tokenizer(tokenizer, tmp_path, bos_token="<|im_start|>", eos_token="<eos>")


def test_hf_folder_with_tokenizer_loads_both(tmp_path):
    model = SmolLM2ForCausalLM(SmolLM2Config(**TINY))
    save_hf_folder(model, tmp_path)
    save_hf_tokenizer(tiny_tokenizer(), tmp_path, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    loaded, tokenizer = load_model(tmp_path)
    assert tokenizer.encode("the fox").ids == tiny_tokenizer().encode("the fox").ids
    assert_same_logits(loaded, model, TINY["vocab_size"])


def test_hf_config_round_trip_and_both_rope_spellings():
    config = SmolLM2Config(
        **{
            **TINY,
            "rope_theta": 100000.0,
            "rms_norm_eps": 1e-6,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "tie_word_embeddings": False,
        }
    )
    hf = LlamaConfig(**hf_config_dict(config))
    assert hf.rope_parameters["rope_theta"] == 100000.0 and hf.rms_norm_eps == 1e-6
    assert (hf.bos_token_id, hf.eos_token_id, hf.max_position_embeddings) == (1, 2, 128)
    back = config_from_hf_dict(hf.to_dict(), block_size=config.block_size)
    assert back == config
    legacy = {k: v for k, v in hf_config_dict(config).items() if k != "rope_parameters"}  # transformers 4 style
    assert config_from_hf_dict(legacy).rope_theta == 100000.0
    nested = {k: v for k, v in hf_config_dict(config).items() if k != "rope_theta"}  # transformers 5 style
    assert config_from_hf_dict(nested).rope_theta == 100000.0
    assert config_from_hf_dict({**legacy, "max_position_embeddings": 16384}).block_size == 8192
    with pytest.raises(UserError, match="model_type is 'gpt2'"):
        config_from_hf_dict({**legacy, "model_type": "gpt2"})
    with pytest.raises(UserError, match="rope type 'yarn'"):
        config_from_hf_dict({**nested, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}})
    with pytest.raises(UserError, match="attention_bias"):
        config_from_hf_dict({**legacy, "attention_bias": True})
