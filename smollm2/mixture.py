"""Data mixtures: several prepared datasets blended by weight, in stages, in one resumable global order.

    data:
      sources: [{name: web, path: data/fineweb}, {name: code, path: data/stack}]
      stages: [{start_step: 0, weights: {web: 0.9, code: 0.1}}, {start_step: 8000, weights: {web: 0.6, code: 0.4}}]

(Without data.stages, each source carries its own `weight` and there is one stage; smollm2.config checks the
keys, and a single data.path is a mixture of one source, so the trainer has one data path.) A weight is a share
of training tokens: every sample is one block of block_size tokens, so a source's share of the samples
is its share of the tokens. Weights are read as the decimals written in the config and divided by their
stage's sum exactly (fractions.Fraction): 0.7 and 0.3 are 7/10 and 3/10, not the nearest binary floats.

The global order G. Position p of G is sample p % B of global batch (optimizer step) p // B, B the
global batch size. Ranks slice each global batch as they slice DistributedBlockSampler's order (each
micro-step takes the next micro_batch_size x dp_size entries, rank r the r-th micro-batch of them), so
every world size sees the same G. Which source fills position p, and which of its blocks:

- The stage in force at step s is the last one with start_step <= s; its weights decide all of global
  batch s. Each stage interleaves afresh from its first position (its counts start at zero), so from
  step start_step on the mixture is exactly the new one: a source weighted 0 there gets no block from
  that step on, not even one owed from the stage before.
- Within a stage the sources are interleaved by Tijdeman's rule for the chairman assignment problem
  (R. Tijdeman, Discrete Mathematics 32, 1980), deterministic, earliest deadline first. With c_j the
  blocks source j had so far in the stage, t = 1, 2, ... the position in the stage and m the number of
  sources weighted above 0: the candidates for position t are the sources with w_j t - c_j >= 1/(2m-2),
  and the candidate whose next block falls due first, the smallest (c_j + 1 - 1/(2m-2)) / w_j, gets it
  (ties: the first source). In integers, so every process makes the same decisions.
- Source j's k-th block is entry k % N_j of its epoch k // N_j, a fresh permutation of its N_j blocks
  keyed by (seed, epoch, j) (smollm2.data.shuffled_blocks): a small source repeats, reshuffled each
  time; a large one is read at most once. One source alone gets exactly DistributedBlockSampler's order.

The guarantee (Tijdeman's theorem; tests/test_mixture.py checks it for 2-4 sources and odd weights): if
n_j of the first T samples of a stage come from source j, for any T (so for every window of W global
batches from the stage's start, T = W B), then |n_j - w_j T| <= 1 - 1/(2m-2): always less than one
block. A window that starts later in the stage is the difference of two such prefixes, within two blocks
(within one with two sources). No interleave can keep all of those within one block for three or more
sources and arbitrary weights: for weights 0.47/0.43/0.10 no sequence of more than 17 samples does
(an exhaustive search, in the tests), nor of more than 13 global batches of 16.

The state. A decision depends only on the counts, so the data position after s optimizer steps is
`DataPosition`: s, and per source the blocks drawn so far (which of its blocks comes next) and within the
current stage (what the interleave decides next). The trainer checkpoints it (`Mixture.state_dict`) and
moves it one global batch per optimizer step (`Mixture.advance`: B integer decisions, about a
millisecond at B = 1024). A resumed run continues from it at once, at any step and on any world size.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smollm2.config import Config, DataConfig
from smollm2.data import (
    BlockOrder,
    PackedTokenDataset,
    TokenFileHeader,
    check_compatible,
    check_same_tokenizer,
    read_token_file_header,
    split_files,
)
from smollm2.errors import UserError
from smollm2.tokenizer import eos_token_id, load_tokenizer, tokenizer_fingerprint

# A source read more often than this over a run is warned about: its blocks would be seen many times.
MAX_EPOCHS_WITHOUT_WARNING = 4
# A stage's interleave is kept as a table when it repeats within this many positions (MixtureOrder.draw).
MAX_TABLE_PERIOD = 1 << 16


# -- the config --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A data source, checked: its name and prepared folder."""

    name: str
    path: Path


