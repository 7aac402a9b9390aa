"""smollm2.distributed.discover() under each launcher's environment: faked variables, plus a real mpirun."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from smollm2.distributed import DistEnv, discover, first_slurm_host
from smollm2.errors import UserError

LAUNCHER_PREFIXES = ("SLURM_", "OMPI_", "PMI_", "PMIX_")
RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No launcher variables and no `scontrol` on PATH; whatever discover() writes is undone afterwards."""
    for name in list(os.environ):
        if name.startswith(LAUNCHER_PREFIXES):
            monkeypatch.delenv(name)
    for name in RENDEZVOUS:
        monkeypatch.setenv(name, "")  # recorded (delenv of an absent name is not), so what discover() writes
        monkeypatch.delenv(name)  # is undone after the test and never leaks into later tests
    monkeypatch.setenv("PATH", str(tmp_path))
    return monkeypatch


def test_plain_python_is_one_process_on_loopback(env):
    assert discover() == DistEnv(0, 1, 0, "single")
    assert os.environ["MASTER_ADDR"] == "127.0.0.1"
    assert 20000 <= int(os.environ["MASTER_PORT"]) < 32768  # below the ephemeral range: nobody takes it meanwhile
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("0", "1", "0")


def test_torchrun_and_deepspeed_variables_are_taken_as_they_are(env):
    env.setenv("RANK", "5")
    env.setenv("WORLD_SIZE", "8")
    env.setenv("LOCAL_RANK", "1")
    env.setenv("MASTER_ADDR", "node-0")
    env.setenv("MASTER_PORT", "29611")
    result = discover()
    assert result == DistEnv(5, 8, 1, "env") and not result.is_main
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("node-0", "29611")


def test_torchrun_inside_an_srun_step_wins_over_slurm(env):
    for name, value in {
        "SLURM_PROCID": "1",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_LOCALID": "0",
        "SLURM_JOB_ID": "77",
        "RANK": "9",
        "WORLD_SIZE": "16",
        "LOCAL_RANK": "1",
    }.items():
        env.setenv(name, value)
    assert discover() == DistEnv(9, 16, 1, "env")


def _srun_step(env, procid: int, localid: int, ntasks: int = 8) -> None:
    for name, value in {
        "SLURM_PROCID": procid,
        "SLURM_LOCALID": localid,
        "SLURM_STEP_NUM_TASKS": ntasks,
        "SLURM_NTASKS": ntasks,
        "SLURM_JOB_ID": 4242421,
        "SLURM_STEP_ID": 0,
        "SLURM_STEP_NODELIST": "gpu[007-008]",
        "SLURM_JOB_NODELIST": "gpu[007-008]",
    }.items():
        env.setenv(name, str(value))


def test_srun_task_without_scontrol(env):
    _srun_step(env, procid=5, localid=1)
    assert discover() == DistEnv(5, 8, 1, "slurm")
    # Every task computes the same address and port on its own.
    assert os.environ["MASTER_ADDR"] == "gpu007"
    assert os.environ["MASTER_PORT"] == str(10000 + 4242421 % 20000)
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("5", "8", "1")


def test_srun_task_asks_scontrol_for_the_first_host(env, tmp_path):
    scontrol = tmp_path / "scontrol"
    scontrol.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[007-008]" ] && printf "gpu007\\ngpu008\\n"\n')
    scontrol.chmod(0o755)
    env.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin{os.pathsep}/bin")
    _srun_step(env, procid=0, localid=0)
    env.setenv("SLURM_STEP_NODELIST", "gpu[007-008]")
    assert discover().is_main
    assert os.environ["MASTER_ADDR"] == "gpu007"


def test_user_given_master_address_wins_under_srun(env):
    _srun_step(env, procid=2, localid=2)
    env.setenv("MASTER_ADDR", "10.1.2.3")
    env.setenv("MASTER_PORT", "31000")
    assert discover() == DistEnv(2, 8, 2, "slurm")
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("10.1.2.3", "31000")


