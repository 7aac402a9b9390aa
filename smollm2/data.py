"""Packed token files: the on-disk format, the memory-mapped training dataset and its sampler.

A token file is one flat stream of token ids (every document followed by EOS), the layout nanoGPT and
llm.c use, behind a fixed 256-byte little-endian header that says what the stream is:

    offset  size  field
    0       8     magic b"SMOL2TOK"
    8       4     format version (uint32, 1)
    12      4     bytes per token (uint32: 2 = uint16, 4 = uint32 when the vocab exceeds 65536)
    16      8     vocab size of the tokenizer that wrote it (uint64)
    24      8     number of tokens (uint64)
    32      8     number of documents (uint64)
    40      64    tokenizer fingerprint (ASCII hex, see smollm2.tokenizer.tokenizer_fingerprint)
    104     152   zero (reserved)

The header is checked on every open (cheap); only `verify_token_file` reads all the tokens. Counts and
offsets are 64-bit everywhere (header, memory map, block starts), so a stream may hold more than 4 Gi
tokens.

A split of a prepared folder is `train.bin`, or its shards `train-00000-of-00064.bin` ... written by
`smollm2 prepare --shard i/64` on many machines (`split_files`). The shards are read end to end as one
stream: every shard ends with a document's EOS, so a shard boundary is a document boundary like any
other, and blocks cross it the way they cross documents. A folder of shards thus gives exactly the
blocks of the one file their concatenation would be, and no shard's tail is dropped.

Order of training samples: sample i is the window tokens[i*bs : i*bs + bs + 1]. The global order G is
the concatenation over epochs e of a permutation of all samples keyed by (seed, e) (`shuffled_blocks`:
computed entry by entry, no table in memory); each micro-step
takes the next micro_batch_size x dp_size entries of G and rank r takes the r-th micro_batch_size of
them. The position in G (consumed_samples) is the sampler's whole state, so a run resumed at any
count, on any number of ranks, continues exactly the same global sequence. (smollm2.mixture blends
several datasets the same way.)
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smollm2.atomic import write_atomic
from smollm2.errors import UserError

MAGIC = b"SMOL2TOK"
FORMAT_VERSION = 1
HEADER_BYTES = 256
_HEADER = struct.Struct("<8sIIQQQ64s")  # the fields above; the rest of the 256 bytes is zero
_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
_SHARD_NAME = re.compile(r"(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.bin")


@dataclass(frozen=True)
class TokenFileHeader:
    """What a token file says about itself; `read_token_file_header` guarantees it matches the file."""

    version: int
    dtype: np.dtype
    vocab_size: int
    num_tokens: int
    num_docs: int
    tokenizer_fingerprint: str


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (half the disk and page cache of uint32), else uint32."""
    return _DTYPES[2] if vocab_size <= 2**16 else _DTYPES[4]


def encode_token_file_header(header: TokenFileHeader) -> bytes:
    fingerprint = header.tokenizer_fingerprint.encode("ascii")
    if len(fingerprint) > 64:
        raise ValueError(f"tokenizer fingerprint longer than 64 characters: {header.tokenizer_fingerprint!r}")
    packed = _HEADER.pack(
        MAGIC, header.version, header.dtype.itemsize, header.vocab_size, header.num_tokens, header.num_docs, fingerprint
    )
    return packed.ljust(HEADER_BYTES, b"\0")


def write_token_file(
    path: str | Path,
    chunks: Iterable[np.ndarray],
    *,
    vocab_size: int,
    tokenizer_fingerprint: str,
    num_docs: int,
    verify: bool = False,
) -> TokenFileHeader:
    """Write a token file from chunks of ids (e.g. slices of a memory map), atomically (smollm2.atomic).

    verify: read the written file back in full (`verify_token_file`) before it takes its real name.
    """
    dtype = token_dtype(vocab_size)
    written: list[TokenFileHeader] = []

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            out.write(bytes(HEADER_BYTES))  # the real header once the token count is known
            num_tokens = 0
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=dtype)
                out.write(chunk.data)
                num_tokens += chunk.size
            header = TokenFileHeader(
                version=FORMAT_VERSION,
                dtype=dtype,
                vocab_size=vocab_size,
                num_tokens=num_tokens,
                num_docs=num_docs,
                tokenizer_fingerprint=tokenizer_fingerprint,
            )
            out.seek(0)
            out.write(encode_token_file_header(header))
        if verify:
            verify_token_file(tmp, vocab_size)
        written.append(header)

    write_atomic(path, write)
    return written[0]