@dataclass(frozen=True)
class Stage:
    """From optimizer step `start_step` on, source j gets the share `shares[j]` of the samples."""

    start_step: int
    shares: tuple[Fraction, ...]  # summing to 1


def resolve_sources(data: DataConfig, max_steps: int | None = None) -> tuple[list[Source], list[Stage]]:
    """The sources and stages of a data config section (checked: UserError naming the first bad key).

    A single data.path is one source, named after its folder, with weight 1.
    """
    data.check(max_steps)
    if data.path:
        folder = Path(data.path)
        return [Source(folder.resolve().name or "data", folder)], [Stage(0, (Fraction(1),))]
    sources = [Source(s.name, Path(s.path)) for s in data.sources]
    if not data.stages:
        return sources, [Stage(0, _shares([s.weight for s in data.sources]))]
    return sources, [
        Stage(stage.start_step, _shares([stage.weights[s.name] for s in data.sources])) for stage in data.stages
    ]


def _shares(weights: list[float]) -> tuple[Fraction, ...]:
    """The weights as the decimals written in the config (repr: the shortest decimal that reads back as the
    float), divided by their sum exactly."""
    exact = [Fraction(repr(w)) for w in weights]
    return tuple(w / sum(exact) for w in exact)


# -- the global order -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataPosition:
    """Where the data order stands after `step` optimizer steps: what the trainer checkpoints."""

    step: int
    drawn: tuple[int, ...]  # blocks drawn from each source since step 0
    drawn_in_stage: tuple[int, ...]  # ... since the start of the stage in force at `step`


def interleave(quotas: Sequence[int], drawn: Sequence[int], count: int) -> np.ndarray:
    """The sources of the next `count` positions of a stage (Tijdeman's rule, module docstring).

    Source j's share is quotas[j] / sum(quotas); drawn[j] is how many of the stage's positions it has had.
    """
    total = sum(quotas)
    active = [j for j, q in enumerate(quotas) if q > 0]
    out = np.empty(count, dtype=np.int64)
    if len(active) == 1:
        out[:] = active[0]
        return out
    # The rule's 1/(2m-2) in units of 1/d: candidate when d (q_j t - Q c_j) >= Q; due at (d (c_j + 1) - 1) / q_j.
    d = 2 * len(active) - 2
    counts = list(drawn)
    t = sum(counts)
    for i in range(count):
        t += 1
        best = best_due = -1
        for j in active:
            if d * (quotas[j] * t - total * counts[j]) >= total:
                due = d * (counts[j] + 1) - 1
                if best < 0 or due * quotas[best] < best_due * quotas[j]:
                    best, best_due = j, due
        counts[best] += 1
        out[i] = best
    return out


