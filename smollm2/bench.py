"""`smollm2 bench --config FILE [--set k=v ...]`: how fast the real training step runs, and against what.

Builds the trainer itself (smollm2.trainer.Trainer: its model, DeepSpeed engine, dtype, compile and
packed data loader), runs warm-up optimizer steps (compilation happens there), then times optimizer
steps of Trainer.train_step, the function `smollm2 train` runs, split into

    data wait   host time blocked on the DataLoader (the GPU may still be busy meanwhile), per step
    forward     Trainer.loss: forward and loss (the fused loss also makes the LM head's gradients here),
                per micro-batch
    backward    engine.backward (with the gradient all-reduce at the step's last micro-batch), per micro-batch
    optimizer   clipping and engine.step(), summed over the step's micro-batches (only the last one steps)

on the device's own timeline (CUDA events; the host clock on CPU), and prints tokens/s, MFU against the
bf16 matmul rate measured once in this process (docs/design.md's formula and peak: 20 products of 8192^3
after 3) and against the datasheet figure, and peak memory after warm-up.
`--vary KEY=A,B,...` benches one config per value in this one process (e.g. the activation-checkpointing
table); `--baseline` also times transformers' LlamaForCausalLM of the same shape (SDPA, bf16 autocast,
fused AdamW, torch.compile) on random tokens, one optimizer step per micro-batch, as many micro-batches
as the trainer's, so the ratio comes from one process on one GPU. `--profile DIR` writes torch.profiler's
kernel table of one more step per config and adds that step's NCCL kernel time to the row
(communication_kernel_ms: overlapped with compute or not); on CUDA the table ends with the time the device
sat idle within that step and its longest gaps (profiled_idle_ms: host work the GPU waited for, such as a
synchronization; the profiler's own overhead lengthens them). With `model.document_masking=true` the row also
says how many documents a training block holds on average (documents_per_block): the fewer and longer,
the closer masked attention's work is to plain causal attention's (MFU counts the full causal work either way).
The run directory is a temporary one: a bench never touches `train.out_dir`.

    smollm2 bench --config configs/smollm2-135m.yaml --baseline --out bench.json
    smollm2 bench --config configs/smollm2-135m.yaml --vary train.activation_checkpointing=0,1,2
    smollm2 bench --config configs/smollm2-135m.yaml --set model.block_size=2048 train.micro_batch_size=64 \
        --vary model.document_masking=false,true
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from smollm2.errors import RunFailed, UserError

DATASHEET_TFLOPS_CUDA = 989.0  # H100/H200 SXM dense bf16; --datasheet-tflops for other GPUs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from smollm2.config import add_config_arguments

    add_config_arguments(parser)
    parser.add_argument("--vary", metavar="KEY=A,B,...", help="bench once per value of one config key, in this process")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first (default 2)")
    parser.add_argument("--profile", metavar="DIR", help="write a torch.profiler table of one more step per config")
    parser.add_argument(
        "--baseline",
        nargs="?",
        const="compile",
        choices=["compile", "eager"],
        help="also time transformers' LlamaForCausalLM (default: under torch.compile)",
    )
    parser.add_argument(
        "--baseline-micro-batch",
        metavar="N[,N...]",
        help="the baseline's micro-batch, or several (default: the config's train.micro_batch_size)",
    )
    parser.add_argument(
        "--datasheet-tflops",
        type=float,
        metavar="TFLOPS",
        help=f"datasheet peak for the second MFU (default {DATASHEET_TFLOPS_CUDA:g} on CUDA)",
    )
    parser.add_argument("--out", metavar="FILE", help="write all results as JSON")


@dataclass
class Timing:
    """Means over the timed optimizer steps, in milliseconds."""

    step_ms: float  # one optimizer step: all its micro-batches
    data_wait_ms: float  # per optimizer step
    forward_ms: float  # per micro-batch
    backward_ms: float  # per micro-batch
    optimizer_ms: float  # per optimizer step: clipping and every engine.step() of its micro-batches


class Clock:
    """Marks on the device's timeline (CUDA events) or the host clock; read once, after the last mark."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = self.torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals_ms(self) -> list[float]:
        if self.cuda:
            self.torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) * 1e3 for a, b in zip(self.marks, self.marks[1:])]


