"""Data mixtures (smollm2/mixture.py): exact shares, stages, resume on any world size, the files, the config."""

import json
import math
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest
import torch
import yaml

from smollm2.config import DataConfig, SourceConfig, StageConfig, load_config
from smollm2.data import DistributedBlockSampler, shard_name, write_token_file
from smollm2.errors import UserError
from smollm2.mixture import DataPosition, MixtureOrder, Stage, interleave, open_mixture, resolve_sources

FINGERPRINT = "ab" * 32


def stages_of(*stages: tuple[int, dict[str, float]], names=None) -> list[Stage]:
    """Stages from (start_step, {name: weight}) pairs, through the config path (exact decimal weights)."""
    names = names or list(stages[0][1])
    sources = [SourceConfig(name=n, path=f"data/{n}") for n in names]
    return resolve_sources(DataConfig(sources=sources, stages=[StageConfig(s, w) for s, w in stages]))[1]


def sources_of(order: MixtureOrder, steps: int, position: DataPosition | None = None) -> np.ndarray:
    """The source of every position of `steps` global batches from `position` (the start by default)."""
    position = position or order.start()
    out = []
    for _ in range(steps):
        sources, position = order.draw(position)
        out.append(sources)
    return np.concatenate(out)


def prefix_errors(sources: np.ndarray, shares: tuple[Fraction, ...]) -> np.ndarray:
    """e[T, j] = n_j(T) - w_j T over the first T = 1, 2, ... positions, exactly (Fractions)."""
    counts = np.cumsum(np.eye(len(shares), dtype=np.int64)[sources], axis=0).astype(object)
    positions = np.arange(1, len(sources) + 1, dtype=np.int64).astype(object)[:, None]
    return counts - positions * np.array(shares, dtype=object)[None, :]


def tijdeman_bound(shares) -> Fraction:
    m = sum(1 for s in shares if s > 0)
    return Fraction(0) if m == 1 else 1 - Fraction(1, 2 * m - 2)


ODD_WEIGHTS = [
    {"a": 0.7, "b": 0.3},
    {"a": 1 / 3, "b": 2 / 3},
    {"a": 0.6180339887, "b": 0.381966, "c": 0.001},
    {"a": 0.37, "b": 0.41, "c": 0.22},
    {"a": 0.5, "b": 0.3, "c": 0.15, "d": 0.05},
    {"a": 0.123456789, "b": 0.9, "c": 0.0001, "d": 2.5},  # unnormalised: shares are weight / sum
    {"a": 0.97, "b": 0.01, "c": 0.01, "d": 0.01},
]


@pytest.mark.parametrize("weights", ODD_WEIGHTS, ids=lambda w: "/".join(map(str, w.values())))
@pytest.mark.parametrize("global_batch_size", [1, 7, 64])
def test_shares_stay_within_one_block_of_the_weights(weights, global_batch_size):
    [stage] = stages_of((0, weights))
    order = MixtureOrder([1000] * len(weights), [stage], global_batch_size)
    steps = 3000 // global_batch_size
    errors = prefix_errors(sources_of(order, steps), stage.shares)
    bound = tijdeman_bound(stage.shares)
    # Every prefix, so every window of W global batches from the start: within 1 - 1/(2m-2) < 1 block.
    assert max(abs(e) for e in errors.flat) <= bound < 1
    # Any window inside the stage is the difference of two prefixes: within two blocks, one with two sources.
    spread = max(max(errors[:, j]) - min(min(errors[:, j]), 0) for j in range(len(weights)))
    assert spread <= 2 * bound <= (1 if len(weights) == 2 else 2)
    # Whole global batches: realised token shares against the weights, block by block.
    counts = np.bincount(sources_of(order, steps), minlength=len(weights))
    for j, share in enumerate(stage.shares):
        assert abs(counts[j] - share * steps * global_batch_size) < 1


