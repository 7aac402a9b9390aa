"""Fast paths against the plain PyTorch they replace, on CPU: smollm2.ops (values and gradients), the trainer's
clipping."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import free_port
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
        ops.fused_linear_cross_entropy(
            torch.randn(6, 4), torch.randn(5, 4), torch.zeros(6, dtype=torch.long), chunk_tokens=0
        )


@pytest.fixture
def interpreted_loss_kernel():
    """ops' Triton loss kernel, which Triton's interpreter runs on CPU tensors (TRITON_INTERPRET: conftest)."""
    pytest.importorskip("triton")  # installed with the test extra on Linux, the only platform with its wheels
    assert os.environ.get("TRITON_INTERPRET") == "1"
    ops._loss_kernel.cache_clear()
    yield
    ops._loss_kernel.cache_clear()


@pytest.mark.parametrize("tile", [128, 1024])  # several tiles, the last one partial / the whole row in one
def test_loss_kernel_matches_the_torch_expression(interpreted_loss_kernel, tile):
    torch.manual_seed(0)
    logits = (torch.randn(12, 1000) * 8).to(torch.bfloat16)
    logits[3, 17] = 60.0  # a dominant logit: the online max must rescale the sums before it
    targets = torch.randint(0, 1000, (12,))
    targets[[2, 7]] = -100
    targets[3] = 17
    grad_scale = torch.tensor(0.1)
    want_loss, want_grad = ops._chunk_loss_and_grad(logits, targets, grad_scale, -100)
    buffer = logits.clone()
    loss, grad = ops.chunk_loss_and_grad_in_place(buffer, targets, grad_scale, -100, tile=tile, num_warps=4)
    assert grad.data_ptr() == buffer.data_ptr()  # written over the logits
    assert torch.allclose(loss, want_loss, rtol=1e-5)
    # Both round the same float32 gradient to bfloat16, from exponentials computed in another order: one ulp.
    torch.testing.assert_close(grad.float(), want_grad.float(), rtol=2**-7, atol=1e-7)
    assert not grad[2].any() and not grad[7].any()  # ignored rows: no gradient


def test_loss_kernel_inside_the_fused_loss_matches_plain(interpreted_loss_kernel, monkeypatch):
    monkeypatch.setattr(ops, "_use_loss_kernel", lambda hidden: True)
    torch.manual_seed(1)
    hidden, weight = torch.randn(40, 16), torch.randn(300, 16) * 0.5
    targets = torch.randint(0, 300, (40,))
    targets[::5] = -100
    plain = plain_loss_and_grads(hidden, weight, targets)
    fused = fused_loss_and_grads(hidden, weight, targets, chunk_tokens=16)
    for want, got in zip(plain, fused):
        assert rel_err(got, want) < 1e-5


def test_loss_kernel_refuses_column_major_logits():
    with pytest.raises(ValueError, match="row-major logits"):
        ops.chunk_loss_and_grad_in_place(torch.zeros(8, 4).t(), torch.zeros(4, dtype=torch.long), torch.tensor(1.0), 0)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = SmolLM2Config(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        block_size=16,
        max_position_embeddings=16,
    )
    return SmolLM2ForCausalLM(config)


def loss_and_grads(model, loss):
    return loss.detach(), torch.autograd.grad(loss, list(model.parameters()))


def assert_same_grads(model, expected, got, rel=1e-4):
    for (name, _), e, g in zip(model.named_parameters(), expected, got):
        assert rel_err(g, e) < rel, name


def test_model_targets_path_matches_logits_then_cross_entropy():
    """model(ids, targets=) (fused, no logits) against the trainer's plain path, through the whole model:
    the tied embedding also gets the LM head's gradient from the fused path."""
    model = tiny_model()
    window = torch.randint(0, 256, (3, 17))
    ids, targets = window[:, :-1], window[:, 1:].clone()
    targets[0, :5] = -100
    logits = model(ids).logits
    plain = loss_and_grads(model, F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()))
    out = model(ids, targets=targets)
    assert out.logits is None
    fused = loss_and_grads(model, out.loss)
    assert abs(fused[0].item() - plain[0].item()) < 1e-5
    assert_same_grads(model, plain[1], fused[1])


def test_selective_checkpointing_matches_no_checkpointing():
    model = tiny_model(1)
    ids = torch.randint(0, 256, (2, 16))
    expected = loss_and_grads(model, model(ids, labels=ids).loss)
    model.set_activation_checkpointing(1, selective=True)
    got = loss_and_grads(model, model(ids, labels=ids).loss)
    assert torch.equal(got[0], expected[0])
    assert_same_grads(model, expected[1], got[1], rel=1e-5)


