"""Token file format, PackedTokenDataset and DistributedBlockSampler (smollm2/data.py)."""
import pickle
import struct

import numpy as np
import pytest
import torch

from smollm2.data import (HEADER_BYTES, DistributedBlockSampler, PackedTokenDataset, read_token_file_header,
                          verify_token_file, write_token_file)
from smollm2.errors import UserError

FINGERPRINT = "ab" * 32


def make_token_file(path, num_tokens=1000, vocab_size=500, seed=0):
    tokens = np.random.default_rng(seed).integers(0, vocab_size, num_tokens)
    write_token_file(path, [tokens[:num_tokens // 3], tokens[num_tokens // 3:]], vocab_size=vocab_size,
                     tokenizer_fingerprint=FINGERPRINT, num_docs=7)
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
        assert x.tolist() == tokens[i * 64:i * 64 + 64].tolist()
        assert y.tolist() == tokens[i * 64 + 1:i * 64 + 65].tolist()
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
        blocks = order[epoch * num_samples:(epoch + 1) * num_samples]
        covered = np.zeros(num_samples * block_size, dtype=int)
        for i in blocks:
            covered[i * block_size:(i + 1) * block_size] += 1  # the input tokens of block i
        assert covered.tolist() == [1] * (num_samples * block_size), f"epoch {epoch}"
    # Each epoch is shuffled, and differently.
    assert order[:num_samples] != order[num_samples:2 * num_samples]
    assert order[:num_samples] != sorted(order[:num_samples])


@pytest.mark.parametrize("consumed", [0, 1, 13, 24, 37, 100, 251])
@pytest.mark.parametrize("resume_dp", [1, 2, 3, 4])
def test_resume_continues_the_same_global_order(consumed, resume_dp):
    num_samples, micro = 25, 3
    reference = DistributedBlockSampler(num_samples, 1, 0, 1, seed=11).global_order(0, 400)
    # The uninterrupted run on 2 ranks consumes exactly the reference order.
    assert interleaved([DistributedBlockSampler(num_samples, micro, r, 2, seed=11) for r in range(2)], 40) \
        == reference[:240]
    resumed = [DistributedBlockSampler(num_samples, micro, r, resume_dp, seed=11, consumed_samples=consumed)
               for r in range(resume_dp)]
    steps = 5
    assert interleaved(resumed, steps) == reference[consumed:consumed + steps * micro * resume_dp]


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


@pytest.mark.parametrize("damage, message", [
    (lambda p: corrupt(p, 0, b"NOTTOKEN"), "not a smollm2 token file (bad magic"),
    (lambda p: corrupt(p, 8, struct.pack("<I", 99)), "token file format version 99, this smollm2 reads version 1"),
    (lambda p: corrupt(p, 12, struct.pack("<I", 3)), "corrupt header: 3 bytes per token"),
    (lambda p: p.write_bytes(p.read_bytes()[:-10]),
     "truncated: header says 1000 tokens (2256 bytes) but the file has 2246 bytes"),
    (lambda p: p.write_bytes(p.read_bytes() + b"\0\0"),
     "token count disagrees with the file size: header says 1000 tokens (2256 bytes) but the file has 2258 bytes"),
    (lambda p: p.write_bytes(b"SMOL"), "not a smollm2 token file"),
    (lambda p: p.unlink(), "no such token file"),
])
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
