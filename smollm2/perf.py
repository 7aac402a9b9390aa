"""Where a run's time goes: FLOPs per token, the device's peak, MFU, memory, and the throughput of a window of steps.

MFU follows docs/design.md: tokens/s x FLOPs per token (6 N + 12 layers hidden seq, PaLM's convention) / the
bf16 matmul rate measured on the same device in the same process (or logging.peak_tflops).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

TIME_PARTS = ("data_wait", "eval", "samples", "save", "logging")  # where a run's wall time goes besides training


class Window:
    """What accumulates between two logged steps (the trainer's and `smollm2 bench`'s)."""

    def __init__(self, device: torch.device, started: float | None = None) -> None:
        self.loss_sum = torch.zeros((), device=device)  # over the steps that made an update
        self.micro_batches = 0
        self.steps = 0
        self.data_wait = 0.0  # inside the steps: waiting for the next batch
        # Between the steps: evals, their samples, the loop's waits for checkpoints, writing the logs.
        self.outside = dict.fromkeys(TIME_PARTS[1:], 0.0)
        self.started = time.perf_counter() if started is None else started

    def wall(self) -> float:
        return time.perf_counter() - self.started

    def elapsed(self, wall: float | None = None) -> float:
        """Seconds in the window's steps (what tokens/s counts: eval, checkpoint and logging time left out) of
        `wall` seconds of it (default: all so far)."""
        return (self.wall() if wall is None else wall) - sum(self.outside.values())

    def parts(self) -> dict[str, float]:
        """Seconds of each part of TIME_PARTS."""
        return {"data_wait": self.data_wait, **self.outside}


def timed(fn: Callable[[], None]) -> float:
    """Seconds `fn()` took."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def throughput(
    window: Window, tokens_per_step: int, world_size: int, flops_per_token: int, peak_tflops: float,
    datasheet_tflops: float | None, device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    """The window's throughput row: tokens/s (all ranks), MFU against the measured and the datasheet peak per
    device, peak memory, data wait and wall time per step, and goodput: the share of the window's wall time
    spent training (in the steps, not waiting for data), and the share of each other part."""
    wall = window.wall()
    elapsed = window.elapsed(wall)
    tokens_per_s = window.steps * tokens_per_step / elapsed
    flops_per_device = tokens_per_s / world_size * flops_per_token
    parts = window.parts()
    return {
        "tokens_per_s": tokens_per_s,
        "mfu": 100 * flops_per_device / (peak_tflops * 1e12),
        "mfu_datasheet": 100 * flops_per_device / (datasheet_tflops * 1e12) if datasheet_tflops else None,
        "peak_mem_gib": peak_memory_gib(device),
        "data_wait_ms": 1000 * window.data_wait / window.steps,
        "step_time_s": elapsed / window.steps,
        "goodput": (elapsed - window.data_wait) / wall,
        **{f"time_share/{part}": seconds / wall for part, seconds in parts.items()},
    }


class JobTime:
    """The wall time of a job's logged windows, and of its parts: the job's goodput."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.parts = dict.fromkeys(TIME_PARTS, 0.0)

    def add(self, window: Window) -> None:
        self.wall += window.wall()
        for part, seconds in window.parts().items():
            self.parts[part] += seconds

    def describe(self) -> str:
        """`goodput 97.1 % (data_wait 0.2 %, eval 1.9 %, ...)` over the job's windows."""
        if not self.wall:
            return "goodput: no step logged"
        training = self.wall - sum(self.parts.values())
        shares = ", ".join(f"{part} {100 * seconds / self.wall:.1f} %" for part, seconds in self.parts.items())
        return f"goodput {100 * training / self.wall:.1f} % of {self.wall:.0f} s ({shares})"


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
    one synchronization at the end. A loop that synchronizes after every product reads a lower rate, which
    overstated MFU (both figures: bench/RESULTS.md).
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
