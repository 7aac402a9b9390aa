"""Reading corpora: the documents of local files, folders, globs, saved datasets and Hub datasets.

    sources = open_sources(["data/web/*.jsonl.gz", "data/books"], text_field="text")
    for texts in read_documents(sources): ...

What `smollm2 prepare` tokenizes and `smollm2 tokenizer train` learns from, read through `datasets`, one
source at a time in the order given (folders and globs in sorted path order): .txt (one document per
file, or per blank-line-separated paragraph with txt_mode "paragraph"), .jsonl/.json/.parquet (gzipped
too) with the document text in `text_field`, a `datasets` dataset saved with save_to_disk, or a dataset
name on the Hugging Face Hub. Files and Hub datasets are streamed, so a corpus never has to fit in
memory. Every bad input is a UserError naming it, raised before any document is read where possible.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from smollm2.errors import UserError

BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


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
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and _builder(p) and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
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
        raise UserError(
            f"{path}: no column {text_field!r} (columns: {', '.join(dataset.column_names)});"
            " choose one with --text-field"
        )
    return dataset


def open_sources(
    inputs: Iterable[str],
    *,
    text_field: str = "text",
    txt_mode: str = "file",
    cache_dir: str | Path | None = None,
    shard: tuple[int, int] | None = None,
) -> list[Source]:
    """Resolve every PATH (file, folder, glob, saved dataset, hub name) into sources, failing before any work.

    shard (index, count): only the index-th of count contiguous slices of the input files.
    """
    import datasets

    datasets.disable_progress_bars()
    # Each load_dataset of a packaged reader (text, json, parquet) otherwise sends a download-count request
    # to the Hub, even for local files: a wait on DNS per file without a network (bench/RESULTS.md, data
    # pipeline), and a network dependency for purely local work.
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    # Its readers log a failure before raising it; we report the exception as one line naming the file.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    units: list[Path | Source] = []  # data files, opened below, and datasets opened already
    for path_arg in inputs:
        path = Path(path_arg).expanduser()
        saved = _saved_dataset(path, text_field) if path.is_dir() else None
        files = None if saved is not None else _expand(path_arg)
        if shard is not None and files is None:
            raise UserError(
                f"--shard: slices input files, and {path_arg} is a {'saved' if saved else 'Hub'} dataset;"
                " prepare it without --shard, or pass its data files"
            )
        if saved is not None:
            units.append(Source(str(path), saved, text_field, None))
        elif files is None:
            units.append(_hub_source(path_arg, text_field, cache_dir))
        else:
            units.extend(files)
    if shard is not None:
        index, count = shard
        if len(units) < count:
            raise UserError(f"--shard {index}/{count}: the inputs are {len(units)} files, fewer than {count} slices")
        units = units[index * len(units) // count : (index + 1) * len(units) // count]
    return [unit if isinstance(unit, Source) else _file_source(unit, text_field, txt_mode, cache_dir) for unit in units]


def _file_source(file: Path, text_field: str, txt_mode: str, cache_dir: str | Path | None) -> Source:
    import datasets

    builder = _builder(file)
    options = {"sample_by": "document" if txt_mode == "file" else "paragraph"} if builder == "text" else {}
    dataset = datasets.load_dataset(
        builder,
        data_files=[str(file)],
        split="train",
        streaming=True,
        cache_dir=None if cache_dir is None else str(cache_dir),
        **options,
    )
    plain_text = builder == "text" and file.suffix == ".txt"
    return Source(
        str(file), dataset, "text" if builder == "text" else text_field, file.stat().st_size if plain_text else None
    )


def _hub_source(name: str, text_field: str, cache_dir: str | Path | None) -> Source:
    import datasets

    if datasets.config.HF_HUB_OFFLINE:
        raise UserError(
            f"{name}: not a local file, folder or glob, and the Hugging Face Hub is offline"
            " (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)"
        )
    try:
        dataset = datasets.load_dataset(
            name, split="train", streaming=True, cache_dir=None if cache_dir is None else str(cache_dir)
        )
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
                raise UserError(
                    f"{source.name}: no field {source.text_field!r} (fields: {', '.join(batch)});"
                    " choose one with --text-field"
                )
            texts = [t for t in batch[source.text_field] if t]
            if not all(isinstance(t, str) for t in texts):
                kind = next(type(t).__name__ for t in texts if not isinstance(t, str))
                raise UserError(f"{source.name}: field {source.text_field!r} holds {kind}, expected text")
            yield texts
