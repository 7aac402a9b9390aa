"""`smollm2 train`: one training job, on every rank of whichever launcher started it.

    smollm2 train --config FILE [--set key=value ...] [--resume auto|never|PATH]
    train("configs/tiny.yaml", ["train.max_steps=200"], resume="auto")

smollm2.distributed reads rank and world size from `deepspeed`, `torchrun`, `srun`, `mpirun` or plain
`python`. A job loads and checks the config, picks the checkpoint to resume from, builds the Trainer
(smollm2/trainer.py: the loop) and runs it to train.stop_at or train.max_steps, or to a stop signal.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from smollm2.checkpoint import read_client_state, resolve_resume
from smollm2.config import load_config
from smollm2.distributed import discover
from smollm2.errors import RunFailed
from smollm2.run_dir import check_writable
from smollm2.signals import StopSignals, ignore_stop_signals
from smollm2.trainer import Trainer
from smollm2.watchdog import RankLost


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="YAML config (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, value parsed as YAML: --set train.max_steps=100 optimizer.lr=1e-3 (repeatable)",
    )
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
    check_writable(Path(config.train.out_dir))
    checkpoint = resolve_resume(resume, Path(config.train.out_dir), report=print if env.is_main else lambda line: None)
    stop = config.train.stop_at or config.train.max_steps
    if checkpoint is not None and (step := read_client_state(checkpoint)["step"]) >= stop:
        if env.is_main:
            print(f"step {step}: already at train.stop_at/max_steps ({stop}); nothing to do", flush=True)
        return
    trainer = Trainer(config, env, checkpoint)
    try:
        trainer.fit(signals)
    except RankLost:
        raise  # the process group is broken: leaving it would wait for the lost rank
    except RunFailed:
        trainer.close()  # every rank stops at the same step for the same reason: they can leave together
        raise
    trainer.close()
