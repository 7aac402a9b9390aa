"""The FP8 LM head experiment's loss and gradients, and the bf16 path's, against float32, on one micro-batch of
131072 tokens (random hidden states and head, logits of about 8 standard deviations: a hard case) at the 135M's
and the 360M's hidden size.

The experiment is not in smollm2/: bench/fp8_head_experiment.patch puts it into a copy of the code of commit
44f1114 (the loss kernel also writes softmax - onehot as float8 e5m2, times 2^15; logits and the hidden-state
gradient through torch._scaled_mm with e4m3 operands scaled per tensor; the weight gradient stays bf16; the
environment variable SMOLLM2_FP8_HEAD=0 turns it off). On the device machine, from the repository root:
    mkdir -p /tmp/fp8 && git archive 44f1114 smollm2 configs | tar -x -C /tmp/fp8
    patch -d /tmp/fp8 -p1 < bench/fp8_head_experiment.patch
    (cd /tmp/fp8 && PYTHONPATH=$PWD python3 $OLDPWD/bench/fp8_head_check.py)
and bench/compare_code_h200.sh with that copy against an unpatched one times the training step.
"""

import os

import torch

from smollm2 import ops

torch.manual_seed(0)
for hidden_size in (576, 960):
    tokens, vocab = 131072, 49152
    hidden32 = torch.randn(tokens, hidden_size, device="cuda") * 2
    weight32 = torch.randn(vocab, hidden_size, device="cuda") * hidden_size**-0.5 * 4
    targets = torch.randint(0, vocab, (tokens,), device="cuda")
    targets[::97] = -100
    results = {}
    for name, dtype, fp8 in (("fp32", torch.float32, "0"), ("bf16", torch.bfloat16, "0"), ("fp8", torch.bfloat16, "1")):
        os.environ["SMOLLM2_FP8_HEAD"] = fp8
        hidden = hidden32.to(dtype).detach().requires_grad_()
        weight = weight32.to(dtype).detach().requires_grad_()
        loss = ops.fused_linear_cross_entropy(hidden, weight, targets)
        loss.backward()
        results[name] = (loss.detach().float(), hidden.grad.float(), weight.grad.float())
        del hidden, weight
    l32, gh32, gw32 = results["fp32"]
    for name in ("bf16", "fp8"):
        loss, gh, gw = results[name]
        cos = float(torch.nn.functional.cosine_similarity(gh.flatten(), gh32.flatten(), dim=0))
        print(
            f"hidden {hidden_size} {name}: loss {loss.item():.5f} (fp32 {l32.item():.5f}); against fp32: grad_hidden "
            f"relative error {float((gh - gh32).norm() / gh32.norm()):.3e} (cosine {cos:.6f}), grad_weight "
            f"{float((gw - gw32).norm() / gw32.norm()):.3e}",
            flush=True,
        )
    del results, hidden32, weight32