def test_selective_checkpoint_runs_inside_each_layer(monkeypatch):
    """Inside the layer's forward, so a compiled layer compiles the checkpoint and its policy with it
    (wrapped around a compiled layer, the policy sees no matmuls and everything is recomputed)."""
    model = tiny_model(3)
    calls = []
    real = ops.selective_checkpoint
    monkeypatch.setattr(ops, "selective_checkpoint", lambda fn, *args: calls.append(fn) or real(fn, *args))
    model.set_activation_checkpointing(2, selective=True)
    assert model.model.checkpoint_every_n_layers == 0  # no whole-layer checkpoint around them
    assert [layer.selective_checkpoint for layer in model.model.layers] == [True, False]
    model(torch.randint(0, 256, (2, 16)))
    assert calls == [model.model.layers[0]._block]
    with torch.no_grad():
        model(torch.randint(0, 256, (2, 16)))
    assert len(calls) == 1  # nothing to save without autograd
    model.set_activation_checkpointing(0)
    assert not any(layer.selective_checkpoint for layer in model.model.layers)


def test_residual_stream_in_the_autocast_dtype_under_autocast():
    """Under autocast the decoder layers see bf16 hidden states (as with bf16 weights), fp32 otherwise; the
    loss stays within bf16's error of the fp32 one."""
    model = tiny_model(2)
    seen = []
    model.model.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    ids = torch.randint(0, 256, (2, 16))
    fp32_loss = model(ids, labels=ids).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_loss = model(ids, labels=ids).loss
    assert seen == [torch.float32, torch.bfloat16]
    assert abs(bf16_loss.item() - fp32_loss.item()) < 2e-2 * fp32_loss.item()


def test_selective_checkpoint_keeps_matmul_outputs_and_recomputes_the_rest():
    """What is saved for backward: the matmul outputs yes, the elementwise results no."""
    from torch.utils.checkpoint import CheckpointPolicy

    aten = torch.ops.aten
    assert ops._selective_policy(None, aten.mm.default) == CheckpointPolicy.MUST_SAVE
    assert ops._selective_policy(None, aten.mul.Tensor) == CheckpointPolicy.PREFER_RECOMPUTE
    assert ops._selective_policy(None, aten.silu.default) == CheckpointPolicy.PREFER_RECOMPUTE


# The clipping at ZeRO 0 (torch's foreach clip: smollm2.engine.clip_gradients, called by the stability guard)
# against what DeepSpeed's engine would run there (deepspeed.runtime.utils.clip_grad_norm_), on the same
# gradients. In a process of its own: DeepSpeed's clip needs a process group.
CLIP_SCRIPT = """
import json, os, sys
import torch, deepspeed
from deepspeed.runtime.utils import clip_grad_norm_ as deepspeed_clip
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
deepspeed.init_distributed(dist_backend="gloo")
torch.manual_seed(0)
model = SmolLM2ForCausalLM(SmolLM2Config(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                         num_attention_heads=6, num_key_value_heads=2, block_size=32))
ids = torch.randint(0, 97, (2, 16))
model(ids, labels=ids).loss.backward()
params = list(model.parameters())
grads = [p.grad.clone() for p in params]
norm_torch = torch.nn.utils.clip_grad_norm_(params, 0.5, foreach=True)
clipped_torch = [p.grad.clone() for p in params]
for p, g in zip(params, grads):
    p.grad = g.clone()
norm_deepspeed = deepspeed_clip(params, 0.5)
print(json.dumps({
    "norm_torch": float(norm_torch), "norm_deepspeed": float(norm_deepspeed),
    "max_difference": max((a - b).abs().max().item() for a, b in zip(clipped_torch, (p.grad for p in params))),
    "max_change": max((a - b).abs().max().item() for a, b in zip(grads, clipped_torch)),
}))
torch.distributed.destroy_process_group()
"""


def test_trainer_clipping_equals_deepspeeds():
    result = subprocess.run(
        [sys.executable, "-c", CLIP_SCRIPT, str(free_port())],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["norm_torch"] == pytest.approx(out["norm_deepspeed"], rel=1e-6) and out["norm_torch"] > 0.5
    assert out["max_change"] > 0  # the clip did clip
    assert out["max_difference"] <= 1e-7


def test_who_clips_follows_the_deepspeed_config():
    from smollm2.engine import deepspeed_clips

    assert not deepspeed_clips({"zero_optimization": {"stage": 0}, "torch_autocast": {"enabled": True}})
    assert deepspeed_clips({"zero_optimization": {"stage": 1}})
    assert deepspeed_clips({"zero_optimization": {"stage": 0}, "bf16": {"enabled": True}})
    assert deepspeed_clips({"zero_optimization": {"stage": 0}, "fp16": {"enabled": True}})