def test_no_interleave_keeps_every_sliding_window_within_one_block():
    """Why the guarantee is about windows from a stage's start: for 0.47/0.43/0.10 (an exhaustive search)
    no sequence of 18 samples keeps every window of it within one block of the weights."""
    shares = (Fraction(47, 100), Fraction(43, 100), Fraction(10, 100))

    def longest(counts, low, high, depth=0) -> int:
        """The longest sequence extending this prefix (counts; min and max error of each source so far)."""
        best = depth
        for j in range(3):
            errors = [c + (i == j) - w * (depth + 1) for i, (c, w) in enumerate(zip(counts, shares))]
            new_low, new_high = [min(a, e) for a, e in zip(low, errors)], [max(a, e) for a, e in zip(high, errors)]
            # every window's count within one block <=> each source's prefix errors spread over at most 1
            if all(h - lo <= 1 for lo, h in zip(new_low, new_high)) and best < 18:
                best = max(best, longest([c + (i == j) for i, c in enumerate(counts)], new_low, new_high, depth + 1))
        return best

    assert longest([0, 0, 0], [0] * 3, [0] * 3) == 17
    # Tijdeman's interleave keeps windows from the start within its bound, and any window within two blocks.
    order = MixtureOrder([100] * 3, [Stage(0, shares)], global_batch_size=1)
    errors = prefix_errors(sources_of(order, 18), shares)
    assert max(abs(e) for e in errors.flat) <= Fraction(3, 4)


@pytest.mark.parametrize("weights", ODD_WEIGHTS, ids=lambda w: "/".join(map(str, w.values())))
def test_the_table_of_one_period_is_the_rule_itself(weights):
    """MixtureOrder reads a stage's interleave from one period when that is short (7/10 and 3/10: 10 positions;
    0.37/0.41/0.22: 100); decided position by position, from any position, the rule gives the same sources."""
    [stage] = stages_of((0, weights))
    order = MixtureOrder([5] * len(weights), [stage], global_batch_size=7)
    quotas = [int(share * math.lcm(*(s.denominator for s in stage.shares))) for share in stage.shares]
    position, drawn = order.start(), [0] * len(weights)
    for _ in range(60):  # 420 positions: over four periods of the longest table here
        sources, position = order.draw(position)
        assert sources.tolist() == interleave(quotas, drawn, 7).tolist()
        drawn = list(position.drawn_in_stage)


def test_shares_are_the_decimals_written():
    [stage] = stages_of((0, {"web": 0.7, "code": 0.3}))
    assert stage.shares == (Fraction(7, 10), Fraction(3, 10))
    order = MixtureOrder([100, 100], [stage], global_batch_size=10)
    sources = sources_of(order, 50).reshape(50, 10)
    # 7/10 and 3/10 with 10 samples per batch: every single global batch holds exactly 7 and 3.
    assert all(np.bincount(batch, minlength=2).tolist() == [7, 3] for batch in sources)


def test_stage_switch_at_the_exact_step():
    stages = stages_of((0, {"a": 1, "b": 0, "c": 1}), (5, {"a": 0, "b": 1, "c": 3}), (9, {"a": 0.2, "b": 0.2, "c": 0}))
    order = MixtureOrder([50, 50, 50], stages, global_batch_size=8)
    batches = sources_of(order, 14).reshape(14, 8)
    present = [set(batch.tolist()) for batch in batches]
    assert present[:5] == [{0, 2}] * 5 and present[5:9] == [{1, 2}] * 4 and present[9:] == [{0, 1}] * 5
    for stage, (first, end) in zip(stages, [(0, 5), (5, 9), (9, 14)]):
        # Each stage interleaves from its own start: every prefix of it within the bound of its own shares.
        errors = prefix_errors(batches[first:end].reshape(-1), stage.shares)
        assert max(abs(e) for e in errors.flat) <= tijdeman_bound(stage.shares)
    position = order.advance(order.start(), 5)
    assert position.drawn_in_stage == (0, 0, 0) and position.drawn == (20, 0, 20)
    assert [order.stage_at(s) for s in (0, 4, 5, 8, 9, 10**9)] == [0, 0, 1, 1, 2, 2]