class MixtureOrder:
    """The global order G of a mixture: the source and block at every position (block counts only, no files)."""

    def __init__(self, num_blocks: Sequence[int], stages: Sequence[Stage], global_batch_size: int, seed: int = 0):
        if (
            not stages
            or stages[0].start_step != 0
            or any(a.start_step >= b.start_step for a, b in zip(stages, stages[1:]))
        ):
            raise ValueError(f"stages must start at step 0 and increase: {[s.start_step for s in stages]}")
        if any(len(s.shares) != len(num_blocks) for s in stages) or min(num_blocks, default=0) < 1:
            raise ValueError(f"need >= 1 block per source and one share per source: {num_blocks}, {stages}")
        if global_batch_size < 1 or seed < 0:
            raise ValueError(f"need global_batch_size >= 1 and seed >= 0; got {global_batch_size}, {seed}")
        self.num_blocks = tuple(num_blocks)
        self.stages = tuple(stages)
        self.global_batch_size = global_batch_size
        self.seed = seed
        self._start_steps = [s.start_step for s in stages]
        # Each stage's shares as integers over a common denominator, for the exact interleave.
        self._quotas = []
        for stage in stages:
            denominator = math.lcm(*(share.denominator for share in stage.shares))
            self._quotas.append([int(share * denominator) for share in stage.shares])
        self.source_orders = [BlockOrder(n, seed, stream=j) for j, n in enumerate(num_blocks)]
        self._tables: dict[int, np.ndarray] = {}  # stage -> one period of its interleave, made on first use

    def stage_at(self, step: int) -> int:
        """Index of the stage in force at optimizer step `step`."""
        return bisect.bisect_right(self._start_steps, step) - 1

    def start(self) -> DataPosition:
        zeros = (0,) * len(self.num_blocks)
        return DataPosition(0, zeros, zeros)

    def check(self, position: DataPosition) -> None:
        """UserError unless `position` is one this order reaches (a checkpoint of another batch size or stages)."""
        if len(position.drawn) != len(self.num_blocks) or len(position.drawn_in_stage) != len(self.num_blocks):
            raise UserError(
                f"data position: counts {len(position.drawn)} sources, the config has {len(self.num_blocks)}"
            )
        if min(position.drawn_in_stage + (position.step,)) < 0:
            raise UserError(f"data position: negative counts {position}")
        stage_start = self.stages[self.stage_at(position.step)].start_step
        if sum(position.drawn) != position.step * self.global_batch_size:
            raise UserError(
                f"train.global_batch_size: {self.global_batch_size}, but the data position has "
                f"{sum(position.drawn)} samples after {position.step} steps; a resumed run keeps it"
            )
        if sum(position.drawn_in_stage) != (position.step - stage_start) * self.global_batch_size or any(
            a > b for a, b in zip(position.drawn_in_stage, position.drawn)
        ):
            raise UserError(
                f"data.stages: the stage in force at step {position.step} starts at step {stage_start}"
                f", but the data position counts {sum(position.drawn_in_stage)} samples into its stage;"
                " a resumed run keeps the stages it has been through"
            )

    def draw(self, position: DataPosition) -> tuple[np.ndarray, DataPosition]:
        """The source of each sample of global batch `position.step`, and the position after it."""
        stage = self.stage_at(position.step)
        quotas = self._quotas[stage]
        # The interleave repeats every sum(quotas) positions: there every count is exactly its quota, and the
        # rule's tests and comparisons all shift alike. Where that period is short (weights of a few decimals),
        # reading one period as a table spares B decisions in Python per global batch.
        period = sum(quotas)
        if period <= MAX_TABLE_PERIOD:
            if stage not in self._tables:
                self._tables[stage] = interleave(quotas, [0] * len(quotas), period)
            first = sum(position.drawn_in_stage) % period
            sources = self._tables[stage][(first + np.arange(self.global_batch_size)) % period]
        else:
            sources = interleave(quotas, position.drawn_in_stage, self.global_batch_size)
        taken = np.bincount(sources, minlength=len(self.num_blocks)).tolist()
        drawn = tuple(a + b for a, b in zip(position.drawn, taken))
        in_stage = tuple(a + b for a, b in zip(position.drawn_in_stage, taken))
        if self.stage_at(position.step + 1) != stage:  # the next step starts a stage: its counts start at zero
            in_stage = (0,) * len(in_stage)
        return sources, DataPosition(position.step + 1, drawn, in_stage)

    def advance(self, position: DataPosition, steps: int = 1) -> DataPosition:
        """The position `steps` global batches later."""
        for _ in range(steps):
            position = self.draw(position)[1]
        return position

    def global_batch(self, position: DataPosition) -> tuple[np.ndarray, np.ndarray, DataPosition]:
        """(source, block) of every sample of global batch `position.step`, and the position after it."""
        sources, after = self.draw(position)
        blocks = np.empty(len(sources), dtype=np.int64)
        for source, first in enumerate(position.drawn):
            rows = np.flatnonzero(sources == source)
            if rows.size:
                blocks[rows] = self.source_orders[source].take(first, rows.size)
        return sources, blocks, after


# -- the data the trainer reads ------------------------------------------------------------------------