def time_steps(
    optimizer_step: Callable[[Callable[[], None]], None],
    device: Any,
    accumulation: int,
    warmup: int,
    steps: int,
    after_warmup: Callable[[], None] = lambda: None,
) -> Timing:
    """Run `optimizer_step(mark)` warmup + steps times; it calls mark() after each micro-batch's forward,
    backward and optimizer phase. `after_warmup()` runs between the two. Returns the timed steps' means
    (data wait is the caller's to fill in)."""
    import torch

    for _ in range(warmup):
        optimizer_step(lambda: None)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    after_warmup()
    clock = Clock(device)
    clock.mark()
    for _ in range(steps):
        optimizer_step(clock.mark)
    intervals = clock.intervals_ms()
    if len(intervals) != 3 * accumulation * steps:
        raise RuntimeError(
            f"expected 3 marks per micro-batch, got {len(intervals)} intervals for "
            f"{steps} steps x {accumulation} micro-batches"
        )
    # Marks: start, then (forward, backward, optimizer) per micro-batch; each interval ends at its mark.
    forward, backward, optimizer = (sum(intervals[i::3]) for i in range(3))
    micro_batches = steps * accumulation
    return Timing(
        step_ms=sum(intervals) / steps,
        data_wait_ms=0.0,
        forward_ms=forward / micro_batches,
        backward_ms=backward / micro_batches,
        optimizer_ms=optimizer / steps,
    )


def profile_step(
    optimizer_step: Callable[[Callable[[], None]], None], device: Any, path: Path | None
) -> tuple[float, float | None]:
    """torch.profiler over one more optimizer step; writes its kernels by device time (host time on CPU)
    to `path` (every rank profiles, so that collectives stay in step; rank 0 passes the path), and on CUDA
    where the device sat idle within the step (`idle_gaps`).

    Returns the device time of the step's communication kernels (NCCL) in ms, overlapped with compute
    or not (0 on CPU, where gloo runs on the host), and the device's idle time within the step in ms
    (None on CPU).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        optimizer_step(lambda: None)
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    idle_ms, idle_lines = None, []
    if device.type == "cuda":
        device_events = [
            (e.start_ns(), e.end_ns(), e.name())
            for e in prof.profiler.kineto_results.events()
            if e.device_type() == torch.autograd.DeviceType.CUDA
        ]
        idle_ms, idle_lines = idle_gaps(device_events)
    if path is not None:
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        table = events.table(sort_by=sort, row_limit=50, max_name_column_width=100)
        path.write_text(table + "\n" + "".join(line + "\n" for line in idle_lines))
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.self_device_time_total for e in kernels if "nccl" in e.key.lower()) / 1e3, idle_ms


def idle_gaps(intervals: list[tuple[int, int, str]], listed: int = 15) -> tuple[float, list[str]]:
    """Where a device sat idle between its first and last activity: [(start_ns, end_ns, name)] of its
    kernels and copies -> (idle ms, lines: the total, then the `listed` longest gaps with the activities
    on either side). Overlapping activities (several streams) count once."""
    spans = sorted(intervals)
    if not spans:
        return 0.0, ["device idle: no device activity"]
    gaps = []
    busy_until, last_name = spans[0][1], spans[0][2]
    for start, end, name in spans[1:]:
        if start > busy_until:
            gaps.append((start - busy_until, last_name, name))
        if end > busy_until:
            busy_until, last_name = end, name
    idle_ns = sum(gap for gap, _, _ in gaps)
    span_ns = busy_until - spans[0][0]
    lines = [
        f"device idle: {idle_ns / 1e6:.2f} ms of {span_ns / 1e6:.2f} ms from the step's first device activity "
        f"to its last ({100 * idle_ns / span_ns if span_ns else 0.0:.2f} %), in {len(gaps)} gaps; the longest:"
    ]
    for gap, before, after in sorted(gaps, reverse=True)[:listed]:
        lines.append(f"  {gap / 1e6:8.3f} ms after {before[:80]} | before {after[:80]}")
    return idle_ns / 1e6, lines


def documents_per_block(dataset: Any, eos_token_id: int, blocks: int = 256) -> float:
    """Mean number of documents (or parts of one) in the first `blocks` samples of `dataset`."""
    from smollm2.model import document_ids

    count = min(blocks, len(dataset))
    return sum(int(document_ids(dataset[i][0][None], eos_token_id).max()) + 1 for i in range(count)) / count


def run_trainer(
    config: Any, env: Any, warmup: int, steps: int, peak_tflops: float, profile_to: Path | None = None
) -> dict[str, Any]:
    """Bench the trainer's own optimizer step (Trainer.train_step) on its own data; returns a result row."""
    from smollm2.collectives import CpuGroup
    from smollm2.engine import init_distributed
    from smollm2.perf import Window
    from smollm2.trainer import Trainer

    timeout_s = config.train.collective_timeout_s
    device = init_distributed(env, timeout_s)
    trainer = Trainer(config, env, device, CpuGroup(env.rank, env.world_size, timeout_s))
    batches = trainer.batches()
    window = Window(trainer.device)

    def optimizer_step(mark: Callable[[], None]) -> None:
        trainer.train_step(batches, window, mark=mark)

    def start_timing() -> None:  # a fresh window: the timed steps' losses and data wait only
        nonlocal window
        window = Window(trainer.device)

    try:
        timing = time_steps(
            optimizer_step, trainer.device, trainer.accumulation, warmup, steps, after_warmup=start_timing
        )
        timed = window
        skipped = steps - timed.micro_batches // trainer.accumulation
        if skipped:
            raise SkippedSteps(
                f"{skipped} of {steps} timed steps were skipped (non-finite loss or gradients): "
                "not the time of a training step"
            )
        timing.data_wait_ms = 1e3 * timed.data_wait / steps
        communication_ms = idle_ms = None
        if profile_to is not None:
            communication_ms, idle_ms = profile_step(
                optimizer_step, trainer.device, profile_to if env.is_main else None
            )
        t = config.train
        row = result_row(
            "trainer",
            timing,
            t.global_batch_size * config.model.block_size,
            env.world_size,
            trainer.flops_per_token,
            peak_tflops,
            trainer.device,
            float(timed.loss_sum) / timed.micro_batches,
        )
        row.update(
            _trainer_settings(trainer, config), communication_kernel_ms=communication_ms, profiled_idle_ms=idle_ms
        )
        return row
    finally:
        trainer.release()  # the DataLoader workers end with `batches`, when this returns


