"""Who am I in the job? Rank, world size and local rank from whichever launcher started us.

One place reads every launcher's environment, so `smollm2 train` runs the same under `deepspeed`,
`torchrun`, `srun` (one task per GPU), `mpirun` and plain `python`:

| launcher                   | rank / world / local rank                     | rendezvous address            |
|----------------------------|-----------------------------------------------|-------------------------------|
| deepspeed, torchrun        | RANK, WORLD_SIZE, LOCAL_RANK (set by them)    | MASTER_ADDR/PORT (set by them)|
| srun                       | SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID     | first host of the job         |
| mpirun (Open MPI, MPICH)   | OMPI_COMM_WORLD_* / PMI_*, else mpi4py        | rank 0's host, via mpi4py     |
| python                     | 0, 1, 0                                       | 127.0.0.1 and a free port     |

The result is written back as RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, the variables
`torch.distributed`'s env:// rendezvous (and so DeepSpeed) reads.
"""
from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass

DEFAULT_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    launcher: str  # "env" (deepspeed/torchrun), "slurm", "mpi" or "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _int_env(*names: str) -> int | None:
    for name in names:
        if os.environ.get(name, "") != "":
            return int(os.environ[name])
    return None


def _slurm_master_addr() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def _mpi_env() -> DistEnv | None:
    rank = _int_env("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
    if rank is None:
        return None
    world = _int_env("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
    local = _int_env("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PALS_LOCAL_RANKID")
    if world is None or local is None or "MASTER_ADDR" not in os.environ:
        # mpi4py discovery: ask MPI itself, and agree on rank 0's host and a port. When every rank
        # shares one host, rendezvous on loopback.
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        rank, world = comm.Get_rank(), comm.Get_size()
        local_comm = comm.Split_type(MPI.COMM_TYPE_SHARED)
        local = local_comm.Get_rank()
        single_host = local_comm.Get_size() == world
        addr = "127.0.0.1" if single_host else socket.gethostbyname(socket.gethostname())
        port = _free_port() if single_host else DEFAULT_PORT
        addr, port = comm.bcast((addr, port), root=0)
        os.environ.setdefault("MASTER_ADDR", addr)
        os.environ.setdefault("MASTER_PORT", str(port))
    return DistEnv(rank, world, local, "mpi")


def discover() -> DistEnv:
    """Reads the launcher's environment; sets the env:// variables torch.distributed needs."""
    if _int_env("RANK") is not None and _int_env("WORLD_SIZE") is not None:
        env = DistEnv(_int_env("RANK"), _int_env("WORLD_SIZE"), _int_env("LOCAL_RANK") or 0, "env")
    elif _int_env("SLURM_PROCID") is not None and _int_env("SLURM_NTASKS") is not None:
        env = DistEnv(_int_env("SLURM_PROCID"), _int_env("SLURM_NTASKS"), _int_env("SLURM_LOCALID") or 0, "slurm")
        os.environ.setdefault("MASTER_ADDR", _slurm_master_addr())
        # A port derived from the job id: every task computes the same one without talking.
        os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))
    else:
        env = _mpi_env() or DistEnv(0, 1, 0, "single")
        if env.launcher == "single":
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(DEFAULT_PORT))
    return env
