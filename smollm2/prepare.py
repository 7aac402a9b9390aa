"""`smollm2 prepare`: tokenize a corpus into DIR/train.bin, DIR/val.bin and DIR/tokenizer.json.

Inputs are read through `datasets`, one source at a time in the order given (folders and globs in sorted
path order): .txt (one document per file, or per blank-line-separated paragraph with --txt-mode
paragraph), .jsonl/.json/.parquet (gzipped too) with the document text in --text-field, a `datasets`
dataset saved with save_to_disk, or a dataset name on the Hugging Face Hub. Files and hub datasets are
streamed, so the corpus never has to fit in memory.

Two passes, so the validation split can be an exact number of whole documents chosen at random:
  1. stream the documents, tokenize them with `tokenizers` on all cores, append EOS to each, and write
     one flat token stream plus every document's length (to a temporary folder inside DIR);
  2. pick the validation documents (seeded), copy both splits out of that stream behind their headers
     (format: smollm2.data), verify them, then rename everything into place.
The output depends only on the inputs, the tokenizer and the flags: re-runs are byte-identical.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from smollm2.errors import UserError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# Text handed to the tokenizer at once: enough documents for every core, bounded memory for its output.
ENCODE_BATCH_BYTES = 4 << 20


def _builder(path: Path) -> str | None:
    """The `datasets` builder that reads this file, gzipped or not (None: not a supported type)."""
    suffixes = path.suffixes[:-1] if path.suffix == ".gz" else path.suffixes
    return BUILDERS.get(suffixes[-1]) if suffixes else None


@dataclass
class Source:
    """One input, ready to stream: `name` is what messages call it."""

    name: str
    dataset: object  # datasets.IterableDataset or datasets.Dataset
    text_field: str
    num_bytes: int | None  # text bytes, where known in advance (for the progress bar)


def _expand(path_arg: str) -> list[Path] | None:
    """The data files a PATH argument names (None: not a local path, so maybe a hub name)."""
    path = Path(path_arg).expanduser()
    if path.is_file():
        if _builder(path) is None:
            raise UserError(f"{path}: unsupported file type (expected {', '.join(BUILDERS)}, optionally .gz)")
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and _builder(p)
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not found:
            raise UserError(f"{path}: no {'/'.join(BUILDERS)} files in this folder")
        return found
    if any(c in path_arg for c in "*?["):
        import glob

        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file() and _builder(Path(p)))
        if not found:
            raise UserError(f"{path_arg}: the pattern matches no {'/'.join(BUILDERS)} files")
        return found
    if path_arg.startswith((".", "/", "~")) or _builder(path) is not None or path_arg.count("/") > 1:
        raise UserError(f"{path_arg}: no such file or folder")
    return None


def _saved_dataset(path: Path, text_field: str):
    """A dataset written by `save_to_disk` (memory-mapped Arrow), or None if `path` is not one."""
    import datasets

    if (path / "dataset_dict.json").is_file():
        splits = datasets.load_from_disk(str(path))
        if "train" not in splits:
            raise UserError(f"{path}: saved DatasetDict has no 'train' split (it has: {', '.join(splits)})")
        dataset = splits["train"]
    elif (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        dataset = datasets.load_from_disk(str(path))
    else:
        return None
    if text_field not in dataset.column_names:
        raise UserError(f"{path}: no column {text_field!r} (columns: {', '.join(dataset.column_names)});"
                        " choose one with --text-field")
    return dataset


def open_sources(inputs: Iterable[str], *, text_field: str = "text", txt_mode: str = "file",
                 cache_dir: str | Path | None = None) -> list[Source]:
    """Resolve every PATH (file, folder, glob, saved dataset, hub name) into sources, failing before any work."""
    import datasets

    datasets.disable_progress_bars()
    # Each load_dataset of a packaged reader (text, json, parquet) otherwise sends a download-count request
    # to the Hub, even for local files: half of prepare's time on a 43-file corpus here (0.12 s per file
    # waiting on DNS without a network), and a network dependency for purely local work.
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    # Its readers log a failure before raising it; we report the exception as one line naming the file.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    sources: list[Source] = []
    for path_arg in inputs:
        path = Path(path_arg).expanduser()
        saved = _saved_dataset(path, text_field) if path.is_dir() else None
        if saved is not None:
            sources.append(Source(str(path), saved, text_field, None))
            continue
        files = _expand(path_arg)
        if files is None:
            sources.append(_hub_source(path_arg, text_field, cache_dir))
            continue
        for file in files:
            builder = _builder(file)
            options = {"sample_by": "document" if txt_mode == "file" else "paragraph"} if builder == "text" else {}
            dataset = datasets.load_dataset(builder, data_files=[str(file)], split="train", streaming=True,
                                            cache_dir=None if cache_dir is None else str(cache_dir), **options)
            plain_text = builder == "text" and file.suffix == ".txt"
            sources.append(Source(str(file), dataset, "text" if builder == "text" else text_field,
                                  file.stat().st_size if plain_text else None))
    return sources


def _hub_source(name: str, text_field: str, cache_dir: str | Path | None) -> Source:
    import datasets

    if datasets.config.HF_HUB_OFFLINE:
        raise UserError(f"{name}: not a local file, folder or glob, and the Hugging Face Hub is offline"
                        " (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)")
    try:
        dataset = datasets.load_dataset(name, split="train", streaming=True,
                                        cache_dir=None if cache_dir is None else str(cache_dir))
    except (ConnectionError, FileNotFoundError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{name}: cannot open this dataset from the Hugging Face Hub: {reason}") from None
    return Source(name, dataset, text_field, None)


def read_documents(sources: list[Source], batch_rows: int = 1024) -> Iterator[list[str]]:
    """Batches of document texts, in source order; empty or missing texts are skipped."""
    for source in sources:
        batches = iter(source.dataset.iter(batch_size=batch_rows))
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (ValueError, OSError) as exc:  # bad JSON/Parquet, not UTF-8, unreadable
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise UserError(f"{source.name}: cannot read: {reason}") from None
            if source.text_field not in batch:
                raise UserError(f"{source.name}: no field {source.text_field!r} (fields: {', '.join(batch)});"
                                " choose one with --text-field")
            texts = [t for t in batch[source.text_field] if t]
            if not all(isinstance(t, str) for t in texts):
                kind = next(type(t).__name__ for t in texts if not isinstance(t, str))
                raise UserError(f"{source.name}: field {source.text_field!r} holds {kind}, expected text")
            yield texts


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


def tokenize_to_stream(sources: list[Source], tok: Tokenizer, eos_id: int, dtype: np.dtype,
                       out_path: Path) -> TokenizeStats:
    """Pass 1: every document's ids followed by EOS, one flat stream in `out_path`."""
    from tqdm import tqdm

    sizes = [s.num_bytes for s in sources]
    total = sum(sizes) if all(n is not None for n in sizes) else None
    lengths: list[np.ndarray] = []
    num_bytes = num_tokens = 0
    start = time.perf_counter()
    tty = sys.stderr.isatty()
    # Shown after a second (a bad input fails before, with its one line alone); every 30 s in a log file.
    with open(out_path, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc="prepare", file=sys.stderr,
                                           delay=1, mininterval=0.5 if tty else 30, dynamic_ncols=True) as bar:
        for texts in encode_batches(read_documents(sources)):
            ids = [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
            doc_lengths = np.fromiter((len(i) + 1 for i in ids), dtype=np.int64, count=len(ids))
            tokens = np.fromiter(chain.from_iterable(chain(i, (eos_id,)) for i in ids), dtype=dtype,
                                 count=int(doc_lengths.sum()))
            tokens.tofile(out)
            lengths.append(doc_lengths)
            batch_bytes = sum(len(t.encode("utf-8")) for t in texts)
            num_bytes += batch_bytes
            num_tokens += len(tokens)
            bar.set_postfix_str(f"{num_tokens / (time.perf_counter() - start) / 1e6:.2f}M tokens/s", refresh=False)
            bar.update(batch_bytes)
    return TokenizeStats(np.concatenate(lengths) if lengths else np.zeros(0, np.int64), num_bytes)


def choose_val_docs(num_docs: int, val_fraction: float, val_docs: int | None, seed: int) -> np.ndarray:
    """Boolean mask of the documents held out for validation: a seeded random choice of whole documents."""
    if val_docs is not None:
        count = val_docs
    else:
        count = max(1, round(val_fraction * num_docs)) if val_fraction > 0 else 0
    if count >= num_docs:
        raise UserError(f"--val-{'docs' if val_docs is not None else 'fraction'}: {count} validation documents"
                        f" would leave no training data ({num_docs} documents in the inputs"
                        + ("; --txt-mode paragraph splits .txt files into more)" if num_docs < 3 else ")"))
    mask = np.zeros(num_docs, dtype=bool)
    mask[np.random.default_rng(seed).choice(num_docs, size=count, replace=False)] = True
    return mask


def split_chunks(stream: np.ndarray, doc_lengths: np.ndarray, keep: np.ndarray) -> Iterator[np.ndarray]:
    """Pass 2: the kept documents of the stream, in order, as slices of it (one per run of kept documents)."""
    ends = np.cumsum(doc_lengths)
    starts = ends - doc_lengths
    edges = np.flatnonzero(np.diff(np.concatenate(([0], keep.astype(np.int8), [0]))))
    for first, stop in zip(edges[::2], edges[1::2]):
        yield stream[starts[first]:ends[stop - 1]]


def write_splits(folder: Path, doc_lengths: np.ndarray, is_val: np.ndarray, dtype: np.dtype, vocab_size: int,
                 fingerprint: str) -> None:
    """Pass 2: folder/train.bin and folder/val.bin out of folder/stream, each verified in full."""
    from smollm2.data import verify_token_file, write_token_file

    stream = np.memmap(folder / "stream", dtype=dtype, mode="r")
    for split, keep in (("train", ~is_val), ("val", is_val)):
        path = folder / f"{split}.bin"
        write_token_file(path, split_chunks(stream, doc_lengths, keep), vocab_size=vocab_size,
                         tokenizer_fingerprint=fingerprint, num_docs=int(keep.sum()))
        verify_token_file(path, vocab_size)  # read back in full before it is renamed into place


def prepare(inputs: list[str], tokenizer: str | Path, out_dir: str | Path, *, text_field: str = "text",
            val_fraction: float = 0.005, val_docs: int | None = None, seed: int = 0, txt_mode: str = "file") -> str:
    """Write out_dir/{train.bin,val.bin,tokenizer.json}; returns the one-line summary."""
    from smollm2.data import token_dtype
    from smollm2.tokenizer import eos_token_id, load_tokenizer, tokenizer_file, tokenizer_fingerprint

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smollm2-prepare-") as cache:  # datasets' lock files
        # Inputs first: a wrong path or an offline hub fails before anything is loaded or created.
        sources = open_sources(inputs, text_field=text_field, txt_mode=txt_mode, cache_dir=cache)
        tok = load_tokenizer(tokenizer)
        eos_id = eos_token_id(tok)
        vocab_size = max(tok.get_vocab(with_added_tokens=True).values()) + 1
        dtype = token_dtype(vocab_size)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        # The work folder sits inside out_dir so that the final renames stay on one file system.
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".prepare-") as tmp:
            tmp = Path(tmp)
            stats = tokenize_to_stream(sources, tok, eos_id, dtype, tmp / "stream")
            num_docs = len(stats.doc_lengths)
            if num_docs == 0:
                raise UserError(f"{', '.join(inputs)}: no documents (every text is empty)")
            is_val = choose_val_docs(num_docs, val_fraction, val_docs, seed)
            write_splits(tmp, stats.doc_lengths, is_val, dtype, vocab_size, tokenizer_fingerprint(tok))
            shutil.copyfile(tokenizer_file(tokenizer), tmp / "tokenizer.json")
            for name in ("train.bin", "val.bin", "tokenizer.json"):
                os.replace(tmp / name, out_dir / name)
    seconds = time.perf_counter() - start
    num_val = int(is_val.sum())
    val_tokens = int(stats.doc_lengths[is_val].sum())
    total = int(stats.doc_lengths.sum())
    return (f"prepare: {num_docs} docs, {total} tokens (train {total - val_tokens} tokens / {num_docs - num_val}"
            f" docs, val {val_tokens} tokens / {num_val} docs) from {stats.num_bytes / 1e6:.2f} MB in"
            f" {seconds:.1f} s: {stats.num_bytes / 1e6 / seconds:.2f} MB/s, {total / seconds / 1e6:.3f}M tokens/s"
            f" -> {out_dir}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help=".txt/.jsonl/.json/.parquet files (.gz too), folders or globs of them, a dataset saved"
                             " with save_to_disk, or a Hugging Face Hub dataset name")
    parser.add_argument("--tokenizer", required=True, metavar="FILE_OR_DIR",
                        help="tokenizer.json or a folder holding one")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="writes DIR/train.bin, DIR/val.bin, DIR/tokenizer.json")
    parser.add_argument("--text-field", default="text",
                        help="field holding the document text (jsonl/json/parquet/datasets)")
    val = parser.add_mutually_exclusive_group()
    val.add_argument("--val-fraction", type=float, default=0.005,
                     help="fraction of documents held out for validation (at least one when > 0)")
    val.add_argument("--val-docs", type=int, help="exact number of documents held out for validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation document choice")
    parser.add_argument("--num-proc", type=int, help="tokenizer threads (default: all cores of this process)")
    parser.add_argument("--txt-mode", choices=["file", "paragraph"], default="file",
                        help=".txt files: one document per file (default), or per blank-line-separated paragraph")


def run(args: argparse.Namespace) -> None:
    if not 0 <= args.val_fraction < 1:
        raise UserError(f"--val-fraction {args.val_fraction}: expected a number in [0, 1)")
    if args.val_docs is not None and args.val_docs < 0:
        raise UserError(f"--val-docs {args.val_docs}: expected a number >= 0")
    if args.num_proc is not None and args.num_proc < 1:
        raise UserError(f"--num-proc {args.num_proc}: expected a number >= 1")
    # tokenizers' thread pool reads this when it starts, at the first encode_batch of this process.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ["RAYON_NUM_THREADS"] = str(args.num_proc or cores)
    print(prepare(args.input, args.tokenizer, args.out, text_field=args.text_field, val_fraction=args.val_fraction,
                  val_docs=args.val_docs, seed=args.seed, txt_mode=args.txt_mode))
