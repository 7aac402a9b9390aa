"""smollm2.ops fast paths against the plain PyTorch expressions they replace: values and gradients, on CPU."""
import pytest
import torch
import torch.nn.functional as F

from smollm2 import ops
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM


def plain_loss_and_grads(hidden, weight, targets):
    hidden = hidden.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    loss = F.cross_entropy((hidden @ weight.t()).float(), targets, ignore_index=-100)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


def fused_loss_and_grads(hidden, weight, targets, **kwargs):
    hidden = hidden.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    loss = ops.fused_linear_cross_entropy(hidden, weight, targets, **kwargs)
    loss.backward()
    return loss.detach(), hidden.grad, weight.grad


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("chunk_tokens", [1, 7, 64, 1000])
def test_fused_linear_cross_entropy_matches_plain_fp32(chunk_tokens):
    g = torch.Generator().manual_seed(chunk_tokens)
    hidden = torch.randn(100, 24, generator=g)
    weight = torch.randn(300, 24, generator=g) * 0.3
    targets = torch.randint(0, 300, (100,), generator=g)
    targets[::9] = -100  # ignored positions count neither in the loss nor in the mean
    expected = plain_loss_and_grads(hidden, weight, targets)
    got = fused_loss_and_grads(hidden, weight, targets, chunk_tokens=chunk_tokens)
    for name, e, o in zip(("loss", "grad hidden", "grad weight"), expected, got):
        assert o.dtype == e.dtype, name
        assert rel_err(o, e) < 1e-5, name


def test_fused_linear_cross_entropy_bf16_and_autocast_match_plain():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(64, 32, generator=g)
    weight = torch.randn(500, 32, generator=g) * 0.2
    targets = torch.randint(0, 500, (64,), generator=g)
    reference = plain_loss_and_grads(hidden.double(), weight.double(), targets)
    # bf16 inputs: bf16 matmuls, fp32 softmax, gradients back in bf16.
    bf16 = fused_loss_and_grads(hidden.bfloat16(), weight.bfloat16(), targets, chunk_tokens=16)
    assert [t.dtype for t in bf16[1:]] == [torch.bfloat16, torch.bfloat16]
    # fp32 inputs under autocast: bf16 matmuls inside, gradients cast back to the fp32 inputs.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = fused_loss_and_grads(hidden, weight, targets, chunk_tokens=16)
    assert [t.dtype for t in autocast[1:]] == [torch.float32, torch.float32]
    for got in (bf16, autocast):
        for o, e in zip(got, reference):
            assert rel_err(o, e) < 2e-2  # bf16 operands: 1e-3..1e-2 of the float64 reference


def test_fused_loss_scales_with_upstream_gradient_and_handles_all_ignored():
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    targets = torch.randint(0, 20, (10,))
    (3.0 * ops.fused_linear_cross_entropy(hidden, weight, targets)).backward()
    _, plain_h, plain_w = plain_loss_and_grads(hidden, weight, targets)
    assert torch.allclose(hidden.grad, 3.0 * plain_h, atol=1e-6)
    assert torch.allclose(weight.grad, 3.0 * plain_w, atol=1e-6)
    ignored = torch.full((10,), -100)
    loss = ops.fused_linear_cross_entropy(hidden, weight, ignored)
    assert loss.item() == 0.0


def test_fused_linear_cross_entropy_rejects_bad_shapes():
    with pytest.raises(ValueError, match="expected hidden"):
        ops.fused_linear_cross_entropy(torch.randn(2, 3, 4), torch.randn(5, 4), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_tokens"):
        ops.fused_linear_cross_entropy(torch.randn(6, 4), torch.randn(5, 4), torch.zeros(6, dtype=torch.long),
                                       chunk_tokens=0)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = SmolLM2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, block_size=16,
                           max_position_embeddings=16)
    return SmolLM2ForCausalLM(config)


def test_causal_lm_loss_matches_the_models_own_loss_and_gradients():
    """Through the whole model: the tied embedding gets the LM head's gradient from the fused path too."""
    model = tiny_model()
    ids = torch.randint(0, 256, (3, 16))
    labels = ids.clone()
    labels[0, :5] = -100
    plain = model(ids, labels=labels).loss
    plain_grads = torch.autograd.grad(plain, list(model.parameters()))
    hidden, _ = model.model(ids)
    fused = ops.causal_lm_loss(hidden, model.lm_head.weight, labels, chunk_tokens=10)
    fused_grads = torch.autograd.grad(fused, list(model.parameters()))
    assert abs(fused.item() - plain.item()) < 1e-5
    for (name, _), p, f in zip(model.named_parameters(), plain_grads, fused_grads):
        assert rel_err(f, p) < 1e-4, name


def test_selective_checkpoint_matches_plain_forward_and_backward():
    model = tiny_model(1)
    ids = torch.randint(0, 256, (2, 16))
    expected_loss = model(ids, labels=ids).loss
    expected = torch.autograd.grad(expected_loss, list(model.parameters()))
    layers = model.model.layers
    originals = [layer.forward for layer in layers]
    for layer, forward in zip(layers, originals):
        layer.forward = lambda *args, _f=forward: ops.selective_checkpoint(_f, *args)
    got_loss = model(ids, labels=ids).loss
    got = torch.autograd.grad(got_loss, list(model.parameters()))
    assert torch.equal(got_loss, expected_loss)
    for (name, _), e, g in zip(model.named_parameters(), expected, got):
        assert torch.allclose(g, e, rtol=1e-5, atol=1e-7), name


def test_selective_checkpoint_keeps_matmul_outputs_and_recomputes_the_rest():
    """What is saved for backward: the matmul outputs yes, the elementwise results no."""
    from torch.utils.checkpoint import CheckpointPolicy

    aten = torch.ops.aten
    assert ops._selective_policy(None, aten.mm.default) == CheckpointPolicy.MUST_SAVE
    assert ops._selective_policy(None, aten.mul.Tensor) == CheckpointPolicy.PREFER_RECOMPUTE
    assert ops._selective_policy(None, aten.silu.default) == CheckpointPolicy.PREFER_RECOMPUTE
