"""`smollm2 train --config FILE [--set key=value ...] [--resume auto|never|PATH]`: the trainer's CLI.

Runs the same under `deepspeed`, `torchrun`, `srun`, `mpirun` and plain `python` (one process):
smollm2.distributed reads rank and world size from whichever launcher started it.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override a config key, value parsed as YAML: --set train.max_steps=100 "
                             "optimizer.lr=1e-3 (repeatable)")
    parser.add_argument("--resume", default="auto", metavar="auto|never|PATH",
                        help="auto (default): continue from the latest checkpoint in train.out_dir if there is "
                             "one; never: start fresh; PATH: a run directory or checkpoint folder")


def run(args: argparse.Namespace) -> None:
    from smollm2.trainer import train

    train(args.config, args.overrides, args.resume)