def _trainer_settings(trainer: Any, config: Any) -> dict[str, Any]:
    """What a trainer row was measured with."""
    t = config.train
    return dict(
        micro_batch_size=t.micro_batch_size,
        seq_len=config.model.block_size,
        accumulation=trainer.accumulation,
        zero_stage=config.deepspeed.zero_stage,
        dtype=str(trainer.dtype).removeprefix("torch."),
        compile=t.compile,
        activation_checkpointing=t.activation_checkpointing,
        ds_optimizer=type(trainer.engine.optimizer).__name__,
        trainer_peak_tflops=trainer.peak_tflops,
        document_masking=config.model.document_masking,
        documents_per_block=(
            documents_per_block(trainer.data.mixture.train, config.model.eos_token_id)
            if config.model.document_masking
            else None
        ),
    )


def run_baseline(
    config: Any, micro_batch: int, mode: str, device: Any, peak_tflops: float, warmup: int, steps: int
) -> dict[str, Any]:
    """transformers' LlamaForCausalLM of the config's shape: SDPA, bf16 autocast, fused AdamW, clip 1.0."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from smollm2.hf import hf_config_dict
    from smollm2.model import SmolLM2Config
    from smollm2.perf import flops_per_token

    arch = config.model
    hf_config = LlamaConfig(**hf_config_dict(SmolLM2Config(**arch.architecture())))
    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = LlamaForCausalLM(hf_config).to(device).train()
    forward = torch.compile(model) if mode == "compile" else model
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.01, fused=device.type == "cuda")
    seq = arch.block_size
    batches = torch.randint(0, arch.vocab_size, (4, micro_batch, seq), device=device)
    counter = [0]
    last_loss: list[Any] = []

    def optimizer_step(mark: Callable[[], None]) -> None:  # one micro-batch, no accumulation
        ids = batches[counter[0] % len(batches)]
        counter[0] += 1
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(input_ids=ids, labels=ids).loss
        mark()
        loss.backward()
        mark()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=device.type == "cuda")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mark()
        last_loss[:] = [loss.detach()]

    timing = time_steps(optimizer_step, device, 1, warmup, steps)
    row = result_row(
        f"hf-{mode} mb{micro_batch}",
        timing,
        micro_batch * seq,
        1,
        flops_per_token(arch, seq),
        peak_tflops,
        device,
        float(last_loss[0]),
    )
    row.update(micro_batch_size=micro_batch, seq_len=seq, accumulation=1)
    return row


def result_row(
    name: str,
    timing: Timing,
    tokens_per_step: int,
    world_size: int,
    flops_per_token: int,
    peak_tflops: float,
    device: Any,
    loss: float,
) -> dict[str, Any]:
    from smollm2.perf import peak_memory_gib

    tokens_per_s = tokens_per_step / (timing.step_ms / 1e3)
    per_device_flops = tokens_per_s / world_size * flops_per_token
    return {
        "name": name,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_device": tokens_per_s / world_size,
        "world_size": world_size,
        "mfu": per_device_flops / (peak_tflops * 1e12),
        "peak_tflops": peak_tflops,
        **{k: getattr(timing, k) for k in ("step_ms", "data_wait_ms", "forward_ms", "backward_ms", "optimizer_ms")},
        "data_wait_fraction": timing.data_wait_ms / timing.step_ms,
        "peak_mem_gib": peak_memory_gib(device),
        "loss": loss,
    }


class SkippedSteps(Exception):
    """The stability guard skipped a timed step: the time measured is not that of a training step."""


def measure_or_note(
    name: str,
    bench: Callable[[], dict[str, Any]],
    errors: list[dict[str, Any]],
) -> dict[str, Any] | None:
    """bench()'s row; running out of GPU memory (in a table of memory settings) or training on non-finite
    values (a kernel option that breaks the numerics) is a result too: noted in `errors`. Either way the
    memory is given back before the next one."""
    import torch

    try:
        return bench()
    except torch.cuda.OutOfMemoryError:
        errors.append({"name": name, "error": "CUDA out of memory"})
        return None
    except SkippedSteps as exc:
        errors.append({"name": name, "error": str(exc)})
        return None
    finally:
        release_memory()


def release_memory() -> None:
    """What a benched setup left (its frames are gone by now: bench() returned or its exception was handled)."""
    import torch

    torch._dynamo.reset()  # the next config compiles afresh, within the recompile limit
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _positive_ints(flag: str, text: str | None) -> list[int]:
    if text is None:
        return []
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UserError(f"{flag} {text}: expected positive integers separated by commas, e.g. 128,256")
    return values


def vary_overrides(vary: str | None) -> list[tuple[str, list[str]]]:
    """[(label, extra overrides)]: one entry per value of --vary KEY=A,B,... (one empty entry without it)."""
    if vary is None:
        return [("", [])]
    key, sep, values = vary.partition("=")
    if not sep or not key or not values:
        raise UserError(f"--vary {vary}: expected KEY=VALUE1,VALUE2,... e.g. train.activation_checkpointing=0,1,2")
    return [(f"{key}={v}", [f"{key}={v}"]) for v in values.split(",")]


TABLE_HEADER = (
    f"{'bench':42} {'mb':>4} {'acc':>3} {'tokens/s':>10} {'/device':>10} {'MFU':>6} {'MFUds':>6} "
    f"{'step ms':>8} {'data':>6} {'fwd/mb':>7} {'bwd/mb':>7} {'opt':>6} {'mem GiB':>8} {'loss':>7}"
)


def format_row(r: dict[str, Any]) -> str:
    datasheet = f"{r['mfu_datasheet']:6.1%}" if r.get("mfu_datasheet") is not None else f"{'-':>6}"
    return (
        f"{r['name'][:42]:42} {r['micro_batch_size']:4d} {r['accumulation']:3d} {r['tokens_per_s']:10,.0f} "
        f"{r['tokens_per_s_per_device']:10,.0f} {r['mfu']:6.1%} {datasheet} {r['step_ms']:8.1f} "
        f"{r['data_wait_ms']:6.2f} {r['forward_ms']:7.1f} {r['backward_ms']:7.1f} "
        f"{r['optimizer_ms']:6.1f} {r['peak_mem_gib']:8.1f} {r['loss']:7.3f}"
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    return "\n".join([TABLE_HEADER, *map(format_row, rows)])


def run(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.warmup < 0:
        raise UserError(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    import torch

    from smollm2.atomic import write_text_atomic
    from smollm2.distributed import discover
    from smollm2.engine import leave_process_group, resolve_dtype
    from smollm2.perf import measure_peak_tflops

    baseline_micro_batches = _positive_ints("--baseline-micro-batch", args.baseline_micro_batch)
    env = discover()
    if args.baseline and env.world_size > 1:
        raise UserError(
            "--baseline: run the baseline on one GPU (world size is "
            f"{env.world_size}); it has no data-parallel setup to compare with"
        )
    device = torch.device("cuda", env.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    datasheet = args.datasheet_tflops or (DATASHEET_TFLOPS_CUDA if device.type == "cuda" else None)
    errors: list[dict[str, Any]] = []

    finished = partial(_finished, datasheet=datasheet, is_main=env.is_main)
    with tempfile.TemporaryDirectory(prefix="smollm2-bench-") as run_dir:
        configs = _configs(args, env, run_dir)
        peak = measure_peak_tflops(device, resolve_dtype(configs[0][1].train.dtype, device))
        if env.is_main:
            print(TABLE_HEADER, flush=True)
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
        trainer_rows = []
        for i, (name, config) in enumerate(configs):
            profile_to = Path(args.profile) / f"profile-{i}.txt" if args.profile else None
            row = measure_or_note(
                name, partial(run_trainer, config, env, args.warmup, args.steps, peak, profile_to), errors
            )
            trainer_rows += finished(row and {**row, "name": name})
        if not trainer_rows:
            failures = "; ".join(f"{e['name']}: {e['error']}" for e in errors)
            raise RunFailed(f"no configuration gave a timing: {failures}")
        baselines = []
        # As many micro-batches as the trainer's steps (it steps the optimizer after each one).
        accumulation = config.train.gradient_accumulation_steps(env.world_size)
        for micro in (baseline_micro_batches or [config.train.micro_batch_size]) if args.baseline else []:
            warmup, steps = args.warmup * accumulation, args.steps * accumulation
            run_one = partial(run_baseline, config, micro, args.baseline, device, peak, warmup, steps)
            baselines += finished(measure_or_note(f"hf-{args.baseline} mb{micro}", run_one, errors))
    result = bench_result(args, device, datasheet, trainer_rows, baselines, errors)
    if env.is_main:
        print(report(result, peak))
        if args.out:
            write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    leave_process_group()
    return 0


def _finished(row: dict[str, Any] | None, datasheet: float | None, is_main: bool) -> list[dict[str, Any]]:
    """Completes a row and prints it at once, so that a bench cut off by a time limit keeps what it ran."""
    if row is None:
        return []
    row["mfu_datasheet"] = row["mfu"] * row["peak_tflops"] / datasheet if datasheet else None
    if is_main:
        print(format_row(row), flush=True)
    return [row]


def _configs(args: argparse.Namespace, env: Any, run_dir: str) -> list[tuple[str, Any]]:
    """(name, config) of every config to bench (one per --vary value), each read and checked before the first
    runs. The run directory override comes last, so it wins: a bench never writes into a real run directory."""
    from smollm2.config import load_config

    return [
        (
            f"trainer {label}".strip(),
            load_config(args.config, [*args.overrides, *extra, f"train.out_dir={run_dir}/{i}"], env.world_size),
        )
        for i, (label, extra) in enumerate(vary_overrides(args.vary))
    ]


def bench_result(
    args: argparse.Namespace,
    device: Any,
    datasheet: float | None,
    trainer_rows: list[dict[str, Any]],
    baselines: list[dict[str, Any]],
    errors: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything a bench measured, as --out writes it."""
    import torch

    result: dict[str, Any] = {
        "config": str(args.config),
        "overrides": args.overrides,
        "vary": args.vary,
        "steps": args.steps,
        "warmup": args.warmup,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "datasheet_tflops": datasheet,
        "results": trainer_rows + baselines,
        "errors": errors,
    }
    if baselines:
        result["speedup_vs_baseline"] = {
            r["name"]: {b["name"]: r["tokens_per_s"] / b["tokens_per_s"] for b in baselines} for r in trainer_rows
        }
    return result


