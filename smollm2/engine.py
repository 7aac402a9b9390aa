"""The one place that turns our config into a DeepSpeed engine (torchtitan's parallelize.py idea).

The model file knows nothing of this: here the model gets its activation checkpointing switch set and
its decoder layers compiled, its parameters are grouped for weight decay, torch AdamW and our LR
schedule are built, a DeepSpeed config is generated from ours (ZeRO stage, bf16, micro-batch,
accumulation, clipping) with the user's raw DeepSpeed keys merged last, and `deepspeed.initialize`
wraps it all.

bf16 is DeepSpeed's `torch_autocast`: fp32 weights and optimizer, bf16 matmuls. It ran the ZeRO-0 step
faster than DeepSpeed's bf16 weights (`bf16.enabled`, whose optimizer wrapper copies between bf16 and fp32
every step; bench/RESULTS.md, what makes it fast), and checkpoints hold fp32 weights at every stage.
`deepspeed.overrides: {bf16: {enabled: true}, torch_autocast: {enabled: false}}` gives the other mode.

torch.compile is applied to each decoder layer's forward: as fast as compiling the whole model there, much
quicker to compile, and the state-dict keys (so the checkpoints) stay unchanged. Under ZeRO 3 each layer is
a DeepSpeed "leaf" module, so that its parameter gathering stays outside the compiled graph.

Gradient clipping: DeepSpeed's optimizer wrappers (ZeRO 1-3, bf16/fp16 weights) clip inside their step.
Around the bare torch optimizer (stage 0 with fp32 weights, our default) DeepSpeed's fallback clips
parameter by parameter (272 norm kernels for this model); there the trainer clips with torch's foreach
clip instead (`build_engine` returns the norm to clip to; bench/RESULTS.md has the two timings).

Why torch AdamW and not DeepSpeed's FusedAdam/CPUAdam: the same optimizer on every device, fused
kernels on CUDA (`fused=True`), and no 40 s JIT build of a C++ op on CPU machines.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import io
import json
import logging
import os
import warnings
from typing import Any

import torch
from torch import nn

from smollm2.config import Config
from smollm2.distributed import DistEnv
from smollm2.errors import UserError
from smollm2.schedule import build_scheduler


def init_distributed(env: DistEnv, timeout_s: float) -> torch.device:
    """Join the process group (NCCL on GPUs, gloo on CPU) and return this rank's device. A collective that
    waits longer than `timeout_s` raises (gloo) or aborts the process (NCCL's watchdog)."""
    import deepspeed

    # DeepSpeed logs its whole config and every step at INFO; our own progress line says what matters.
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    # DeepSpeed's ZeRO calls these torch collectives under their old names, once per process.
    warnings.filterwarnings("ignore", r"`torch\.distributed\.\w+` is deprecated", FutureWarning)
    if torch.cuda.is_available():
        # A scheduler that binds one GPU per task (srun --gpus-per-task=1) leaves each rank one visible
        # device whatever its local rank; DeepSpeed picks its device from LOCAL_RANK, so fix both.
        index = env.local_rank % torch.cuda.device_count()
        os.environ["LOCAL_RANK"] = str(index)
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    # On CPU it builds its shared-memory all-reduce and print()s "... built successfully" on every rank.
    with contextlib.redirect_stdout(io.StringIO()):
        deepspeed.init_distributed(timeout=datetime.timedelta(seconds=timeout_s))
    return device


def leave_process_group() -> None:
    """Leave the process group, the engine already destroyed, with no gloo thread left for Python's exit to trip on.

    Without the garbage collection around destroy_process_group, gloo's worker threads could still be alive
    when the interpreter finalizes, and a 2-rank CPU job then died in 1 exit of 4 with "terminate called
    without an active exception" (SIGABRT) after all its work was done (docs/design.md, "Exiting cleanly").
    """
    gc.collect()
    torch.distributed.destroy_process_group()
    gc.collect()


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """train.dtype as a torch dtype; "auto" picks bf16 only where the device has native bf16 math."""
    if dtype == "auto":
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported()
        else:  # without avx512_bf16/AMX, CPU bf16 matmuls run on a slow fallback, far below fp32
            native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        dtype = "bf16" if native else "fp32"
    return torch.bfloat16 if dtype == "bf16" else torch.float32


def deepspeed_config(config: Config, world_size: int, dtype: torch.dtype) -> dict[str, Any]:
    """The DeepSpeed JSON config equivalent to ours, with deepspeed.overrides(_file) merged last."""
    t = config.train
    ds: dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps(world_size),
        "gradient_clipping": config.optimizer.grad_clip,
        # memory_efficient_linear (ZeRO 3) swaps torch.nn.functional.linear, process-wide, for an autograd
        # Function of DeepSpeed's that inside a compiled layer guards on each weight's ZeRO id: one recompile
        # per layer, and past dynamo's limit of 8 the layers ran eager (bench/RESULTS.md, ZeRO stages).
        # stage3_param_persistence_threshold: ZeRO 3 keeps every parameter of fewer elements than this whole on
        # each GPU instead of gathering it at each use (DeepSpeed's default: 1e5). At 1e6 that is every decoder
        # weight of the 135M and the attention projections of the 360M; the 1.7B's are larger and stay
        # partitioned (the speed and memory of each threshold: bench/RESULTS.md, ZeRO stages).
        "zero_optimization": {
            "stage": config.deepspeed.zero_stage,
            "memory_efficient_linear": False,
            "stage3_param_persistence_threshold": 1_000_000,
        },
        "torch_autocast": {"enabled": dtype == torch.bfloat16, "dtype": "bfloat16"},
        "steps_per_print": 2**62,  # we print our own progress
        "wall_clock_breakdown": False,
        # DeepSpeed's samples/s timer synchronizes the device at every forward and engine.step(): the GPU
        # then idles while the host fetches the next batch (bench/RESULTS.md). We time steps ourselves.
        "timers": {"throughput": {"enabled": False}},
    }
    if config.deepspeed.overrides_file:
        path = config.deepspeed.overrides_file
        try:
            with open(path) as f:
                file_overrides = json.load(f)
        except OSError as exc:
            raise UserError(f"deepspeed.overrides_file: cannot read {path} ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"deepspeed.overrides_file: {path} is not valid JSON ({exc})") from None
        if not isinstance(file_overrides, dict):
            raise UserError(f"deepspeed.overrides_file: {path} must hold a JSON object")
        _merge(ds, file_overrides)
    _merge(ds, config.deepspeed.overrides)
    return ds


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Deep merge: nested mappings are merged key by key, anything else replaces."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def param_groups(model: nn.Module, weight_decay: float, no_decay: list[str]) -> list[dict[str, Any]]:
    """Two AdamW groups: decayed matrices, and the kinds listed in optimizer.no_decay without decay.

    Kinds: "norm" (the gains of the RMSNorm layers), "embedding" (the token embedding, and so the LM
    head tied to it), "bias". A tied parameter is seen once.
    """
    decay, keep, seen = [], [], set()
    for module in model.modules():
        kind = "embedding" if isinstance(module, nn.Embedding) else "norm" if "Norm" in type(module).__name__ else None
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            param_kind = "bias" if name == "bias" else kind
            (keep if param_kind in no_decay else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def deepspeed_clips(ds: dict[str, Any]) -> bool:
    """Whether this DeepSpeed config wraps the optimizer in one that clips (and reports the norm) itself."""
    return ds.get("zero_optimization", {}).get("stage", 0) > 0 or any(
        ds.get(key, {}).get("enabled", False) for key in ("bf16", "bfloat16", "fp16")
    )


def build_engine(config: Config, model: nn.Module, world_size: int, dtype: torch.dtype):
    """deepspeed.initialize on our model, optimizer and schedule.

    Returns (engine, grad_clip): the max gradient norm the caller clips to between the last backward
    of a step and engine.step(), or 0.0 when DeepSpeed clips (or nothing does).
    """
    import deepspeed

    checkpointing = config.train.activation_checkpointing
    if checkpointing == "selective":
        model.set_activation_checkpointing(1, selective=True)
    else:
        model.set_activation_checkpointing(checkpointing)
    if config.train.compile:
        # Every decoder layer shares one code object, so dynamo's limit of 8 graphs (then eager) counts the
        # shapes of all of them: training and eval (grad on and off), generation's prefill and decode, and
        # with document masking the rows of several documents (none, one, then any number: one graph each).
        # A run with document masking, its eval and samples needed more than 8 (bench/RESULTS.md).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 32)
        for module in [*model.model.layers, model.model.norm]:
            # The forward, not the module call (nn.Module.compile): module hooks stay outside the graph.
            # The final norm too: eager, its float32 RMSNorm is ~8 kernels over the hidden states each way.
            module.forward = torch.compile(module.forward)
    if config.deepspeed.zero_stage == 3:
        # Each decoder layer is one ZeRO-3 "leaf": the layer's own hook gathers all its weights at once and
        # its Linears and norms get no hooks. So the compiled forward holds no DeepSpeed code; with hooks
        # on the children, dynamo traced them, split the layer's graph at each and recompiled.
        deepspeed.utils.set_z3_leaf_modules(model, [type(model.model.layers[0])])
        # The training loss reads lm_head.weight in the top module's forward (the fused LM-head loss),
        # not through lm_head's own forward: ZeRO-3 must gather that weight there too.
        deepspeed.zero.register_external_parameter(model, model.lm_head.weight)
    o = config.optimizer
    optimizer = torch.optim.AdamW(
        param_groups(model, o.weight_decay, o.no_decay),
        lr=o.lr,
        betas=tuple(o.betas),
        eps=o.eps,
        fused=torch.cuda.is_available(),
    )
    scheduler = build_scheduler(optimizer, config.schedule, config.train.max_steps)
    ds_config = deepspeed_config(config, world_size, dtype)
    grad_clip = 0.0
    if not deepspeed_clips(ds_config):
        grad_clip, ds_config["gradient_clipping"] = float(ds_config.get("gradient_clipping", 0.0)), 0.0
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    if grad_clip and hasattr(engine.optimizer, "_global_grad_norm"):
        raise RuntimeError(
            f"DeepSpeed wrapped the optimizer in {type(engine.optimizer).__name__}, which "
            "smollm2.engine.deepspeed_clips did not expect: gradients would be clipped twice"
        )
    return engine, grad_clip


def clip_gradients(engine: Any, max_norm: float) -> torch.Tensor:
    """The global gradient norm before clipping, the gradients clipped to `max_norm` (0: not clipped), with
    torch's foreach kernels on CUDA: the clipping around the bare torch optimizer (build_engine's grad_clip)."""
    params = list(engine.module.parameters())
    foreach = next(iter(params)).device.type == "cuda"
    if max_norm:
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=foreach)
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], foreach=foreach)