def write_source(
    folder,
    num_blocks: int,
    block_size: int,
    *,
    val_blocks: int = 0,
    fingerprint: str = FINGERPRINT,
    vocab_size: int = 500,
    seed: int = 0,
) -> np.ndarray:
    """A prepared folder whose train.bin holds exactly num_blocks blocks (and val.bin if val_blocks); its tokens."""
    folder.mkdir(parents=True)
    tokens = np.random.default_rng(seed).integers(0, vocab_size, num_blocks * block_size + 1)
    write_token_file(
        folder / "train.bin", [tokens], vocab_size=vocab_size, tokenizer_fingerprint=fingerprint, num_docs=1
    )
    if val_blocks:
        write_token_file(
            folder / "val.bin",
            [tokens[: val_blocks * block_size + 1]],
            vocab_size=vocab_size,
            tokenizer_fingerprint=fingerprint,
            num_docs=1,
        )
    return tokens


SIZES = {"a": 7, "b": 13, "c": 40}  # blocks: a and b repeat within the runs below
THREE_STAGES = (
    (0, {"a": 0.5, "b": 0.3, "c": 0.2}),
    (5, {"a": 0.1, "b": 0.0, "c": 0.9}),
    (10, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}),
)


@pytest.fixture
def three_sources(tmp_path):
    """Folders a, b, c of SIZES blocks of 4 tokens; returns the tokens of each."""
    return {
        name: write_source(tmp_path / name, size, 4, val_blocks=2 if name != "b" else 0, seed=i)
        for i, (name, size) in enumerate(SIZES.items())
    }


def open_three(tmp_path, global_batch_size=12, seed=3, stages=THREE_STAGES):
    sources = [SourceConfig(name=n, path=str(tmp_path / n)) for n in SIZES]
    resolved, resolved_stages = resolve_sources(
        DataConfig(sources=sources, stages=[StageConfig(s, w) for s, w in stages]), max_steps=100
    )
    return open_mixture(resolved, resolved_stages, block_size=4, global_batch_size=global_batch_size, seed=seed)


def consume(samplers, steps: int) -> list[int]:
    """The global order as the ranks consume it: micro-step by micro-step, rank 0's micro-batch first."""
    iterators = [iter(s) for s in samplers]
    micro_steps = steps * samplers[0].order.global_batch_size // (samplers[0].micro_batch_size * len(samplers))
    return [i for _ in range(micro_steps) for it in iterators for i in next(it)]


@pytest.mark.parametrize("resume_step", [0, 4, 5, 6, 9, 10, 12])  # before, at and after the switches at 5 and 10
@pytest.mark.parametrize("dp_size", [1, 2, 3, 4])
def test_resume_at_any_step_on_any_world_size_continues_the_same_blocks(tmp_path, three_sources, resume_step, dp_size):
    steps, batch = 16, 12
    mixture = open_three(tmp_path)
    # The global order, straight from the order: (source, block) as one MixtureDataset index.
    reference, position = [], mixture.start()
    for _ in range(steps):
        sources, blocks, position = mixture.order.global_batch(position)
        reference += (mixture.train.first_index[sources] + blocks).tolist()
    # The uninterrupted run on 2 ranks (micro-batch 3, accumulation 2) consumes exactly that.
    assert consume([mixture.sampler(3, r, 2, mixture.start()) for r in range(2)], steps) == reference
    # The trainer moves the position one step at a time and checkpoints it (JSON-able integers).
    position = mixture.start()
    for _ in range(resume_step):
        position = mixture.advance(position)
    saved = json.loads(json.dumps(mixture.state_dict(position)))
    resumed_mixture = open_three(tmp_path)  # a new process
    resumed = resumed_mixture.position_from_state(saved, "checkpoint")
    assert resumed == position
    micro = {1: 4, 2: 3, 3: 2, 4: 3}[dp_size]  # accumulation 3, 2, 2, 1
    samplers = [resumed_mixture.sampler(micro, r, dp_size, resumed) for r in range(dp_size)]
    assert consume(samplers, steps - resume_step) == reference[resume_step * batch :]


