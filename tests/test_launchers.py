"""The launch scripts end to end: 2 CPU processes train configs/tiny.yaml (shrunk to a few steps) under the
real deepspeed launcher, torchrun and mpirun, plus DeepSpeed's no-ssh multi-node route with two "nodes" on
this machine. Each run exits 0, its loss falls, and TensorBoard's own EventAccumulator reads back every
scalar of design.md and the generation samples."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

from conftest import free_port, smollm2_cmd

ROOT = Path(__file__).resolve().parents[1]
DESIGN_SCALARS = {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/mfu", "perf/peak_mem_gib",
                  "eval/loss", "eval/ppl"}
# configs/tiny.yaml cut to seconds: 10 steps of 2 x 2 blocks, an eval (with samples) halfway and at the end.
# fp32: this machine's CPU has no native bf16 (bf16 matmuls run ~50x slower than fp32 here).
SHRINK = ["train.max_steps=10", "train.micro_batch_size=2", "train.global_batch_size=4", "train.dtype=fp32",
          "schedule.warmup_steps=2", "logging.log_every=2", "eval.eval_every=5", "eval.num_blocks=2",
          "eval.max_new_tokens=8", "checkpoint.save_every=0", "data.num_workers=0"]


@pytest.fixture(scope="module")
def shakespeare_data(tmp_path_factory, gguf_path, shakespeare_dir) -> Path:
    """Four plays tokenized with the real SmolLM2 tokenizer (one held out for validation)."""
    out = tmp_path_factory.mktemp("launchers")
    subprocess.run(smollm2_cmd("tokenizer", "extract", "--gguf", gguf_path, "--out", out / "tokenizer"), check=True,
                   capture_output=True)
    plays = sorted(shakespeare_dir.glob("*_gut.txt"))[:4]
    subprocess.run(smollm2_cmd("prepare", "--input", *plays, "--tokenizer", out / "tokenizer", "--out", out / "data",
                               "--val-docs", "1"), check=True, capture_output=True)
    return out / "data"


def launch(script: str, run_dir: Path, data: Path, cwd: Path, **env: str) -> subprocess.Popen:
    """`bash launch/SCRIPT configs/tiny.yaml --set ...` as a user types it, from another directory."""
    environ = {**os.environ, "NPROC": "2", "MASTER_PORT": str(free_port()), "DS_ACCELERATOR": "cpu",
               # Every byte stays on loopback: gloo's sockets, and Open MPI's own.
               "GLOO_SOCKET_IFNAME": "lo", "OMPI_MCA_btl_tcp_if_include": "lo", "OMPI_MCA_oob_tcp_if_include": "lo",
               **env}
    cmd = ["bash", str(ROOT / "launch" / script), str(ROOT / "configs" / "tiny.yaml"),
           "--set", f"data.path={data}", f"train.out_dir={run_dir}", *SHRINK]
    return subprocess.Popen(cmd, cwd=cwd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    assert process.returncode == 0, output[-4000:]
    return output


def check_run(run_dir: Path, output: str) -> None:
    assert "2 rank(s) on cpu" in output, output[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if row.get("loss") is not None]
    assert len(losses) == 5 and losses[-1] < losses[0] - 0.5, losses
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    assert DESIGN_SCALARS <= set(tags["scalars"]), tags["scalars"]
    assert [event.step for event in events.Scalars("train/loss")] == [2, 4, 6, 8, 10]
    assert [event.step for event in events.Scalars("eval/loss")] == [5, 10]
    sample_tags = [tag for tag in tags["tensors"] if tag.startswith("samples/")]
    assert sample_tags, tags["tensors"]
    for tag in sample_tags:
        texts = [make_ndarray(event.tensor_proto).item().decode() for event in events.Tensors(tag)]
        assert [event.step for event in events.Tensors(tag)] == [5, 10] and all(texts), texts


@pytest.mark.slow
@pytest.mark.parametrize("script", ["deepspeed_single_node.sh", "torchrun.sh", pytest.param(
    "mpirun.sh", marks=pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI is not installed"))])
def test_two_cpu_processes_under_launcher(script, shakespeare_data, tmp_path):
    run_dir = tmp_path / "run"
    output = finish(launch(script, run_dir, shakespeare_data, cwd=tmp_path))
    check_run(run_dir, output)


@pytest.mark.slow
def test_deepspeed_multi_node_without_ssh(shakespeare_data, tmp_path):
    """Two "nodes" of one slot each, both on this machine, started separately as on a cluster without ssh."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    run_dir, port = tmp_path / "run", str(free_port())
    nodes = [launch("deepspeed_multi_node.sh", run_dir, shakespeare_data, cwd=tmp_path, HOSTFILE=str(hostfile),
                    NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
             for rank in (0, 1)]
    outputs = [finish(node) for node in nodes]
    check_run(run_dir, outputs[0])
