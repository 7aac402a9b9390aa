"""SmolLM2 model vs transformers' LlamaForCausalLM (the reference), on tiny configs and the full default one."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from smollm2.hf import hf_config_dict
from smollm2.model import (
    SmolLM2Config,
    SmolLM2ForCausalLM,
    _precompute_freqs_cis,
    apply_rotary_pos_emb,
    repeat_kv,
    rotate_half,
    sample_next_token,
)
from smollm2.perf import flops_per_token, parameter_count

TINY = dict(
    vocab_size=97,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=3,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=64,
    block_size=32,
)

# (overrides of TINY): GQA, MQA, plain MHA, untied head, other rope_theta / eps, odd sizes.
TINY_VARIANTS = [
    {},
    {"num_key_value_heads": 1, "rope_theta": 100000.0},
    {"num_key_value_heads": 6, "tie_word_embeddings": False},
    {
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rope_theta": 500.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "intermediate_size": 100,
        "hidden_act": "gelu_pytorch_tanh",
    },
]


pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def hf_reference(config: SmolLM2Config) -> LlamaForCausalLM:
    """transformers' Llama with the same config (its own random init), fp32, eval mode."""
    torch.manual_seed(1)
    return LlamaForCausalLM(LlamaConfig(**hf_config_dict(config))).eval()


def ours_from(hf: LlamaForCausalLM, config: SmolLM2Config) -> SmolLM2ForCausalLM:
    model = SmolLM2ForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(hf.state_dict(), strict=True)
    assert not missing and not unexpected
    return model


@pytest.fixture(params=range(len(TINY_VARIANTS)), ids=lambda i: f"variant{i}")
def pair(request):
    config = SmolLM2Config(**{**TINY, **TINY_VARIANTS[request.param]})
    hf = hf_reference(config)
    return ours_from(hf, config), hf


def test_default_config_matches_spec_and_param_count():
    config = SmolLM2Config()
    assert (
        config.vocab_size,
        config.hidden_size,
        config.intermediate_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.max_position_embeddings,
        config.rope_theta,
        config.block_size,
        config.tie_word_embeddings,
    ) == (49152, 576, 1536, 30, 9, 3, 2048, 10000.0, 512, True)
    assert config.initializer_range == 0.041666666666666664 and config.rms_norm_eps == 1e-5
    assert config.head_dim == 64
    with torch.device("meta"):
        model = SmolLM2ForCausalLM(config)
        hf = LlamaForCausalLM(LlamaConfig(**hf_config_dict(config)))
    assert model.num_parameters() == sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.num_parameters() == sum(p.numel() for p in hf.parameters())
    assert list(model.state_dict()) == list(hf.state_dict())  # same keys, same order
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # docs/design.md's MFU convention: 6 N + 12 L H T = 0.913 GFLOP per token at seq 512.
    assert parameter_count(config) == 134_515_008
    assert flops_per_token(config, 512) == 6 * 134_515_008 + 12 * 30 * 576 * 512
    assert round(flops_per_token(config, 512) / 1e9, 3) == 0.913


