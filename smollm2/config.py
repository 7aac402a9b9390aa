"""The training config: one typed dataclass per YAML section, each key's default, meaning and check beside it.

    cfg = load_config("configs/tiny.yaml", ["train.max_steps=200"], world_size=2)

The defaults are SmolLM2-135M's recipe: configs/smollm2-135m.yaml lists every key with its default (a
test keeps the two in step). Unknown keys, wrong types and impossible values raise UserError naming the
key, so `smollm2 train` exits 2 with one line. Checks that involve two keys are in `Config.validate`.
The resolved tree, every default filled in, is what a run writes to RUN_DIR/config.yaml. The model
section is the model's own config class (smollm2.model.SmolLM2Config), so its fields, defaults and checks
are written once.

Batch sizes are counted in samples (sequences of `model.block_size` tokens): `train.micro_batch_size`
per GPU per forward, `train.global_batch_size` per optimizer step. Gradient accumulation is derived:
global / (micro x world size), which must be a whole number. The micro-batch is an upper bound: where
global / world size is smaller (1024 sequences on 8 GPUs with micro-batch 256), each GPU takes that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from smollm2.atomic import write_text_atomic
from smollm2.errors import UserError
from smollm2.model import SmolLM2Config

NO_DECAY_KINDS = ("norm", "embedding", "bias")


def key(
    default: Any = None,
    check: Callable[[Any], bool] | None = None,
    expected: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    required: bool = False,
) -> Any:
    """A config key: its default, and the check its value must pass (`expected` says what, in the error)."""
    metadata = {"check": check, "expected": expected, "required": required}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _positive(value: Any) -> bool:
    return value > 0


def _non_negative(value: Any) -> bool:
    return value >= 0


def _fraction(value: float) -> bool:
    return 0 <= value <= 1


def _positive_or_null(value: Any) -> bool:
    return value is None or value > 0


@dataclass
class ModelConfig(SmolLM2Config):
    """The model section: the architecture (smollm2.model.SmolLM2Config: its fields, defaults and checks) plus
    where its weights start. Its fields are listed with their meaning in configs/smollm2-135m.yaml."""

    # An HF folder or GGUF file whose weights start the run (continued pretraining); its architecture
    # must equal this section's (initializer_range, block_size, document_masking and the bos/eos ids may differ).
    init_from: str | None = None

    def architecture(self) -> dict[str, Any]:
        """This section without the training-only keys: the SmolLM2Config the model is built from."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(SmolLM2Config)}

    def check(self) -> None:
        """SmolLM2Config.validate, its ValueError as a UserError naming the key (`model.<field>: ...`)."""
        try:
            self.validate()
        except ValueError as exc:
            raise UserError(f"model.{exc}") from None


# A data source's name becomes a TensorBoard tag (data/tokens/<name>) and a metrics.jsonl key.
_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class SourceConfig:
    """One entry of data.sources: a prepared dataset and its share of the training tokens."""

    name: str = ""  # labels its accounting: data/tokens/<name>, eval/loss/<name>
    path: str = ""  # a folder written by `smollm2 prepare` (it may hold shards)
    weight: float | None = None  # its share of training tokens (divided by the sum); null when data.stages is set


