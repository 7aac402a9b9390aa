"""Which training-step setup is fastest for SmolLM2-135M on one GPU? Times many in one process.

Standalone (GPU call of issue 5, plan step 1): builds OUR model (smollm2.model) and times the whole
training step (forward, backward, optimizer step with clipping) on random tokens for variants of

  runner     plain torch loop (fused AdamW: the ceiling of what an engine can do) | DeepSpeed engine
  precision  "autocast": fp32 weights + torch bf16 autocast (DeepSpeed's `torch_autocast` section)
             "bf16": bf16 weights + fp32 master weights in DeepSpeed's optimizer (`bf16.enabled`)
  zero       DeepSpeed ZeRO stage 0 / 1 / 2
  compile    none | layers (each decoder layer, torchtitan-style) | model (the whole module, which
             is what DeepSpeed's `engine.compile()` does)
  loss       plain (logits.float() + F.cross_entropy) | fused (model(..., targets=): smollm2.ops, chunked)
  micro-batch, activation checkpointing (off / every N layers / selective), SDPA backend,
  gradient clipping by DeepSpeed or by torch (foreach)
  (the first exploration ran before the model cast its residual stream to bf16 under autocast: its
  autocast rows have an fp32 stream; the fp32-stream and repeat_kv variants of later calls measured
  switches the model no longer has, bench/RESULTS.md holds their figures and commits)

and prints tokens/s, MFU (docs/design.md's formula against the bf16 matmul rate measured here and against
the 989 TFLOP/s datasheet), peak memory and the forward / backward / optimizer split (CUDA events;
warm-up steps excluded). With the fused loss the LM head's backward runs inside forward.

    python bench/step_explore.py --out DIR [--deadline-s 300] [--only NAME ...]
    python bench/step_explore.py --out DIR --only ds0-autocast-foreachclip ...  # follow-up variants
    python bench/step_explore.py --tiny --out DIR          # CPU check of every code path
    python bench/step_explore.py --table DIR/explore.jsonl # print the table again

Each variant's row is appended to DIR/explore.jsonl as soon as it is measured; a variant that fails
is recorded with its error and the next one runs. Variants that would start after the deadline are
skipped, so the table always prints. The best DeepSpeed variant is profiled (DIR/profile.txt).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from smollm2.bench import Clock  # noqa: E402
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM  # noqa: E402
from smollm2.perf import flops_per_token as flops_per_token_of  # noqa: E402
from smollm2.perf import measure_peak_tflops  # noqa: E402

DATASHEET_TFLOPS = 989.0  # H100/H200 SXM dense bf16


@dataclass(frozen=True)
class Variant:
    name: str
    runner: str = "deepspeed"  # "torch" | "deepspeed"
    precision: str = "bf16"  # "autocast" | "bf16"
    zero: int = 0
    compile: str = "layers"  # "none" | "layers" | "model"
    loss: str = "fused"  # "plain" | "fused"
    micro_batch: int = 128
    ac: str = "off"  # "off" | "1" | "2" | "selective"
    sdpa: str = "default"  # "default" | "flash" | "cudnn" | "efficient"
    clip: str = "engine"  # "engine": DeepSpeed's gradient_clipping | "foreach": torch's, before engine.step
    coordinate_descent: bool = False  # inductor's coordinate-descent tuning of its kernels' block sizes


def base_variants() -> list[Variant]:
    """In order of importance: what runs first is what we most need to know."""
    v = Variant
    return [
        v("torch-eager-plain", runner="torch", precision="autocast", compile="none", loss="plain", micro_batch=64),
        v("torch-layers-fused", runner="torch", precision="autocast"),
        v("ds0-autocast-layers-fused", precision="autocast"),
        v("ds0-bf16-layers-fused"),
        v("ds1-bf16-layers-fused", zero=1),
        v("ds2-bf16-layers-fused", zero=2),
        v("ds2-autocast-layers-fused", precision="autocast", zero=2),
        v("ds0-bf16-eager-plain", compile="none", loss="plain", micro_batch=64),
    ]


def followup_variants() -> list[Variant]:
    """After the first exploration: the engine's clipping, micro-batch 256, FA2 (--only picks them)."""
    best = Variant("ds0-autocast-layers-fused", precision="autocast")
    foreach = replace(best, name="ds0-autocast-foreachclip", clip="foreach")
    return [
        foreach,
        replace(foreach, name="ds0-autocast-foreachclip-mb256", micro_batch=256),
        replace(foreach, name="ds0-autocast-foreachclip-flash", sdpa="flash"),
    ]


