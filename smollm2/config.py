"""The training config: a typed dataclass tree, read from commented YAML plus `--set a.b=c` overrides.

    cfg = load_config("configs/tiny.yaml", ["train.max_steps=200"], world_size=2)

Every key has a type and a default (except the few marked required); unknown keys, wrong types and
impossible values raise UserError naming the key, so `smollm2 train` exits 2 with one line. The
resolved tree, every default filled in, is what a run writes to RUN_DIR/config.yaml.

Batch sizes are counted in samples (sequences of `model.block_size` tokens): `train.micro_batch_size`
per GPU per forward, `train.global_batch_size` per optimizer step. Gradient accumulation is derived:
global / (micro x world size), which must be a whole number. The micro-batch is an upper bound: where
global / world size is smaller (1024 sequences on 8 GPUs with micro-batch 256), each GPU takes that.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from smollm2.errors import UserError
from smollm2.model import SmolLM2Config

REQUIRED = {"required": True}
NO_DECAY_KINDS = ("norm", "embedding", "bias")


@dataclass
class ModelConfig(SmolLM2Config):
    """The model's hyperparameters (smollm2.model.SmolLM2Config) plus where to start from."""

    # An HF folder or GGUF file whose weights start the run (continued pretraining); its architecture
    # must equal this section's (initializer_range, block_size and the bos/eos ids may differ).
    init_from: str | None = None

    def architecture(self) -> SmolLM2Config:
        """This section without the training-only keys: what the model is built from."""
        return SmolLM2Config(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SmolLM2Config)})


@dataclass
class DataConfig:
    path: str = field(default="", metadata=REQUIRED)  # folder written by `smollm2 prepare`
    num_workers: int = 2  # DataLoader worker processes per rank (0: load in the training process)


@dataclass
class TrainConfig:
    out_dir: str = field(default="", metadata=REQUIRED)  # the run directory
    max_steps: int = field(default=0, metadata=REQUIRED)  # optimizer steps: run length and LR schedule length
    stop_at: int | None = None  # end this job at that step, with a checkpoint; the schedule is unchanged
    # samples per GPU per forward/backward; at most global_batch_size / world size (load_config lowers it)
    micro_batch_size: int = 8
    global_batch_size: int = 64  # samples per optimizer step, over all GPUs and accumulation steps
    # bf16: fp32 weights, bf16 compute under autocast (DeepSpeed's torch_autocast). auto: bf16 where the
    # device computes it natively (CUDA with bf16, CPUs with avx512_bf16/AMX), else fp32.
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    # Recompute activations in backward: 0 off, N every N-th layer (1: all), "selective": every layer,
    # keeping the matmul/attention outputs and recomputing only the elementwise ops.
    activation_checkpointing: int | Literal["selective"] = 0
    compile: bool = False  # torch.compile each decoder layer
    fused_loss: bool = True  # LM head + cross-entropy in chunks, never the whole [tokens, vocab] logits
    seed: int = 1234  # model init and every other training RNG

    def gradient_accumulation_steps(self, world_size: int) -> int:
        return self.global_batch_size // (self.micro_batch_size * world_size)


@dataclass
class OptimizerConfig:
    lr: float = 3e-3  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.01
    no_decay: list[str] = field(default_factory=lambda: ["norm", "embedding", "bias"])  # parameter kinds
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off


@dataclass
class ScheduleConfig:
    name: Literal["wsd", "cosine", "constant"] = "wsd"
    warmup_steps: int = 2000  # linear warmup from lr / warmup_steps to lr
    decay_fraction: float = 0.2  # wsd: the last fraction of train.max_steps decays linearly
    min_lr_ratio: float = 0.0  # wsd and cosine end at lr * min_lr_ratio


@dataclass
class DeepSpeedSection:
    zero_stage: int = 0  # 0: plain data parallel; 1: shard optimizer state; 2: + gradients; 3: + weights
    overrides: dict[str, Any] = field(default_factory=dict)  # raw DeepSpeed config keys, merged last
    overrides_file: str | None = None  # a DeepSpeed JSON file merged before `overrides`


