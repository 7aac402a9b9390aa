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

The header is checked on every open (cheap); only `verify_token_file` reads all the tokens.

Order of training samples: sample i is the window tokens[i*bs : i*bs + bs + 1]. The global order G is
the concatenation over epochs e of a permutation of all samples seeded by (seed, e); each micro-step
takes the next micro_batch_size x dp_size entries of G and rank r takes the r-th micro_batch_size of
them. The position in G (consumed_samples) is the sampler's whole state, so a run resumed at any
count, on any number of ranks, continues exactly the same global sequence.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smollm2.errors import UserError

MAGIC = b"SMOL2TOK"
FORMAT_VERSION = 1
HEADER_BYTES = 256
_HEADER = struct.Struct("<8sIIQQQ64s")  # the fields above; the rest of the 256 bytes is zero
_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


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
    packed = _HEADER.pack(MAGIC, header.version, header.dtype.itemsize, header.vocab_size, header.num_tokens,
                          header.num_docs, fingerprint)
    return packed.ljust(HEADER_BYTES, b"\0")


def write_token_file(path: str | Path, chunks: Iterable[np.ndarray], *, vocab_size: int, tokenizer_fingerprint: str,
                     num_docs: int) -> TokenFileHeader:
    """Write a token file from chunks of ids (e.g. slices of a memory map) under a temporary name, then rename it."""
    path = Path(path)
    dtype = token_dtype(vocab_size)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            out.write(bytes(HEADER_BYTES))  # the real header once the token count is known
            num_tokens = 0
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=dtype)
                out.write(chunk.data)
                num_tokens += chunk.size
            header = TokenFileHeader(version=FORMAT_VERSION, dtype=dtype, vocab_size=vocab_size, num_tokens=num_tokens,
                                     num_docs=num_docs, tokenizer_fingerprint=tokenizer_fingerprint)
            out.seek(0)
            out.write(encode_token_file_header(header))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return header


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
        raise UserError(f"{path}: token file format version {version}, this smollm2 reads version {FORMAT_VERSION}"
                        " (re-run `smollm2 prepare`)")
    if itemsize not in _DTYPES:
        raise UserError(f"{path}: corrupt header: {itemsize} bytes per token (expected 2 or 4)")
    if vocab_size > 2 ** (8 * itemsize):
        raise UserError(f"{path}: corrupt header: vocab size {vocab_size} does not fit {itemsize}-byte tokens")
    expected_size = HEADER_BYTES + num_tokens * itemsize
    if size < expected_size:
        raise UserError(f"{path}: truncated: header says {num_tokens} tokens ({expected_size} bytes)"
                        f" but the file has {size} bytes")
    if size > expected_size:
        raise UserError(f"{path}: token count disagrees with the file size: header says {num_tokens} tokens"
                        f" ({expected_size} bytes) but the file has {size} bytes")
    return TokenFileHeader(version=version, dtype=_DTYPES[itemsize], vocab_size=vocab_size, num_tokens=num_tokens,
                           num_docs=num_docs, tokenizer_fingerprint=fingerprint.rstrip(b"\0").decode("ascii"))


def open_tokens(path: str | Path, header: TokenFileHeader) -> np.ndarray:
    """The token stream, read-only, backed by a memory map: pages are read on access, nothing is copied into RAM."""
    if header.num_tokens == 0:  # np.memmap refuses empty maps
        return np.empty(0, dtype=header.dtype)
    # A plain ndarray view of the map: indexing an np.memmap subclass costs microseconds more per call.
    return np.asarray(np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_BYTES, shape=(header.num_tokens,)))


def verify_token_file(path: str | Path, expected_vocab_size: int | None = None,
                      chunk_tokens: int = 1 << 26) -> TokenFileHeader:
    """Full check: the header, and every id below the vocab size (a scan of the whole file, in chunks)."""
    header = read_token_file_header(path)
    vocab_size = header.vocab_size if expected_vocab_size is None else min(header.vocab_size, expected_vocab_size)
    tokens = open_tokens(path, header)
    for start in range(0, header.num_tokens, chunk_tokens):
        chunk = tokens[start:start + chunk_tokens]
        top = int(chunk.max())
        if top >= vocab_size:
            position = start + int(np.argmax(chunk >= vocab_size))
            raise UserError(f"{path}: token id {int(tokens[position])} at position {position} is outside the vocab"
                            f" of {vocab_size}")
    return header


def check_compatible(path: Path, header: TokenFileHeader, expected_vocab_size: int | None,
                     expected_fingerprint: str | None) -> None:
    """Refuse a file written for a bigger vocab or by another tokenizer than the one configured."""
    if expected_vocab_size is not None and header.vocab_size > expected_vocab_size:
        raise UserError(f"{path}: token ids go up to {header.vocab_size - 1} (tokenizer vocab {header.vocab_size})"
                        f" but the model's vocab size is {expected_vocab_size}")
    if expected_fingerprint is not None and header.tokenizer_fingerprint != expected_fingerprint:
        raise UserError(f"{path}: made by another tokenizer (fingerprint {header.tokenizer_fingerprint[:12]}...,"
                        f" expected {expected_fingerprint[:12]}...): re-run `smollm2 prepare` with this tokenizer")


