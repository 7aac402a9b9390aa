"""The run directory (train.out_dir): checked writable before training, its config.yaml and tokenizer.json written.

Its layout is smollm2/checkpoint.py's docstring; what writes where: config.yaml and tokenizer.json here,
metrics.jsonl, samples.jsonl and tensorboard/ smollm2/metrics.py, checkpoints/ smollm2/checkpoint_manager.py.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from smollm2.atomic import write_atomic
from smollm2.config import save_config
from smollm2.errors import UserError, write_failed


def check_writable(run_dir: Path) -> None:
    """Every rank writes into the run directory (its checkpoint shards): a folder that cannot be written fails
    here, in one line, not at the first save after hours of training."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"train.out_dir: {write_failed(run_dir, exc)}") from None


def write_run_files(config: Any, tokenizer_path: Path) -> None:
    """The run directory's config.yaml (this job's resolved config, smollm2.config.Config) and tokenizer.json
    (the data's)."""
    run_dir = Path(config.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml", header="Resolved by `smollm2 train`: every key, defaults filled in.")
    write_atomic(run_dir / "tokenizer.json", lambda tmp: shutil.copyfile(tokenizer_path, tmp))