def test_a_resume_deep_into_a_long_run_replays_nothing():
    # 2T tokens in blocks of 2048 with 1024 per global batch: about 954K steps. Resume past the middle.
    stages = stages_of((0, {"web": 0.75, "code": 0.25}), (500_000, {"web": 0.5, "code": 0.5}))
    order = MixtureOrder([600_000_000, 100_000], stages, global_batch_size=1024, seed=1)
    step = 900_000
    in_stage = ((step - 500_000) * 512,) * 2
    drawn = (500_000 * 768 + in_stage[0], 500_000 * 256 + in_stage[1])
    position = DataPosition(step, drawn, in_stage)
    order.check(position)
    started = time.perf_counter()
    sources, blocks, after = order.global_batch(DataPosition(step, drawn, in_stage))
    assert time.perf_counter() - started < 1  # no replay of the 900K steps before, no table of 600M blocks
    assert np.bincount(sources).tolist() == [512, 512] and after.step == step + 1
    assert blocks[sources == 1].max() < 100_000 and drawn[1] // 100_000 > 1000  # "code" is deep in its epochs


def test_one_source_is_the_single_dataset_order():
    [stage] = stages_of((0, {"only": 1.0}))
    order = MixtureOrder([37], [stage], global_batch_size=8, seed=11)
    blocks, position = [], order.start()
    for _ in range(20):  # 160 samples: four epochs and a bit
        _, batch, position = order.global_batch(position)
        blocks += batch.tolist()
    assert blocks == DistributedBlockSampler(37, 1, 0, 1, seed=11).global_order(0, 160)


def test_a_small_source_repeats_reshuffled_and_a_large_one_never_repeats():
    [stage] = stages_of((0, {"small": 0.5, "large": 0.5}))
    order = MixtureOrder([10, 1000], [stage], global_batch_size=10, seed=5)
    per_source, position = {0: [], 1: []}, order.start()
    for _ in range(100):  # 500 blocks from each
        sources, blocks, position = order.global_batch(position)
        for j in (0, 1):
            per_source[j] += blocks[sources == j].tolist()
    epochs = [per_source[0][e * 10 : (e + 1) * 10] for e in range(50)]
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)  # every epoch is all of its blocks, once
    assert len({tuple(epoch) for epoch in epochs}) > 40  # and each is shuffled afresh
    assert len(set(per_source[1])) == 500  # the large source: no block twice


def test_the_dataset_yields_blocks_of_their_sources_through_a_dataloader(tmp_path, three_sources):
    mixture = open_three(tmp_path)
    # Items: the block's inputs and next tokens from that source's file.
    for index in (0, 6, 7, 19, 20, 59):
        source = int(mixture.train.source_of(np.array([index]))[0])
        assert source == int(np.searchsorted([7, 20, 60], index, side="right"))
        block = index - int(mixture.train.first_index[source])
        tokens = three_sources["abc"[source]]
        x, y = mixture.train[index]
        assert x.tolist() == tokens[block * 4 : block * 4 + 4].tolist()
        assert y.tolist() == tokens[block * 4 + 1 : block * 4 + 5].tolist()
        assert x.dtype == y.dtype == torch.int64
    # Through a DataLoader with workers (the dataset is pickled into them), rank 1 of 2, from step 3.
    start = mixture.advance(mixture.start(), 3)
    loader = torch.utils.data.DataLoader(mixture.train, batch_sampler=mixture.sampler(3, 1, 2, start), num_workers=2)
    expected = iter(mixture.sampler(3, 1, 2, start))
    for (x, y), _ in zip(loader, range(2 * 8)):  # 8 steps of accumulation 2
        indices = next(expected)
        assert torch.equal(x, torch.stack([mixture.train[i][0] for i in indices]))
        assert torch.equal(y, torch.stack([mixture.train[i][1] for i in indices]))
    # What both ranks took from each source is what the position says every rank consumed.
    tokens_seen = dict.fromkeys(SIZES, 0)
    for rank in range(2):
        for indices, _ in zip(mixture.sampler(3, rank, 2, start), range(2 * 8)):
            for source in mixture.train.source_of(np.array(indices)):
                tokens_seen["abc"[source]] += 4
    before, after = mixture.tokens(start), mixture.tokens(mixture.advance(start, 8))
    assert tokens_seen == {name: after[name] - before[name] for name in SIZES}


