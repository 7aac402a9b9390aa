"""GGUF reading, checked on the real SmolLM2-135M-Instruct file against transformers' own GGUF support.

The real file is read once for this module: our config, weights and tokenizer, transformers' tokenizer
built from the same file, and a transformers LlamaForCausalLM holding our dequantized weights.
"""

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from smollm2.errors import UserError
from smollm2.gguf import GGUFFile
from smollm2.hf import model_from_state_dict, save_hf_folder
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM

TEXTS = [
    "The capital of France is",
    "Once upon a time, there was a little girl named Lily.",
    "  leading spaces, trailing spaces   \n\n\ttabs and newlines\r\n",
    "Numbers: 0 7 42 123 2024 3.14159 1,000,000 -17 1e-5 0x1F",
    "Unicode: héllo wörld café naïve Ωμέγα Привет 日本語の文章 한국어 العربية 🙂🚀👍🏽",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>code: def f(x):\n    return x ** 2  # square\n<file_sep><repo_name>x",
    "It's, don't, we'll, they're, I'M, YOU'VE",
    "",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def real(gguf_path, one_thread):
    """(GGUFFile, config, state dict, our model, our tokenizer) from the real file, read once."""
    gguf_file = GGUFFile(gguf_path)
    config = gguf_file.config()
    state_dict = gguf_file.state_dict(config)
    model = model_from_state_dict(config, state_dict, str(gguf_path))
    return gguf_file, config, state_dict, model, gguf_file.tokenizer()


@pytest.fixture(scope="module")
def hf_tokenizer(gguf_path):
    return AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


@pytest.fixture(scope="module")
def hf_model(real, tmp_path_factory):
    """transformers' Llama holding exactly our dequantized weights (through our save_hf_folder): the
    reference for the forward pass."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("smollm2_real_hf")
    save_hf_folder(real[3], folder)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert isinstance(hf, LlamaForCausalLM) and hf.config.rope_parameters["rope_theta"] == 100000.0
    return hf


def test_config_from_the_real_file(real):
    _, config, state_dict, model, _ = real
    assert config == SmolLM2Config(
        max_position_embeddings=8192, rope_theta=100000.0, block_size=8192, bos_token_id=1, eos_token_id=2
    )
    assert model.num_parameters() == 134_515_008
    assert "lm_head.weight" not in state_dict and model.lm_head.weight is model.model.embed_tokens.weight


def test_weights_match_transformers_dequantizer(real):
    """Tensors of every kind (Q8_0 embedding, Q4_1 matrices, F32 norms) in the first and last layers equal
    transformers' independent torch dequantizer + its q/k un-permutation (the logits tests cover the rest)."""
    from transformers.integrations.gguf.dequant import dequantize
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    gguf_file, config, state_dict, _, _ = real
    processor = LlamaTensorProcessor(
        {"num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads}
    )
    names = {t.name: t for t in gguf_file.tensors}
    assert len(names) == len(state_dict) == 2 + 9 * config.num_hidden_layers
    kinds = set()
    last = config.num_hidden_layers - 1
    for name, tensor in names.items():
        if name.startswith("blk.") and int(name.split(".")[1]) not in (0, last):
            continue
        kinds.add(tensor.qtype.name)
        raw = torch.from_numpy(tensor.data.copy()).reshape(-1)
        if tensor.qtype == gguf.GGMLQuantizationType.F32:
            expected = raw.view(torch.float32).numpy()
        else:
            expected = dequantize(raw, int(tensor.qtype)).numpy()
        expected = processor.process(expected.reshape(tensor.shape), name).weights
        np.testing.assert_allclose(state_dict[_hf_name(name)].numpy(), expected, rtol=0, atol=1e-6, err_msg=name)
    assert kinds == {"Q8_0", "Q4_1", "F32"}


def _hf_name(gguf_name: str) -> str:
    from smollm2.gguf import TENSOR_NAMES

    parts = gguf_name.split(".")
    if parts[0] == "blk":
        key = ".".join(["blk", "{i}", *parts[2:]])
        return TENSOR_NAMES[key].format(i=parts[1])
    return TENSOR_NAMES[gguf_name]


def test_tokenizer_encodes_like_transformers(real, hf_tokenizer):
    tokenizer = real[4]
    assert tokenizer.get_vocab_size() == len(hf_tokenizer) == 49152
    assert tokenizer.get_vocab() == hf_tokenizer.get_vocab()
    for text in TEXTS:
        ids = tokenizer.encode(text).ids
        assert ids == hf_tokenizer(text)["input_ids"], text
        assert tokenizer.decode(ids, skip_special_tokens=False) == hf_tokenizer.decode(ids) == text
    assert tokenizer.encode("<|im_start|>").ids == [1]
    assert tokenizer.decode(tokenizer.encode(TEXTS[5]).ids) == "user\nWhat is 2+2?\nassistant\n"


def test_logits_and_loss_match_transformers_on_real_weights(real, hf_model):
    _, _, _, model, tokenizer = real
    ids = torch.tensor([tokenizer.encode(TEXTS[1] + " She loved to play in the park with her dog.").ids])
    with torch.no_grad():
        ours, ref = model(ids, labels=ids), hf_model(input_ids=ids, labels=ids)
    assert ((ours.logits - ref.logits).abs().max() / ref.logits.abs().max()).item() <= 1e-5
    assert ours.loss.item() == pytest.approx(ref.loss.item(), abs=1e-4)
    assert ours.loss.item() < 3.0  # real weights read correctly: fluent text is not a surprise to the model


def test_greedy_generation_matches_transformers(real, hf_model, hf_tokenizer):
    _, config, _, model, _ = real
    prompt = hf_tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    ours = model.generate(prompt, max_new_tokens=8, temperature=0, eos_token_id=config.eos_token_id)
    ref = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False)
    assert ours.tolist() == ref.tolist()
    assert hf_tokenizer.decode(ours[0, prompt.shape[1] :]).startswith(" Paris")


def test_bad_files_are_refused_with_the_file_named(tmp_path, gguf_path):
    text = tmp_path / "notes.gguf"
    text.write_text("not a gguf file at all")
    with pytest.raises(UserError, match=r"notes\.gguf: not a readable GGUF file"):
        GGUFFile(text)
    truncated = tmp_path / "truncated.gguf"
    with open(gguf_path, "rb") as f:
        truncated.write_bytes(f.read(100_000))  # ends inside the vocabulary
    with pytest.raises(UserError, match=r"truncated\.gguf: not a readable GGUF file"):
        GGUFFile(truncated)
    with pytest.raises(UserError, match=r"missing\.gguf: no such file"):
        GGUFFile(tmp_path / "missing.gguf")


def _llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's q/k permutation, as written there."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _write_gguf(path, model: SmolLM2ForCausalLM, arch: str = "llama") -> None:
    config = model.config
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_vocab_size(config.vocab_size)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not config.tie_word_embeddings:
        writer.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        writer.add_tensor(
            f"blk.{i}.attn_q.weight", _llama_cpp_permute(sd[p + "self_attn.q_proj.weight"], config.num_attention_heads)
        )
        writer.add_tensor(
            f"blk.{i}.attn_k.weight", _llama_cpp_permute(sd[p + "self_attn.k_proj.weight"], config.num_key_value_heads)
        )
        for gguf_part, hf_part in (
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
            ("attn_norm", "input_layernorm"),
            ("ffn_norm", "post_attention_layernorm"),
        ):
            writer.add_tensor(f"blk.{i}.{gguf_part}.weight", sd[p + hf_part + ".weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_through_a_written_gguf(tmp_path, tied):
    """A file written the llama.cpp way (permuted q/k, GQA) reads back to the exact weights and config."""
    torch.manual_seed(0)
    config = SmolLM2Config(
        vocab_size=64,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        block_size=128,
        rope_theta=100000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = SmolLM2ForCausalLM(config)
    _write_gguf(tmp_path / "tiny.gguf", model)
    written = GGUFFile(tmp_path / "tiny.gguf")
    read_config = written.config()
    state_dict = written.state_dict(read_config)
    assert read_config == config
    expected = model.state_dict()
    if tied:
        del expected["lm_head.weight"]
    assert state_dict.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state_dict[key], value), key

    other = SmolLM2ForCausalLM(config)
    _write_gguf(tmp_path / "gpt2.gguf", other, arch="gpt2")
    with pytest.raises(UserError, match=r"gpt2\.gguf: general.architecture is 'gpt2', expected 'llama'"):
        GGUFFile(tmp_path / "gpt2.gguf").config()