def read_token_file_header(path: str | Path) -> TokenFileHeader:
    """The header of a token file, after checking it describes the file: UserError naming the file if not."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise UserError(f"{path}: no such token file (make one with `smollm2 prepare`)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read token file: {exc.strerror}") from None
    if len(raw) < _HEADER.size or raw[:8] != MAGIC:
        raise UserError(f"{path}: not a smollm2 token file (bad magic; expected {MAGIC!r}, made by `smollm2 prepare`)")
    magic, version, itemsize, vocab_size, num_tokens, num_docs, fingerprint = _HEADER.unpack_from(raw)
    if version != FORMAT_VERSION:
        raise UserError(
            f"{path}: token file format version {version}, this smollm2 reads version {FORMAT_VERSION}"
            " (re-run `smollm2 prepare`)"
        )
    if itemsize not in _DTYPES:
        raise UserError(f"{path}: corrupt header: {itemsize} bytes per token (expected 2 or 4)")
    if vocab_size > 2 ** (8 * itemsize):
        raise UserError(f"{path}: corrupt header: vocab size {vocab_size} does not fit {itemsize}-byte tokens")
    expected_size = HEADER_BYTES + num_tokens * itemsize
    if size < expected_size:
        raise UserError(
            f"{path}: truncated: header says {num_tokens} tokens ({expected_size} bytes) but the file has {size} bytes"
        )
    if size > expected_size:
        raise UserError(
            f"{path}: token count disagrees with the file size: header says {num_tokens} tokens"
            f" ({expected_size} bytes) but the file has {size} bytes"
        )
    return TokenFileHeader(
        version=version,
        dtype=_DTYPES[itemsize],
        vocab_size=vocab_size,
        num_tokens=num_tokens,
        num_docs=num_docs,
        tokenizer_fingerprint=fingerprint.rstrip(b"\0").decode("ascii"),
    )


def open_tokens(path: str | Path, header: TokenFileHeader) -> np.ndarray:
    """The token stream, read-only, backed by a memory map: pages are read on access, nothing is copied into RAM."""
    if header.num_tokens == 0:  # np.memmap refuses empty maps
        return np.empty(0, dtype=header.dtype)
    # A plain ndarray view of the map: indexing an np.memmap subclass costs microseconds more per call.
    return np.asarray(np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_BYTES, shape=(header.num_tokens,)))


def verify_token_file(
    path: str | Path, expected_vocab_size: int | None = None, chunk_tokens: int = 1 << 26
) -> TokenFileHeader:
    """Full check: the header, and every id below the vocab size (a scan of the whole file, in chunks)."""
    header = read_token_file_header(path)
    vocab_size = header.vocab_size if expected_vocab_size is None else min(header.vocab_size, expected_vocab_size)
    tokens = open_tokens(path, header)
    for start in range(0, header.num_tokens, chunk_tokens):
        chunk = tokens[start : start + chunk_tokens]
        top = int(chunk.max())
        if top >= vocab_size:
            position = start + int(np.argmax(chunk >= vocab_size))
            raise UserError(
                f"{path}: token id {int(tokens[position])} at position {position} is outside the vocab of {vocab_size}"
            )
    return header


def check_compatible(
    path: Path, header: TokenFileHeader, expected_vocab_size: int | None, expected_fingerprint: str | None
) -> None:
    """Refuse a file written for a bigger vocab or by another tokenizer than the one configured."""
    if expected_vocab_size is not None and header.vocab_size > expected_vocab_size:
        raise UserError(
            f"{path}: token ids go up to {header.vocab_size - 1} (tokenizer vocab {header.vocab_size})"
            f" but the model's vocab size is {expected_vocab_size}"
        )
    if expected_fingerprint is not None and header.tokenizer_fingerprint != expected_fingerprint:
        raise UserError(
            f"{path}: made by another tokenizer (fingerprint {header.tokenizer_fingerprint[:12]}...,"
            f" expected {expected_fingerprint[:12]}...): re-run `smollm2 prepare` with this tokenizer"
        )


def check_same_tokenizer(
    first: Path, first_header: TokenFileHeader, other: Path, other_header: TokenFileHeader
) -> None:
    """Refuse two token files (shards of a split, or data sources of one mixture) made by different tokenizers."""
    if (other_header.tokenizer_fingerprint, other_header.vocab_size) != (
        first_header.tokenizer_fingerprint,
        first_header.vocab_size,
    ):
        raise UserError(
            f"{other} and {first} were made by different tokenizers (fingerprints"
            f" {other_header.tokenizer_fingerprint[:12]}... and {first_header.tokenizer_fingerprint[:12]}...,"
            f" vocab {other_header.vocab_size} and {first_header.vocab_size}): prepare every dataset"
            " with the same tokenizer"
        )


def shard_name(split: str, index: int, count: int) -> str:
    """The file name of shard `index` of `count` of a split: train-00003-of-00064.bin."""
    return f"{split}-{index:05d}-of-{count:05d}.bin"


def split_layouts(folder: str | Path, split: str) -> dict[int, set[int]]:
    """A split's token files in a folder by layout: {0: {0}} for split.bin, {n: indices present} for shards of n."""
    folder = Path(folder)
    layouts = {0: {0}} if (folder / f"{split}.bin").exists() else {}
    for path in folder.glob(f"{split}-*-of-*.bin"):
        match = _SHARD_NAME.fullmatch(path.name)
        if match and match["split"] == split:
            layouts.setdefault(int(match["count"]), set()).add(int(match["index"]))
    return layouts