class MixtureDataset(torch.utils.data.Dataset):
    """The blocks of several datasets under one index: index first_index[j] + b is block b of source j.

    Items are (input_ids, labels) pairs, as PackedTokenDataset's: the trainer counts each source's tokens
    from the data position (Mixture.tokens), the same number on every rank, not from the items.
    """

    def __init__(self, datasets: Sequence[PackedTokenDataset]):
        if len({d.block_size for d in datasets}) != 1:
            raise ValueError(f"datasets of different block sizes: {[d.block_size for d in datasets]}")
        self.datasets = list(datasets)
        self.first_index = np.cumsum([0] + [len(d) for d in datasets], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.first_index[-1])

    def source_of(self, indices: np.ndarray) -> np.ndarray:
        """The source index of each of these dataset indices."""
        return np.searchsorted(self.first_index, indices, side="right") - 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A whole micro-batch: one gather per source in it."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and not (0 <= indices.min() and indices.max() < len(self)):
            raise IndexError(f"indices {indices.tolist()} out of range for {len(self)} blocks")
        sources = self.source_of(indices)
        windows = np.empty((len(indices), self.datasets[0].block_size + 1), dtype=np.int64)
        for source in np.unique(sources):
            rows = np.flatnonzero(sources == source)
            windows[rows] = self.datasets[source].windows(indices[rows] - self.first_index[source])
        windows = torch.from_numpy(windows)
        return list(zip(windows[:, :-1].unbind(0), windows[:, 1:].unbind(0)))


class MixtureSampler(torch.utils.data.Sampler[list[int]]):
    """This rank's micro-batches of MixtureDataset indices, from `position` on, endlessly."""

    def __init__(
        self,
        order: MixtureOrder,
        first_index: np.ndarray,
        micro_batch_size: int,
        dp_rank: int,
        dp_size: int,
        position: DataPosition,
    ):
        if micro_batch_size < 1 or dp_size < 1 or order.global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(
                f"global batch {order.global_batch_size} is not a multiple of micro_batch_size"
                f" {micro_batch_size} x dp_size {dp_size}"
            )
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} not in [0, {dp_size})")
        self.order = order
        self.first_index = np.asarray(first_index, dtype=np.int64)
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.position = position

    def __iter__(self) -> Iterator[list[int]]:
        position = self.position
        micro, per_micro_step = self.micro_batch_size, self.micro_batch_size * self.dp_size
        while True:
            sources, blocks, position = self.order.global_batch(position)
            indices = (self.first_index[sources] + blocks).tolist()
            for start in range(self.dp_rank * micro, len(indices), per_micro_step):
                yield indices[start : start + micro]


