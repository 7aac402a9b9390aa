"""configs/smollm2-360m.yaml and configs/smollm2-1.7b.yaml: the released SmolLM2 shapes and parameter counts."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import ROOT
from smollm2.config import load_config
from smollm2.hf import hf_config_dict
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM
from smollm2.perf import parameter_count

# The released config.json of HuggingFaceTB/SmolLM2-360M and -1.7B: (hidden, MLP, layers, heads, KV heads,
# vocab, max positions, rope_theta, rms_norm_eps, tied), and the parameter count the model cards round
# to 362M and 1.71B.
RELEASED = {
    "smollm2-360m.yaml": ((960, 2560, 32, 15, 5, 49152, 8192, 100000.0, 1e-5, True), 361_821_120, 362e6),
    "smollm2-1.7b.yaml": ((2048, 8192, 24, 32, 32, 49152, 8192, 130000.0, 1e-5, True), 1_711_376_384, 1.71e9),
}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_family_config_has_the_released_shape_and_parameter_count(name):
    shape, exact, rounded = RELEASED[name]
    m = load_config(ROOT / "configs" / name).model
    assert (
        m.hidden_size,
        m.intermediate_size,
        m.num_hidden_layers,
        m.num_attention_heads,
        m.num_key_value_heads,
        m.vocab_size,
        m.max_position_embeddings,
        m.rope_theta,
        m.rms_norm_eps,
        m.tie_word_embeddings,
    ) == shape
    assert (m.hidden_act, m.bos_token_id, m.eos_token_id, m.hidden_size // m.num_attention_heads) == ("silu", 0, 0, 64)
    assert m.initializer_range == pytest.approx(1 / math.sqrt(m.hidden_size), rel=1e-12)
    config = SmolLM2Config(**m.architecture())
    with torch.device("meta"):  # no memory, no init
        ours = SmolLM2ForCausalLM(config)
        theirs = LlamaForCausalLM(LlamaConfig(**hf_config_dict(config)))
    assert ours.num_parameters() == parameter_count(m) == sum(p.numel() for p in theirs.parameters()) == exact
    assert exact == pytest.approx(rounded, rel=0.003)
    assert list(ours.state_dict()) == list(theirs.state_dict())


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_family_config_batch_and_learning_rate(name):
    c = load_config(ROOT / "configs" / name, world_size=8)
    assert c.train.global_batch_size * c.model.block_size == 524_288  # the 135M config's tokens per step
    assert c.train.gradient_accumulation_steps(8) * c.train.micro_batch_size * 8 == c.train.global_batch_size
    if name == "smollm2-360m.yaml":  # SmolLM2-360M's 3e-3 at 1,572,864 tokens, square-root scaled
        assert c.optimizer.lr == pytest.approx(3e-3 * (524_288 / 1_572_864) ** 0.5, rel=1e-3)