def split_files(folder: str | Path, split: str) -> list[Path]:
    """The token files of one split of a prepared folder, in stream order: [folder/split.bin], or all its shards.

    When the folder holds neither, [folder/split.bin] (opening it reports the missing file). A folder with
    both layouts, shards of two preparations (different counts) or a missing shard is a UserError.
    """
    folder = Path(folder)
    single = folder / f"{split}.bin"
    shards = split_layouts(folder, split)
    shards.pop(0, None)  # split.bin itself
    if not shards:
        return [single]
    if single.exists():
        count = min(shards)
        raise UserError(
            f"{folder}: holds both {single.name} and {shard_name(split, 0, count)}...; a folder holds"
            " one prepared dataset: move one of them away"
        )
    if len(shards) > 1:
        first, second = sorted(shards)[:2]
        raise UserError(
            f"{folder}: holds shards of two preparations, {shard_name(split, 0, first)} and"
            f" {shard_name(split, 0, second)}...; a folder holds one prepared dataset"
        )
    [(count, present)] = shards.items()
    missing = [i for i in range(count) if i not in present]
    if missing:
        raise UserError(
            f"{folder / shard_name(split, missing[0], count)}: missing ({len(missing)} of the {count}"
            f" {split} shards are; run `smollm2 prepare --shard {missing[0]}/{count}` for it)"
        )
    return [folder / shard_name(split, i, count) for i in range(count)]


