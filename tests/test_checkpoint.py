"""smollm2.checkpoint without a training run: which checkpoint a resume picks, and what it reads to pick it."""

from pathlib import Path

import pytest
import torch

from smollm2 import checkpoint as ckpt


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