def test_sources_may_be_sharded_folders_and_lack_validation_data(tmp_path):
    tokens = write_source(tmp_path / "whole", 30, 4, val_blocks=3)
    (tmp_path / "sharded").mkdir()
    for i, (start, end) in enumerate([(0, 50), (50, 51), (51, 121)]):  # the middle shard is shorter than a block
        write_token_file(
            tmp_path / "sharded" / shard_name("train", i, 3),
            [tokens[start:end]],
            vocab_size=500,
            tokenizer_fingerprint=FINGERPRINT,
            num_docs=1,
        )
    resolved, stages = resolve_sources(
        DataConfig(
            sources=[
                SourceConfig("whole", str(tmp_path / "whole"), 1),
                SourceConfig("sharded", str(tmp_path / "sharded"), 1),
            ]
        )
    )
    mixture = open_mixture(resolved, stages, block_size=4, global_batch_size=4)
    whole, sharded = mixture.train.datasets
    assert len(whole) == len(sharded) == 30 and list(mixture.val) == ["whole"]
    assert all(torch.equal(whole[i][0], sharded[i][0]) and torch.equal(whole[i][1], sharded[i][1]) for i in range(30))


def test_missing_sources_and_tokenizer_mismatches_are_one_line_errors(tmp_path):
    write_source(tmp_path / "a", 10, 4, val_blocks=2)
    write_source(tmp_path / "other", 10, 4, fingerprint="cd" * 32)
    write_source(tmp_path / "other_val", 10, 4)
    write_token_file(
        tmp_path / "other_val" / "val.bin", [np.arange(9)], vocab_size=500, tokenizer_fingerprint="cd" * 32, num_docs=1
    )
    (tmp_path / "empty").mkdir()

    def error(*sources, **checks) -> str:
        resolved, stages = resolve_sources(DataConfig(sources=[SourceConfig(n, str(tmp_path / n), 1) for n in sources]))
        with pytest.raises(UserError) as exc:
            open_mixture(resolved, stages, block_size=4, global_batch_size=4, **checks)
        assert "\n" not in str(exc.value)
        return str(exc.value)

    assert error("a", "gone") == (
        f"{tmp_path}/gone: no such folder (data source 'gone'; make it with `smollm2 prepare --out {tmp_path}/gone`)"
    )
    assert error("a", "empty") == f"{tmp_path}/empty/train.bin: no such token file (make one with `smollm2 prepare`)"
    # Another tokenizer: both files named, whichever split differs.
    assert error("a", "other").startswith(
        f"{tmp_path}/other/train.bin and {tmp_path}/a/train.bin were made by"
        " different tokenizers (fingerprints cdcdcdcdcdcd... and abababababab..."
    )
    assert error("a", "other_val").startswith(
        f"{tmp_path}/other_val/val.bin and {tmp_path}/a/train.bin were made by different tokenizers"
    )
    assert error("a", expected_fingerprint="cd" * 32).startswith(f"{tmp_path}/a/train.bin: made by another tokenizer")
    assert error("a", expected_vocab_size=100).startswith(f"{tmp_path}/a/train.bin: token ids go up to 499")