class PackedTokenDataset(torch.utils.data.Dataset):
    """Blocks of `block_size` inputs and their next-token labels from a memory-mapped token stream.

    The stream is one token file, or several (the shards of a split, see `split_files`) read end to end.
    Sample i is the window stream[i*block_size : i*block_size + block_size + 1]: inputs are its first
    block_size tokens and labels its last block_size, so consecutive samples share one token and every
    token but the tail is trained on once per epoch. Blocks run across document boundaries (EOS marks
    them), and so across shard boundaries.
    """

    def __init__(
        self,
        path: str | Path | Sequence[str | Path],
        block_size: int,
        *,
        expected_vocab_size: int | None = None,
        expected_fingerprint: str | None = None,
    ):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(p) for p in path]
        if not self.paths:
            raise ValueError("PackedTokenDataset needs at least one token file")
        self.block_size = block_size
        self.headers = [read_token_file_header(p) for p in self.paths]
        for file, header in zip(self.paths, self.headers):
            check_compatible(file, header, expected_vocab_size, expected_fingerprint)
            check_same_tokenizer(self.paths[0], self.headers[0], file, header)
        self.vocab_size = self.headers[0].vocab_size
        self.tokenizer_fingerprint = self.headers[0].tokenizer_fingerprint
        # Where each file's tokens start in the stream, and the stream's end.
        self.file_starts = np.cumsum([0] + [h.num_tokens for h in self.headers], dtype=np.int64)
        self.num_tokens = int(self.file_starts[-1])
        if len(self) == 0:
            name = self.paths[0] if len(self.paths) == 1 else f"{self.paths[0]} ... {self.paths[-1].name}"
            raise UserError(f"{name}: {self.num_tokens} tokens, fewer than one block of {block_size} + 1")
        self._streams: list[np.ndarray] | None = None
        self._window_offsets = np.arange(block_size + 1)

    def __len__(self) -> int:
        return max(0, (self.num_tokens - 1) // self.block_size)

    def streams(self) -> list[np.ndarray]:
        """Each file's tokens, memory-mapped on first use (so also in each DataLoader worker)."""
        if self._streams is None:
            self._streams = [open_tokens(p, h) for p, h in zip(self.paths, self.headers)]
        return self._streams

    def windows(self, blocks: np.ndarray) -> np.ndarray:
        """The token windows [len(blocks), block_size + 1] of these block indices, in the files' dtype."""
        blocks = np.asarray(blocks, dtype=np.int64)
        if blocks.size and not (0 <= blocks.min() and blocks.max() < len(self)):
            raise IndexError(f"blocks {blocks.tolist()} out of range for {len(self)} blocks")
        starts = blocks * self.block_size
        streams = self.streams()
        if len(streams) == 1:
            return streams[0][starts[:, None] + self._window_offsets]
        # Gather each file's blocks in one go; the few blocks that cross a file boundary are put together.
        file = np.searchsorted(self.file_starts, starts, side="right") - 1  # the last file starting at or before
        crosses = starts + self.block_size + 1 > self.file_starts[file + 1]
        out = np.empty((len(blocks), self.block_size + 1), dtype=self.headers[0].dtype)
        for f in np.unique(file[~crosses]):
            rows = np.flatnonzero((file == f) & ~crosses)
            out[rows] = streams[f][(starts[rows] - self.file_starts[f])[:, None] + self._window_offsets]
        for row in np.flatnonzero(crosses):
            out[row] = self._read_across_files(int(starts[row]), self.block_size + 1)
        return out

    def _read_across_files(self, start: int, count: int) -> np.ndarray:
        pieces = []
        for stream, file_start in zip(self.streams(), self.file_starts[:-1].tolist()):
            begin, end = max(start, file_start), min(start + count, file_start + len(stream))
            if begin < end:
                pieces.append(stream[begin - file_start : end - file_start])
        return np.concatenate(pieces)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} out of range for {len(self)} blocks")
        window = torch.from_numpy(self.windows(np.array([i]))[0].astype(np.int64))
        return window[:-1], window[1:]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A whole micro-batch in one gather (the DataLoader calls this instead of __getitem__ per sample)."""
        windows = torch.from_numpy(self.windows(np.asarray(indices, dtype=np.int64)).astype(np.int64))
        # unbind makes the per-sample views in one call: a Python loop over rows costs several times more.
        return list(zip(windows[:, :-1].unbind(0), windows[:, 1:].unbind(0)))

    def __getstate__(self) -> dict:
        # Pickling a memmap copies the whole array; workers re-map the files instead.
        return {**self.__dict__, "_streams": None}


# Rounds of the Feistel network below; 4 already make a pseudo-random permutation (Luby-Rackoff), 6 for margin.
_FEISTEL_ROUNDS = 6


def shuffled_blocks(positions: np.ndarray, num_blocks: int, seed: int, epoch: int, stream: int = 0) -> np.ndarray:
    """Entries `positions` of one epoch's order: a pseudo-random permutation of range(num_blocks) keyed by
    (seed, epoch, stream), the same in every rank, process and resume. `stream` tells apart orders that share
    a seed (the sources of a mixture).

    Each entry is computed on its own, with no table: a shuffled table of a 600M-block dataset (1.2T tokens
    in blocks of 2048) takes gigabytes per rank and over a minute to build, at the start of every run and of
    every epoch. Here a Feistel network permutes the values of
    as many bits as num_blocks - 1 has, and "cycle walking" (encrypting again until the value is below
    num_blocks, fewer than two rounds on average) makes it a permutation of range(num_blocks) itself.
    """
    out = np.asarray(positions, dtype=np.uint64).copy()
    if out.size and out.max() >= num_blocks:  # cycle walking from outside the range might never end
        raise ValueError(f"positions up to {out.max()} for an order of {num_blocks} blocks")
    bits = max(1, (num_blocks - 1).bit_length())
    keys = np.random.SeedSequence([seed, epoch, stream]).generate_state(_FEISTEL_ROUNDS, np.uint64)
    walking = np.arange(out.size)  # entries still to (re-)encrypt
    while walking.size:
        out[walking] = _feistel(out[walking], bits, keys)
        walking = walking[out[walking] >= num_blocks]
    return out.astype(np.int64)


def _feistel(x: np.ndarray, bits: int, keys: np.ndarray) -> np.ndarray:
    """A bijection of the `bits`-bit values: rounds of (high, low) -> (low, high ^ F(low)), the halves
    a bit apart in size when `bits` is odd (they trade places every round)."""
    high_bits = bits // 2
    for key in keys:
        low_bits = bits - high_bits
        high, low = x >> np.uint64(low_bits), x & np.uint64((1 << low_bits) - 1)
        x = (low << np.uint64(high_bits)) | (high ^ (_mix(low ^ key) & np.uint64((1 << high_bits) - 1)))
        high_bits = low_bits
    return x


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit flips about half the output bits (uint64, wrapping)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class BlockOrder:
    """A dataset's blocks in training order, epoch after epoch: entry k is entry k % num_blocks of epoch
    k // num_blocks (`shuffled_blocks`). Entries are computed CHUNK at a time and kept until used: numpy's
    cost per call, not per entry, dominates the micro-batch-sized requests of a sampler."""

    CHUNK = 1 << 16

    def __init__(self, num_blocks: int, seed: int, stream: int = 0):
        self.num_blocks, self.seed, self.stream = num_blocks, seed, stream
        self._first, self._entries = 0, np.zeros(0, dtype=np.int64)  # entries _first, _first + 1, ...

    def take(self, first: int, count: int) -> np.ndarray:
        """Entries first .. first + count - 1."""
        pieces = []
        while count > 0:
            if not self._first <= first < self._first + len(self._entries):
                epoch, offset = divmod(first, self.num_blocks)
                end = min(offset + max(count, self.CHUNK), self.num_blocks)
                self._first = first
                self._entries = shuffled_blocks(np.arange(offset, end), self.num_blocks, self.seed, epoch, self.stream)
            piece = self._entries[first - self._first : first - self._first + count]
            pieces.append(piece)
            first += len(piece)
            count -= len(piece)
        return np.concatenate(pieces) if len(pieces) != 1 else pieces[0]


class DistributedBlockSampler(torch.utils.data.Sampler[list[int]]):
    """This rank's micro-batches of sample indices, endlessly (epochs follow one another).

    Stateless apart from `consumed_samples` (the position in the global order G where this sampler
    starts): the trainer stores steps x global batch and passes it back on resume.
    """

    def __init__(
        self,
        num_samples: int,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        *,
        seed: int = 0,
        consumed_samples: int = 0,
    ):
        if num_samples < 1 or micro_batch_size < 1 or dp_size < 1:
            raise ValueError(
                f"need num_samples, micro_batch_size, dp_size >= 1; got {num_samples}, {micro_batch_size}, {dp_size}"
            )
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} not in [0, {dp_size})")
        if seed < 0 or consumed_samples < 0:
            raise ValueError(f"seed and consumed_samples must be >= 0; got {seed}, {consumed_samples}")
        self.num_samples = num_samples
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.seed = seed
        self.consumed_samples = consumed_samples
        self.order = BlockOrder(num_samples, seed)

    def global_order(self, start: int, count: int) -> list[int]:
        """G[start : start + count]."""
        return self.order.take(start, count).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.micro_batch_size * self.dp_size
        position = self.consumed_samples + self.dp_rank * self.micro_batch_size
        while True:
            yield self.global_order(position, self.micro_batch_size)
            position += global_batch