@dataclass
class StageConfig:
    """One entry of data.stages: from optimizer step start_step on, these weights (one per source name)."""

    start_step: int | None = None
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class DataConfig:
    # One dataset (path) or a weighted mixture of several (sources, in stages or not): exactly one of the two.
    path: str = ""  # folder written by `smollm2 prepare` (train.bin, val.bin, tokenizer.json)
    sources: list[SourceConfig] = key(factory=list)  # [{name, path, weight}, ...] (smollm2.mixture)
    stages: list[StageConfig] = key(factory=list)  # [{start_step, weights: {name: weight}}, ...]
    num_workers: int = key(2, _non_negative, "must be >= 0")  # DataLoader worker processes per rank (0: none)

    def check(self, max_steps: int | None = None) -> None:
        """UserError naming the first bad key of data.path / data.sources / data.stages."""
        if self.path and self.sources:
            raise UserError("data.sources: set data.path (one dataset) or data.sources (a mixture), not both")
        if not self.path and not self.sources:
            raise UserError("data.path: required, not set (or name several datasets in data.sources)")
        if self.path:
            if self.stages:
                raise UserError("data.stages: needs data.sources (data.path is a single dataset, nothing to blend)")
            return
        names: list[str] = []
        for i, source in enumerate(self.sources):
            name = f"data.sources[{i}]"
            if not source.name:
                raise UserError(f"{name}.name: required, not set")
            if not _SOURCE_NAME.fullmatch(source.name):
                raise UserError(
                    f"{name}.name: {source.name!r} is not a valid name (letters, digits, '_', '.', '-';"
                    " it becomes the TensorBoard tag data/tokens/<name>)"
                )
            if source.name in names:
                raise UserError(f"{name}.name: {source.name!r} names two sources")
            if not source.path:
                raise UserError(f"{name}.path: required, not set (a folder written by `smollm2 prepare`)")
            if self.stages and source.weight is not None:
                raise UserError(f"{name}.weight: data.stages sets the weights; remove this one")
            if not self.stages:
                if source.weight is None:
                    raise UserError(f"{name}.weight: required, not set (its share of training tokens)")
                _check_weight(source.weight, f"{name}.weight")
            names.append(source.name)
        if not self.stages:
            _check(sum(s.weight for s in self.sources) > 0, "data.sources", "at least one weight must be above 0")
        for i, stage in enumerate(self.stages):
            name, start = f"data.stages[{i}]", stage.start_step
            if start is None or start < 0:
                raise UserError(f"{name}.start_step: required, an optimizer step >= 0, got {start!r}")
            if i == 0 and start != 0:
                raise UserError(f"{name}.start_step: the first stage must start at step 0, got {start}")
            before = self.stages[i - 1].start_step
            if i > 0 and start <= before:
                raise UserError(f"{name}.start_step: {start} is not after the stage before ({before})")
            if max_steps is not None and start >= max_steps:
                raise UserError(
                    f"{name}.start_step: {start} is not before train.max_steps ({max_steps}): the stage would never run"
                )
            unknown = [n for n in stage.weights if n not in names]
            if unknown:
                raise UserError(f"{name}.weights.{unknown[0]}: no such source (data.sources: {', '.join(names)})")
            missing = [n for n in names if n not in stage.weights]
            if missing:
                raise UserError(
                    f"{name}.weights: no weight for source {missing[0]!r} (give it 0 to leave it out of this stage)"
                )
            for source_name in names:
                _check_weight(stage.weights[source_name], f"{name}.weights.{source_name}")
            _check(sum(stage.weights.values()) > 0, f"{name}.weights", "at least one weight must be above 0")


def _check_weight(weight: float, key_name: str) -> None:
    _check(math.isfinite(weight) and weight >= 0, key_name, "must be a number >= 0", weight)


@dataclass
class TrainConfig:
    out_dir: str = key("", required=True)  # the run directory
    max_steps: int = key(0, _positive, "must be > 0", required=True)  # optimizer steps: run and LR schedule length
    stop_at: int | None = key(None, _positive_or_null, "must be > 0 or null")  # end this job there, with a
    # checkpoint; the schedule stays that of max_steps (for time-limited jobs: the next job resumes)
    # Samples per GPU per forward/backward, at most: each GPU takes global_batch_size / world size where that
    # is less. 256 fits an 80 GB card with the fused loss (bench/RESULTS.md has the memory figures).
    micro_batch_size: int = key(256, _positive, "must be > 0")
    global_batch_size: int = key(1024, _positive, "must be > 0")  # samples per optimizer step, all GPUs together
    # bf16: fp32 weights, bf16 compute under autocast (DeepSpeed's torch_autocast). auto: bf16 where the
    # device computes it natively (CUDA with bf16, CPUs with avx512_bf16/AMX), else fp32.
    dtype: Literal["auto", "bf16", "fp32"] = "bf16"
    # Recompute activations in backward: 0 off, N every N-th layer (1: all), "selective": every layer,
    # keeping the matmul/attention outputs and recomputing only the elementwise ops.
    activation_checkpointing: int | Literal["selective"] = key(
        0, lambda v: v == "selective" or v >= 0, "must be >= 0 or selective"
    )
    compile: bool = True  # torch.compile each decoder layer
    fused_loss: bool = True  # LM head + cross-entropy in chunks, never the whole [tokens, vocab] logits
    seed: int = 1234  # model init and every other training RNG; the data order too
    # A collective that waits longer than this ends the job (exit 3) naming the rank that stopped answering:
    # a dead or stalled rank never hangs the others for good. It must cover the longest wait a healthy rank
    # has for the others: a checkpoint save, an eval, the first step's compilation.
    collective_timeout_s: float = key(1800.0, _positive, "must be > 0")

    def gradient_accumulation_steps(self, world_size: int) -> int:
        return self.global_batch_size // (self.micro_batch_size * world_size)


