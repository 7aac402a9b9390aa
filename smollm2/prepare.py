"""`smollm2 prepare`: tokenize a corpus into DIR/train.bin, DIR/val.bin and DIR/tokenizer.json.

Inputs are anything smollm2.corpus reads (.txt/.jsonl/.json/.parquet files, gzipped too, folders and globs
of them, a dataset saved with save_to_disk, a Hub dataset name), streamed, so the corpus never has to fit
in memory.

Two passes, so the validation split can be an exact number of whole documents chosen at random:
  1. stream the documents, tokenize them, append EOS to each, and write one flat token stream plus every
     document's length (to a temporary folder inside DIR). The main process reads the inputs and writes
     the stream; with --num-proc N > 1, N worker processes of one thread each tokenize batches of about
     ENCODE_BATCH_BYTES of text, and the batches are written back in input order;
  2. pick the validation documents (seeded), copy both splits out of that stream behind their headers
     (format: smollm2.data), verify them, and write each file atomically (smollm2.atomic).
The output depends only on the inputs, the tokenizer and the flags (not on --num-proc): re-runs are
byte-identical.

Many machines: `--shard I/N` prepares the I-th of N contiguous slices of the input files (by count, in
path order) and writes DIR/train-0000I-of-0000N.bin and DIR/val-0000I-of-0000N.bin, its own validation
documents chosen with seed (seed, I). The N shards need no joining: the trainer reads a split's shards
end to end as one dataset (smollm2.data.split_files). launch/slurm/prepare_array.sbatch runs the N jobs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from smollm2.atomic import write_atomic
from smollm2.corpus import Source, open_sources, read_documents
from smollm2.errors import UserError, write_failed

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# Text tokenized as one batch (one task of a worker process): small enough that a few MB of corpus still
# make a batch for every worker, large enough that sending it to a process costs nothing in comparison.
ENCODE_BATCH_BYTES = 1 << 20


def encode_batches(batches: Iterator[list[str]]) -> Iterator[list[str]]:
    """Regroup document batches into about ENCODE_BATCH_BYTES of text each."""
    pending: list[str] = []
    size = 0
    for texts in batches:
        for text in texts:
            pending.append(text)
            size += len(text)
            if size >= ENCODE_BATCH_BYTES:
                yield pending
                pending, size = [], 0
    if pending:
        yield pending


@dataclass
class TokenizeStats:
    doc_lengths: np.ndarray  # tokens of each document, its EOS included
    num_bytes: int  # UTF-8 bytes of document text read


@dataclass
class Encoder:
    """Tokenizes a batch of documents into one stream of ids with EOS after each document."""

    tok: Tokenizer
    eos_id: int
    dtype: np.dtype

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
        """(the ids, each document's length with its EOS, the UTF-8 bytes of text)."""
        ids = [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]
        doc_lengths = np.fromiter((len(i) + 1 for i in ids), dtype=np.int64, count=len(ids))
        tokens = np.fromiter(
            chain.from_iterable(chain(i, (self.eos_id,)) for i in ids), dtype=self.dtype, count=int(doc_lengths.sum())
        )
        return tokens, doc_lengths, sum(len(t.encode("utf-8")) for t in texts)


_worker_encoder: Encoder | None = None  # each worker process's own


def _start_worker(tokenizer_json: str, eos_id: int, dtype: str) -> None:
    from tokenizers import Tokenizer

    global _worker_encoder
    # One thread per process (read when tokenizers starts its thread pool, at the first batch): the
    # processes are the parallelism, and more threads would only compete for the same cores.
    os.environ["RAYON_NUM_THREADS"] = "1"
    _worker_encoder = Encoder(Tokenizer.from_str(tokenizer_json), eos_id, np.dtype(dtype))


def _encode_in_worker(texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    return _worker_encoder(texts)


def encoded_batches(
    batches: Iterator[list[str]], encoder: Encoder, num_proc: int
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """encoder(batch) for every batch, in order: in this process, or over num_proc worker processes."""
    if num_proc == 1:
        yield from map(encoder, batches)
        return
    # spawn: a forked child would inherit the threads of `datasets` and pyarrow in whatever state they are.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        num_proc,
        mp_context=context,
        initializer=_start_worker,
        initargs=(encoder.tok.to_str(), encoder.eos_id, encoder.dtype.str),
    ) as pool:
        pending = deque()
        for texts in batches:
            pending.append(pool.submit(_encode_in_worker, texts))
            if len(pending) >= 2 * num_proc:  # enough queued to keep every worker busy; memory stays bounded
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def tokenize_to_stream(sources: list[Source], encoder: Encoder, out_path: Path, num_proc: int = 1) -> TokenizeStats:
    """Pass 1: every document's ids followed by EOS, one flat stream in `out_path`."""
    from tqdm import tqdm

    sizes = [s.num_bytes for s in sources]
    total = sum(sizes) if all(n is not None for n in sizes) else None
    lengths: list[np.ndarray] = []
    num_bytes = num_tokens = 0
    start = time.perf_counter()
    tty = sys.stderr.isatty()
    # Shown after a second (a bad input fails before, with its one line alone); every 30 s in a log file.
    with (
        open(out_path, "wb") as out,
        tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc="prepare",
            file=sys.stderr,
            delay=1,
            mininterval=0.5 if tty else 30,
            dynamic_ncols=True,
        ) as bar,
    ):
        for tokens, doc_lengths, batch_bytes in encoded_batches(
            encode_batches(read_documents(sources)), encoder, num_proc
        ):
            tokens.tofile(out)
            lengths.append(doc_lengths)
            num_bytes += batch_bytes
            num_tokens += len(tokens)
            bar.set_postfix_str(f"{num_tokens / (time.perf_counter() - start) / 1e6:.2f}M tokens/s", refresh=False)
            bar.update(batch_bytes)
    return TokenizeStats(np.concatenate(lengths) if lengths else np.zeros(0, np.int64), num_bytes)


def choose_val_docs(
    num_docs: int, val_fraction: float, val_docs: int | None, seed: int, shard_index: int = 0
) -> np.ndarray:
    """Boolean mask of the documents held out for validation: a choice of whole documents seeded by (seed, shard).

    (Shard 0 is seeded by [seed, 0], which numpy reads as plain `seed`: an unsharded run's choice.)
    """
    if val_docs is not None:
        count = val_docs
    else:
        count = max(1, round(val_fraction * num_docs)) if val_fraction > 0 else 0
    if count >= num_docs:
        raise UserError(
            f"--val-{'docs' if val_docs is not None else 'fraction'}: {count} validation documents"
            f" would leave no training data ({num_docs} documents in the inputs"
            + ("; --txt-mode paragraph splits .txt files into more)" if num_docs < 3 else ")")
        )
    mask = np.zeros(num_docs, dtype=bool)
    mask[np.random.default_rng([seed, shard_index]).choice(num_docs, size=count, replace=False)] = True
    return mask


def split_chunks(stream: np.ndarray, doc_lengths: np.ndarray, keep: np.ndarray) -> Iterator[np.ndarray]:
    """Pass 2: the kept documents of the stream, in order, as slices of it (one per run of kept documents)."""
    ends = np.cumsum(doc_lengths)
    starts = ends - doc_lengths
    edges = np.flatnonzero(np.diff(np.concatenate(([0], keep.astype(np.int8), [0]))))
    for first, stop in zip(edges[::2], edges[1::2]):
        yield stream[starts[first] : ends[stop - 1]]


def output_names(shard: tuple[int, int] | None) -> tuple[str, str]:
    """The train and val file names this run writes."""
    from smollm2.data import shard_name

    return ("train.bin", "val.bin") if shard is None else (shard_name("train", *shard), shard_name("val", *shard))


def check_out_dir(out_dir: Path, shard: tuple[int, int] | None) -> None:
    """Refuse an --out folder holding token files of another layout: the trainer could not tell which to read."""
    from smollm2.data import shard_name, split_layouts

    layout = 0 if shard is None else shard[1]
    for split, name in zip(("train", "val"), output_names(shard)):
        other = sorted(count for count in split_layouts(out_dir, split) if count != layout)
        if other:
            found = f"{split}.bin" if other[0] == 0 else shard_name(split, 0, other[0]) + "..."
            raise UserError(
                f"--out {out_dir}: holds {found}, and this run writes {name}: a folder holds one prepared"
                " dataset (use another folder, or remove those files)"
            )


def write_splits(
    stream_path: Path,
    out_dir: Path,
    shard: tuple[int, int] | None,
    doc_lengths: np.ndarray,
    is_val: np.ndarray,
    dtype: np.dtype,
    vocab_size: int,
    fingerprint: str,
) -> None:
    """Pass 2: the val and then the train file out of the stream, each verified in full before it takes its name."""
    from smollm2.data import write_token_file

    stream = np.memmap(stream_path, dtype=dtype, mode="r")
    train_name, val_name = output_names(shard)
    for name, keep in ((val_name, is_val), (train_name, ~is_val)):
        write_token_file(
            out_dir / name,
            split_chunks(stream, doc_lengths, keep),
            vocab_size=vocab_size,
            tokenizer_fingerprint=fingerprint,
            num_docs=int(keep.sum()),
            verify=True,
        )


def prepare(
    inputs: list[str],
    tokenizer: str | Path,
    out_dir: str | Path,
    *,
    text_field: str = "text",
    val_fraction: float = 0.005,
    val_docs: int | None = None,
    seed: int = 0,
    txt_mode: str = "file",
    num_proc: int = 1,
    shard: tuple[int, int] | None = None,
) -> str:
    """Write out_dir/{train.bin,val.bin,tokenizer.json} (or this shard's files); returns the one-line summary.

    num_proc: tokenizer processes (1: this process, on the threads tokenizers is allowed).
    """
    from smollm2.data import token_dtype
    from smollm2.tokenizer import eos_token_id, load_tokenizer, tokenizer_file, tokenizer_fingerprint

    start = time.perf_counter()
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="smollm2-prepare-") as cache:  # datasets' lock files
        # Inputs first: a wrong path or an offline hub fails before anything is loaded or created.
        sources = open_sources(inputs, text_field=text_field, txt_mode=txt_mode, cache_dir=cache, shard=shard)
        tok = load_tokenizer(tokenizer)
        if out_dir.is_dir():
            check_out_dir(out_dir, shard)
        vocab_size = max(tok.get_vocab(with_added_tokens=True).values()) + 1
        dtype = token_dtype(vocab_size)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            # The work folder sits inside out_dir: the stream is as large as the outputs, and /tmp may be small.
            with tempfile.TemporaryDirectory(dir=out_dir, prefix=".prepare-") as tmp:
                stream = Path(tmp) / "stream"
                stats = tokenize_to_stream(sources, Encoder(tok, eos_token_id(tok), dtype), stream, num_proc)
                num_docs = len(stats.doc_lengths)
                if num_docs == 0:
                    raise UserError(f"{', '.join(inputs)}: no documents (every text is empty)")
                is_val = choose_val_docs(num_docs, val_fraction, val_docs, seed, 0 if shard is None else shard[0])
                # Of the shards of one corpus (the same tokenizer), shard 0 writes it: one writer, so two machines
                # never write the same temporary file on a shared file system.
                if shard is None or shard[0] == 0:
                    tokenizer_json = tokenizer_file(tokenizer)
                    write_atomic(out_dir / "tokenizer.json", lambda tmp_path: shutil.copyfile(tokenizer_json, tmp_path))
                write_splits(
                    stream, out_dir, shard, stats.doc_lengths, is_val, dtype, vocab_size, tokenizer_fingerprint(tok)
                )
        except OSError as exc:  # a full disk, an unwritable folder: nothing half-written is left as output
            if exc.filename and not str(exc.filename).startswith(str(out_dir)):
                raise  # reading an input, not writing the output
            raise write_failed(out_dir, exc) from None
    return _summary(stats, is_val, time.perf_counter() - start, out_dir, shard)