@dataclass
class Mixture:
    """A mixture opened for training: its datasets, its order, and the trainer's view of the data position."""

    sources: list[Source]
    train: MixtureDataset
    val: dict[str, PackedTokenDataset]  # the sources that have validation data
    order: MixtureOrder
    tokenizer_fingerprint: str

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    @property
    def block_size(self) -> int:
        return self.train.datasets[0].block_size

    def start(self) -> DataPosition:
        return self.order.start()

    def advance(self, position: DataPosition, steps: int = 1) -> DataPosition:
        return self.order.advance(position, steps)

    def sampler(self, micro_batch_size: int, dp_rank: int, dp_size: int, position: DataPosition) -> MixtureSampler:
        return MixtureSampler(self.order, self.train.first_index, micro_batch_size, dp_rank, dp_size, position)

    def tokens(self, position: DataPosition) -> dict[str, int]:
        """Training tokens consumed from each source up to `position` (the same number on every rank)."""
        return {name: drawn * self.block_size for name, drawn in zip(self.names, position.drawn)}

    def state_dict(self, position: DataPosition) -> dict[str, Any]:
        return {
            "step": position.step,
            "drawn": dict(zip(self.names, position.drawn)),
            "drawn_in_stage": dict(zip(self.names, position.drawn_in_stage)),
        }

    def position_from_state(self, state: dict[str, Any], where: str) -> DataPosition:
        """The position a checkpoint's `state_dict` describes; `where` (the checkpoint) is named in errors.

        A checkpoint written before mixtures has only {"step", "consumed_samples"}: fine for one source. Its data
        step is consumed_samples / global batch, which runs ahead of its optimizer step after a rollback.
        """
        if "drawn" not in state:
            if len(self.sources) > 1:
                raise UserError(
                    f"{where}: written before data mixtures, with one dataset; it cannot resume "
                    f"a mixture of {len(self.sources)} sources"
                )
            step = state["consumed_samples"] // self.order.global_batch_size
            stage_start = self.order.stages[self.order.stage_at(step)].start_step
            position = DataPosition(
                step,
                (state["consumed_samples"],),
                (state["consumed_samples"] - stage_start * self.order.global_batch_size,),
            )
        else:
            if len(state["drawn"]) == len(self.names) == 1:  # one dataset: its folder may have moved
                state = {**state, "drawn": {self.names[0]: [*state["drawn"].values()][0]}}
                state["drawn_in_stage"] = {self.names[0]: [*state["drawn_in_stage"].values()][0]}
            if sorted(state["drawn"]) != sorted(self.names):
                raise UserError(
                    f"{where}: its data position counts the sources {', '.join(state['drawn'])}, "
                    f"data.sources has {', '.join(self.names)}; a resumed run keeps the source names"
                )
            position = DataPosition(
                state["step"],
                tuple(state["drawn"][n] for n in self.names),
                tuple(state["drawn_in_stage"][n] for n in self.names),
            )
        try:
            self.order.check(position)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        return position

    def epoch_messages(self, before: DataPosition, after: DataPosition) -> list[str]:
        """A line for each source of a mixture that began another pass over its blocks between two positions."""
        lines = []
        if len(self.sources) == 1:  # one dataset's passes are plain epochs, as before mixtures
            return lines
        for name, size, a, b in zip(self.names, self.order.num_blocks, before.drawn, after.drawn):
            last_epoch = (b - 1) // size  # the epoch of the last block drawn (0-based)
            if b > a and last_epoch > max(a - 1, 0) // size:
                lines.append(
                    f"data: source {name!r} starts epoch {last_epoch + 1} by step {after.step} (its blocks "
                    "repeat, reshuffled)"
                )
        return lines

    def summary_lines(self, max_steps: int) -> list[str]:
        """The accounting table printed at the start of a run: sizes, weights per stage, epochs over max_steps."""
        order, block = self.order, self.block_size
        batch_tokens = order.global_batch_size * block
        lines = [
            f"data: {len(self.sources)} source{'s' * (len(self.sources) > 1)}, {len(order.stages)} "
            f"stage{'s' * (len(order.stages) > 1)}; {max_steps:,} steps x {order.global_batch_size} blocks x "
            f"{block} tokens = {max_steps * batch_tokens:,} training tokens"
        ]
        ends = [s.start_step for s in order.stages[1:]] + [max_steps]
        steps_in_stage = [max(0, min(end, max_steps) - s.start_step) for s, end in zip(order.stages, ends)]
        header = ["source", "train tokens", "val tokens"] + [
            f"stage {i} @{s.start_step}" for i, s in enumerate(order.stages)
        ]
        header += ["tokens in run", "epochs"]
        rows, warnings = [header], []
        for j, source in enumerate(self.sources):
            expected_blocks = sum(
                stage.shares[j] * steps * order.global_batch_size for stage, steps in zip(order.stages, steps_in_stage)
            )
            epochs = float(expected_blocks / order.num_blocks[j])
            val = self.val.get(source.name)
            rows.append(
                [
                    source.name,
                    f"{self.train.datasets[j].num_tokens:,}",
                    f"{val.num_tokens:,}" if val is not None else "none",
                ]
                + [f"{float(stage.shares[j]):.4f}" for stage in order.stages]
                + [f"{round(expected_blocks * block):,}", f"{epochs:.2f}"]
            )
            if epochs > MAX_EPOCHS_WITHOUT_WARNING:
                warnings.append(
                    f"warning: data source {source.name!r} ({source.path}) would be read {epochs:.1f} "
                    f"times over train.max_steps (more than {MAX_EPOCHS_WITHOUT_WARNING} epochs): "
                    "give it a smaller weight or more data"
                )
        widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
        for row in rows:
            cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
            lines.append("  " + "  ".join(cells))
        return lines + warnings