def report(result: dict[str, Any], peak: float) -> str:
    """The closing summary: the table again, the errors, communication time, the ratios to the baselines."""
    datasheet, steps = result["datasheet_tflops"], result["steps"]
    lines = [
        f"{result['device']}, torch {result['torch']}; MFU against {peak:.4g} TFLOP/s measured here"
        + (f" and {datasheet:g} datasheet" if datasheet else "")
        + f"; {steps} timed optimizer steps",
        format_table(result["results"]),
    ]
    lines += [f"{error['name']}: {error['error']}" for error in result["errors"]]
    lines += [
        f"{row['name']}: communication kernels {row['communication_kernel_ms']:.1f} ms of the profiled step "
        "(overlapped with compute or not)"
        for row in result["results"]
        if row.get("communication_kernel_ms") is not None
    ]
    lines += [
        f"{row['name']}: the device sat idle {row['profiled_idle_ms']:.1f} ms of the profiled step (gaps: its profile)"
        for row in result["results"]
        if row.get("profiled_idle_ms") is not None
    ]
    lines += [
        f"{row['name']}: document masking, {row['documents_per_block']:.2f} documents per block on average"
        for row in result["results"]
        if row.get("documents_per_block") is not None
    ]
    lines += [
        f"{name}: " + ", ".join(f"{ratio:.3f}x {baseline}" for baseline, ratio in ratios.items())
        for name, ratios in result.get("speedup_vs_baseline", {}).items()
    ]
    return "\n".join(lines)
