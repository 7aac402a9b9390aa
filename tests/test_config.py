"""The training config: YAML + --set overrides, every default filled, bad input refused naming the key."""

import dataclasses
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, smollm2_cmd
from smollm2.config import Config, apply_override, load_config, save_config
from smollm2.errors import UserError

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
REQUIRED = ["data.path=data", "train.out_dir=run", "train.max_steps=100", "schedule.warmup_steps=10"]


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
@pytest.mark.parametrize("world_size", [1, 2])
def test_shipped_configs_load(path, world_size):
    config = load_config(path, world_size=world_size)
    assert config.train.max_steps > 0 and (config.data.path or config.data.sources) and config.train.out_dir


def test_135m_config_is_the_smollm2_recipe():
    c = load_config(ROOT / "configs" / "smollm2-135m.yaml")
    assert (
        c.model.hidden_size,
        c.model.intermediate_size,
        c.model.num_hidden_layers,
        c.model.num_attention_heads,
        c.model.num_key_value_heads,
        c.model.vocab_size,
        c.model.block_size,
    ) == (576, 1536, 30, 9, 3, 49152, 512)
    assert (c.optimizer.betas, c.optimizer.eps, c.optimizer.weight_decay, c.optimizer.grad_clip) == (
        [0.9, 0.95],
        1e-8,
        0.01,
        1.0,
    )
    assert (c.schedule.name, c.schedule.warmup_steps, c.schedule.decay_fraction) == ("wsd", 2000, 0.2)
    # The documented rule: 3e-3 at 1,048,576 tokens per step, square-root scaled to our global batch.
    tokens = c.train.global_batch_size * c.model.block_size
    assert c.optimizer.lr == pytest.approx(3e-3 * (tokens / 1_048_576) ** 0.5, rel=1e-3)


def yaml_key_lines(path: Path) -> dict[str, tuple[str, bool]]:
    """`section.key` -> (value text, whether a comment explains it: on its line or the line above)."""
    keys, section, previous = {}, None, ""
    for line in path.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            section, previous = line.split(":")[0], line
            continue
        if line.startswith("  ") and not line.startswith("   ") and ":" in line and not line.lstrip().startswith("#"):
            name, value = line.strip().split(":", 1)
            keys[f"{section}.{name}"] = (value, "#" in value or previous.lstrip().startswith("#"))
        previous = line if line.strip() else previous
    return keys


def test_the_135m_yaml_lists_every_key_with_its_default_and_a_comment():
    """configs/smollm2-135m.yaml is the reference for the keys: none missing or extra, each value the default
    (but the required keys), each explained by a comment."""
    path = ROOT / "configs" / "smollm2-135m.yaml"
    written = yaml.safe_load(path.read_text())
    defaults = dataclasses.asdict(Config())
    required = {"data.path", "train.out_dir", "train.max_steps"}
    lines = yaml_key_lines(path)
    assert set(lines) == {f"{s}.{k}" for s, section in defaults.items() for k in section}
    for section, values in defaults.items():
        assert set(written[section]) == set(values), section
        for name, default in values.items():
            full = f"{section}.{name}"
            assert full in required or written[section][name] == default, full
            assert lines[full][1], f"{full}: no comment explains it"


def test_the_model_section_is_the_model_config_plus_where_weights_start():
    """One definition of the architecture: the config's model section is smollm2.model.SmolLM2Config (its fields,
    defaults and checks) plus init_from, and the keys two sets of weights must agree on are derived from it."""
    from smollm2.config import ModelConfig
    from smollm2.model import WEIGHT_KEYS, SmolLM2Config

    assert issubclass(ModelConfig, SmolLM2Config)
    model_fields = [f.name for f in dataclasses.fields(SmolLM2Config)]
    assert [f.name for f in dataclasses.fields(ModelConfig)] == [*model_fields, "init_from"]
    assert ModelConfig().architecture() == dataclasses.asdict(SmolLM2Config())
    not_in_weights = {"initializer_range", "block_size", "bos_token_id", "eos_token_id", "document_masking"}
    assert list(WEIGHT_KEYS) == [name for name in model_fields if name not in not_in_weights]


