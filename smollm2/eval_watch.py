"""`smollm2 eval --watch RUN_DIR`: a job beside training that evaluates each new checkpoint of a run as it appears.

    smollm2 eval --watch RUN_DIR [--tasks FILE ...] [--max-checkpoints N] [--timeout S]

A job of its own (launch/slurm/eval_watch.sbatch): it evaluates each new complete checkpoint of the run,
oldest first, once each, as `smollm2 eval --checkpoint` would (smollm2/evaluate.py), and writes what the
trainer's in-loop eval writes (the same keys and tags, at the checkpoint's step) into files of its own, so
that it never races the trainer's writer: RUN_DIR/metrics-eval.jsonl, RUN_DIR/samples-eval.jsonl, and the
TensorBoard run RUN_DIR/tensorboard/eval-watch (beside the trainer's RUN_DIR/tensorboard: `tensorboard
--logdir RUN_DIR/tensorboard` draws both runs on the same charts). The trainer rewrites its metrics.jsonl
when a job resumes, so a second writer appending there could lose rows. metrics-eval.jsonl is also the
watcher's memory: a restarted watcher starts after the newest step it holds. The steps it writes only go
up (TensorBoard reads a step that goes back as a restart and drops what followed), so a checkpoint older
than the last one evaluated is never taken. A checkpoint pruned (checkpoint.keep_last) before its turn is
skipped with a note. The watcher stops when it has evaluated step train.max_steps (config.yaml is re-read
at every look: a later job may change it), after --max-checkpoints evaluations, or when no new checkpoint
has come for --timeout seconds (a run that crashed saves no last step).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from smollm2.checkpoint import CHECKPOINTS, LATEST, TAG_PATTERN, Checkpoint, checkpoint_problem, checkpoint_step
from smollm2.config import load_config
from smollm2.errors import UserError
from smollm2.evaluator import evaluate_checkpoint, task_list
from smollm2.metrics import MetricsLogger

WATCH_METRICS = "metrics-eval.jsonl"
WATCH_SAMPLES = "samples-eval.jsonl"
WATCH_TENSORBOARD = "tensorboard/eval-watch"


def last_watched_step(run_dir: Path) -> int:
    """The newest step in RUN_DIR/metrics-eval.jsonl (0: none): what a watcher has evaluated so far."""
    path = run_dir / WATCH_METRICS
    if not path.is_file():
        return 0
    steps = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                raise UserError(f"{path}, line {number}: not a metrics row (expected JSON with a step)") from None
    return max(steps, default=0)


def next_checkpoint(
    run_dir: Path, after_step: int, seen: set[int], save_every: int
) -> tuple[Checkpoint | None, list[tuple[int, str]]]:
    """(the oldest complete checkpoint after `after_step`, or None; [(step, why), ...] of those before it that
    are skipped).

    `seen` collects the steps of the checkpoint folders found here, so that one pruned before its turn is
    noticed; steps on the checkpoint.save_every grid are expected as well (a folder saved and pruned between
    two looks). Only checkpoints after `after_step` are read (their manifest checks read every file).
    """
    root = run_dir / CHECKPOINTS
    latest = TAG_PATTERN.fullmatch((root / LATEST).read_text().strip()) if (root / LATEST).is_file() else None
    latest_step = int(latest.group(1)) if latest else None
    folders = sorted(
        (Checkpoint(root, p.name) for p in root.iterdir() if p.is_dir() and TAG_PATTERN.fullmatch(p.name))
        if root.is_dir()
        else (),
        key=checkpoint_step,
    )
    present = {checkpoint_step(c): c for c in folders if checkpoint_step(c) > after_step}
    seen.update(present)
    skipped, chosen = [], None
    for step, checkpoint in present.items():
        problem = checkpoint_problem(checkpoint, latest_step)
        if problem is None:
            chosen = checkpoint
            break
        if latest_step is None or step > latest_step:
            break  # a save in progress: it becomes good when `latest` moves to it
        skipped.append((step, problem))
    bound = checkpoint_step(chosen) if chosen else (latest_step or 0) + 1
    expected = seen | set(range(save_every, bound, save_every) if save_every else ())
    pruned = [(step, "pruned before being evaluated") for step in expected if after_step < step < bound]
    return chosen, sorted(skipped + [(step, why) for step, why in pruned if step not in present])


def watch(
    run_dir: str | Path,
    *,
    data: str | None = None,
    task_paths: list[str] | None = None,
    limit: int | None = None,
    micro_batch_size: int | None = None,
    max_length: int | None = None,
    poll_s: float = 30.0,
    max_checkpoints: int | None = None,
    timeout_s: float | None = None,
    report: Callable[[str], None] = lambda line: print(line, flush=True),
) -> int:
    """Evaluate the run's checkpoints as they appear (module docstring); returns how many it evaluated."""
    watcher = _Watcher(Path(run_dir), data, task_paths, limit, micro_batch_size, max_length, report)
    report(
        f"eval --watch {run_dir}: "
        + (f"steps up to {watcher.last_step} already evaluated ({WATCH_METRICS}); " if watcher.last_step else "")
        + f"looking for newer checkpoints every {poll_s:g} s"
    )
    said_waiting, waiting_since = False, time.monotonic()
    try:
        while True:
            config_path = watcher.run_dir / "config.yaml"
            if config_path.is_file():
                config = load_config(config_path)
                if watcher.last_step >= config.train.max_steps:
                    last = watcher.last_step
                    report(f"eval --watch: done: the run's last step ({last}, train.max_steps) is evaluated")
                    return watcher.evaluated
                evaluated_before = watcher.evaluated
                if watcher.evaluate_next(config):  # look again at once
                    if watcher.evaluated > evaluated_before:
                        waiting_since = time.monotonic()
                    if max_checkpoints is not None and watcher.evaluated >= max_checkpoints:
                        report(f"eval --watch: stopping after {watcher.evaluated} checkpoint(s) (--max-checkpoints)")
                        return watcher.evaluated
                    continue
            elif not said_waiting:
                said_waiting = True
                report(f"eval --watch: waiting for {config_path} (written when training starts)")
            if timeout_s is not None and time.monotonic() - waiting_since > timeout_s:
                report(
                    f"eval --watch: stopping: no new checkpoint for {timeout_s:g} s (--timeout), "
                    f"at step {watcher.last_step}"
                )
                return watcher.evaluated
            time.sleep(poll_s)
    finally:
        watcher.close()


