"""What a run reports: a console line per logged step, RUN_DIR/metrics.jsonl, TensorBoard, samples.

Rank 0 writes; the other ranks hold a disabled logger. One row per logged step, the same numbers in
all three places:

| metrics.jsonl key | TensorBoard tag      | meaning                                                      |
|-------------------|----------------------|--------------------------------------------------------------|
| loss              | train/loss           | mean training loss over the steps since the last row         |
| lr                | train/lr             | learning rate of the last step                               |
| grad_norm         | train/grad_norm      | global gradient norm before clipping, last step              |
| tokens_per_s      | perf/tokens_per_s    | training tokens per second, all ranks together               |
| mfu               | perf/mfu             | percent of the per-device peak (flops_per_token below)       |
| mfu_datasheet     | perf/mfu_datasheet   | the same against logging.datasheet_tflops, when set          |
| peak_mem_gib      | perf/peak_mem_gib    | peak GPU memory allocated (CPU: peak resident set size)      |
| data_wait_ms      | perf/data_wait_ms    | time per step spent waiting for the next batch               |
| step_time_s       | perf/step_time_s     | wall time per optimizer step                                 |
| consumed_samples  | -                    | training samples seen so far (the data position)             |
| eval_loss, eval_ppl | eval/loss, eval/ppl | validation loss and perplexity (rows of their own)          |

Generation samples go to RUN_DIR/samples.jsonl and to TensorBoard text `samples/<i>`.
A job starting at step S (0 for a new run) drops the rows past S that an interrupted job left (in the
JSON files and, through SummaryWriter's purge_step, in TensorBoard): every file tells one history.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from smollm2.atomic import write_text_atomic

TENSORBOARD_TAGS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "perf/tokens_per_s",
    "mfu": "perf/mfu",
    "mfu_datasheet": "perf/mfu_datasheet",
    "peak_mem_gib": "perf/peak_mem_gib",
    "data_wait_ms": "perf/data_wait_ms",
    "step_time_s": "perf/step_time_s",
    "eval_loss": "eval/loss",
    "eval_ppl": "eval/ppl",
}


class MetricsLogger:
    """metrics.jsonl + samples.jsonl + TensorBoard for one run directory (a no-op when not enabled)."""

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool, tensorboard: bool, start_step: int = 0) -> None:
        self.enabled = enabled
        self.metrics_path = Path(run_dir) / "metrics.jsonl"
        self.samples_path = Path(run_dir) / "samples.jsonl"
        self.writer = None
        if not enabled:
            return
        for path in (self.metrics_path, self.samples_path):
            _drop_rows_after(path, start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1)

    def log(self, step: int, row: dict[str, Any]) -> None:
        """One metrics row; None values are written as null to the JSON and left out of TensorBoard."""
        if not self.enabled:
            return
        _append_json(self.metrics_path, {"step": step, **row})
        if self.writer is not None:
            for key, value in row.items():
                if key in TENSORBOARD_TAGS and value is not None:
                    self.writer.add_scalar(TENSORBOARD_TAGS[key], value, step)
            self.writer.flush()

    def log_samples(self, step: int, samples: list[tuple[str, str]]) -> None:
        """(prompt, generated continuation) pairs."""
        if not self.enabled:
            return
        for i, (prompt, text) in enumerate(samples):
            _append_json(self.samples_path, {"step": step, "prompt": prompt, "text": text})
            if self.writer is not None:
                # Markdown: a code block keeps the model's line breaks and odd characters readable.
                self.writer.add_text(f"samples/{i}", f"**{prompt}**\n\n```\n{prompt}{text}\n```", step)
        if self.writer is not None:
            self.writer.flush()

    def log_text(self, tag: str, text: str, step: int) -> None:
        """TensorBoard text only (e.g. the resolved config)."""
        if self.enabled and self.writer is not None:
            self.writer.add_text(tag, text, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _append_json(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _drop_rows_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = [
        line for line in path.read_text().splitlines(keepends=True) if line.strip() and json.loads(line)["step"] <= step
    ]
    write_text_atomic(path, "".join(kept))


def format_progress(step: int, max_steps: int, row: dict[str, Any], eta_s: float | None) -> str:
    """`step 120/1000 (12%) | loss 4.1234 | lr 3.00e-03 | ... | ETA 0:12:34` for the console."""
    parts = [
        f"step {step}/{max_steps} ({100 * step / max_steps:.0f}%)",
        f"loss {row['loss']:.4f}",
        f"lr {row['lr']:.2e}",
    ]
    if row.get("grad_norm") is not None:
        parts.append(f"grad {row['grad_norm']:.3f}")
    parts.append(f"{row['tokens_per_s']:,.0f} tok/s")
    if row.get("mfu") is not None:
        parts.append(f"MFU {row['mfu']:.1f}%")
    parts.append(f"data {row['data_wait_ms']:.1f} ms")
    parts.append(f"mem {row['peak_mem_gib']:.2f} GiB")
    if eta_s is not None:
        parts.append(f"ETA {_hms(eta_s)}")
    return " | ".join(parts)


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated by torch; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def parameter_count(arch: Any) -> int:
    """Unique parameters of a SmolLM2 of this architecture (a SmolLM2Config or the config's model section):
    the tied LM head shares the embedding and counts once."""
    hidden, kv_width = arch.hidden_size, arch.num_key_value_heads * (arch.hidden_size // arch.num_attention_heads)
    attention = 2 * hidden * hidden + 2 * hidden * kv_width  # q, o and k, v
    mlp = 3 * hidden * arch.intermediate_size  # gate, up, down
    layer = attention + mlp + 2 * hidden  # and two RMSNorm gains
    embeddings = arch.vocab_size * hidden * (1 if arch.tie_word_embeddings else 2)
    return embeddings + arch.num_hidden_layers * layer + hidden  # and the final norm


def flops_per_token(arch: Any, seq_len: int) -> int:
    """Training FLOPs per token, PaLM's convention (docs/design.md): 6 N + 12 layers hidden seq, where the
    second term is the attention scores and their product with the values, forward and backward."""
    return 6 * parameter_count(arch) + 12 * arch.num_hidden_layers * arch.hidden_size * seq_len


def measure_peak_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """This device's dense matmul rate in `dtype`: the MFU denominator when none is configured.

    Timed as docs/design.md says: a burst of square products (8192 on GPU, 512 on CPU) after a warm-up,
    one synchronization at the end. A loop that synchronizes after every product read 665-696 TFLOP/s on
    an H200 where this reads about 798 (bench/RESULTS.md), and the lower denominator overstated MFU by
    some 15%.
    """
    n, reps = (8192, 20) if device.type == "cuda" else (512, 20)
    generator = torch.Generator(device=device).manual_seed(0)  # leaves the training RNG untouched
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # F.linear: the op the model runs (on CPU it takes oneDNN's bf16 kernels where a plain `@` may not).
    for _ in range(3):  # kernel selection, clocks ramping up
        F.linear(a, b)
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        F.linear(a, b)
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12
