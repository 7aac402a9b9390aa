"""smollm2.checkpoint without a training run: which checkpoint a resume picks, and what it reads to pick it."""

from pathlib import Path

import pytest
import torch

from smollm2 import checkpoint as ckpt
from smollm2.checkpoint_manager import choose_resume
from smollm2.errors import UserError


def save(root: Path, step: int) -> ckpt.Checkpoint:
    """A finished save as far as choosing one goes: DeepSpeed's model-states file with our client state, a
    file of (pretend) optimizer state, the manifest, and `latest` moved to it."""
    checkpoint = ckpt.Checkpoint(root, ckpt.checkpoint_tag(step))
    checkpoint.path.mkdir(parents=True)
    torch.save({ckpt.CLIENT_STATE_KEY: {"step": step}}, checkpoint.path / "mp_rank_00_model_states.pt")
    (checkpoint.path / "optim_states.pt").write_bytes(bytes(range(256)) * 64)
    ckpt.write_manifest(checkpoint, step)
    (root / ckpt.LATEST).write_text(checkpoint.tag)
    return checkpoint


@pytest.fixture
def run_dir(tmp_path) -> Path:
    for step in (2, 4, 6):
        save(tmp_path / ckpt.CHECKPOINTS, step)
    return tmp_path


@pytest.fixture
def checksummed(monkeypatch) -> list[str]:
    """The checkpoint folders whose files get checksummed, in order."""
    folders: list[str] = []
    crc32 = ckpt._crc32

    def recording(path: Path) -> int:
        folders.append(path.parent.name)
        return crc32(path)

    monkeypatch.setattr(ckpt, "_crc32", recording)
    return folders


def test_resume_checks_only_the_newest_checkpoint_when_it_is_good(run_dir, checksummed):
    """Checking a checkpoint reads all of it (GBs at 1.7B, on every rank): a resume reads no older one."""
    assert ckpt.resolve_resume("auto", run_dir).tag == "step_00000006"
    assert set(checksummed) == {"step_00000006"}


def test_a_rotten_newest_checkpoint_costs_one_more_check(run_dir, checksummed):
    optim = run_dir / ckpt.CHECKPOINTS / "step_00000006" / "optim_states.pt"
    optim.write_bytes(b"\xff" + optim.read_bytes()[1:])  # same size, one byte flipped
    skipped = []
    assert ckpt.latest_good_checkpoint(run_dir, report=skipped.append).tag == "step_00000004"
    assert skipped == [
        f"skipping checkpoint {optim.parent}: optim_states.pt does not match its checksum (corrupted on disk)"
    ]
    assert set(checksummed) == {"step_00000006", "step_00000004"}


def test_resume_never_refuses_checkpoints_without_reading_them(run_dir, checksummed):
    with pytest.raises(ckpt.UserError, match="already has checkpoints"):
        ckpt.resolve_resume("never", run_dir)
    assert checksummed == []


class OneOfTwoRanks:
    """What choose_resume uses of a smollm2.collectives.CpuGroup: rank `rank` of two that see the same files;
    rank 0's verdict is `verdict` (what its own choose_resume returned)."""

    def __init__(self, rank: int, verdict=None) -> None:
        self.rank, self.world_size, self.verdict = rank, 2, verdict

    def gather(self, value):
        return [value, value]

    def from_rank0(self, compute):
        return compute() if self.rank == 0 else self.verdict


def test_only_rank_0_reads_the_checkpoints_to_choose_where_to_resume(run_dir, checksummed):
    """A resume verifies the newest checkpoint once for the job, not once per rank (8 ranks of a node would read a
    20 GB checkpoint 8 times): rank 0 checksums, the other ranks take its verdict and read nothing."""
    chosen = choose_resume(OneOfTwoRanks(0), "auto", run_dir, print)
    assert chosen.tag == "step_00000006" and set(checksummed) == {"step_00000006"}
    checksummed.clear()
    assert choose_resume(OneOfTwoRanks(1, verdict=chosen), "auto", run_dir, print) == chosen
    assert checksummed == []


def test_ranks_that_see_different_checkpoints_are_refused_before_any_is_read(run_dir, checksummed):
    class Lagging(OneOfTwoRanks):  # rank 1's file system has not seen step 6 yet
        def gather(self, value):
            return [value, "step_00000004"]

    differ = r"ranks would resume from different checkpoints \(rank 0: step_00000006, rank 1: step_00000004\)"
    with pytest.raises(UserError, match=differ):
        choose_resume(Lagging(0), "auto", run_dir, print)
    assert checksummed == []
