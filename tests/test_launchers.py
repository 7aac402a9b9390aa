"""The launch scripts end to end.

- 2 CPU processes train configs/tiny.yaml (shrunk to a few steps) under the real deepspeed launcher,
  torchrun and mpirun: each run exits 0, its loss falls, and TensorBoard's own EventAccumulator reads back
  every scalar of docs/design.md and the generation samples.
- DeepSpeed's no-ssh multi-node route, two "nodes" on this machine started separately: ranks 0 and 1 of 2
  meet at the rendezvous (a probe stands in for the trainer).
- The SLURM scripts, with stand-ins for srun/scontrol/deepspeed (fast; tests/test_slurm.py runs a real
  cluster): what they run, and the requeue on the time-limit signal.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

from conftest import SCALARS, smollm2_cmd
from smollm2.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# configs/tiny.yaml cut to seconds: 6 steps of 2 x 2 blocks, an eval (with samples) halfway and at the end.
SHRINK = [
    "train.max_steps=6",
    "train.micro_batch_size=2",
    "train.global_batch_size=4",
    "schedule.warmup_steps=2",
    "logging.log_every=2",
    "eval.eval_every=3",
    "eval.num_blocks=2",
    "eval.max_new_tokens=8",
    "checkpoint.save_every=0",
    "data.num_workers=0",
]


@pytest.fixture(scope="module")
def shakespeare_data(tmp_path_factory, gguf_path, shakespeare_dir) -> Path:
    """Four plays tokenized with the real SmolLM2 tokenizer (one held out for validation)."""
    out = tmp_path_factory.mktemp("launchers")
    subprocess.run(
        smollm2_cmd("tokenizer", "extract", "--gguf", gguf_path, "--out", out / "tokenizer"),
        check=True,
        capture_output=True,
    )
    plays = sorted(shakespeare_dir.glob("*_gut.txt"))[:4]
    subprocess.run(
        smollm2_cmd(
            "prepare", "--input", *plays, "--tokenizer", out / "tokenizer", "--out", out / "data", "--val-docs", "1"
        ),
        check=True,
        capture_output=True,
    )
    return out / "data"


def launch(script: str, run_dir: Path, data: Path, cwd: Path, **env: str) -> subprocess.Popen:
    """`bash launch/SCRIPT configs/tiny.yaml --set ...` as a user types it, from another directory."""
    environ = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    # Every byte stays on loopback: gloo's sockets, and Open MPI's own.
    environ.update(
        NPROC="2",
        DS_ACCELERATOR="cpu",
        GLOO_SOCKET_IFNAME="lo",
        OMPI_MCA_btl_tcp_if_include="lo",
        OMPI_MCA_oob_tcp_if_include="lo",
        **env,
    )
    if script != "mpirun.sh":  # under mpirun, smollm2.distributed agrees on a port through mpi4py
        environ.setdefault("MASTER_PORT", str(free_port()))
    cmd = [
        "bash",
        str(ROOT / "launch" / script),
        str(ROOT / "configs" / "tiny.yaml"),
        "--set",
        f"data.path={data}",
        f"train.out_dir={run_dir}",
        *SHRINK,
    ]
    return start(cmd, cwd, environ)


def start(cmd: list[str], cwd: Path, environ: dict[str, str]) -> subprocess.Popen:
    # A session of its own: on a timeout the launcher goes down together with the ranks it started.
    return subprocess.Popen(
        cmd, cwd=cwd, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finish(process: subprocess.Popen) -> str:
    try:
        output, _ = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    assert process.returncode == 0, output[-4000:]
    return output


def check_run(run_dir: Path, output: str) -> None:
    assert "2 rank(s) on cpu" in output, output[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if row.get("loss") is not None]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.3, losses
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    assert set(SCALARS) <= set(tags["scalars"]), tags["scalars"]
    assert [event.step for event in events.Scalars("train/loss")] == [2, 4, 6]
    assert [event.step for event in events.Scalars("eval/loss")] == [3, 6]
    sample_tags = [tag for tag in tags["tensors"] if tag.startswith("samples/")]
    assert sample_tags, tags["tensors"]
    for tag in sample_tags:
        texts = [make_ndarray(event.tensor_proto).item().decode() for event in events.Tensors(tag)]
        assert [event.step for event in events.Tensors(tag)] == [3, 6] and all(texts), texts


@pytest.mark.slow
@pytest.mark.parametrize(
    "script",
    [
        "deepspeed_single_node.sh",
        "torchrun.sh",
        pytest.param(
            "mpirun.sh", marks=pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI is not installed")
        ),
    ],
)
def test_two_cpu_processes_under_launcher(script, shakespeare_data, tmp_path):
    run_dir = tmp_path / "run"
    output = finish(launch(script, run_dir, shakespeare_data, cwd=tmp_path))
    check_run(run_dir, output)


# Stands in for the `smollm2` entry point on the no-ssh test's PATH: DeepSpeed's launcher runs it as the
# "user script" exactly as it would run the real one; it joins the process group and reports.
RENDEZVOUS_PROBE = """
import json, os, sys, torch, torch.distributed as dist
from smollm2.distributed import discover
me = discover()
dist.init_process_group("gloo")
total = torch.tensor([me.rank + 1])
dist.all_reduce(total)
print("PROBE " + json.dumps({"rank": me.rank, "world": me.world_size, "launcher": me.launcher, "sum": int(total),
                             "master": os.environ["MASTER_ADDR"] + ":" + os.environ["MASTER_PORT"],
                             "argv": sys.argv[1:]}), flush=True)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_deepspeed_multi_node_without_ssh(tmp_path):
    """Two "nodes" of one slot each, both on this machine, each started on its own as on a cluster without ssh:
    the real DeepSpeed launcher gives them ranks 0 and 1 of 2 and they meet at MASTER_ADDR:MASTER_PORT."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "smollm2").write_text(RENDEZVOUS_PROBE)
    (bin_dir / "smollm2").chmod(0o755)  # the launch script finds it with `command -v`
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nnode-a slots=1\nnode-b slots=1\n")
    port = str(free_port())
    environ = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    environ.update(
        {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "GLOO_SOCKET_IFNAME": "lo",
            "OMP_NUM_THREADS": "1",
        }
    )
    script = [
        str(ROOT / "launch" / "deepspeed_multi_node.sh"),
        "hostfile",
        "configs/tiny.yaml",
        "--set",
        "train.max_steps=5",
    ]
    nodes = [start(["bash", *script], tmp_path, {**environ, "NODE_RANK": str(rank)}) for rank in (0, 1)]
    probes = []
    for node in nodes:
        output = finish(node)
        probes += [json.loads(line.split("PROBE ", 1)[1]) for line in output.splitlines() if "PROBE " in line]
    assert sorted((p["rank"], p["world"], p["launcher"], p["sum"]) for p in probes) == [
        (0, 2, "env", 3),
        (1, 2, "env", 3),
    ]
    assert {p["master"] for p in probes} == {f"127.0.0.1:{port}"}
    assert all(
        p["argv"][1:] == ["train", "--config", "configs/tiny.yaml", "--set", "train.max_steps=5"]
        and p["argv"][0].startswith("--local_rank=")
        for p in probes
    )


@pytest.mark.parametrize(
    "script, usage",
    [
        ("deepspeed_single_node.sh", "CONFIG"),
        ("deepspeed_multi_node.sh", "HOSTFILE CONFIG"),
        ("torchrun.sh", "CONFIG"),
        ("mpirun.sh", "CONFIG"),
    ],
)
def test_launch_script_without_a_config_prints_its_usage(script, usage):
    out = subprocess.run(["bash", str(ROOT / "launch" / script)], capture_output=True, text=True)
    assert out.returncode == 2 and f"launch/{script} {usage} [--set" in out.stderr, out.stderr


# Fast checks of the sbatch scripts' own logic, without a cluster (tests/test_slurm.py submits them to a real
# one): srun, scontrol and deepspeed are stand-ins that record how the scripts call them (srun runs `bash -c`
# commands as task 1 of a 2-node job, like the second node would).
FAKE_SRUN = """#!/bin/bash
printf '%s\\n' "$@" > "$FAKE_LOG/srun.args"
printf 'MASTER_ADDR=%s\\nMASTER_PORT=%s\\n' "${MASTER_ADDR:-}" "${MASTER_PORT:-}" > "$FAKE_LOG/srun.env"
while [ "${1#-}" != "$1" ]; do shift; done
[ -n "${FAKE_SRUN_SLEEP:-}" ] && exec sleep "$FAKE_SRUN_SLEEP"
[ "$1" = bash ] && SLURM_NODEID=1 SLURM_PROCID=1 exec "$@"
exit 0
"""
FAKE_SCONTROL = """#!/bin/bash
echo "$*" >> "$FAKE_LOG/scontrol.calls"
[ "$1 $2" = "show hostnames" ] && printf 'gpu-a\\ngpu-b\\n'
exit 0
"""
FAKE_DEEPSPEED = """#!/bin/bash
printf '%s\\n' "$@" > "$FAKE_LOG/deepspeed.args"
while [ "$1" != --hostfile ]; do shift; done
cp "$2" "$FAKE_LOG/hostfile"
"""


@pytest.fixture
def fake_slurm(tmp_path):
    """(environment of a 2-node x 8-GPU batch job with the stand-ins first on PATH, their log folder)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL, "deepspeed": FAKE_DEEPSPEED}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in ("MASTER_ADDR", "MASTER_PORT")
    }
    environ.update(
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        FAKE_LOG=str(log),
        TMPDIR=str(tmp_path),
        SLURM_JOB_ID="4321",
        SLURM_JOB_NODELIST="gpu-[a-b]",
        SLURM_NNODES="2",
        SLURM_NTASKS_PER_NODE="8",
        SLURM_CPUS_PER_TASK="4",
    )
    return environ, log