@pytest.mark.parametrize(
    "overrides",
    [
        {"num_attention_heads": 7},
        {"num_key_value_heads": 2},
        {"hidden_act": "x"},
        {"block_size": 4096},
        {"eos_token_id": 49152},
        {"rms_norm_eps": 0.0},
        {"hidden_size": 9 * 3},
    ],
)
def test_the_config_refuses_every_model_the_model_refuses(overrides):
    """A bad model section stops at the config (UserError naming model.<key>), never later in the model."""
    from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM

    with pytest.raises(ValueError):
        with torch.device("meta"):
            SmolLM2ForCausalLM(SmolLM2Config(**overrides))
    with pytest.raises(UserError, match="^model\\."):
        load_config(None, REQUIRED + [f"model.{k}={v}" for k, v in overrides.items()])


def test_overrides_are_yaml_typed(tmp_path):
    path = write_yaml(tmp_path, "train:\n  micro_batch_size: 4\n")
    c = load_config(
        path,
        REQUIRED
        + [
            "train.stop_at=50",
            "optimizer.lr=1e-4",
            "train.compile=true",
            "eval.prompts=[a, b]",
            "eval.top_k=null",
            "deepspeed.overrides.x.y=3",
        ],
    )
    assert c.train.stop_at == 50 and c.optimizer.lr == 1e-4 and c.train.compile is True
    assert c.eval.prompts == ["a", "b"] and c.eval.top_k is None and c.deepspeed.overrides == {"x": {"y": 3}}
    assert c.train.micro_batch_size == 4 and c.train.global_batch_size == Config().train.global_batch_size


def test_pyyaml_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML reads `3e-3` as the string "3e-3"; a float key takes it as the number it means.
    c = load_config(write_yaml(tmp_path, "optimizer:\n  lr: 3e-3\n"), REQUIRED)
    assert c.optimizer.lr == 0.003


