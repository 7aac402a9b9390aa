"""smollm2.engine: what build_engine makes of the model under each ZeRO stage."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, free_port

# Three training steps of a 10-layer model (more layers than dynamo's recompile limit of 8) through the
# DeepSpeed engine with every decoder layer compiled; prints dynamo's graph-break and graph counts, and the
# name of the function torch.nn.functional.linear is then.
COMPILE_SCRIPT = """
import json, os, sys
import torch, deepspeed
from torch._dynamo.utils import counters
from smollm2.config import load_config
from smollm2.engine import build_engine
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
deepspeed.init_distributed(dist_backend="gloo")
config = load_config("configs/tiny.yaml", [f"deepspeed.zero_stage={sys.argv[2]}", "train.compile=true",
    "model.num_hidden_layers=10", "model.vocab_size=256", "model.hidden_size=32", "model.intermediate_size=64",
    "train.micro_batch_size=2", "train.global_batch_size=2", "train.dtype=fp32"], 1)
torch.manual_seed(0)
engine, _ = build_engine(config, SmolLM2ForCausalLM(SmolLM2Config(**config.model.architecture())), 1, torch.float32)
for _ in range(3):
    ids = torch.randint(0, 256, (2, 32))
    loss = engine(ids, targets=ids).loss
    engine.backward(loss)
    engine.step()
print(json.dumps({"graph_breaks": sum(counters["graph_break"].values()),
                  "graphs": counters["stats"]["unique_graphs"], "loss": loss.item(),
                  "linear": torch.nn.functional.linear.__name__}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 3])
def test_compiled_layers_hold_one_graph_without_breaks(stage):
    """Under ZeRO 3 DeepSpeed hooks every module to gather its weights; with hooks on the Linears inside a
    compiled layer, dynamo broke that layer's graph at each of them (35 breaks, 14 graphs here). Each layer
    is a ZeRO-3 leaf module and only its forward is compiled: one graph serves all ten layers, and one the final
    norm (compiled as well). DeepSpeed's memory-efficient linear, which recompiled each layer on a CUDA device
    (its weights' ZeRO ids are guarded), stays off: F.linear is torch's own."""
    result = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT, str(free_port()), str(stage)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["graph_breaks"] == 0 and out["graphs"] == 2, out
    assert out["linear"] == "linear", out
    assert 4 < out["loss"] < 7  # ln(256) = 5.5 at initialization