MIXTURE_REQUIRED = ["train.out_dir=run", "train.max_steps=100", "schedule.warmup_steps=10"]
A = "{name: a, path: d, weight: 1}"
A_STAGED = "{name: a, path: d}"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.path=d", f"data.sources=[{A}]"], "data.sources: set data.path (one dataset) or data.sources (a"),
        ([], "data.path: required, not set (or name several datasets in data.sources)"),
        (["data.path=d", "data.stages=[{start_step: 0, weights: {d: 1}}]"], "data.stages: needs data.sources"),
        (["data.sources=[{path: d, weight: 1}]"], "data.sources[0].name: required, not set"),
        (["data.sources=[{name: a/b, path: d, weight: 1}]"], "data.sources[0].name: 'a/b' is not a valid name"),
        ([f"data.sources=[{A}, {A}]"], "data.sources[1].name: 'a' names two sources"),
        (["data.sources=[{name: a, weight: 1}]"], "data.sources[0].path: required, not set"),
        (["data.sources=[{name: a, path: d, wieght: 1}]"], "data.sources[0].wieght: unknown key (expected one of"),
        ([f"data.sources=[{A_STAGED}]"], "data.sources[0].weight: required, not set (its share of training tokens)"),
        (["data.sources=[{name: a, path: d, weight: -1}]"], "data.sources[0].weight: must be a number >= 0, got -1.0"),
        (["data.sources=[{name: a, path: d, weight: .nan}]"], "data.sources[0].weight: must be a number >= 0, got nan"),
        (["data.sources=[{name: a, path: d, weight: lots}]"], "data.sources[0].weight: expected float or null, got"),
        (["data.sources=[{name: a, path: d, weight: 0}]"], "data.sources: at least one weight must be above 0"),
        (
            [f"data.sources=[{A}]", "data.stages=[{start_step: 0, weights: {a: 1}}]"],
            "data.sources[0].weight: data.stages",
        ),
        (
            [f"data.sources=[{A_STAGED}]", "data.stages=[{start_step: 5, weights: {a: 1}}]"],
            "data.stages[0].start_step: the first stage must start at step 0, got 5",
        ),
        (
            [f"data.sources=[{A_STAGED}]", "data.stages=[{weights: {a: 1}}]"],
            "data.stages[0].start_step: required, an optimizer step >= 0",
        ),
        (
            [
                f"data.sources=[{A_STAGED}]",
                "data.stages=[{start_step: 0, weights: {a: 1}}, {start_step: 0, weights: {a: 1}}]",
            ],
            "data.stages[1].start_step: 0 is not after the stage",
        ),
        (
            [
                f"data.sources=[{A_STAGED}]",
                "data.stages=[{start_step: 0, weights: {a: 1}}, {start_step: 100, weights: {a: 1}}]",
            ],
            "data.stages[1].start_step: 100 is not before train.max_steps (100): the stage would never run",
        ),
        (
            [f"data.sources=[{A_STAGED}]", "data.stages=[{start_step: 0, weights: {a: 1, c: 1}}]"],
            "data.stages[0].weights.c: no such source (data.sources: a)",
        ),
        (
            [f"data.sources=[{A_STAGED}, {{name: b, path: e}}]", "data.stages=[{start_step: 0, weights: {a: 1}}]"],
            "data.stages[0].weights: no weight for source 'b' (give it 0 to leave it out of this stage)",
        ),
        (
            [f"data.sources=[{A_STAGED}]", "data.stages=[{start_step: 0, weights: {a: true}}]"],
            "data.stages[0].weights.a: expected float, got True",
        ),
        (
            [f"data.sources=[{A_STAGED}]", "data.stages=[{start_step: 0, weights: {a: 0}}]"],
            "data.stages[0].weights: at least one weight must be above 0",
        ),
    ],
)
def test_bad_mixture_configs_name_the_key(overrides, message):
    with pytest.raises(UserError) as exc:
        load_config(None, MIXTURE_REQUIRED + overrides)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_a_single_path_is_one_source_named_after_its_folder(tmp_path):
    sources, stages = resolve_sources(DataConfig(path=str(tmp_path / "shakespeare")))
    assert [(s.name, s.path) for s in sources] == [("shakespeare", tmp_path / "shakespeare")]
    assert stages == [Stage(0, (Fraction(1),))]


