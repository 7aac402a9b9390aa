"""smollm2.checkpoint_writer: host copies taken at save time, files written by a thread, sizes and CRC-32s taken
as they are written."""

import threading
import zlib
from collections import OrderedDict

import torch

from smollm2.checkpoint_writer import SnapshotWriter, relative


def state() -> dict:
    weight = torch.arange(12, dtype=torch.float32).view(3, 4)
    return {
        "module": OrderedDict(embed=weight, head=weight, norm=torch.ones(4)),  # a tied weight
        "optimizer": {
            "state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.zeros(3, 4)}},
            "param_groups": [{"lr": 0.1}],
        },
        "view": torch.arange(100.0)[10:20],  # a view of a larger tensor
        "meta": ("a", 1, None),
        "shapes": [torch.Size([3, 4])],  # DeepSpeed's param_shapes: zero_to_fp32 calls their numel()
    }


def test_files_hold_the_state_of_the_save_not_what_training_did_after_it(tmp_path):
    writer = SnapshotWriter(torch.device("cpu"))
    live = state()
    writer.save(live, str(tmp_path / "model.pt"))
    live["module"]["embed"].add_(100)  # the next optimizer step, before the thread writes
    live["optimizer"]["param_groups"][0]["lr"] = 0.2
    writer.start()
    entries, error = writer.wait()
    assert error is None
    saved = torch.load(tmp_path / "model.pt", weights_only=False)
    assert torch.equal(saved["module"]["embed"], torch.arange(12, dtype=torch.float32).view(3, 4))
    assert saved["optimizer"]["param_groups"][0]["lr"] == 0.1
    assert saved["module"]["embed"].data_ptr() == saved["module"]["head"].data_ptr()  # still one tensor
    assert saved["view"].untyped_storage().nbytes() == 10 * 4  # its own elements, not the larger tensor's
    assert isinstance(saved["module"], OrderedDict) and saved["meta"] == ("a", 1, None)
    assert type(saved["shapes"][0]) is torch.Size
    data = (tmp_path / "model.pt").read_bytes()
    assert entries == {str(tmp_path / "model.pt"): (len(data), zlib.crc32(data))}
    assert relative(entries, tmp_path) == {"model.pt": (len(data), zlib.crc32(data))}


def test_the_loop_goes_on_while_the_thread_writes_and_waits_for_it_at_wait(tmp_path):
    writer = SnapshotWriter(torch.device("cpu"))
    writer.save(state(), str(tmp_path / "a.pt"))
    release = threading.Event()
    writer.start(after=release.wait)  # the thread holds after its files, as the tests' slow-save fault does
    assert writer.busy()
    release.set()
    entries, error = writer.wait()
    assert not writer.busy() and error is None and list(entries) == [str(tmp_path / "a.pt")]


def test_host_buffers_are_reused_by_the_next_save(tmp_path):
    writer = SnapshotWriter(torch.device("cpu"))
    writer.save(state(), str(tmp_path / "1.pt"))
    writer.start()
    writer.wait()
    buffers = {id(b) for free in writer._free.values() for b in free}
    writer.save(state(), str(tmp_path / "2.pt"))
    assert {id(b) for b in writer._in_use} <= buffers  # no new host memory for a state of the same shapes
    writer.start()
    assert writer.wait()[1] is None
    assert torch.equal(torch.load(tmp_path / "2.pt", weights_only=False)["view"], torch.arange(10.0, 20.0))


def test_a_write_that_fails_is_reported_by_wait_not_raised_in_the_thread(tmp_path):
    writer = SnapshotWriter(torch.device("cpu"))
    writer.save(state(), str(tmp_path / "no-such-folder" / "model.pt"))
    writer.start()
    entries, error = writer.wait()
    assert entries == {} and isinstance(error, FileNotFoundError)