def tuning_variants() -> list[Variant]:
    """Inductor's coordinate-descent tuning, with the trainer's foreach clipping, at micro-batch 256. (The same
    calls of 2026-11-28 measured q/k/v and gate/up as single matmuls on concatenated weights: slower, and
    removed; bench/RESULTS.md.)"""
    now = Variant("ds0-autocast-foreachclip-gqa-mb256", precision="autocast", clip="foreach", micro_batch=256)
    return [now, replace(now, name="ds0-autocast-foreachclip-gqa-coorddesc-mb256", coordinate_descent=True)]


def sweep_variants(best: Variant) -> list[Variant]:
    """Micro-batch, checkpointing, attention backend and whole-model compile around the best engine setup."""
    return [
        replace(best, name=f"{best.name}/mb256", micro_batch=256),
        replace(best, name=f"{best.name}/compile-model", compile="model"),
        replace(best, name=f"{best.name}/cudnn-sdpa", sdpa="cudnn"),
        replace(best, name=f"{best.name}/mb256-ac1", micro_batch=256, ac="1"),
        replace(best, name=f"{best.name}/mb256-ac2", micro_batch=256, ac="2"),
        replace(best, name=f"{best.name}/mb256-acsel", micro_batch=256, ac="selective"),
        replace(best, name=f"{best.name}/plain-loss", loss="plain"),
        replace(best, name=f"{best.name}/mb64", micro_batch=64),
    ]


class TrainStep(nn.Module):
    """Our model plus the loss a variant asks for, on (inputs, next tokens) as the trainer's data gives them."""

    def __init__(self, model: SmolLM2ForCausalLM, loss: str) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss == "plain":  # the logits, then cross-entropy in fp32
            logits = self.model(input_ids).logits
            return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return self.model(input_ids, targets=targets).loss  # chunked: smollm2.ops.fused_linear_cross_entropy


def sdpa_context(backend: str):
    if backend == "default":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(
        {
            "flash": SDPBackend.FLASH_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
        }[backend]
    )


def build(variant: Variant, config: SmolLM2Config, device: torch.device):
    """(step function, the module holding the parameters); the step returns the loss."""
    torch.manual_seed(0)
    model = SmolLM2ForCausalLM(config).to(device)
    if variant.ac in ("1", "2"):
        model.set_activation_checkpointing(int(variant.ac))
    elif variant.ac == "selective":
        model.set_activation_checkpointing(1, selective=True)
    import torch._inductor.config as inductor_config

    inductor_config.coordinate_descent_tuning = variant.coordinate_descent
    if variant.compile == "layers":
        for layer in model.model.layers:
            layer.compile()
    module = TrainStep(model, variant.loss)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if variant.precision == "autocast" else nullcontext()

    if variant.runner == "torch":
        assert variant.precision == "autocast", "the plain torch loop keeps fp32 weights"
        forward = torch.compile(module) if variant.compile == "model" else module
        params = list(module.parameters())
        optimizer = torch.optim.AdamW(
            params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01, fused=device.type == "cuda"
        )

        def step(ids: torch.Tensor, targets: torch.Tensor, clock: Clock) -> torch.Tensor:
            with autocast:
                loss = forward(ids, targets)
            clock.mark()
            loss.backward()
            clock.mark()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        return step, module, None

    import deepspeed

    optimizer = torch.optim.AdamW(
        module.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.01, fused=device.type == "cuda"
    )
    ds_config = {
        "train_micro_batch_size_per_gpu": variant.micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0 if variant.clip == "engine" else 0.0,
        "zero_optimization": {"stage": variant.zero},
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }
    if variant.precision == "bf16":
        ds_config["bf16"] = {"enabled": True}
    else:
        ds_config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config)
    if variant.compile == "model":
        engine.compile()

    def step(ids: torch.Tensor, targets: torch.Tensor, clock: Clock) -> torch.Tensor:
        loss = engine(ids, targets)
        clock.mark()
        engine.backward(loss)
        clock.mark()
        if variant.clip == "foreach":  # ZeRO-0: the gradients are whole and reduced after backward
            torch.nn.utils.clip_grad_norm_(engine.module.parameters(), 1.0, foreach=True)
        engine.step()
        return loss.detach()

    return step, module, engine