def test_checkpointed_positions_are_checked_against_the_config(tmp_path, three_sources):
    mixture = open_three(tmp_path)
    state = mixture.state_dict(mixture.advance(mixture.start(), 7))
    # Stage 0 (steps 0-4): 60 samples as 30/18/12; stage 1 (steps 5-6): 24 samples, 2.4 and 21.6 rounded to 2 and 22.
    assert state == {"step": 7, "drawn": {"a": 32, "b": 18, "c": 34}, "drawn_in_stage": {"a": 2, "b": 0, "c": 22}}

    def error(state, **changes) -> str:
        with pytest.raises(UserError) as exc:
            open_three(tmp_path, **changes).position_from_state(state, "ckpt/step7")
        assert "\n" not in str(exc.value)
        return str(exc.value)

    assert error(state, global_batch_size=24) == (
        "ckpt/step7: train.global_batch_size: 24, but the data position has"
        " 84 samples after 7 steps; a resumed run keeps it"
    )
    moved = ((0, {"a": 0.5, "b": 0.3, "c": 0.2}), (6, {"a": 0.1, "b": 0.0, "c": 0.9}))
    assert error(state, stages=moved).startswith(
        "ckpt/step7: data.stages: the stage in force at step 7 starts at"
        " step 6, but the data position counts 24 samples into its stage"
    )
    renamed = {**state, "drawn": {"a": 32, "b": 18, "x": 34}}
    assert error(renamed).startswith(
        "ckpt/step7: its data position counts the sources a, b, x, data.sources has a, b, c"
    )
    # Later stages may change: the position is still the one the run reached.
    later = THREE_STAGES[:2] + ((12, {"a": 1, "b": 1, "c": 0}),)
    assert open_three(tmp_path, stages=later).position_from_state(state, "ckpt") == mixture.advance(mixture.start(), 7)
    # A checkpoint from before mixtures (consumed_samples only) resumes a one-source run.
    resolved, stages = resolve_sources(DataConfig(path=str(tmp_path / "c")))
    single = open_mixture(resolved, stages, block_size=4, global_batch_size=12)
    assert single.position_from_state({"step": 5, "consumed_samples": 60}, "old") == DataPosition(5, (60,), (60,))
    assert error({"step": 5, "consumed_samples": 60}).startswith("ckpt/step7: written before data mixtures")