@dataclass
class StabilityConfig:
    # A step whose loss or gradient norm is not finite on any rank makes no update (weights and optimizer
    # state stay as they were); it still consumes its data and its place in the LR schedule. After this many
    # in a row the run stops (exit 3) and saves nothing: its newest checkpoint holds the state before them.
    max_bad_steps: int = key(5, _positive, "must be >= 1")
    # A loss spike: a step's loss (mean over ranks) above the mean + spike_sigmas standard deviations of the
    # last spike_window steps. none: not watched (no extra synchronization per step); log: reported; skip:
    # that step makes no update (ZeRO 0 without DeepSpeed's bf16 weights, where the trainer steps the
    # optimizer); rollback: back to the newest checkpoint, then on past the data that led to the spike, as
    # PaLM and OPT did (at most max_rollbacks times in a job).
    spike: Literal["none", "log", "skip", "rollback"] = "none"
    spike_sigmas: float = key(6.0, _positive, "must be > 0")
    spike_window: int = key(50, lambda v: v >= 2, "must be >= 2")
    max_rollbacks: int = key(3, _non_negative, "must be >= 0")


@dataclass
class OptimizerConfig:  # torch AdamW (fused on CUDA)
    # Peak learning rate: SmolLM2's 3e-3 at 1,048,576 tokens per step, square-root scaled to our 524,288.
    lr: float = key(2.12e-3, _positive, "must be > 0")
    betas: list[float] = key(
        factory=lambda: [0.9, 0.95],
        check=lambda v: len(v) == 2 and all(0 <= b < 1 for b in v),
        expected="must be two numbers in [0, 1)",
    )
    eps: float = key(1e-8, _positive, "must be > 0")
    weight_decay: float = key(0.01, _non_negative, "must be >= 0")
    # Parameter kinds without weight decay: norm gains, the (tied) embedding, biases.
    no_decay: list[str] = key(
        factory=lambda: list(NO_DECAY_KINDS),
        check=lambda v: set(v) <= set(NO_DECAY_KINDS),
        expected=f"entries must be among {list(NO_DECAY_KINDS)}",
    )
    grad_clip: float = key(1.0, _non_negative, "must be >= 0 (0: off)")  # max global gradient norm


@dataclass
class ScheduleConfig:
    name: Literal["wsd", "cosine", "constant"] = "wsd"  # wsd: warmup-stable-decay (SmolLM2's)
    warmup_steps: int = key(2000, _non_negative, "must be >= 0")  # linear warmup to the peak LR
    decay_fraction: float = key(0.2, _fraction, "must be in [0, 1]")  # wsd: the last fraction of max_steps decays
    min_lr_ratio: float = key(0.0, _fraction, "must be in [0, 1]")  # wsd/cosine end at lr * min_lr_ratio


@dataclass
class DeepSpeedSection:
    # 0: plain data parallel (SmolLM2's choice; the fastest on one GPU); 1: optimizer state sharded over
    # GPUs; 2: and gradients; 3: and the weights.
    zero_stage: int = key(0, lambda v: v in (0, 1, 2, 3), "must be 0, 1, 2 or 3")
    overrides: dict[str, Any] = key(factory=dict)  # raw DeepSpeed config keys, merged last
    overrides_file: str | None = None  # a DeepSpeed JSON file merged before `overrides`


TASK_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")  # what smollm2.tasks reads
_TASK_NAME = re.compile(r"[a-z0-9_]+")  # a named benchmark (smollm2.benchmarks.TASK_NAMES: which exist)


def _task_specs(specs: list[str]) -> bool:
    """Task files (by suffix) and benchmark names, logged by name: no two of one name."""
    names = [os.path.splitext(os.path.basename(s))[0] if s.endswith(TASK_FILE_SUFFIXES) else s for s in specs]
    valid = all(spec.endswith(TASK_FILE_SUFFIXES) or _TASK_NAME.fullmatch(spec) for spec in specs)
    return valid and len(set(names)) == len(names)