class _Watcher:
    """What a watcher knows between looks: the steps it has evaluated, seen and reported, its writer and tasks."""

    def __init__(
        self,
        run_dir: Path,
        data: str | None,
        task_paths: list[str] | None,
        limit: int | None,
        micro_batch_size: int | None,
        max_length: int | None,
        report: Callable[[str], None],
    ) -> None:
        self.run_dir, self.data, self.task_paths, self.limit = run_dir, data, task_paths, limit
        self.micro_batch_size, self.max_length, self.report = micro_batch_size, max_length, report
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.last_step = last_watched_step(run_dir)
        self.evaluated = 0
        self.seen: set[int] = set()  # checkpoint steps found on disk
        self.noted: set[int] = set()  # skipped steps already reported
        self.tasks: list[Any] | None = None
        self.logger: MetricsLogger | None = None

    def evaluate_next(self, config: Any) -> bool:
        """Report the checkpoints skipped since the last look and evaluate the next one, if there is one. False:
        nothing to do until the next look; True: look again at once (one was evaluated, or pruned while read)."""
        if self.tasks is None:
            self.tasks = task_list(self.task_paths, config, self.limit)  # the full sets unless --limit
        checkpoint, skipped = next_checkpoint(self.run_dir, self.last_step, self.seen, config.checkpoint.save_every)
        skipped = [(step, why) for step, why in skipped if step not in self.noted]
        self.noted.update(step for step, _ in skipped)
        for why in dict.fromkeys(why for _, why in skipped):
            steps = [str(step) for step, reason in skipped if reason == why]
            self.report(f"eval --watch: skipped step{'s' if len(steps) > 1 else ''} {', '.join(steps)}: {why}")
        if checkpoint is None:
            return False
        try:
            evaluation = evaluate_checkpoint(
                checkpoint, config, self.data, self.tasks, self.device, self.micro_batch_size, self.max_length
            )
        except Exception:
            if checkpoint.path.exists():
                raise
            self.noted.add(step := checkpoint_step(checkpoint))
            self.report(f"eval --watch: skipped step {step}: pruned while being read")
            return True
        if self.logger is None:
            self.logger = MetricsLogger(
                self.run_dir,
                enabled=True,
                tensorboard=config.logging.tensorboard,
                start_step=self.last_step,  # what an evaluation cut short left past it goes
                metrics_file=WATCH_METRICS,
                samples_file=WATCH_SAMPLES,
                tensorboard_dir=WATCH_TENSORBOARD,
            )
        self.logger.log_samples(evaluation.step, evaluation.samples)
        self.logger.log(evaluation.step, evaluation.row)  # the row last: it marks the step done
        self.last_step, self.evaluated = evaluation.step, self.evaluated + 1
        self.report(f"eval --watch: {evaluation.summary}")
        return True

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
