"""Checkpoint files written in the background: host copies of the state, written by a thread while training goes on.

DeepSpeed's engine.save_checkpoint gathers each file's state (the model's weights, ZeRO's optimizer
partitions, the schedule, our client state) and hands it to its checkpoint engine's `save(state, path)`.
SnapshotWriter is such an engine (DeepSpeed's checkpoint-engine interface: create, save, commit, load and
the questions DeepSpeed asks it). `save` copies every tensor of the state into host memory and returns: on
CUDA into pinned buffers, asynchronously, queued behind the step's kernels on the current stream, so
the training step's later in-place updates cannot reach them; the buffers are kept for the next save. After
DeepSpeed's save returns, `start` hands the copies to a thread, which waits for them and writes each file
with torch.save, as DeepSpeed's own TorchCheckpointEngine does (the same bytes), taking each file's size
and CRC-32 as it writes (the manifest's entries, with no second read). The loop waits only for the state
dicts and the copies to be issued; smollm2/checkpoint_manager.py keeps at most one save in flight and
writes the manifest and `latest` once every rank's thread is done.
"""

from __future__ import annotations

import copy
import os
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

Entries = dict[str, tuple[int, int]]  # file path -> (size in bytes, CRC-32)


class SnapshotWriter:
    """A DeepSpeed checkpoint engine that snapshots the state to host memory and writes it from a thread."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pinned = device.type == "cuda"
        self._free: dict[tuple[torch.Size, torch.dtype], list[torch.Tensor]] = {}  # host buffers to reuse
        self._in_use: list[torch.Tensor] = []
        self._files: list[tuple[Any, str]] = []  # (host copy of a file's state, its path), not yet written
        self._thread: threading.Thread | None = None
        self._entries: Entries = {}
        self._error: BaseException | None = None

    # -- DeepSpeed's checkpoint-engine interface (deepspeed.runtime.checkpoint_engine) -------------------

    def create(self, info: Any) -> None:
        """A save begins (DeepSpeed's call); the previous one's files were all handed to the thread."""

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        os.makedirs(path, exist_ok=exist_ok)

    def save(self, state_dict: Any, path: str) -> None:
        """A host copy of one file's state, written by the thread that `start` begins."""
        self._files.append((self._snapshot(state_dict, {}), path))

    def commit(self, info: Any) -> bool:
        return True  # the files are written in the background; the checkpoint manager waits for them

    def load(self, path: str, map_location: Any = None) -> Any:
        # DeepSpeed's own files, loaded as its TorchCheckpointEngine loads them (they pickle its objects).
        return torch.load(path, map_location=map_location, weights_only=False)

    def is_data_parallel_writer(self, dp_rank: int) -> bool:
        return dp_rank == 0  # as DeepSpeed's TorchCheckpointEngine: data-parallel rank 0 writes the model file

    def is_decoupled(self) -> bool:
        return False

    def preserves_storage_sharing(self) -> bool:
        return False  # the host copies hold each tensor's own elements only: DeepSpeed need not clone views

    def cleanup(self) -> None:
        self.wait()

    # -- the thread --------------------------------------------------------------------------------------

    def start(self, after: Callable[[], None] = lambda: None) -> None:
        """Write the files `save` was given, from a thread; then `after()` (a test's fault injection)."""
        files, self._files = self._files, []
        copied = None
        if self.pinned:
            copied = torch.cuda.Event()
            copied.record()  # after every copy on this stream
        self._entries, self._error = {}, None
        self._thread = threading.Thread(target=self._write, args=(files, copied, after), name="smollm2-checkpoint")
        self._thread.start()

    def busy(self) -> bool:
        """Whether the thread is still writing."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> tuple[Entries, BaseException | None]:
        """Wait for the thread; (the files it wrote with their size and CRC-32, the error that stopped it)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            for buffer in self._in_use:  # free for the next save
                self._free.setdefault((buffer.shape, buffer.dtype), []).append(buffer)
            self._in_use = []
        return self._entries, self._error

    def _write(self, files: list[tuple[Any, str]], copied: torch.cuda.Event | None, after: Callable[[], None]) -> None:
        try:
            if copied is not None:
                copied.synchronize()
            for state, path in files:
                with open(path, "wb") as raw:
                    out = _ChecksummedFile(raw)
                    torch.save(state, out)
                    raw.flush()
                    os.fsync(raw.fileno())  # on disk before the manifest says the checkpoint is complete
                self._entries[path] = (out.size, out.crc)
            after()
        except BaseException as exc:  # reported by the checkpoint manager, on every rank
            self._error = exc

    # -- host copies ---------------------------------------------------------------------------------

    def _snapshot(self, value: Any, copies: dict[int, torch.Tensor]) -> Any:
        """`value` with every tensor replaced by a host copy and every dict, list and tuple by a new one; other
        objects as they are. `copies` keeps a tensor met twice (a tied weight) one copy."""
        if isinstance(value, torch.Tensor):
            if id(value) not in copies:
                copies[id(value)] = self._host_copy(value)
            return copies[id(value)]
        if isinstance(value, dict):
            new = copy.copy(value)  # its type (OrderedDict, defaultdict) and attributes
            for key, item in value.items():
                new[key] = self._snapshot(item, copies)
            return new
        if isinstance(value, list):
            return [self._snapshot(item, copies) for item in value]
        if isinstance(value, tuple):
            items = [self._snapshot(item, copies) for item in value]
            if all(new is old for new, old in zip(items, value)):
                return value  # nothing in it to copy (a torch.Size, a tuple of numbers): it keeps its type
            return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)  # namedtuples too
        return value

    def _host_copy(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        free = self._free.get((tensor.shape, tensor.dtype))
        buffer = free.pop() if free else torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=self.pinned)
        self._in_use.append(buffer)
        return buffer.copy_(tensor, non_blocking=self.pinned)


class _ChecksummedFile:
    """A binary file object that keeps the size and CRC-32 of what is written through it."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.size, self.crc = raw, 0, 0

    def write(self, data: bytes) -> int:
        self.crc = zlib.crc32(data, self.crc)  # zlib releases the GIL on large buffers
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def relative(entries: Entries, folder: Path) -> Entries:
    """Entries keyed by the path inside `folder`."""
    return {str(Path(path).relative_to(folder)): entry for path, entry in entries.items()}
