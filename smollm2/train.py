"""`smollm2 train`: one training job, on every rank of whichever launcher started it.

    smollm2 train --config FILE [--set key=value ...] [--resume auto|never|PATH]
    train("configs/tiny.yaml", ["train.max_steps=200"], resume="auto")

smollm2.distributed reads rank and world size from `deepspeed`, `torchrun`, `srun`, `mpirun` or plain
`python`. A job loads and checks the config, joins the process group, takes the run directory for itself
(smollm2/run_dir.py: a second job there is refused; a dead one's claim taken over), picks the checkpoint
to resume from (rank 0 verifies it, smollm2/checkpoint_manager.py), builds the Trainer
(smollm2/trainer.py: the loop) and runs it to train.stop_at or train.max_steps, or to a stop signal.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from smollm2.checkpoint import read_client_state
from smollm2.checkpoint_manager import choose_resume
from smollm2.collectives import CpuGroup
from smollm2.config import add_config_arguments, load_config
from smollm2.distributed import discover
from smollm2.engine import init_distributed, leave_process_group
from smollm2.errors import RunFailed
from smollm2.run_dir import claim_for_job
from smollm2.signals import StopSignals, ignore_stop_signals
from smollm2.trainer import Trainer
from smollm2.watchdog import RankLost


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument(
        "--resume",
        default="auto",
        metavar="auto|never|PATH",
        help="auto (default): continue from the latest checkpoint in train.out_dir if there is "
        "one; never: start fresh; PATH: a run directory or checkpoint folder",
    )


def run(args: argparse.Namespace) -> None:
    train(args.config, args.overrides, args.resume)


def train(config_path: str | Path, overrides: list[str], resume: str = "auto") -> None:
    """One training job: `resume` is "auto" (the run's latest checkpoint, if any), "never" or a path.

    SIGTERM/SIGUSR1 are caught from the first line: one that comes while the job starts up stops it at the
    first step boundary, with a checkpoint. Once training is over they are ignored: a signal during the
    few seconds of teardown would otherwise kill a rank that has finished, and SLURM would count a
    successful job as failed (and requeue it for nothing).
    """
    try:
        with StopSignals() as signals:
            _train(config_path, overrides, resume, signals)
    finally:
        ignore_stop_signals()


def _train(config_path: str | Path, overrides: list[str], resume: str, signals: StopSignals) -> None:
    env = discover()
    config = load_config(config_path, overrides, env.world_size)
    run_dir, timeout_s = Path(config.train.out_dir), config.train.collective_timeout_s
    device = init_distributed(env, timeout_s)
    group = CpuGroup(env.rank, env.world_size, timeout_s)
    report = (lambda line: print(line, flush=True)) if env.is_main else (lambda line: None)
    claim, lost = None, False
    try:
        claim = claim_for_job(group, run_dir, timeout_s, report)
        checkpoint = choose_resume(group, resume, run_dir, report)
        stop = config.train.stop_at or config.train.max_steps
        if checkpoint is not None and (step := read_client_state(checkpoint)["step"]) >= stop:
            report(f"step {step}: already at train.stop_at/max_steps ({stop}); nothing to do")
            return
        trainer = Trainer(config, env, device, group, checkpoint, claim.still_owned if claim else lambda: True)
        try:
            trainer.fit(signals)
        except RunFailed as exc:
            # Every rank stops at the same step for the same reason and can leave together, unless the process
            # group is broken (a lost rank): leaving it would wait for that rank.
            lost = isinstance(exc, RankLost)
            if not lost:
                trainer.close()
            raise
        trainer.close()
    finally:
        if claim is not None:
            claim.release()
        if not lost:
            leave_process_group()