@dataclass
class EvalConfig:
    eval_every: int = key(500, _non_negative, "must be >= 0 (0: only at the end)")  # steps between evals
    at_start: bool = False  # also evaluate a new run before its first step: the baseline of continued pretraining
    num_blocks: int = key(256, _positive, "must be > 0")  # val loss over the first N val blocks (or all there are)
    micro_batch_size: int | None = key(None, _positive_or_null, "must be > 0")  # per GPU; null: train's
    prompts: list[str] = key(factory=lambda: ["Once upon a time", "To be, or not to be", "The meaning of life is"])
    max_new_tokens: int = key(48, _non_negative, "must be >= 0")
    temperature: float = key(0.8, _non_negative, "must be >= 0 (0: greedy)")
    top_k: int | None = key(50, _positive_or_null, "must be > 0 or null")  # null: no top-k filter
    seed: int = 0  # the samples' own torch.Generator; training RNG is untouched
    # Multiple-choice tasks scored at every eval, logged as eval/<name>/acc and acc_norm: benchmarks by name
    # (hellaswag, arc_easy, arc_challenge, piqa, openbookqa, winogrande, mmlu: smollm2/benchmarks.py) and task
    # files (smollm2/tasks.py; named after the file).
    tasks: list[str] = key(
        factory=list,
        check=_task_specs,
        expected="must be benchmark names (hellaswag, mmlu, ...) or .jsonl, .json or .parquet task files, no two of "
        "one name",
    )
    # A fixed, seeded subset of at most this many examples of each task, the same at every eval: cheap evals in
    # the loop. null: every example (`smollm2 eval --watch` scores the full sets unless given --limit).
    task_limit: int | None = key(None, _positive_or_null, "must be > 0 or null")


@dataclass
class CheckpointConfig:
    save_every: int = key(1000, _non_negative, "must be >= 0 (0: only at the end)")  # also saved at stop_at
    keep_last: int = key(3, _positive, "must be >= 1")  # older checkpoints are deleted
    # Write the files from host copies in a thread while training goes on (smollm2/checkpoint_writer.py); the
    # manifest follows once every rank's files are written. false: the loop waits for every save.
    background: bool = True


@dataclass
class LoggingConfig:
    log_every: int = key(10, _positive, "must be > 0")  # steps between console / metrics.jsonl / TensorBoard rows
    tensorboard: bool = True  # RUN_DIR/tensorboard
    # MFU denominator per device in TFLOP/s. null: measure the matmul rate of this device in the training
    # dtype at startup (docs/design.md; the figures it read are in bench/RESULTS.md).
    peak_tflops: float | None = key(None, _positive_or_null, "must be > 0 or null")
    # Also report MFU against this datasheet figure (989 for H100/H200 SXM bf16).
    datasheet_tflops: float | None = key(None, _positive_or_null, "must be > 0 or null")
    # Weights & Biases: off (YAML reads `off` as false), offline (files in RUN_DIR/wandb, `wandb sync` them
    # later) or online. Needs the wandb extra.
    wandb: Literal[False, "offline", "online"] = False
    wandb_project: str = key("smollm2", bool, "must be a non-empty project name")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self, world_size: int) -> None:
        """Raise UserError naming the first impossible value: each key's own check, then the cross-key rules."""
        self.model.check()
        for section in dataclasses.fields(self):
            values = getattr(self, section.name)
            for f in dataclasses.fields(values):
                value, name = getattr(values, f.name), f"{section.name}.{f.name}"
                if f.metadata.get("required") and not value:
                    raise UserError(f"{name}: required, not set (in the YAML or with --set)")
                check = f.metadata.get("check")
                if check is not None:
                    _check(check(value), name, f.metadata["expected"], value)
        self.data.check(self.train.max_steps)
        t, s = self.train, self.schedule
        if t.stop_at is not None:
            _check(
                t.stop_at <= t.max_steps, "train.stop_at", f"must be in 1..train.max_steps ({t.max_steps})", t.stop_at
            )
        _check(
            t.global_batch_size % (t.micro_batch_size * world_size) == 0,
            "train.global_batch_size",
            f"must be a multiple of train.micro_batch_size x world size = {t.micro_batch_size} x {world_size}",
            t.global_batch_size,
        )
        layers = self.model.num_hidden_layers
        _check(
            t.activation_checkpointing == "selective" or t.activation_checkpointing <= layers,
            "train.activation_checkpointing",
            f"must be 0 (off) .. model.num_hidden_layers ({layers}) or selective",
            t.activation_checkpointing,
        )
        decay_start = t.max_steps - round(s.decay_fraction * t.max_steps) if s.name == "wsd" else t.max_steps
        _check(
            s.warmup_steps <= decay_start,
            "schedule.warmup_steps",
            f"must end before the decay starts (step {decay_start} of train.max_steps {t.max_steps})",
            s.warmup_steps,
        )
        _check(
            self.stability.spike != "skip" or self.deepspeed.zero_stage == 0,
            "stability.spike",
            "skip needs deepspeed.zero_stage 0, where the trainer steps the optimizer itself; use rollback or "
            "log with ZeRO 1-3",
            self.stability.spike,
        )
        # The fused LM-head loss reads the head's weight outside lm_head's own forward; ZeRO-3 gathers
        # it there for the tied head (the embedding) but not for a separate one in backward.
        _check(
            self.deepspeed.zero_stage < 3 or self.model.tie_word_embeddings or not t.fused_loss,
            "deepspeed.zero_stage",
            "3 with train.fused_loss needs model.tie_word_embeddings: true",
            self.deepspeed.zero_stage,
        )