def test_rope_buffers_are_not_in_the_state_dict():
    model = SmolLM2ForCausalLM(SmolLM2Config(**TINY))
    buffers = dict(model.named_buffers())
    assert "model.rotary_emb.cos_cached" in buffers
    assert not [k for k in model.state_dict() if "rotary" in k]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_attention_heads": 7, "hidden_size": 576}, "num_attention_heads: 7 does not divide hidden_size 576"),
        ({"num_key_value_heads": 4}, "num_key_value_heads: 4 does not divide num_attention_heads 6"),
        ({"hidden_act": "swish2"}, "hidden_act"),
        ({"block_size": 128}, "block_size: 128 exceeds max_position_embeddings 64"),
        ({"eos_token_id": 97}, "eos_token_id"),
        ({"rms_norm_eps": 0.0}, "rms_norm_eps"),
    ],
)
def test_validate_names_the_field(overrides, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        SmolLM2ForCausalLM(SmolLM2Config(**{**TINY, **overrides}))


def test_activations_are_transformers_ones():
    from transformers.activations import ACT2FN

    from smollm2.model import ACTIVATIONS

    x = torch.randn(1000) * 4
    for name, fn in ACTIVATIONS.items():
        torch.testing.assert_close(fn(x), ACT2FN[name](x), rtol=0, atol=1e-6, msg=name)


def test_rope_helpers():
    freqs = _precompute_freqs_cis(8, 5, 10000.0)
    assert freqs.shape == (5, 4, 2)
    assert torch.allclose(freqs[3, 1], torch.tensor([math.cos(3 / 10000 ** (2 / 8)), math.sin(3 / 10000 ** (2 / 8))]))
    x = torch.arange(8.0)
    assert rotate_half(x).tolist() == [-4, -5, -6, -7, 0, 1, 2, 3]
    # A rotation keeps norms, and position 0 is the identity.
    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 1, 3, 8)
    cos = torch.cat([freqs[..., 0]] * 2, -1)
    sin = torch.cat([freqs[..., 1]] * 2, -1)
    q2, k2 = apply_rotary_pos_emb(q, k, cos, sin, torch.tensor([[0, 1, 4]]))
    assert torch.allclose(q2.norm(dim=-1), q.norm(dim=-1)) and torch.equal(q2[..., 0, :], q[..., 0, :])
    kv = torch.randn(2, 3, 4, 5)
    assert torch.equal(repeat_kv(kv, 2), kv.repeat_interleave(2, dim=1))


def test_init_follows_initializer_range():
    torch.manual_seed(0)
    config = SmolLM2Config(**{**TINY, "hidden_size": 96, "intermediate_size": 384, "initializer_range": 0.05})
    model = SmolLM2ForCausalLM(config)
    layer = model.model.layers[0]
    assert abs(layer.mlp.up_proj.weight.std().item() - 0.05) < 0.003
    assert abs(model.model.embed_tokens.weight.std().item() - 0.05) < 0.003
    assert torch.equal(layer.input_layernorm.weight, torch.ones(96))