def run_variant(
    variant: Variant,
    config: SmolLM2Config,
    device: torch.device,
    peak: float,
    warmup: int,
    steps: int,
    seq: int,
    profile_to: Path | None = None,
) -> dict:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_build = time.perf_counter()
    step, module, engine = build(variant, config, device)
    batches = torch.randint(0, config.vocab_size, (4, variant.micro_batch, seq + 1), device=device)
    with sdpa_context(variant.sdpa):
        t_warm = time.perf_counter()
        for i in range(warmup):
            loss = step(batches[i % 4, :, :-1], batches[i % 4, :, 1:], Clock(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        warmup_s = time.perf_counter() - t_warm
        clock = Clock(device)
        for i in range(steps):
            clock.mark()
            loss = step(batches[i % 4, :, :-1], batches[i % 4, :, 1:], clock)
        clock.mark()
        marks = clock.intervals_ms()
        if profile_to is not None:
            profile(step, batches, device, profile_to)
    # marks per step: [forward, backward, optimizer] (start, fwd, bwd, end marks; end = next start)
    per_step = [marks[3 * i : 3 * i + 3] for i in range(steps)]
    step_ms = sum(sum(s) for s in per_step) / steps
    tokens_per_s = variant.micro_batch * seq / (step_ms / 1e3)
    flops_per_token = flops_per_token_of(module.model.config, seq)
    row = dict(
        kind="variant",
        **dataclasses.asdict(variant),
        seq=seq,
        step_ms=round(step_ms, 2),
        tokens_per_s=round(tokens_per_s),
        mfu=round(tokens_per_s * flops_per_token / (peak * 1e12), 4),
        mfu_datasheet=round(tokens_per_s * flops_per_token / (DATASHEET_TFLOPS * 1e12), 4),
        forward_ms=round(sum(s[0] for s in per_step) / steps, 2),
        backward_ms=round(sum(s[1] for s in per_step) / steps, 2),
        optimizer_ms=round(sum(s[2] for s in per_step) / steps, 2),
        peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        last_loss=round(float(loss), 4),
        build_s=round(t_warm - t_build, 1),
        warmup_s=round(warmup_s, 1),
    )
    if engine is not None:
        row["ds_optimizer"] = type(engine.optimizer).__name__
        engine.destroy()
    return row


def profile(step, batches: torch.Tensor, device: torch.device, path: Path) -> None:
    """Top kernels of two steps by device time, as torch.profiler's table."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for i in range(2):
            step(batches[i % 4, :, :-1], batches[i % 4, :, 1:], Clock(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90))


def print_table(rows: list[dict]) -> None:
    ok = [r for r in rows if r.get("kind") == "variant"]
    peak = next((r for r in rows if r.get("kind") == "peak"), None)
    if peak:
        print(f"measured bf16 matmul peak: {peak['tflops']:.0f} TFLOP/s on {peak['device']}")
    header = (
        f"{'variant':44} {'mb':>4} {'tok/s':>9} {'MFU':>6} {'MFUds':>6} {'step':>8} {'fwd':>7} {'bwd':>7} "
        f"{'opt':>6} {'memGiB':>7} {'loss':>7} {'warm_s':>6}"
    )
    print(header)
    for r in ok:
        mem = f"{r['peak_mem_gib']:7.1f}" if r["peak_mem_gib"] is not None else f"{'-':>7}"
        print(
            f"{r['name']:44} {r['micro_batch']:4d} {r['tokens_per_s']:9d} {r['mfu']:6.1%} {r['mfu_datasheet']:6.1%} "
            f"{r['step_ms']:8.1f} {r['forward_ms']:7.1f} {r['backward_ms']:7.1f} {r['optimizer_ms']:6.1f} {mem} "
            f"{r['last_loss']:7.3f} {r['warmup_s']:6.1f}"
        )
    for r in rows:
        if r.get("kind") in ("error", "skipped"):
            print(f"{r['kind']}: {r['name']}: {r.get('error', '')[:300]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="folder for explore.jsonl and profile.txt")
    parser.add_argument("--tiny", action="store_true", help="tiny model, few steps: a CPU check of the code paths")
    parser.add_argument("--deadline-s", type=float, default=300.0, help="start no variant after this many seconds")
    parser.add_argument("--only", nargs="*", help="run only these base or follow-up variants (and no sweep)")
    parser.add_argument("--table", type=Path, help="print the table of an explore.jsonl and exit")
    args = parser.parse_args()
    if args.table:
        print_table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()])
        return 0
    if args.out is None:
        parser.error("--out is required")
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "explore.jsonl"
    rows: list[dict] = []

    def record(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for key, value in dict(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1"
    ).items():
        os.environ.setdefault(key, value)
    import deepspeed

    deepspeed.init_distributed()
    # Every variant resets dynamo; the limit only has to cover one variant's recompiles.
    torch._dynamo.config.cache_size_limit = 64
    if args.tiny:
        config = SmolLM2Config(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            block_size=64,
        )
        seq, warmup, steps = 64, 2, 2
        scale = lambda v: replace(v, micro_batch=max(1, v.micro_batch // 64))  # noqa: E731
    else:
        config = SmolLM2Config()
        seq, warmup, steps = config.block_size, 3, 10
        scale = lambda v: v  # noqa: E731
    peak = measure_peak_tflops(device, torch.bfloat16)
    env = dict(
        kind="peak",
        tflops=round(peak, 1),
        torch=torch.__version__,
        deepspeed=deepspeed.__version__,
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    )
    record(env)

    def attempt(variant: Variant, profile_to: Path | None = None) -> dict | None:
        if time.perf_counter() - start > args.deadline_s:
            record(dict(kind="skipped", name=variant.name, error="deadline"))
            return None
        if device.type != "cuda" and variant.sdpa == "cudnn":
            record(dict(kind="skipped", name=variant.name, error="cuDNN attention needs CUDA"))
            return None
        try:
            row = run_variant(scale(variant), config, device, peak, warmup, steps, seq, profile_to)
            record(row)
            return row
        except Exception as exc:  # one variant's failure must not cost the others
            record(
                dict(
                    kind="error",
                    name=variant.name,
                    error=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc()[-3000:],
                )
            )
            return None
        finally:
            torch._dynamo.reset()
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    base = (
        [v for v in base_variants() + followup_variants() + tuning_variants() if v.name in args.only]
        if args.only
        else base_variants()
    )
    measured = [(v, attempt(v)) for v in base]
    if not args.only:
        engine_rows = [(v, r) for v, r in measured if r is not None and v.runner == "deepspeed"]
        if engine_rows:
            best = max(engine_rows, key=lambda vr: vr[1]["tokens_per_s"])[0]
            attempt(replace(best, name=f"{best.name}/profiled"), profile_to=args.out / "profile.txt")
            for variant in sweep_variants(best):
                attempt(variant)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
