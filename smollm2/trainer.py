"""The training loop: a DeepSpeed engine over the data, with evals, checkpoints and the guards around them.

The Trainer is the loop (`smollm2 train`, smollm2/train.py, runs it; `smollm2 bench` times its
train_step). It holds the engine (smollm2/engine.py), the step and the data position (the blocks drawn
so far from each data source, smollm2/mixture.py; DataLoader workers read ahead of the loop, so the
trainer counts, not the sampler), and hands off to objects of their own: the CheckpointManager
(smollm2/checkpoint_manager.py), the StabilityGuard (smollm2/stability.py), the RankWatchdog
(smollm2/watchdog.py), the MetricsLogger (smollm2/metrics.py) and the Evaluator (smollm2/evaluator.py).

Order of one optimizer step: `accumulation` micro-batches of forward, backward and engine.step()
(DeepSpeed averages the gradients over ranks and micro-batches and steps the optimizer and LR
schedule on the last), then log / eval / save when due, then the ranks agree (one scalar all_reduce
over gloo) whether any of them got SIGTERM or SIGUSR1 (preemption, a time limit near): if so, all save
a checkpoint at that step and the job ends with exit status 0, for a rerun to resume. Step s uses
learning rate lr * f(s).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from smollm2 import faults, tasks
from smollm2.checkpoint import Checkpoint, check_resumable, data_state, read_client_state
from smollm2.checkpoint_manager import CheckpointManager
from smollm2.collectives import CpuGroup
from smollm2.config import Config, config_hash, config_yaml
from smollm2.distributed import DistEnv
from smollm2.engine import build_engine, init_distributed, leave_process_group, resolve_dtype
from smollm2.evaluator import Evaluator
from smollm2.metrics import MetricsLogger, format_progress
from smollm2.mixture import open_training_data
from smollm2.ops import next_token_loss
from smollm2.perf import Window, flops_per_token, measure_peak_tflops, throughput, timed
from smollm2.run_dir import write_run_files
from smollm2.schedule import follow_config_after_resume
from smollm2.signals import StopSignals, ignore_stop_signals
from smollm2.stability import Rollback, StabilityGuard, StepResult
from smollm2.watchdog import RankLost, RankWatchdog, is_collective_failure
from smollm2.weights import build_model


class Trainer:
    """The training loop of one job, on one rank: the engine, the step and the data position."""

    def __init__(self, config: Config, env: DistEnv, checkpoint: Checkpoint | None = None) -> None:
        self.config, self.env, self.run_dir = config, env, Path(config.train.out_dir)
        self.step, self.consumed_samples, self.resumed_from = 0, 0, checkpoint
        # Everything a user can get wrong is checked before joining the process group, so a bad input
        # ends every rank with one line and exit 2 instead of a hang.
        if checkpoint is not None:
            check_resumable(checkpoint, config.model.architecture(), config.deepspeed.zero_stage)
        self.data = open_training_data(config)
        self.data_position = self.data.mixture.start()  # smollm2.mixture.DataPosition
        if checkpoint is not None:  # a checkpoint's data position must suit this config
            self.data.mixture.position_from_state(data_state(read_client_state(checkpoint)), str(checkpoint.path))
        self.tasks = tasks.load_tasks(config.eval.tasks, "eval.tasks", self.data.tokenizer, config.model.block_size)
        model = build_model(config, self.data.fingerprint)
        self.num_parameters = model.num_parameters()
        self.flops_per_token = flops_per_token(config.model, config.model.block_size)

        timeout_s = config.train.collective_timeout_s
        self.device = init_distributed(env, timeout_s)
        self.group = CpuGroup(env.rank, env.world_size, timeout_s)
        self.checkpoints = CheckpointManager(
            self.run_dir, config.checkpoint.keep_last, self.group, self.device, self._print
        )
        self.checkpoints.agree_on(checkpoint)
        self.dtype = resolve_dtype(config.train.dtype, self.device)
        self.engine, grad_clip = build_engine(config, model.to(self.device), env.world_size, self.dtype)
        del model  # the engine owns it now; a stray reference would outlive the shutdown in close()
        self.guard = StabilityGuard(config.stability, self.engine, grad_clip, self.group, self._print)
        self.accumulation = config.train.gradient_accumulation_steps(env.world_size)
        if checkpoint is not None:
            self.load_state_dict(self.checkpoints.restore(self.engine, checkpoint, config.deepspeed.zero_stage))
        self.peak_tflops = config.logging.peak_tflops or measure_peak_tflops(self.device, self.dtype)
        store = torch.distributed.distributed_c10d._get_default_store()  # the rendezvous's
        self.watchdog = RankWatchdog(store, env.rank, env.world_size, timeout_s)
        self.watchdog.position = (self.step, 0)
        e = config.eval
        self.evaluator = Evaluator(
            e, self.data.mixture, self.tasks, self.data.tokenizer, self.data.eos_id,
            micro_batch_size=e.micro_batch_size or config.train.micro_batch_size,
            max_length=config.model.block_size, device=self.device, rank=env.rank, world_size=env.world_size,
        )  # fmt: skip
        if env.is_main:
            write_run_files(config, self.data.tokenizer_path)
        self.metrics = MetricsLogger.for_run(self.run_dir, config.logging, env.is_main, start_step=self.step)
        self.metrics.log_text("config", f"```\n{config_yaml(config)}```", self.step)
        self.metrics.log_hparams(asdict(config))

    # -- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What, with the engine's own checkpoint, makes a resume exact: the checkpoint's client state (the
        CheckpointManager adds every rank's RNG states)."""
        return {
            "step": self.step,
            "consumed_samples": self.consumed_samples,
            "data": self.data.mixture.state_dict(self.data_position),
            "skipped_steps": self.guard.skipped_steps,
            "model_config": self.config.model.architecture(),
            "config_hash": config_hash(self.config),
            "world_size": self.env.world_size,
            "zero_stage": self.config.deepspeed.zero_stage,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The step and data position of a restored checkpoint; the LR from the config in force."""
        self.step = state["step"]
        self.consumed_samples = state["consumed_samples"]
        self.data_position = self.data.mixture.position_from_state(data_state(state), f"checkpoint, step {self.step}")
        self.guard.skipped_steps = state.get("skipped_steps", 0)  # absent in checkpoints of older versions
        follow_config_after_resume(self.engine.lr_scheduler, self.config.optimizer.lr)

    # -- the loop ----------------------------------------------------------------------------------

    def batches(self, worker_init_fn: Callable[[int], None] | None = None):
        """This rank's (input_ids, next tokens) micro-batches from the current data position, endlessly."""
        t = self.config.train
        sampler = self.data.mixture.sampler(t.micro_batch_size, self.env.rank, self.env.world_size, self.data_position)
        workers = self.config.data.num_workers
        loader = torch.utils.data.DataLoader(
            self.data.mixture.train,
            batch_sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,
            worker_init_fn=worker_init_fn,
        )
        return iter(loader)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one micro-batch (labels: the next tokens)."""
        if self.config.train.fused_loss:  # the model's chunked LM head + cross-entropy: no logits tensor
            return self.engine(input_ids, targets=labels).loss
        return next_token_loss(self.engine(input_ids).logits, labels)

    def train_step(self, batches, window: Window, mark: Callable[[], None] = lambda: None) -> StepResult:
        """One optimizer step: `accumulation` micro-batches of forward, backward and engine.step().

        DeepSpeed averages the gradients over ranks and micro-batches in the last backward and steps the
        optimizer and LR schedule in the last engine.step(); the stability guard decides, in between, whether
        the step makes an update. Losses and data wait go into `window`. `mark()` runs after each
        micro-batch's forward, backward and engine.step(): `smollm2 bench` times the phases with it.
        """
        step_loss = torch.zeros((), device=self.device)
        data_step = self.consumed_samples // self.config.train.global_batch_size + 1
        faults.stall(data_step, self.env.rank)
        for micro in range(self.accumulation):
            started = time.perf_counter()
            input_ids, labels = next(batches)
            window.data_wait += time.perf_counter() - started
            input_ids = input_ids.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            loss = faults.corrupt_loss(self.loss(input_ids, labels), data_step, self.env.rank)
            self.watchdog.beat(self.step, forwards=micro + 1)
            mark()
            self.engine.backward(loss)
            mark()
            step_loss += loss.detach()
            if micro == self.accumulation - 1:
                result = self.guard.before_update(step_loss, self.accumulation)
            self.engine.step()
            mark()
        self.guard.after_update(result, step_loss)
        if not result.skipped:
            window.loss_sum += step_loss
            window.micro_batches += self.accumulation
        self.step += 1
        self.consumed_samples += self.config.train.global_batch_size
        before, self.data_position = self.data_position, self.data.mixture.advance(self.data_position)
        for line in self.data.mixture.epoch_messages(before, self.data_position):
            self._print(line)
        window.steps += 1
        return result

    def fit(self, signals: StopSignals) -> None:
        """Train to train.stop_at (or max_steps), or to the step at which some rank got a stop signal."""
        stop = self.config.train.stop_at or self.config.train.max_steps
        self._print(_start_line(self, stop))
        for line in self.data.mixture.summary_lines(self.config.train.max_steps):
            self._print(line)
        if self.config.eval.at_start and self.step == 0:
            self.evaluate()
        # The handlers (train()'s) are in before the DataLoader workers fork, and the workers ignore the signals:
        # SLURM signals every process of a job step, and torch's own SIGTERM handler would end a worker,
        # which fails the step in progress ("DataLoader worker (pid N) is killed by signal: Terminated").
        with self.watchdog:
            while True:
                batches = self.batches(worker_init_fn=ignore_stop_signals)
                try:
                    stopped_by = self._train_until(stop, batches, signals)
                    break
                except Rollback as rollback:
                    self._roll_back(rollback.step)
                except (RuntimeError, torch.distributed.DistError) as exc:
                    if not is_collective_failure(exc):
                        raise
                    raise RankLost(self.watchdog.who_stopped_answering(exc)) from None
                finally:
                    # Stop the workers here, on errors too: they ignore the SIGTERM with which Python's exit
                    # would end them, and a traceback can hold the iterator until then.
                    if hasattr(batches, "_shutdown_workers"):  # torch's own cleanup; none at data.num_workers=0
                        batches._shutdown_workers()
        if stopped_by:
            # The job exits 0: its checkpoint is complete and the stop was asked for. Whether it runs again
            # is the scheduler's call, not the exit status's (SLURM requeues a preempted --requeue job
            # itself; launch/slurm/*.sbatch requeue after the time-limit signal); a non-zero status would
            # read as a crash: torchrun restarts workers (--max-restarts), the deepspeed launcher kills the
            # other ranks, srun --kill-on-bad-exit ends the step, and sacct reports the step FAILED.
            self._print(
                f"stopped at step {self.step} on {signal.Signals(stopped_by).name}, checkpoint saved: run the "
                "same `smollm2 train` command to resume from it (--resume auto, the default)"
            )
        else:
            self._print(
                f"done: step {self.step}; run directory {self.run_dir}; "
                f"TensorBoard: tensorboard --logdir {self.run_dir / 'tensorboard'}"
            )

    def _train_until(self, stop: int, batches, signals: StopSignals) -> int:
        """Train, eval and save up to step `stop`, or to the step at which some rank got a stop signal.

        Returns that signal's number (0: none). A stop saves a checkpoint at its step. Raises Rollback on a
        loss spike when stability.spike is rollback, RunFailed after stability.max_bad_steps skipped steps
        in a row.
        """
        window = Window(self.device)
        while self.step < stop:
            lr = self.engine.get_lr()[0]
            result = self.train_step(batches, window)
            self.watchdog.beat(self.step)
            self.guard.check(self.step, result, self.checkpoints.describe_newest)
            if (self.step % self.config.logging.log_every == 0 or self.step == stop) and window.steps:
                self._log(window, lr, result.grad_norm, stop)
                window = Window(self.device)
            if self.guard.wants_rollback(result):
                raise Rollback(self.step)
            if _due(self.step, self.config.eval.eval_every, stop):
                window.paused += timed(self.evaluate)
            saved = _due(self.step, self.config.checkpoint.save_every, stop)
            if saved:
                window.paused += timed(self.save)
            if self.step < stop and (stopped_by := signals.agreed(self.group)):
                if not saved:
                    self.save()
                return stopped_by
        return 0

    def _roll_back(self, spike_step: int) -> None:
        """Back to the newest checkpoint's weights, optimizer, schedule and step, but not its data position:
        training goes on from the data after the spike (PaLM's and OPT's remedy for loss spikes)."""
        checkpoint = self.checkpoints.newest()
        self.guard.allow_rollback(spike_step, checkpoint is not None)
        position, data_position = self.consumed_samples, self.data_position
        self.load_state_dict(self.checkpoints.restore(self.engine, checkpoint, self.config.deepspeed.zero_stage))
        skipped_samples = position - self.consumed_samples
        self.consumed_samples, self.data_position = position, data_position
        self.metrics.close()  # the rows past the checkpoint's step belong to the abandoned steps
        self.metrics = MetricsLogger.for_run(self.run_dir, self.config.logging, self.env.is_main, start_step=self.step)
        self.metrics.log(self.step, {"rollback_from_step": spike_step, "skipped_samples": skipped_samples})
        self._print(
            f"rolled back to {checkpoint.path} (step {self.step}); the {skipped_samples} samples after it, "
            "up to and including the spike's, are skipped"
        )

    def _log(self, window: Window, lr: float, grad_norm: float | torch.Tensor | None, stop: int) -> None:
        """One row: the mean loss of the window's steps that made an update (none: null), its last step's
        gradient norm before clipping (not finite: null, flagged by the logger), throughput, memory."""
        loss = window.loss_sum.clone()
        torch.distributed.all_reduce(loss)
        t = self.config.train
        row = {
            "loss": loss.item() / (window.micro_batches * self.env.world_size) if window.micro_batches else None,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "skipped_steps": self.guard.skipped_steps,
            **throughput(
                window, t.global_batch_size * self.config.model.block_size, self.env.world_size,
                self.flops_per_token, self.peak_tflops, self.config.logging.datasheet_tflops, self.device,
            ),
            "consumed_samples": self.consumed_samples,
        }  # fmt: skip
        if len(self.data.mixture.sources) > 1:  # the mixture as realised: every source's training tokens so far
            row |= {f"data/tokens/{name}": n for name, n in self.data.mixture.tokens(self.data_position).items()}
        self.metrics.log(self.step, row)
        self._print(format_progress(self.step, t.max_steps, row, (stop - self.step) * row["step_time_s"]))

    def evaluate(self) -> None:
        """The eval of this step (smollm2.evaluate.Evaluator) into the console, metrics.jsonl and TensorBoard."""
        self.watchdog.progress()
        self.engine.eval()
        evaluation = self.evaluator(self.engine, self.step, generator=self.engine.module, dtype=self.dtype)
        self.engine.train()
        self.metrics.log(self.step, evaluation.row)
        self.metrics.log_samples(self.step, evaluation.samples)
        self._print(f"eval step {self.step}: {evaluation.summary}")
        for prompt, text in evaluation.samples:
            self._print(f"  sample: {prompt + text!r}")

    def save(self) -> None:
        """A checkpoint of this step (smollm2.checkpoint_manager)."""
        self.watchdog.progress()
        path = self.checkpoints.save(self.engine, self.step, self.state_dict())
        self._print(f"saved checkpoint {path}")

    def release(self) -> None:
        """Close the logger and free the engine (its memory, DeepSpeed's hooks); the process group stays."""
        self.metrics.close()
        self.engine.destroy()
        self.engine = None

    def close(self) -> None:
        """Release everything and leave the process group (smollm2.engine.leave_process_group)."""
        torch.distributed.barrier()  # every rank is done with the engine before any tears it down
        self.release()
        leave_process_group()

    # -- console -----------------------------------------------------------------------------------

    def _print(self, text: str) -> None:
        if self.env.is_main:
            print(text, flush=True)


def _due(step: int, every: int, stop: int) -> bool:
    """Whether an eval or save that comes every `every` steps (0: only at the end) is due after `step`."""
    return bool(every and step % every == 0) or step == stop


def _start_line(trainer: Trainer, stop: int) -> str:
    """The first line of a job: what it trains, on what, from where to where."""
    t, c = trainer.config.train, trainer.config
    start = f"resuming from {trainer.resumed_from.path} at step {trainer.step}" if trainer.resumed_from else "starting"
    return (
        f"{start}: {trainer.num_parameters:,} parameters, {trainer.env.world_size} rank(s) on {trainer.device.type} "
        f"({trainer.env.launcher}), ZeRO {c.deepspeed.zero_stage}, {str(trainer.dtype).removeprefix('torch.')}, "
        f"micro-batch {t.micro_batch_size} x accumulation {trainer.accumulation} x {trainer.env.world_size} = "
        f"{t.global_batch_size} samples = {t.global_batch_size * c.model.block_size:,} tokens per step, steps "
        f"{trainer.step} -> {stop} of {t.max_steps}; MFU against {trainer.peak_tflops:.3g} TFLOP/s per device"
        f"{' (measured)' if c.logging.peak_tflops is None else ''}"
    )