def test_the_accounting_table_and_repeat_notices(tmp_path, three_sources):
    mixture = open_three(tmp_path)
    lines = mixture.summary_lines(max_steps=20)
    assert lines[0] == "data: 3 sources, 3 stages; 20 steps x 12 blocks x 4 tokens = 960 training tokens"
    assert lines[1].split() == [
        "source",
        "train",
        "tokens",
        "val",
        "tokens",
        "stage",
        "0",
        "@0",
        "stage",
        "1",
        "@5",
        "stage",
        "2",
        "@10",
        "tokens",
        "in",
        "run",
        "epochs",
    ]
    # a: 0.5 x 5 steps + 0.1 x 5 + 1/3 x 10 of 12 blocks = 76 blocks = 304 tokens, 76 / 7 = 10.86 epochs.
    assert lines[2].split() == ["a", "29", "9", "0.5000", "0.1000", "0.3333", "304", "10.86"]
    assert lines[3].split() == ["b", "53", "none", "0.3000", "0.0000", "0.3333", "232", "4.46"]
    assert lines[4].split() == ["c", "161", "9", "0.2000", "0.9000", "0.3333", "424", "2.65"]
    assert lines[5:] == [
        f"warning: data source 'a' ({tmp_path}/a) would be read 10.9 times over train.max_steps (more than 4 epochs):"
        " give it a smaller weight or more data",
        f"warning: data source 'b' ({tmp_path}/b) would be read 4.5 times over train.max_steps (more than 4 epochs):"
        " give it a smaller weight or more data",
    ]
    # During the run: a line when a source starts another pass over its blocks (a: 7 blocks, 6 per step).
    first, second = mixture.advance(mixture.start()), mixture.advance(mixture.start(), 2)
    assert mixture.epoch_messages(mixture.start(), first) == []
    assert mixture.epoch_messages(first, second) == [
        "data: source 'a' starts epoch 2 by step 2 (its blocks repeat, reshuffled)"
    ]


@pytest.mark.slow
def test_the_example_config_on_the_real_corpora(tmp_path, shakespeare_dir, smollm2_tokenizer_dir):
    """configs/mixture-example.yaml's data section, with the corpora made as its header says."""
    from conftest import ROOT
    from smollm2.prepare import prepare

    text = (ROOT / "configs" / "mixture-example.yaml").read_text()
    lines = text.splitlines()
    snippet = lines[
        lines.index(
            "#   python - <<'EOF'   # the Bible as JSON lines, one chapter each (the package holds"
            " it as one Python string)"
        )
        + 1 : lines.index("#   EOF")
    ]
    (tmp_path / "data").mkdir()
    subprocess.run(
        [sys.executable, "-c", "\n".join(line.removeprefix("#   ") for line in snippet)], cwd=tmp_path, check=True
    )
    prepare([f"{shakespeare_dir}/*_gut.txt"], smollm2_tokenizer_dir, tmp_path / "data/shakespeare", num_proc=2)
    prepare([str(tmp_path / "data/kjv.jsonl")], smollm2_tokenizer_dir, tmp_path / "data/kjv", num_proc=2)
    config = yaml.safe_load(text)
    data, train = config["data"], config["train"]
    sources = [SourceConfig(**{**s, "path": str(tmp_path / s["path"])}) for s in data["sources"]]
    resolved, stages = resolve_sources(
        DataConfig(sources=sources, stages=[StageConfig(**s) for s in data["stages"]]), train["max_steps"]
    )
    mixture = open_mixture(
        resolved,
        stages,
        block_size=config["model"]["block_size"],
        global_batch_size=train["global_batch_size"],
        seed=1234,
        expected_vocab_size=config["model"]["vocab_size"],
    )
    summary = mixture.summary_lines(train["max_steps"])
    print("\n".join(summary))  # for the log
    # The numbers the config's comment gives: tokens per source over the run, the plays' epochs.
    assert summary[0] == "data: 2 sources, 2 stages; 200 steps x 16 blocks x 128 tokens = 409,600 training tokens"
    plays, bible = summary[2].split(), summary[3].split()
    assert plays[0] == "shakespeare" and plays[-2:] == ["225,280", "0.15"] and plays[3:5] == ["0.8000", "0.3000"]
    assert bible[0] == "kjv" and bible[-2] == "184,320" and len(summary) == 4  # no warning: nothing repeats
    assert sorted(mixture.val) == ["kjv", "shakespeare"]
    # Step 99 draws 80/20, step 100 (the second stage) 30/70: 13/3 and 5/11 of 16 blocks.
    position = mixture.advance(mixture.start(), 99)
    for expected in ([13, 3], [5, 11]):
        sources, _, position = mixture.order.global_batch(position)
        assert np.bincount(sources, minlength=2).tolist() == expected