@dataclass
class EvalConfig:
    eval_every: int = 500  # steps between evals; 0: only at the end
    num_blocks: int = 64  # val loss over the first N val blocks (fewer if val has fewer)
    micro_batch_size: int | None = None  # default: train.micro_batch_size
    prompts: list[str] = field(default_factory=lambda: ["Once upon a time", "To be, or not to be",
                                                        "The meaning of life is"])
    max_new_tokens: int = 48
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = 50
    seed: int = 0  # the samples' own torch.Generator; training RNG is untouched


@dataclass
class CheckpointConfig:
    save_every: int = 1000  # steps between checkpoints; 0: only at the end (and at train.stop_at)
    keep_last: int = 3  # older checkpoints are deleted


@dataclass
class LoggingConfig:
    log_every: int = 10  # steps between console / metrics.jsonl / TensorBoard rows
    tensorboard: bool = True
    # MFU denominator per device in TFLOP/s. null: measure the matmul rate of this device in the
    # training dtype at startup (about 800 on an H200 in bf16), as design.md prescribes.
    peak_tflops: float | None = None
    datasheet_tflops: float | None = None  # also report MFU against this (989 for H100/H200 bf16)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, world_size: int) -> None:
        """Raise UserError naming the first impossible value."""
        self.model.validate("model")
        for section in dataclasses.fields(self):
            for f in dataclasses.fields(getattr(self, section.name)):
                if f.metadata.get("required") and not getattr(getattr(self, section.name), f.name):
                    raise UserError(f"{section.name}.{f.name}: required, not set (in the YAML or with --set)")
        t, o, s, e = self.train, self.optimizer, self.schedule, self.eval
        _check(self.data.num_workers >= 0, "data.num_workers", "must be >= 0", self.data.num_workers)
        _check(t.max_steps > 0, "train.max_steps", "must be > 0", t.max_steps)
        if t.stop_at is not None:
            _check(0 < t.stop_at <= t.max_steps, "train.stop_at", f"must be in 1..train.max_steps ({t.max_steps})",
                   t.stop_at)
        _check(t.micro_batch_size > 0, "train.micro_batch_size", "must be > 0", t.micro_batch_size)
        _check(t.global_batch_size > 0, "train.global_batch_size", "must be > 0", t.global_batch_size)
        per_step = t.micro_batch_size * world_size
        _check(t.global_batch_size % per_step == 0, "train.global_batch_size",
               f"must be a multiple of train.micro_batch_size x world size = {t.micro_batch_size} x {world_size}",
               t.global_batch_size)
        layers = self.model.num_hidden_layers
        _check(t.activation_checkpointing == "selective" or 0 <= t.activation_checkpointing <= layers,
               "train.activation_checkpointing", f"must be 0 (off) .. model.num_hidden_layers ({layers}) or "
               "selective", t.activation_checkpointing)
        _check(o.lr > 0, "optimizer.lr", "must be > 0", o.lr)
        _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optimizer.betas",
               "must be two numbers in [0, 1)", o.betas)
        _check(o.eps > 0, "optimizer.eps", "must be > 0", o.eps)
        _check(o.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0", o.weight_decay)
        _check(set(o.no_decay) <= set(NO_DECAY_KINDS), "optimizer.no_decay",
               f"entries must be among {list(NO_DECAY_KINDS)}", o.no_decay)
        _check(o.grad_clip >= 0, "optimizer.grad_clip", "must be >= 0 (0: off)", o.grad_clip)
        _check(s.warmup_steps >= 0, "schedule.warmup_steps", "must be >= 0", s.warmup_steps)
        _check(0 <= s.decay_fraction <= 1, "schedule.decay_fraction", "must be in [0, 1]", s.decay_fraction)
        _check(0 <= s.min_lr_ratio <= 1, "schedule.min_lr_ratio", "must be in [0, 1]", s.min_lr_ratio)
        decay_start = t.max_steps - round(s.decay_fraction * t.max_steps) if s.name == "wsd" else t.max_steps
        _check(s.warmup_steps <= decay_start, "schedule.warmup_steps",
               f"must end before the decay starts (step {decay_start} of train.max_steps {t.max_steps})",
               s.warmup_steps)
        _check(self.deepspeed.zero_stage in (0, 1, 2, 3), "deepspeed.zero_stage", "must be 0, 1, 2 or 3",
               self.deepspeed.zero_stage)
        # The fused LM-head loss reads the head's weight outside lm_head's own forward; ZeRO-3 gathers
        # it there for the tied head (the embedding) but not for a separate one in backward.
        _check(self.deepspeed.zero_stage < 3 or self.model.tie_word_embeddings or not t.fused_loss,
               "deepspeed.zero_stage", "3 with train.fused_loss needs model.tie_word_embeddings: true",
               self.deepspeed.zero_stage)
        _check(e.eval_every >= 0, "eval.eval_every", "must be >= 0 (0: only at the end)", e.eval_every)
        _check(e.num_blocks > 0, "eval.num_blocks", "must be > 0", e.num_blocks)
        _check(e.micro_batch_size is None or e.micro_batch_size > 0, "eval.micro_batch_size", "must be > 0",
               e.micro_batch_size)
        _check(e.max_new_tokens >= 0, "eval.max_new_tokens", "must be >= 0", e.max_new_tokens)
        _check(e.temperature >= 0, "eval.temperature", "must be >= 0 (0: greedy)", e.temperature)
        _check(e.top_k is None or e.top_k > 0, "eval.top_k", "must be > 0 or null", e.top_k)
        _check(self.checkpoint.save_every >= 0, "checkpoint.save_every", "must be >= 0 (0: only at the end)",
               self.checkpoint.save_every)
        _check(self.checkpoint.keep_last >= 1, "checkpoint.keep_last", "must be >= 1", self.checkpoint.keep_last)
        _check(self.logging.log_every > 0, "logging.log_every", "must be > 0", self.logging.log_every)
        for key in ("peak_tflops", "datasheet_tflops"):
            value = getattr(self.logging, key)
            _check(value is None or value > 0, f"logging.{key}", "must be > 0 or null", value)


def _check(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise UserError(f"{key}: {expected}, got {value!r}")


def load_config(path: str | os.PathLike | None, overrides: list[str] = (), world_size: int = 1) -> Config:
    """Config from a YAML file (or only defaults when None) plus `a.b=value` overrides, validated."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise UserError(f"{path}: cannot read config ({exc.strerror})") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: expected a mapping of sections (model:, train:, ...), got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    config = _build(Config, raw, "")
    t = config.train
    if 0 < t.global_batch_size < t.micro_batch_size * world_size and t.global_batch_size % world_size == 0:
        t.micro_batch_size = t.global_batch_size // world_size  # without accumulation, this is all there is
    config.validate(world_size)
    return config


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (`3`, `true`, `[a, b]`, `null`)."""
    key, sep, text = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {item}: expected KEY=VALUE with a dotted key, e.g. train.max_steps=100")
    try:
        value = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        raise UserError(f"--set {item}: the value is not valid YAML") from None
    *parents, leaf = key.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.get(part)
        if child is None:  # an absent or empty section (`eval:` alone is null in YAML)
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {item}: {'.'.join(parents[:i + 1])} is not a section")
        node = child
    node[leaf] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """A dataclass from a nested dict, naming the full key of anything unknown or mistyped."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise UserError(f"{full}: unknown key (expected one of: {', '.join(names)})")
        values[key] = _coerce(value, hints[key], full)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _coerce(value, option, key)
            except UserError:
                continue
        raise UserError(f"{key}: expected {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list of {_describe(args[0])}, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {value!r}")
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads 3e-3 (no dot) as a string: accept any string that is a plain number.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    if hint is str and isinstance(value, str):
        return value
    raise UserError(f"{key}: expected {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if typing.get_origin(hint) is Literal:
        return f"one of {list(typing.get_args(hint))}"
    return getattr(hint, "__name__", str(hint))


def config_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False, width=120)


def save_config(config: Config, path: str | os.PathLike, header: str = "") -> None:
    """Write the resolved config as YAML (atomically: a reader never sees half a file)."""
    path = Path(path)
    text = "".join(f"# {line}\n" for line in header.splitlines()) + config_yaml(config)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def config_hash(section: Any) -> str:
    """A short stable hash of a config (or one of its sections), for checkpoints and logs."""
    data = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