def open_mixture(
    sources: Sequence[Source],
    stages: Sequence[Stage],
    *,
    block_size: int,
    global_batch_size: int,
    seed: int = 0,
    expected_vocab_size: int | None = None,
    expected_fingerprint: str | None = None,
) -> Mixture:
    """Open every source's train split (and val split where it has one) and build the mixture's order.

    Every file must come from one tokenizer: a mismatch is a UserError naming both files.
    """
    train: list[PackedTokenDataset] = []
    val: dict[str, PackedTokenDataset] = {}
    first: tuple[Path, TokenFileHeader] | None = None  # the first file seen, and its header: every other must match it
    for source in sources:
        if not source.path.is_dir():
            raise UserError(
                f"{source.path}: no such folder (data source {source.name!r}; make it with "
                f"`smollm2 prepare --out {source.path}`)"
            )
        for split in ("train", "val"):
            files = split_files(source.path, split)
            if split == "val" and not files[0].exists():
                continue  # a source may come without validation data
            headers = [read_token_file_header(f) for f in files]
            first = first or (files[0], headers[0])
            for file, header in zip(files, headers):
                check_same_tokenizer(*first, file, header)
            check_compatible(files[0], headers[0], expected_vocab_size, expected_fingerprint)
            if split == "train":
                train.append(PackedTokenDataset(files, block_size, expected_vocab_size=expected_vocab_size))
            elif sum(h.num_tokens for h in headers) > block_size:
                val[source.name] = PackedTokenDataset(files, block_size, expected_vocab_size=expected_vocab_size)
    order = MixtureOrder([len(d) for d in train], stages, global_batch_size, seed)
    return Mixture(list(sources), MixtureDataset(train), val, order, first[1].tokenizer_fingerprint)


# -- the training data of a config: the mixture and its tokenizer, checked against the model -------------


@dataclass
class TrainingData:
    """The tokenizer and the blocks of data.path, or of the weighted mixture data.sources (smollm2.mixture)."""

    tokenizer: Any  # tokenizers.Tokenizer
    tokenizer_path: Path  # the first source's tokenizer.json; every token file was made by it
    eos_id: int  # the id that ends every document
    fingerprint: str  # the tokenizer's (smollm2.tokenizer.tokenizer_fingerprint)
    mixture: Mixture  # train blocks of every source, val blocks of those that have them, the global order


def open_training_data(config: Config) -> TrainingData:
    """The data's tokenizer and token files, checked against the model config (data.path is one source)."""
    sources, stages = resolve_sources(config.data, config.train.max_steps)
    mixture = open_mixture(
        sources,
        stages,
        block_size=config.model.block_size,
        global_batch_size=config.train.global_batch_size,
        seed=config.train.seed,
        expected_vocab_size=config.model.vocab_size,
    )
    if not mixture.val:
        raise UserError(
            f"{sources[0].path}: no validation data (val.bin with more than model.block_size "
            f"{config.model.block_size} tokens){' in any data source' if len(sources) > 1 else ''}; "
            "re-run `smollm2 prepare` with --val-fraction or --val-docs"
        )
    tokenizer_path = sources[0].path / "tokenizer.json"
    tokenizer = load_tokenizer(tokenizer_path)
    eos_id = eos_token_id(tokenizer)
    if eos_id != config.model.eos_token_id:
        raise UserError(
            f"model.eos_token_id: {config.model.eos_token_id}, but {tokenizer_path} ends documents with id {eos_id}"
        )
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint != mixture.tokenizer_fingerprint:
        raise UserError(
            f"{tokenizer_path}: not the tokenizer that made the token files (fingerprint {fingerprint[:12]}..., "
            f"theirs {mixture.tokenizer_fingerprint[:12]}...): re-run `smollm2 prepare` with this tokenizer"
        )
    return TrainingData(tokenizer, tokenizer_path, eos_id, fingerprint, mixture)