class PackedTokenDataset(torch.utils.data.Dataset):
    """Blocks of `block_size` inputs and their next-token labels from a memory-mapped token file.

    Sample i is the window tokens[i*block_size : i*block_size + block_size + 1]: inputs are its first
    block_size tokens and labels its last block_size, so consecutive samples share one token and every
    token but the tail is trained on once per epoch. Blocks run across document boundaries (EOS marks them).
    """

    def __init__(self, path: str | Path, block_size: int, *, expected_vocab_size: int | None = None,
                 expected_fingerprint: str | None = None):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.path = Path(path)
        self.block_size = block_size
        header = read_token_file_header(self.path)
        check_compatible(self.path, header, expected_vocab_size, expected_fingerprint)
        self.header = header
        self.num_tokens = header.num_tokens
        self.vocab_size = header.vocab_size
        self.tokenizer_fingerprint = header.tokenizer_fingerprint
        if len(self) == 0:
            raise UserError(f"{self.path}: {self.num_tokens} tokens, fewer than one block of {block_size} + 1")
        self._tokens: np.ndarray | None = open_tokens(self.path, header)
        self._window_offsets = np.arange(block_size + 1)

    def __len__(self) -> int:
        return max(0, (self.num_tokens - 1) // self.block_size)

    def _token_stream(self) -> np.ndarray:
        if self._tokens is None:  # unpickled in a DataLoader worker: map the file there
            self._tokens = open_tokens(self.path, self.header)
        return self._tokens

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} out of range for {len(self)} blocks")
        start = i * self.block_size
        window = torch.from_numpy(self._token_stream()[start:start + self.block_size + 1].astype(np.int64))
        return window[:-1], window[1:]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A whole micro-batch in one gather (the DataLoader calls this instead of __getitem__ per sample)."""
        blocks = np.asarray(indices, dtype=np.int64)
        if blocks.size and not (0 <= blocks.min() and blocks.max() < len(self)):
            raise IndexError(f"blocks {indices} out of range for {len(self)} blocks")
        windows = self._token_stream()[(blocks * self.block_size)[:, None] + self._window_offsets]
        windows = torch.from_numpy(windows.astype(np.int64))
        # unbind makes the per-sample views in one call: a Python loop over rows costs several times more.
        return list(zip(windows[:, :-1].unbind(0), windows[:, 1:].unbind(0)))

    def __getstate__(self) -> dict:
        # Pickling a memmap copies the whole array; workers re-map the file instead.
        return {**self.__dict__, "_tokens": None}


class DistributedBlockSampler(torch.utils.data.Sampler[list[int]]):
    """This rank's micro-batches of sample indices, endlessly (epochs follow one another).

    Stateless apart from `consumed_samples` (the position in the global order G where this sampler
    starts): the trainer stores steps x global batch and passes it back on resume.
    """

    def __init__(self, num_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int, *,
                 seed: int = 0, consumed_samples: int = 0):
        if num_samples < 1 or micro_batch_size < 1 or dp_size < 1:
            raise ValueError(f"need num_samples, micro_batch_size, dp_size >= 1; got {num_samples},"
                             f" {micro_batch_size}, {dp_size}")
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
        self._permutations: dict[int, np.ndarray] = {}

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """Sample order of one epoch; the same for every rank, process and resume (seeded by (seed, epoch))."""
        if epoch not in self._permutations:
            rng = np.random.default_rng([self.seed, epoch])
            # int32 halves the memory of the order (4 bytes per sample) whenever it can.
            order = np.arange(self.num_samples, dtype=np.int32 if self.num_samples < 2**31 else np.int64)
            rng.shuffle(order)
            # A micro-batch spans at most two epochs; keep only the one asked for and the one before.
            self._permutations = {e: p for e, p in self._permutations.items() if e == epoch - 1}
            self._permutations[epoch] = order
        return self._permutations[epoch]

    def global_order(self, start: int, count: int) -> list[int]:
        """G[start : start + count]."""
        out: list[int] = []
        while count > 0:
            epoch, offset = divmod(start, self.num_samples)
            take = min(count, self.num_samples - offset)
            out.extend(self.epoch_permutation(epoch)[offset:offset + take].tolist())
            start += take
            count -= take
        return out

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.micro_batch_size * self.dp_size
        position = self.consumed_samples + self.dp_rank * self.micro_batch_size
        while True:
            yield self.global_order(position, self.micro_batch_size)
            position += global_batch