def _summary(stats: Any, is_val: np.ndarray, seconds: float, out_dir: Path, shard: tuple[int, int] | None) -> str:
    """prepare's one line: documents and tokens of each split, and how fast."""
    num_docs, num_val = len(stats.doc_lengths), int(is_val.sum())
    val_tokens = int(stats.doc_lengths[is_val].sum())
    total = int(stats.doc_lengths.sum())
    return (
        f"prepare: {num_docs} docs, {total} tokens (train {total - val_tokens} tokens / {num_docs - num_val}"
        f" docs, val {val_tokens} tokens / {num_val} docs) from {stats.num_bytes / 1e6:.2f} MB in"
        f" {seconds:.1f} s: {stats.num_bytes / 1e6 / seconds:.2f} MB/s, {total / seconds / 1e6:.3f}M tokens/s"
        f" -> {out_dir}" + ("" if shard is None else f" ({', '.join(output_names(shard))})")
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="PATH",
        help=".txt/.jsonl/.json/.parquet files (.gz too), folders or globs of them, a dataset saved"
        " with save_to_disk, or a Hugging Face Hub dataset name",
    )
    parser.add_argument(
        "--tokenizer", required=True, metavar="FILE_OR_DIR", help="tokenizer.json or a folder holding one"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="writes DIR/train.bin, DIR/val.bin, DIR/tokenizer.json"
    )
    parser.add_argument(
        "--text-field", default="text", help="field holding the document text (jsonl/json/parquet/datasets)"
    )
    val = parser.add_mutually_exclusive_group()
    val.add_argument(
        "--val-fraction",
        type=float,
        default=0.005,
        help="fraction of documents held out for validation (at least one when > 0)",
    )
    val.add_argument("--val-docs", type=int, help="exact number of documents held out for validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation document choice")
    parser.add_argument(
        "--num-proc",
        type=int,
        metavar="N",
        help="processes that tokenize, one thread each (default: one per core); the output does not depend on it",
    )
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="prepare only the I-th (from 0) of N contiguous slices of the input files, into"
        " DIR/train-0000I-of-0000N.bin and val-...: N machines prepare one corpus"
        " (launch/slurm/prepare_array.sbatch); the trainer reads the shards as one dataset",
    )
    parser.add_argument(
        "--txt-mode",
        choices=["file", "paragraph"],
        default="file",
        help=".txt files: one document per file (default), or per blank-line-separated paragraph",
    )