def test_batch_script_outside_srun_is_one_process(env):
    # What an sbatch script itself sees: SLURM_PROCID=0 and the job's task count, but no step.
    for name, value in {
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NTASKS": "16",
        "SLURM_JOB_ID": "12",
        "SLURM_JOB_NODELIST": "gpu[1-2]",
    }.items():
        env.setenv(name, value)
    assert discover() == DistEnv(0, 1, 0, "single")


def _open_mpi_rank(env, rank: int, local_rank: int, size: int = 4) -> None:
    env.setenv("OMPI_COMM_WORLD_RANK", str(rank))
    env.setenv("OMPI_COMM_WORLD_SIZE", str(size))
    env.setenv("OMPI_COMM_WORLD_LOCAL_RANK", str(local_rank))
    env.setenv("PMIX_RANK", str(rank))


def test_open_mpi_with_a_given_rendezvous_needs_no_mpi4py(env):
    _open_mpi_rank(env, rank=3, local_rank=1)
    env.setenv("MASTER_ADDR", "node-0")
    env.setenv("MASTER_PORT", "29700")
    assert discover() == DistEnv(3, 4, 1, "mpi")
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("3", "4", "1")


def test_mpirun_inside_an_allocation_is_not_mistaken_for_srun(env):
    # Open MPI starts its ranks through an srun of one task per node: SLURM_PROCID is the node's index.
    _open_mpi_rank(env, rank=6, local_rank=2, size=8)
    _srun_step(env, procid=1, localid=0, ntasks=2)
    env.setenv("MASTER_ADDR", "gpu007")
    env.setenv("MASTER_PORT", "29700")
    assert discover() == DistEnv(6, 8, 2, "mpi")


def test_a_launcher_variable_that_is_not_a_number_is_a_user_error(env):
    env.setenv("RANK", "zero")
    env.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="RANK='zero'"):
        discover()


def test_rank_outside_the_world_is_a_user_error(env):
    env.setenv("RANK", "4")
    env.setenv("WORLD_SIZE", "4")
    with pytest.raises(UserError, match="rank 4.*world size 4"):
        discover()


@pytest.mark.parametrize(
    "nodelist, first",
    [
        ("gpu[007-009,012],cpu1", "gpu007"),
        ("node1,node2", "node1"),
        ("rack[1-2]-n[01-04]", "rack1-n01"),
        ("a[3]", "a3"),
        ("login", "login"),
    ],
)
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


RANK_SCRIPT = """
import json, os, torch, torch.distributed as dist
from smollm2.distributed import discover
me = discover()
dist.init_process_group("gloo")  # env:// from what discover() wrote
total = torch.tensor([me.rank + 1])
dist.all_reduce(total)
# One file per rank: mpirun may interleave the ranks' stdout within a line.
with open(f"rank{me.rank}.json", "w") as f:
    json.dump({"env": [me.rank, me.world_size, me.local_rank, me.launcher], "sum": int(total),
               "addr": os.environ["MASTER_ADDR"], "port": os.environ["MASTER_PORT"]}, f)
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI's mpirun is not installed")
def test_real_mpirun_two_ranks_meet_on_loopback(tmp_path):
    """Two ranks under the real mpirun: mpi4py agrees on 127.0.0.1 and one port, and gloo connects."""
    environ = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS and not k.startswith(LAUNCHER_PREFIXES)}
    environ.update(
        OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo"
    )
    out = subprocess.run(
        ["mpirun", "-np", "2", "--bind-to", "none", sys.executable, "-c", RANK_SCRIPT],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["env"] for r in rows] == [[0, 2, 0, "mpi"], [1, 2, 1, "mpi"]]
    assert {r["addr"] for r in rows} == {"127.0.0.1"} and len({r["port"] for r in rows}) == 1
    assert [r["sum"] for r in rows] == [3, 3]