def test_resolved_config_round_trips(tmp_path):
    c = load_config(ROOT / "configs" / "tiny.yaml", ["train.stop_at=20", "deepspeed.zero_stage=3"])
    save_config(c, tmp_path / "config.yaml", header="resolved")
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert written["logging"]["peak_tflops"] is None and written["model"]["rope_theta"] == 10000.0  # defaults filled
    assert load_config(tmp_path / "config.yaml") == c


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.max_stepz=3"], "train.max_stepz: unknown key"),
        (["trian.max_steps=3"], "trian: unknown key"),
        (["train.max_steps=many"], "train.max_steps: expected int, got 'many'"),
        (["train.compile=1"], "train.compile: expected bool"),
        (["eval.prompts=hello"], "eval.prompts: expected a list of str"),
        (["train.dtype=fp16"], "train.dtype: expected one of ['auto', 'bf16', 'fp32']"),
        (["model.num_attention_heads=7"], "model.num_attention_heads: 7 does not divide hidden_size"),
        (["train.global_batch_size=12", "train.micro_batch_size=8"], "train.global_batch_size: must be a multiple of"),
        (["train.stop_at=101"], "train.stop_at: must be in 1..train.max_steps (100)"),
        (["schedule.warmup_steps=90"], "schedule.warmup_steps: must end before the decay starts (step 80"),
        (["deepspeed.zero_stage=4"], "deepspeed.zero_stage: must be 0, 1, 2 or 3"),
        (
            ["deepspeed.zero_stage=3", "model.tie_word_embeddings=false"],
            "deepspeed.zero_stage: 3 with train.fused_loss needs model.tie_word_embeddings: true, got 3",
        ),
        (
            ["train.activation_checkpointing=some"],
            "train.activation_checkpointing: expected int or one of ['selective']",
        ),
        (["train.activation_checkpointing=31"], "train.activation_checkpointing: must be 0 (off) .. model.num_hidden"),
        (["optimizer.no_decay=[norm, head]"], "optimizer.no_decay: entries must be among"),
        (["optimizer.betas=[0.9]"], "optimizer.betas: must be two numbers"),
        (["data.path=null"], "data.path: expected str, got None"),
        (["train.max_steps"], "--set train.max_steps: expected KEY=VALUE"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(UserError) as info:
        load_config(None, REQUIRED + overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_required_keys():
    with pytest.raises(UserError, match=r"^data.path: required"):
        load_config(None, ["train.out_dir=run", "train.max_steps=100"])


def test_batch_divisibility_depends_on_world_size():
    overrides = REQUIRED + ["train.micro_batch_size=4", "train.global_batch_size=8"]
    assert load_config(None, overrides, world_size=2).train.gradient_accumulation_steps(2) == 1
    with pytest.raises(UserError, match="train.micro_batch_size x world size = 4 x 3"):
        load_config(None, overrides, world_size=3)
    # The micro-batch is an upper bound: 8 ranks share the 8 samples one each, without accumulation.
    train = load_config(None, overrides, world_size=8).train
    assert (train.micro_batch_size, train.gradient_accumulation_steps(8)) == (1, 1)
    # configs/smollm2-135m.yaml: 256 a step on 1 GPU (accumulation 4), 128 each on 8 (no accumulation).
    for world_size, expected in ((1, (256, 4)), (4, (256, 1)), (8, (128, 1))):
        train = load_config(ROOT / "configs" / "smollm2-135m.yaml", world_size=world_size).train
        assert (train.micro_batch_size, train.gradient_accumulation_steps(world_size)) == expected


def test_override_into_scalar_is_refused():
    with pytest.raises(UserError, match="train.max_steps is not a section"):
        apply_override({"train": {"max_steps": 3}}, "train.max_steps.x=1")


def test_cli_reports_one_line_and_exit_2(tmp_path):
    path = write_yaml(tmp_path, "model:\n  hidden_size: 100\n  num_attention_heads: 9\n")
    result = subprocess.run(
        smollm2_cmd("train", "--config", path, "--set", *REQUIRED), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "smollm2 train: error: model.num_attention_heads: 9 does not divide hidden_size 100"


def test_deepspeed_config_from_ours(tmp_path):
    import json

    import torch

    from smollm2.engine import deepspeed_config

    (tmp_path / "ds.json").write_text(
        json.dumps({"zero_optimization": {"overlap_comm": True, "stage": 2}, "steps_per_print": 5})
    )
    config = load_config(
        ROOT / "configs" / "tiny.yaml",
        [f"deepspeed.overrides_file={tmp_path / 'ds.json'}", "deepspeed.overrides.zero_optimization.stage=3"],
    )
    ds = deepspeed_config(config, world_size=1, dtype=torch.bfloat16)
    batch = ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]
    assert batch == (16, 8, 2)
    assert ds["gradient_clipping"] == 1.0 and ds["steps_per_print"] == 5
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and "bf16" not in ds
    # file merged, then `overrides`
    assert ds["zero_optimization"] == {
        "stage": 3,
        "memory_efficient_linear": False,
        "stage3_param_persistence_threshold": 1_000_000,
        "overlap_comm": True,
    }
    assert ds["timers"] == {"throughput": {"enabled": False}}  # no device sync at every forward and step


def test_no_weight_decay_on_norms_and_the_tied_embedding():
    from smollm2.engine import param_groups
    from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM

    model = SmolLM2ForCausalLM(
        SmolLM2Config(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            block_size=8,
            max_position_embeddings=8,
        )
    )
    decay, keep = param_groups(model, 0.01, ["norm", "embedding"])
    assert decay["weight_decay"] == 0.01 and keep["weight_decay"] == 0.0
    assert {id(p) for p in keep["params"]} == {id(model.model.embed_tokens.weight), id(model.model.norm.weight)} | {
        id(m.weight) for layer in model.model.layers for m in (layer.input_layernorm, layer.post_attention_layernorm)
    }
    assert len(decay["params"]) == 2 * 7 and all(p.ndim == 2 for p in decay["params"])  # q k v o gate up down
    assert sum(p.numel() for g in (decay, keep) for p in g["params"]) == model.num_parameters()
    (everything,) = param_groups(model, 0.01, [])
    assert len(everything["params"]) == len(list(model.parameters()))