def parse_shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not 0 <= int(match[1]) < int(match[2]) <= 99999:
        raise UserError(f"--shard {text}: expected I/N with 0 <= I < N <= 99999, e.g. 3/64")
    return int(match[1]), int(match[2])


def run(args: argparse.Namespace) -> None:
    if not 0 <= args.val_fraction < 1:
        raise UserError(f"--val-fraction {args.val_fraction}: expected a number in [0, 1)")
    if args.val_docs is not None and args.val_docs < 0:
        raise UserError(f"--val-docs {args.val_docs}: expected a number >= 0")
    if args.num_proc is not None and args.num_proc < 1:
        raise UserError(f"--num-proc {args.num_proc}: expected a number >= 1")
    shard = None if args.shard is None else parse_shard(args.shard)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    num_proc = args.num_proc or cores
    if num_proc == 1:
        # Tokenizing in this process: on one thread (tokenizers' pool reads this at its first batch).
        os.environ["RAYON_NUM_THREADS"] = "1"
    print(
        prepare(
            args.input,
            args.tokenizer,
            args.out,
            text_field=args.text_field,
            val_fraction=args.val_fraction,
            val_docs=args.val_docs,
            seed=args.seed,
            txt_mode=args.txt_mode,
            num_proc=num_proc,
            shard=shard,
        )
    )