def test_logits_and_loss_match_transformers(pair):
    model, hf = pair
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 20))
    labels = ids.clone()
    labels[0, :5] = -100
    labels[2, 11] = -100
    with torch.no_grad():
        ours, ref = model(ids, labels=labels), hf(input_ids=ids, labels=labels)
    assert rel_err(ours.logits, ref.logits) <= 1e-5
    assert ours.loss.item() == pytest.approx(ref.loss.item(), abs=1e-4)
    # The loss is the mean over counted tokens of the shifted cross-entropy.
    shifted = F.cross_entropy(
        ours.logits[:, :-1].reshape(-1, ours.logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert ours.loss.item() == pytest.approx(shifted.item(), abs=1e-6)
    assert model(ids).loss is None


@pytest.mark.slow
def test_full_default_config_matches_transformers():
    config = SmolLM2Config()
    hf = hf_reference(config)
    with torch.device("meta"):
        model = SmolLM2ForCausalLM(config)
    model.to_empty(device="cpu").load_state_dict(hf.state_dict())
    ids = torch.randint(0, config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, ref = model(ids, labels=ids), hf(input_ids=ids, labels=ids)
    assert rel_err(ours.logits, ref.logits) <= 1e-5
    assert ours.loss.item() == pytest.approx(ref.loss.item(), abs=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_mask_matches_transformers(side):
    config = SmolLM2Config(**TINY)
    hf = hf_reference(config)
    model = ours_from(hf, config)
    ids = torch.randint(0, config.vocab_size, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    pads = [0, 3, 6]
    for row, n in enumerate(pads):
        if n:
            (mask[row, :n] if side == "left" else mask[row, -n:]).zero_()
    with torch.no_grad():
        ours, ref = model(ids, attention_mask=mask).logits, hf(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(ours).all()
    real = mask.bool()
    assert rel_err(ours[real], ref[real]) <= 1e-5
    if side == "right":  # causal: padding after the text changes nothing before it
        with torch.no_grad():
            alone = model(ids[2:, :4]).logits
        assert rel_err(ours[2, :4], alone[0]) <= 1e-5


def reference_attention(q, k, v, attn_mask=None, is_causal=False, enable_gqa=False):
    """softmax(QK^T / sqrt(d)) V written out, in float32: what torch's scaled_dot_product_attention computes."""
    if enable_gqa:
        k, v = (repeat_kv(t, q.shape[1] // t.shape[1]) for t in (k, v))
    if is_causal:
        attn_mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v


def test_attention_equals_the_formula_written_out(monkeypatch):
    model = SmolLM2ForCausalLM(SmolLM2Config(**TINY)).eval()
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0

    def logits():  # causal, padded, and a cached continuation of a padded prefix
        prefix = model(ids[:, :7], attention_mask=mask[:, :7], use_cache=True)
        return (
            model(ids).logits,
            model(ids, attention_mask=mask).logits,
            model(ids[:, 7:], attention_mask=mask, past_key_values=prefix.past_key_values).logits,
        )

    with torch.no_grad():
        sdpa = logits()
        monkeypatch.setattr(F, "scaled_dot_product_attention", reference_attention)
        written_out = logits()
    for ours, reference in zip(sdpa, written_out):
        assert rel_err(ours, reference) <= 1e-5


@pytest.mark.parametrize("kv_heads", [1, 2, 6])
def test_gqa_sdpa_matches_repeated_kv_heads(kv_heads, monkeypatch):
    """SDPA's enable_gqa on the un-repeated KV heads: the same logits and gradients as repeat_kv's copies."""
    torch.manual_seed(0)
    model = SmolLM2ForCausalLM(SmolLM2Config(**{**TINY, "num_key_value_heads": kv_heads}))
    ids = torch.randint(0, 97, (2, 16))
    sdpa = F.scaled_dot_product_attention

    def sdpa_on_repeated_heads(q, k, v, enable_gqa=False, **kwargs):
        groups = q.shape[1] // k.shape[1]
        return sdpa(q, repeat_kv(k, groups), repeat_kv(v, groups), **kwargs)

    def run():
        model.zero_grad(set_to_none=True)
        out = model(ids, labels=ids)
        out.loss.backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    fast_logits, fast_grads = run()
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa_on_repeated_heads)
    plain_logits, plain_grads = run()
    assert rel_err(fast_logits, plain_logits) <= 1e-6
    for name, grad in plain_grads.items():
        assert rel_err(fast_grads[name], grad) <= 1e-5, name


def test_kv_cache_equals_full_forward():
    model = SmolLM2ForCausalLM(SmolLM2Config(**TINY)).eval()
    ids = torch.randint(0, 97, (2, 15), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :6], use_cache=True)  # prefill
        pieces = [out.logits]
        out = model(ids[:, 6:10], past_key_values=out.past_key_values, use_cache=True)  # a chunk with a cache
        pieces.append(out.logits)
        for t in range(10, 15):  # one token at a time
            out = model(ids[:, t : t + 1], past_key_values=out.past_key_values, use_cache=True)
            pieces.append(out.logits)
    assert out.past_key_values[0][0].shape == (2, 2, 15, 8)
    assert rel_err(torch.cat(pieces, dim=1), full) <= 1e-5


def test_rope_cache_grows_past_max_positions():
    config = SmolLM2Config(**{**TINY, "max_position_embeddings": 16, "block_size": 16})
    hf = hf_reference(config)
    model = ours_from(hf, config)
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, ref = model(ids).logits, hf(input_ids=ids).logits
    assert model.model.rotary_emb.max_seq_len_cached == 40
    assert rel_err(ours, ref) <= 1e-5


@pytest.mark.parametrize("every", [1, 2])
def test_activation_checkpointing_gives_identical_grads(every):
    torch.manual_seed(0)
    model = SmolLM2ForCausalLM(SmolLM2Config(**TINY))
    ids = torch.randint(0, 97, (2, 16))

    def grads():
        model.zero_grad(set_to_none=True)
        loss = model(ids, labels=ids).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_plain, plain = grads()
    model.set_activation_checkpointing(every)
    loss_ckpt, ckpt = grads()
    model.set_activation_checkpointing(0)
    assert loss_ckpt == loss_plain
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=0, atol=1e-7, msg=name)


@pytest.mark.slow
def test_training_forward_compiles_without_graph_breaks():
    import torch._dynamo

    model = SmolLM2ForCausalLM(SmolLM2Config(**TINY))
    model.set_activation_checkpointing(2)
    ids = torch.randint(0, 97, (2, 16))
    explanation = torch._dynamo.explain(model)(ids, labels=ids)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_compiled_layers_generate_without_graph_breaks():
    """Layers compiled as smollm2/engine.py compiles them, then generation: prompts of new lengths make the
    length dynamic, and a symbolic `is_causal` once broke each layer's graph in two there."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = SmolLM2ForCausalLM(SmolLM2Config(**TINY)).eval()
    prompts = [torch.randint(1, 97, (1, n)) for n in (4, 5, 7)]
    expected = [model.generate(prompt, 4, temperature=0) for prompt in prompts]
    torch._dynamo.reset()
    counters.clear()
    for layer in model.model.layers:
        layer.forward = torch.compile(layer.forward, backend="aot_eager")
    for prompt, want in zip(prompts, expected):
        assert torch.equal(model.generate(prompt, 4, temperature=0), want)
    breaks = dict(counters["graph_break"])
    torch._dynamo.reset()
    assert not breaks, breaks


def test_greedy_generate_cached_equals_uncached_and_crops_to_block_size():
    config = SmolLM2Config(**{**TINY, "block_size": 8})
    torch.manual_seed(0)
    model = SmolLM2ForCausalLM(config).eval()
    prompt = torch.randint(0, 97, (2, 5))
    out = model.generate(prompt, max_new_tokens=12, temperature=0)
    # Reference: no cache, the model always sees at most the last block_size tokens (the spec's loop).
    tokens = prompt
    with torch.no_grad():
        for _ in range(12):
            logits = model(tokens[:, -config.block_size :]).logits[:, -1]
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    assert out.shape == (2, 17)
    assert torch.equal(out, tokens)


def test_generate_stops_at_eos_and_streams():
    torch.manual_seed(0)
    model = SmolLM2ForCausalLM(SmolLM2Config(**TINY)).eval()
    prompt = torch.randint(0, 97, (1, 4))
    free = model.generate(prompt, max_new_tokens=10, temperature=0)[0, 4:].tolist()
    eos = free[3]
    streamed = []
    out = model.generate(prompt, max_new_tokens=10, temperature=0, eos_token_id=eos, on_token=streamed.append)
    assert out[0, 4:].tolist() == free[: free.index(eos) + 1]  # stops right after the first eos, which it keeps
    assert streamed == out[0, 4:].tolist()


def test_sampling_is_seeded_and_respects_top_k_and_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]]).repeat(4000, 1)
    draw = lambda **kw: sample_next_token(logits, generator=torch.Generator().manual_seed(3), **kw)  # noqa: E731
    assert torch.equal(draw(temperature=1.0, top_k=None, top_p=None), draw(temperature=1.0, top_k=None, top_p=None))
    assert set(draw(temperature=1.0, top_k=2, top_p=None).tolist()) == {0, 1}
    # probabilities of the top tokens: 0.56, 0.21, 0.13, ... -> top_p 0.6 keeps exactly the first two
    assert set(draw(temperature=1.0, top_k=None, top_p=0.6).tolist()) == {0, 1}
    assert set(draw(temperature=1.0, top_k=None, top_p=1e-6).tolist()) == {0}
    assert set(draw(temperature=0, top_k=None, top_p=None).tolist()) == {0}
    assert len(set(draw(temperature=1.0, top_k=None, top_p=None).tolist())) == 6
    # Frequencies follow the softmax at temperature 1.
    freq = torch.bincount(draw(temperature=1.0, top_k=None, top_p=None), minlength=6).float() / 4000
    assert torch.allclose(freq, logits[0].softmax(-1), atol=0.03)
