"""Who am I in the job? Rank, world size and local rank from whichever launcher started us.

One place reads every launcher's environment, so `smollm2 train` runs the same under `deepspeed`,
`torchrun`, `srun` (one task per GPU), `mpirun` and plain `python`. Checked in this order; the
launcher closest to the process wins:

| launcher                     | rank / world / local rank                          | rendezvous address              |
|------------------------------|----------------------------------------------------|---------------------------------|
| deepspeed, torchrun          | RANK, WORLD_SIZE, LOCAL_RANK (set by them)         | MASTER_ADDR/PORT (set by them)  |
| mpirun (Open MPI)            | OMPI_COMM_WORLD_{RANK,SIZE,LOCAL_RANK}             | rank 0's host, via mpi4py       |
| srun (one task per GPU)      | SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID  | first host of the step          |
| other MPI (MPICH, Intel MPI) | mpi4py                                             | rank 0's host, via mpi4py       |
| python                       | 0, 1, 0                                            | 127.0.0.1 and a free port       |

Open MPI comes before SLURM because an `mpirun` inside an allocation starts its ranks through an
`srun` of its own (one task per node), whose SLURM_PROCID would be the node's index, not the rank.
SLURM counts only inside an `srun` step (SLURM_STEP_NUM_TASKS): the batch script itself also has
SLURM_PROCID=0 and the job's SLURM_NTASKS, and a plain `python` there is one process, not rank 0 of N.

MASTER_ADDR/MASTER_PORT already in the environment always win, so a user can pin them. The result
is written back as RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, the variables
`torch.distributed`'s env:// rendezvous (and so DeepSpeed) reads; with all five set, DeepSpeed skips
its own MPI discovery, which would rendezvous on the machine's first non-loopback address.
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
from dataclasses import dataclass

from smollm2.errors import UserError

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    launcher: str  # "env" (deepspeed/torchrun), "mpi", "slurm" or "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    """A port nothing listens on now, picked below Linux's ephemeral range (32768+).

    The port is bound again only later, when rank 0 opens the rendezvous store after its imports and
    setup; a port the kernel picked (bind to 0) lies in the ephemeral range, where the kernel may hand it
    to any outgoing connection meanwhile (gloo opens many), and then the store fails with EADDRINUSE.
    """
    chooser = random.Random()  # seeded from the OS: the training RNGs are left alone
    while True:
        port = chooser.randrange(20000, 32768)
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port


def _int_env(*names: str) -> int | None:
    """The first of `names` that is set and not empty, as an int."""
    for name in names:
        value = os.environ.get(name, "")
        if value != "":
            try:
                return int(value)
            except ValueError:
                raise UserError(f"environment variable {name}={value!r}: expected an integer") from None
    return None


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist, as `scontrol show hostnames` would print it first.

    'gpu[007-009,012],cpu1' -> 'gpu007'; 'rack[1-2]-n[01-04]' -> 'rack1-n01'. Used where scontrol
    is missing, as it often is inside the containers a job runs in.
    """
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            end = i
            break
    return re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[-,]", m.group(1))[0], nodelist[:end])


def _slurm_master_addr() -> str:
    # The step's node list, not the job's: a step may run on part of the allocation, and its task 0
    # runs on the step's first node.
    nodelist = (
        os.environ.get("SLURM_STEP_NODELIST")
        or os.environ.get("SLURM_JOB_NODELIST")
        or os.environ.get("SLURM_NODELIST")
    )
    if not nodelist:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (FileNotFoundError, subprocess.CalledProcessError):
        return first_slurm_host(nodelist)


def _mpi4py_rendezvous() -> tuple[int, int, int, str, int]:
    """Rank, world, local rank, and the address and port rank 0 chose, agreed through MPI itself."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise UserError(
            "started by an MPI launcher, but mpi4py is not installed: pip install 'smollm2[mpi]' "
            "(or set MASTER_ADDR and MASTER_PORT yourself)"
        ) from None
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    local_comm = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank, single_host = local_comm.Get_rank(), local_comm.Get_size() == world
    local_comm.Free()
    # Rank 0 hosts the TCP store, so a port free on its host is the one to use. On one host every
    # rank rendezvous on loopback; across hosts, on rank 0's host name.
    choice = None
    if rank == 0:
        choice = ("127.0.0.1" if single_host else socket.gethostname(), free_port())
    addr, port = comm.bcast(choice, root=0)
    return rank, world, local_rank, addr, port


def _mpi_env() -> DistEnv:
    rank = _int_env("OMPI_COMM_WORLD_RANK")
    world = _int_env("OMPI_COMM_WORLD_SIZE")
    local_rank = _int_env("OMPI_COMM_WORLD_LOCAL_RANK")
    if None in (rank, world, local_rank) or "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        rank, world, local_rank, addr, port = _mpi4py_rendezvous()
        os.environ.setdefault("MASTER_ADDR", addr)
        os.environ.setdefault("MASTER_PORT", str(port))
    return DistEnv(rank, world, local_rank, "mpi")


def _slurm_env() -> DistEnv:
    env = DistEnv(_int_env("SLURM_PROCID"), _int_env("SLURM_STEP_NUM_TASKS"), _int_env("SLURM_LOCALID") or 0, "slurm")
    os.environ.setdefault("MASTER_ADDR", _slurm_master_addr())
    # Every task derives the same port from the job id without talking to the others; 10000-29999
    # stays below Linux's ephemeral range (32768+), where the OS hands out ports to other sockets.
    os.environ.setdefault("MASTER_PORT", str(10000 + (_int_env("SLURM_JOB_ID", "SLURM_JOBID") or 0) % 20000))
    return env


def discover() -> DistEnv:
    """Reads the launcher's environment; sets the env:// variables torch.distributed needs.

    Call it once per process, before joining the process group (under MPI every rank must call it: the
    rendezvous is agreed collectively). A second call reads back what the first wrote (launcher "env").
    """
    if _int_env("RANK") is not None and _int_env("WORLD_SIZE") is not None:
        env = DistEnv(_int_env("RANK"), _int_env("WORLD_SIZE"), _int_env("LOCAL_RANK") or 0, "env")
    elif _int_env("OMPI_COMM_WORLD_RANK") is not None:
        env = _mpi_env()
    elif _int_env("SLURM_PROCID") is not None and _int_env("SLURM_STEP_NUM_TASKS") is not None:
        env = _slurm_env()
    elif _int_env("PMI_RANK", "PMIX_RANK") is not None:
        env = _mpi_env()
    else:
        env = DistEnv(0, 1, 0, "single")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if not (0 <= env.rank < env.world_size and 0 <= env.local_rank <= env.rank):
        raise UserError(
            f"launcher ({env.launcher}) gave rank {env.rank}, local rank {env.local_rank}, "
            f"world size {env.world_size}: expected 0 <= local rank <= rank < world size"
        )
    os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(DEFAULT_PORT))
    return env