# What the sbatch scripts below run in each task, given `configs/tiny.yaml --set train.out_dir=runs/x`.
TRAIN_ARGS = ["train", "--config", "configs/tiny.yaml", "--resume", "auto", "--set", "train.out_dir=runs/x"]


def sbatch(script: str, environ: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = ["bash", str(ROOT / "launch" / "slurm" / script), "configs/tiny.yaml", "--set", "train.out_dir=runs/x"]
    return subprocess.run(cmd, env=environ, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", ["single_node.sbatch", "multi_node.sbatch"])
def test_sbatch_runs_one_task_per_gpu_with_resume_auto(script, fake_slurm, tmp_path):
    environ, log = fake_slurm
    out = sbatch(script, environ, tmp_path)
    assert out.returncode == 0, out.stderr
    srun_args = (log / "srun.args").read_text().splitlines()
    command = srun_args[srun_args.index("python") :]
    assert command == ["python", "-u", "-m", "smollm2", *TRAIN_ARGS]
    if script == "multi_node.sbatch":  # the rendezvous every task agrees on: first node, port from the job id
        assert (log / "srun.env").read_text().split() == ["MASTER_ADDR=gpu-a", f"MASTER_PORT={10000 + 4321 % 20000}"]


def test_multi_node_sbatch_with_the_deepspeed_launcher(fake_slurm, tmp_path):
    environ, log = fake_slurm
    out = sbatch("multi_node.sbatch", {**environ, "LAUNCHER": "deepspeed"}, tmp_path)
    assert out.returncode == 0, out.stderr
    srun_args = (log / "srun.args").read_text().splitlines()
    assert {"--ntasks-per-node=1", "--ntasks=2", "--cpus-per-task=32"} <= set(srun_args)
    assert (log / "hostfile").read_text() == "gpu-a slots=8\ngpu-b slots=8\n"
    ds_args = (log / "deepspeed.args").read_text().splitlines()
    assert ds_args[:2] == ["--hostfile", str(tmp_path / "smollm2-hostfile-4321")]
    assert ds_args[2:9] == ["--no_ssh", "--node_rank", "1", "--master_addr", "gpu-a", "--master_port", "14321"]
    assert Path(ds_args[9]).name == "smollm2"
    assert ds_args[10:] == TRAIN_ARGS


def test_sbatch_requeues_itself_when_the_time_limit_nears(fake_slurm, tmp_path):
    """SLURM's `--signal=B:USR1@300` reaches the batch shell while training runs: the job is requeued."""
    environ, log = fake_slurm
    cmd = ["bash", str(ROOT / "launch" / "slurm" / "single_node.sbatch"), "configs/tiny.yaml"]
    with open(log / "job.out", "w") as job_out:  # a file, not a pipe: the sleeping stand-in srun would hold a pipe open
        job = subprocess.Popen(
            cmd,
            env={**environ, "FAKE_SRUN_SLEEP": "60"},
            cwd=tmp_path,
            start_new_session=True,
            stdout=job_out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not (log / "srun.args").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        job.send_signal(signal.SIGUSR1)
        job.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the stand-in srun ends when the USR1 reaches it
            os.killpg(job.pid, signal.SIGKILL)
    output = (log / "job.out").read_text()
    assert "requeue 4321" in (log / "scontrol.calls").read_text().splitlines()
    assert "requeueing job 4321" in output
