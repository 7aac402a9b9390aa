"""Bad input, end to end through the real CLI: each kind ends the command with exit 2 and one line on stderr
that names the file or key and what was expected, and loses nothing (docs/troubleshooting.md lists them).

Kinds: config (unknown key, wrong type, missing file, broken YAML, a check), data (missing folder, truncated
token file, vocabulary too large for the model), checkpoint (missing, not a checkpoint, corrupted on disk,
another model), tokenizer (not a tokenizer.json, not a GGUF file), launcher environment (non-integer rank,
rank outside the world), output directory (under a file, a full disk in `prepare` and in a checkpoint save).
"""

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import MINI, TINY_YAML, run_train, smollm2_cmd

pytestmark = pytest.mark.slow


def train(*settings: str, resume: str | None = None) -> list[str]:
    return ["train", "--config", str(TINY_YAML), "--set", *MINI, *settings, *(["--resume", resume] if resume else [])]


@pytest.fixture(scope="module")
def files(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """Broken files next to good ones: a checkpoint to corrupt, a truncated copy of the data, garbage."""
    base = tmp_path_factory.mktemp("bad")
    run = base / "run"
    run_train(0, f"data.path={tiny_data}", f"train.out_dir={run}", "train.max_steps=2", "checkpoint.save_every=2",
              "eval.eval_every=0")  # fmt: skip
    corrupted = base / "corrupted"
    shutil.copytree(run / "checkpoints" / "step_00000002", corrupted / "step_00000002")
    states = corrupted / "step_00000002" / "mp_rank_00_model_states.pt"
    data = bytearray(states.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, another checksum
    states.write_bytes(bytes(data))
    truncated = base / "truncated-data"
    shutil.copytree(tiny_data, truncated)
    with open(truncated / "train.bin", "r+b") as f:
        f.truncate(5000)
    (base / "not-a-tokenizer.json").write_text("not a tokenizer\n")
    (base / "not-a.gguf").write_bytes(b"garbage")
    (base / "broken.yaml").write_text("model: [unclosed\n")
    (base / "a-file").write_text("")
    (base / "doc.txt").write_text("Some text to tokenize.\n")
    return {"data": tiny_data, "run": run, "corrupted": corrupted / "step_00000002", "truncated": truncated,
            "base": base}  # fmt: skip


def cases(f: dict[str, Path]) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """kind -> (command, extra environment, the one line expected on stderr, as a regex)."""
    data, base = f"data.path={f['data']}", f["base"]
    out = f"train.out_dir={base / 'out'}"
    return {
        "config: unknown key": (train(data, out, "train.max_stepz=3"), {},
                                r"smollm2 train: error: train\.max_stepz: unknown key \(expected one of: .*max_steps"),
        "config: wrong type": (train(data, out, "train.max_steps=abc"), {},
                               r"smollm2 train: error: train\.max_steps: expected int, got 'abc'"),
        "config: missing file": (["train", "--config", str(base / "nope.yaml")], {},
                                 r"smollm2 train: error: .*nope\.yaml: cannot read config \(No such file"),
        "config: broken YAML": (["train", "--config", str(base / "broken.yaml")], {},
                                r"smollm2 train: error: .*broken\.yaml: not valid YAML"),
        "config: failed check": (train(data, out, "model.num_attention_heads=5"), {},
                                 r"smollm2 train: error: model\.num_attention_heads: 5 does not divide"),
        "data: missing folder": (train(f"data.path={base / 'nodata'}", out), {},
                                 r"smollm2 train: error: .*nodata: no such folder .*smollm2 prepare"),
        "data: truncated token file": (train(f"data.path={f['truncated']}", out), {},
                                       r"smollm2 train: error: .*train\.bin: truncated: header says \d+ tokens"),
        "data: vocabulary too large": (train(data, out, "model.vocab_size=256"), {},
                                       r"smollm2 train: error: .*train\.bin: token ids go up to 511 .* "
                                       r"vocab size is 256"),
        "checkpoint: missing": (train(data, out, resume=str(base / "nockpt")), {},
                                r"smollm2 train: error: .*nockpt: no such run directory or checkpoint folder"),
        "checkpoint: not one": (train(data, out, resume=str(f["data"])), {},
                                r"smollm2 train: error: .*: no checkpoint here \(expected a run directory"),
        "checkpoint: corrupted on disk": (["export", "--checkpoint", str(f["corrupted"]), "--out", str(base / "hf")],
                                          {},
                                          r"smollm2 export: error: .*step_00000002: mp_rank_00_model_states\.pt does "
                                          r"not match its checksum"),
        "checkpoint: another model": (train(data, out, "model.hidden_size=64", resume=str(f["run"])), {},
                                      r"smollm2 train: error: model\.hidden_size: the config says 64 but checkpoint"),
        "tokenizer: not a tokenizer.json": (["prepare", "--input", str(base / "doc.txt"), "--tokenizer",
                                             str(base / "not-a-tokenizer.json"), "--out", str(base / "p")], {},
                                            r"smollm2 prepare: error: .*not-a-tokenizer\.json: not a valid tokenizer"),
        "tokenizer: not a GGUF file": (["tokenizer", "extract", "--gguf", str(base / "not-a.gguf"), "--out",
                                        str(base / "t")], {},
                                       r"smollm2 tokenizer: error: .*not-a\.gguf: not a readable GGUF file"),
        "launcher: rank not an integer": (train(data, out), {"RANK": "x", "WORLD_SIZE": "2"},
                                          r"smollm2 train: error: environment variable RANK='x': expected an integer"),
        "launcher: rank outside the world": (train(data, out), {"RANK": "3", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                                                                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"},
                                             r"smollm2 train: error: launcher \(env\) gave rank 3, .* expected"),
        "output: a file where the folder goes": (train(data, f"train.out_dir={base / 'a-file' / 'run'}"), {},
                                                 r"smollm2 train: error: train\.out_dir: .*a-file/run: cannot write "
                                                 r"\(Not a directory\)"),
    }  # fmt: skip


KINDS = list(cases({k: Path("/") for k in ("data", "run", "corrupted", "truncated", "base")}))


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return subprocess.run(smollm2_cmd(*args), capture_output=True, text=True, timeout=180,
                          env={**environ, "OMP_NUM_THREADS": "1", **env})  # fmt: skip


def assert_one_line(result: subprocess.CompletedProcess, pattern: str) -> None:
    import re

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1 and re.fullmatch(pattern + ".*", lines[0]), result.stderr[-3000:]


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_ends_in_one_line_and_exit_2(files, kind):
    args, env, pattern = cases(files)[kind]
    assert_one_line(run_cli(args, env), pattern)
    assert not (files["base"] / "out" / "checkpoints").exists()  # nothing started that could be half-written


@pytest.fixture
def full_disk(tmp_path):
    """A 96 KiB file system (tmpfs; the test runs as root, as CI does)."""
    mount = tmp_path / "full"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_in_prepare_and_in_a_checkpoint_save(files, full_disk, shakespeare_dir):
    result = run_cli(["prepare", "--input", str(shakespeare_dir / "hamlet_gut.txt"), "--tokenizer",
                      str(files["data"]), "--out", str(full_disk / "data")], {})  # fmt: skip
    assert_one_line(result, r"smollm2 prepare: error: .*/data: cannot write \(.*\); 0\.\d MiB free on that file system")
    assert not list((full_disk / "data").iterdir())  # no half-written output left behind

    run = full_disk / "run"
    result = run_cli(train(f"data.path={files['data']}", f"train.out_dir={run}", "train.max_steps=4",
                           "checkpoint.save_every=2", "eval.eval_every=0"), {})  # fmt: skip
    assert_one_line(result, r"smollm2 train: error: checkpoint of step 2: .*step_00000002: cannot write \(.*\); "
                            r"0\.\d MiB free on that file system; no checkpoint was written before")  # fmt: skip
    assert not (run / "checkpoints" / "step_00000002").exists()  # the partial save is gone, its space freed
