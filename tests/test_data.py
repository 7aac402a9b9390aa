"""Token file format, sharded splits, PackedTokenDataset and DistributedBlockSampler (smollm2/data.py)."""

import pickle
import struct

import numpy as np
import pytest
import torch

from smollm2.data import (
    HEADER_BYTES,
    DistributedBlockSampler,
    PackedTokenDataset,
    TokenFileHeader,
    encode_token_file_header,
    read_token_file_header,
    shard_name,
    shuffled_blocks,
    split_files,
    verify_token_file,
    write_token_file,
)
from smollm2.errors import UserError

FINGERPRINT = "ab" * 32


def make_token_file(path, num_tokens=1000, vocab_size=500, seed=0):
    tokens = np.random.default_rng(seed).integers(0, vocab_size, num_tokens)
    write_token_file(
        path,
        [tokens[: num_tokens // 3], tokens[num_tokens // 3 :]],
        vocab_size=vocab_size,
        tokenizer_fingerprint=FINGERPRINT,
        num_docs=7,
    )
    return tokens


def test_header_and_blocks_round_trip(tmp_path):
    tokens = make_token_file(tmp_path / "t.bin", num_tokens=1000)
    header = read_token_file_header(tmp_path / "t.bin")
    assert (header.num_tokens, header.vocab_size, header.num_docs) == (1000, 500, 7)
    assert header.tokenizer_fingerprint == FINGERPRINT
    assert header.dtype == np.uint16 and (tmp_path / "t.bin").stat().st_size == HEADER_BYTES + 2000
    ds = PackedTokenDataset(tmp_path / "t.bin", block_size=64)
    assert len(ds) == 999 // 64 and (ds.num_tokens, ds.vocab_size, ds.tokenizer_fingerprint) == (1000, 500, FINGERPRINT)
    for i in (0, 5, len(ds) - 1):
        x, y = ds[i]
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (64,)
        assert x.tolist() == tokens[i * 64 : i * 64 + 64].tolist()
        assert y.tolist() == tokens[i * 64 + 1 : i * 64 + 65].tolist()
    batch = ds.__getitems__([3, 0, 14])
    assert all(torch.equal(a, b) for (xa, ya), i in zip(batch, [3, 0, 14]) for a, b in zip((xa, ya), ds[i]))
    with pytest.raises(IndexError):
        ds[len(ds)]
    # Exactly enough tokens for one block: block_size + 1.
    make_token_file(tmp_path / "one.bin", num_tokens=65)
    assert len(PackedTokenDataset(tmp_path / "one.bin", block_size=64)) == 1


def test_uint32_when_vocab_exceeds_uint16(tmp_path):
    tokens = make_token_file(tmp_path / "big.bin", num_tokens=300, vocab_size=100_000)
    assert tokens.max() > 65535 and read_token_file_header(tmp_path / "big.bin").dtype == np.uint32
    x, y = PackedTokenDataset(tmp_path / "big.bin", block_size=100)[1]
    assert x.tolist() == tokens[100:200].tolist()
    assert verify_token_file(tmp_path / "big.bin").num_tokens == 300


def test_dataset_pickles_without_its_tokens(tmp_path):
    make_token_file(tmp_path / "t.bin", num_tokens=100_000)
    ds = PackedTokenDataset(tmp_path / "t.bin", block_size=128)
    blob = pickle.dumps(ds)
    assert len(blob) < 10_000  # the memory map is not copied into the pickle
    assert torch.equal(pickle.loads(blob)[7][0], ds[7][0])


def test_dataloader_with_workers_matches_direct_indexing(tmp_path):
    make_token_file(tmp_path / "t.bin", num_tokens=20_000)
    ds = PackedTokenDataset(tmp_path / "t.bin", block_size=32)
    sampler = DistributedBlockSampler(len(ds), 4, 1, 2, seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=2, pin_memory=torch.cuda.is_available())
    expected = iter(DistributedBlockSampler(len(ds), 4, 1, 2, seed=3))
    for (x, y), _ in zip(loader, range(200)):  # 200 x 4 > len(ds): crosses into the second epoch
        indices = next(expected)
        assert torch.equal(x, torch.stack([ds[i][0] for i in indices]))
        assert torch.equal(y, torch.stack([ds[i][1] for i in indices]))


def interleaved(samplers, steps):
    """The global order as the ranks consume it: step by step, rank 0's micro-batch first."""
    iters = [iter(s) for s in samplers]
    return [i for _ in range(steps) for it in iters for i in next(it)]


@pytest.mark.parametrize("dp_size", [1, 2, 3, 4])
@pytest.mark.parametrize("num_samples", [24, 25])
def test_sampler_covers_every_token_once_per_epoch(dp_size, num_samples):
    block_size, micro = 16, 2
    samplers = [DistributedBlockSampler(num_samples, micro, r, dp_size, seed=5) for r in range(dp_size)]
    steps = -(-3 * num_samples // (micro * dp_size))  # three epochs and a bit
    order = interleaved(samplers, steps)
    for epoch in range(3):
        blocks = order[epoch * num_samples : (epoch + 1) * num_samples]
        covered = np.zeros(num_samples * block_size, dtype=int)
        for i in blocks:
            covered[i * block_size : (i + 1) * block_size] += 1  # the input tokens of block i
        assert covered.tolist() == [1] * (num_samples * block_size), f"epoch {epoch}"
    # Each epoch is shuffled, and differently.
    assert order[:num_samples] != order[num_samples : 2 * num_samples]
    assert order[:num_samples] != sorted(order[:num_samples])


@pytest.mark.parametrize("consumed", [0, 1, 13, 24, 37, 100, 251])
@pytest.mark.parametrize("resume_dp", [1, 2, 3, 4])
def test_resume_continues_the_same_global_order(consumed, resume_dp):
    num_samples, micro = 25, 3
    reference = DistributedBlockSampler(num_samples, 1, 0, 1, seed=11).global_order(0, 400)
    # The uninterrupted run on 2 ranks consumes exactly the reference order.
    assert (
        interleaved([DistributedBlockSampler(num_samples, micro, r, 2, seed=11) for r in range(2)], 40)
        == reference[:240]
    )
    resumed = [
        DistributedBlockSampler(num_samples, micro, r, resume_dp, seed=11, consumed_samples=consumed)
        for r in range(resume_dp)
    ]
    steps = 5
    assert interleaved(resumed, steps) == reference[consumed : consumed + steps * micro * resume_dp]


def test_sampler_seed_changes_the_order_and_bad_arguments_fail():
    a = DistributedBlockSampler(1000, 8, 0, 1, seed=0).global_order(0, 1000)
    b = DistributedBlockSampler(1000, 8, 0, 1, seed=1).global_order(0, 1000)
    assert sorted(a) == sorted(b) == list(range(1000)) and a != b
    for args in [(0, 1, 0, 1), (10, 0, 0, 1), (10, 1, 2, 2), (10, 1, 0, 0)]:
        with pytest.raises(ValueError):
            DistributedBlockSampler(*args)


def corrupt(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: corrupt(p, 0, b"NOTTOKEN"), "not a smollm2 token file (bad magic"),
        (lambda p: corrupt(p, 8, struct.pack("<I", 99)), "token file format version 99, this smollm2 reads version 1"),
        (lambda p: corrupt(p, 12, struct.pack("<I", 3)), "corrupt header: 3 bytes per token"),
        (
            lambda p: p.write_bytes(p.read_bytes()[:-10]),
            "truncated: header says 1000 tokens (2256 bytes) but the file has 2246 bytes",
        ),
        (
            lambda p: p.write_bytes(p.read_bytes() + b"\0\0"),
            "token count disagrees with the file size: header says 1000 tokens (2256 bytes) but the file has 2258"
            " bytes",
        ),
        (lambda p: p.write_bytes(b"SMOL"), "not a smollm2 token file"),
        (lambda p: p.unlink(), "no such token file"),
    ],
)
def test_bad_token_files_are_refused_with_one_line(tmp_path, damage, message):
    path = tmp_path / "train.bin"
    make_token_file(path)
    damage(path)
    with pytest.raises(UserError) as exc:
        PackedTokenDataset(path, block_size=16)
    assert str(exc.value).startswith(f"{path}: ") and message in str(exc.value) and "\n" not in str(exc.value)


def test_mismatched_vocab_tokenizer_or_size_is_refused(tmp_path):
    path = tmp_path / "train.bin"
    make_token_file(path, num_tokens=100, vocab_size=500)
    PackedTokenDataset(path, 16, expected_vocab_size=500, expected_fingerprint=FINGERPRINT)  # matching: fine
    with pytest.raises(UserError, match=r"ids go up to 499 \(tokenizer vocab 500\) but the model's vocab size is 400"):
        PackedTokenDataset(path, 16, expected_vocab_size=400)
    with pytest.raises(UserError, match="made by another tokenizer"):
        PackedTokenDataset(path, 16, expected_fingerprint="cd" * 32)
    with pytest.raises(UserError, match="100 tokens, fewer than one block of 128 \\+ 1"):
        PackedTokenDataset(path, 128)


def test_verify_scans_for_ids_outside_the_vocab(tmp_path):
    path = tmp_path / "t.bin"
    make_token_file(path, num_tokens=5000, vocab_size=500)
    assert verify_token_file(path, chunk_tokens=1024).num_tokens == 5000
    corrupt(path, HEADER_BYTES + 2 * 3000, struct.pack("<H", 777))
    with pytest.raises(UserError, match="token id 777 at position 3000 is outside the vocab of 500"):
        verify_token_file(path, chunk_tokens=1024)


def write_shards(folder, tokens, cuts, split="train"):
    """tokens cut at `cuts` into the shards of one split; returns their paths."""
    folder.mkdir(exist_ok=True)
    edges = [0, *cuts, len(tokens)]
    paths = [folder / shard_name(split, i, len(edges) - 1) for i in range(len(edges) - 1)]
    for path, start, end in zip(paths, edges, edges[1:]):
        write_token_file(path, [tokens[start:end]], vocab_size=500, tokenizer_fingerprint=FINGERPRINT, num_docs=1)
    return paths


def test_a_sharded_split_reads_as_the_file_of_its_concatenation(tmp_path):
    tokens = make_token_file(tmp_path / "whole.bin", num_tokens=1000)
    # Shards of many sizes: one shorter than a block, one empty, boundaries inside blocks and on them.
    files = write_shards(tmp_path / "data", tokens, [100, 130, 130, 133, 640, 999])
    assert split_files(tmp_path / "data", "train") == files
    assert [f.name for f in files] == [f"train-{i:05d}-of-00007.bin" for i in range(7)]
    whole = PackedTokenDataset(tmp_path / "whole.bin", block_size=32)
    sharded = PackedTokenDataset(files, block_size=32)
    assert len(sharded) == len(whole) == 999 // 32 and sharded.num_tokens == 1000
    for i in range(len(whole)):
        assert all(torch.equal(a, b) for a, b in zip(sharded[i], whole[i])), i
    everything = list(range(len(whole)))[::-1]
    assert all(
        torch.equal(a, b)
        for pair in zip(sharded.__getitems__(everything), whole.__getitems__(everything))
        for a, b in zip(*pair)
    )
    assert torch.equal(pickle.loads(pickle.dumps(sharded))[20][0], whole[20][0])


def test_split_files_finds_one_layout_and_refuses_mixed_or_incomplete_ones(tmp_path):
    tokens = np.arange(100) % 500
    assert split_files(tmp_path, "train") == [tmp_path / "train.bin"]  # absent: opening it names the file
    write_shards(tmp_path / "a", tokens, [50, 70])
    (tmp_path / "a" / ".train-00000-of-00003.bin.tmp123").write_bytes(b"")  # an unfinished write elsewhere: ignored
    assert [f.name for f in split_files(tmp_path / "a", "train")] == [shard_name("train", i, 3) for i in range(3)]
    assert split_files(tmp_path / "a", "val") == [tmp_path / "a" / "val.bin"]

    def error(folder) -> str:
        with pytest.raises(UserError) as exc:
            split_files(folder, "train")
        assert "\n" not in str(exc.value)
        return str(exc.value)

    (tmp_path / "a" / shard_name("train", 1, 3)).unlink()
    assert error(tmp_path / "a") == (
        f"{tmp_path}/a/train-00001-of-00003.bin: missing (1 of the 3 train shards are;"
        " run `smollm2 prepare --shard 1/3` for it)"
    )
    write_shards(tmp_path / "b", tokens, [50])
    write_shards(tmp_path / "b", tokens, [20, 40, 60])
    assert error(tmp_path / "b") == (
        f"{tmp_path}/b: holds shards of two preparations, train-00000-of-00002.bin and"
        " train-00000-of-00004.bin...; a folder holds one prepared dataset"
    )
    write_shards(tmp_path / "c", tokens, [50])
    make_token_file(tmp_path / "c" / "train.bin")
    assert error(tmp_path / "c") == (
        f"{tmp_path}/c: holds both train.bin and train-00000-of-00002.bin...; a folder"
        " holds one prepared dataset: move one of them away"
    )


def test_shards_of_different_tokenizers_are_refused_naming_both(tmp_path):
    write_shards(tmp_path, np.arange(100) % 500, [50])
    write_token_file(
        tmp_path / shard_name("train", 1, 2),
        [np.arange(50)],
        vocab_size=500,
        tokenizer_fingerprint="cd" * 32,
        num_docs=1,
    )
    with pytest.raises(UserError) as exc:
        PackedTokenDataset(split_files(tmp_path, "train"), 8)
    assert str(exc.value).startswith(
        f"{tmp_path}/train-00001-of-00002.bin and {tmp_path}/train-00000-of-00002.bin were made by different tokenizers"
    )


def sparse_token_file(path, num_tokens: int, known: dict[int, np.ndarray]) -> None:
    """A token file of num_tokens uint16 ids that takes no disk: zeros except the `known` runs (position: ids)."""
    header = TokenFileHeader(
        version=1,
        dtype=np.dtype("<u2"),
        vocab_size=500,
        num_tokens=num_tokens,
        num_docs=1,
        tokenizer_fingerprint=FINGERPRINT,
    )
    with open(path, "wb") as f:
        f.write(encode_token_file_header(header))
        f.truncate(HEADER_BYTES + 2 * num_tokens)
        for position, ids in known.items():
            f.seek(HEADER_BYTES + 2 * position)
            f.write(ids.astype("<u2").tobytes())


def test_streams_over_4_gi_tokens(tmp_path):
    # 5 Gi tokens (10 GiB, sparse on disk): blocks past 2**32 tokens need 64-bit offsets everywhere.
    num_tokens, block = 5 * 2**30, 1024
    late_block = (2**32 + 12345 * block) // block
    ids = np.arange(block + 1) % 500
    sparse_token_file(tmp_path / "big.bin", num_tokens, {late_block * block: ids})
    assert read_token_file_header(tmp_path / "big.bin").num_tokens == num_tokens
    ds = PackedTokenDataset(tmp_path / "big.bin", block)
    assert len(ds) == (num_tokens - 1) // block
    x, y = ds[late_block]
    assert x.tolist() == ids[:-1].tolist() and y.tolist() == ids[1:].tolist()
    assert torch.equal(ds.__getitems__([0, late_block])[1][0], x) and ds[late_block - 1][0].sum() == 0
    # Two shards of 3 Gi tokens each: the stream's second half starts past 2**32 tokens too.
    (tmp_path / "sharded").mkdir()
    shard = 3 * 2**30
    crossing = (shard - 100) // block  # the block that crosses from the first shard into the second
    first = np.arange(shard - crossing * block) % 500
    second = (np.arange(block + 1 - len(first)) + 7) % 500
    sparse_token_file(tmp_path / "sharded" / shard_name("train", 0, 2), shard, {crossing * block: first})
    sparse_token_file(tmp_path / "sharded" / shard_name("train", 1, 2), shard, {0: second, 2**31: ids})
    sharded = PackedTokenDataset(split_files(tmp_path / "sharded", "train"), block)
    assert sharded.num_tokens == 6 * 2**30 and len(sharded) == (6 * 2**30 - 1) // block
    assert sharded[crossing][0].tolist() + [sharded[crossing][1][-1].item()] == first.tolist() + second.tolist()
    late = (shard + 2**31) // block
    assert sharded.__getitems__([late])[0][0].tolist() == ids[:-1].tolist()


def test_shuffled_blocks_is_a_fresh_permutation_per_epoch_for_any_size():
    for n in (1, 2, 3, 5, 16, 17, 1000, 2**16 + 1):
        order = shuffled_blocks(np.arange(n), n, seed=0, epoch=0)
        assert sorted(order.tolist()) == list(range(n)), n
        assert order.tolist() == shuffled_blocks(np.arange(n)[::-1], n, 0, 0)[::-1].tolist()  # entry by entry
    firsts = [int(shuffled_blocks(np.arange(1), 10, seed=3, epoch=e)[0]) for e in range(5000)]
    # Each block leads an epoch about 500 times in 5000 (a binomial's 3.5 sigma: 81).
    assert all(abs(c - 500) < 81 for c in np.bincount(firsts, minlength=10)), np.bincount(firsts)
    # Different streams (the sources of a mixture) and seeds give different orders; huge sizes need no table.
    a, b, c = (shuffled_blocks(np.arange(100), 100, s, 0, stream=t) for s, t in ((0, 0), (0, 1), (1, 0)))
    assert len({tuple(a), tuple(b), tuple(c)}) == 3
    huge = shuffled_blocks(np.arange(10**6, 10**6 + 64), 10**12, 0, 0)
    assert len(set(huge.tolist())) == 64 and huge.max() < 10**12
    with pytest.raises(ValueError):
        shuffled_blocks(np.array([10]), 10, 0, 0)


def test_write_token_file_is_atomic_and_can_verify_first(tmp_path):
    path = tmp_path / "t.bin"
    make_token_file(path, num_tokens=100)
    before = path.read_bytes()
    with pytest.raises(UserError, match="token id 600 at position 1 is outside the vocab of 500"):
        write_token_file(
            path, [np.array([1, 600, 2])], vocab_size=500, tokenizer_fingerprint=FINGERPRINT, num_docs=1, verify=True
        )
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["t.bin"]