_NO_VALUE = object()


def _check(ok: bool, key_name: str, expected: str, value: Any = _NO_VALUE) -> None:
    if not ok:
        raise UserError(f"{key_name}: {expected}" + ("" if value is _NO_VALUE else f", got {value!r}"))


def add_config_arguments(parser: Any) -> None:
    """--config FILE and --set KEY=VALUE ... on an argparse parser, as `smollm2 train` and `smollm2 bench` take them."""
    parser.add_argument("--config", required=True, metavar="FILE", help="YAML config (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, value parsed as YAML: --set train.max_steps=100 optimizer.lr=1e-3 (repeatable)",
    )


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
    key_name, sep, text = item.partition("=")
    if not sep or not key_name or any(not part for part in key_name.split(".")):
        raise UserError(f"--set {item}: expected KEY=VALUE with a dotted key, e.g. train.max_steps=100")
    try:
        value = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        raise UserError(f"--set {item}: the value is not valid YAML") from None
    *parents, leaf = key_name.split(".")
    node = raw
    for i, part in enumerate(parents):
        child = node.get(part)
        if child is None:  # an absent or empty section (`eval:` alone is null in YAML)
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {item}: {'.'.join(parents[: i + 1])} is not a section")
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
    for name, value in raw.items():
        full = f"{prefix}.{name}" if prefix else str(name)
        if name not in names:
            raise UserError(f"{full}: unknown key (expected one of: {', '.join(names)})")
        values[name] = _coerce(value, hints[name], full)
    return cls(**values)


def _coerce(value: Any, hint: Any, key_name: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key_name)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _coerce(value, option, key_name)
            except UserError:
                continue
        raise UserError(f"{key_name}: expected {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{key_name}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{key_name}: expected a list of {_describe(args[0])}, got {value!r}")
        return [_coerce(v, args[0], f"{key_name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key_name}: expected a mapping, got {value!r}")
        if args[1] is Any:
            return value
        return {k: _coerce(v, args[1], f"{key_name}.{k}") for k, v in value.items()}
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
    raise UserError(f"{key_name}: expected {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if typing.get_origin(hint) is Literal:
        return f"one of {list(typing.get_args(hint))}"
    return getattr(hint, "__name__", str(hint))


def config_yaml(config: Config) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False, default_flow_style=False, width=120)


def save_config(config: Config, path: str | os.PathLike, header: str = "") -> None:
    """Write the resolved config as YAML (atomically: a reader never sees half a file)."""
    write_text_atomic(path, "".join(f"# {line}\n" for line in header.splitlines()) + config_yaml(config))


def config_hash(section: Any) -> str:
    """A short stable hash of a config (or one of its sections), for checkpoints and logs."""
    data = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
