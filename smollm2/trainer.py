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
from functools import partial
from pathlib import Path
from typing import Any

import torch

from smollm2 import faults, tasks
from smollm2.checkpoint import Checkpoint, check_resumable, data_state, read_client_state
from smollm2.checkpoint_manager import CheckpointManager
from smollm2.collectives import CpuGroup
from smollm2.config import Config, config_hash, config_yaml
from smollm2.distributed import DistEnv
from smollm2.engine import build_engine, resolve_dtype
from smollm2.errors import RunFailed
from smollm2.evaluator import Evaluator
from smollm2.metrics import MetricsLogger, format_end, format_progress, format_start
from smollm2.mixture import open_training_data
from smollm2.ops import next_token_loss
from smollm2.perf import JobTime, Window, flops_per_token, measure_peak_tflops, throughput, timed
from smollm2.run_dir import write_run_files
from smollm2.schedule import follow_config_after_resume
from smollm2.signals import StopSignals, ignore_stop_signals
from smollm2.stability import Rollback, StabilityGuard, StepResult
from smollm2.watchdog import RankLost, RankWatchdog, is_collective_failure
from smollm2.weights import build_model


class Trainer:
    """The training loop of one job, on one rank: the engine, the step and the data position."""

    def __init__(
        self,
        config: Config,
        env: DistEnv,
        device: torch.device,
        group: CpuGroup,
        checkpoint: Checkpoint | None = None,
        still_owned: Callable[[], bool] = lambda: True,
    ) -> None:
        """`device` and `group` come from joining the job (smollm2.train); `still_owned()`, on rank 0, says whether
        this job still owns the run directory (smollm2.run_dir)."""
        self.config, self.env, self.run_dir = config, env, Path(config.train.out_dir)
        self.device, self.group, self.step, self.consumed_samples, self.resumed_from = device, group, 0, 0, checkpoint
        # Every rank checks its inputs alike before the first collective: a bad one ends every rank with the
        # same line and exit 2, and none waits for another.
        if checkpoint is not None:
            check_resumable(checkpoint, config.model.architecture(), config.deepspeed.zero_stage)
        self.data = open_training_data(config)
        self.data_position = self.data.mixture.start()  # smollm2.mixture.DataPosition
        if checkpoint is not None:  # a checkpoint's data position must suit this config
            self.data.mixture.position_from_state(data_state(read_client_state(checkpoint)), str(checkpoint.path))
        e = config.eval
        self.tasks = tasks.load_tasks(e.tasks, "eval.tasks", self.data.tokenizer, config.model.block_size, e.task_limit)
        model = build_model(config, self.data.fingerprint)
        self.num_parameters = model.num_parameters()
        self.flops_per_token = flops_per_token(config.model, config.model.block_size)

        self.checkpoints = CheckpointManager(self.run_dir, config.checkpoint, group, device, self._print, still_owned)
        self.dtype = resolve_dtype(config.train.dtype, self.device)
        self.engine, grad_clip = build_engine(config, model.to(self.device), env.world_size, self.dtype)
        del model  # the engine owns it now; a stray reference would outlive the shutdown in close()
        self.guard = StabilityGuard(config.stability, self.engine, grad_clip, self.group, self._print)
        self.accumulation = config.train.gradient_accumulation_steps(env.world_size)
        if checkpoint is not None:
            self.load_state_dict(self.checkpoints.restore(self.engine, checkpoint, config.deepspeed.zero_stage))
        self.saved_step, self.save_owed, self.job_time, self.window = self.step, False, JobTime(), Window(device)
        self.peak_tflops = config.logging.peak_tflops or measure_peak_tflops(self.device, self.dtype)
        store = torch.distributed.distributed_c10d._get_default_store()  # the rendezvous's
        self.watchdog = RankWatchdog(store, env.rank, env.world_size, config.train.collective_timeout_s)
        self.watchdog.position = (self.step, 0)
        self.evaluator = Evaluator.for_training(config, self.data, self.tasks, device, env.rank, env.world_size)
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
        self._print(format_start(self, stop))
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
            self.job_time.add(self.window)  # the steps after the last logged one (its eval, its save)
        if self.save_owed:
            raise RunFailed(
                f"step {self.step}: the last {self.guard.bad_in_a_row} step(s) made no update (non-finite loss or "
                f"gradient norm); the run's end is not saved, {self.checkpoints.describe_newest()}"
            )
        # A stop exits 0: it was asked for, and the scheduler decides whether the job runs again (smollm2/train.py).
        self._print(format_end(self, signal.Signals(stopped_by).name if stopped_by else None))

    def _train_until(self, stop: int, batches, signals: StopSignals) -> int:
        """Train, eval and save up to step `stop`, or to the step at which some rank got a stop signal.

        Returns that signal's number (0: none). A stop saves a checkpoint at its step if that step made an update
        (else the newest healthy checkpoint is where a rerun goes on). Raises Rollback on a
        loss spike when stability.spike is rollback, RunFailed after stability.max_bad_steps skipped steps
        in a row.
        """
        self.window = window = Window(self.device)
        stopped_by = 0
        while self.step < stop:
            lr = self.engine.get_lr()[0]
            result = self.train_step(batches, window)
            self.watchdog.beat(self.step)
            self.guard.check(self.step, result, self.checkpoints.describe_newest)
            if (self.step % self.config.logging.log_every == 0 or self.step == stop) and window.steps:
                logged = time.perf_counter()
                self._log(window, lr, result.grad_norm, stop)
                self.window = window = Window(self.device, started=logged)  # the logging's time is the next one's
                window.outside["logging"] = time.perf_counter() - logged
            if self.guard.wants_rollback(result):
                raise Rollback(self.step)
            if _due(self.step, self.config.eval.eval_every, stop):
                for part, seconds in self.evaluate().items():
                    window.outside[part] += seconds
            # No checkpoint while the last step made no update: the one owed is saved after a step that does.
            self.save_owed |= _due(self.step, self.config.checkpoint.save_every, stop)
            if self.save_owed and self.guard.healthy:
                window.outside["save"] += timed(self.save)
            if self.step < stop:  # the one vote a step: a stop signal on any rank; a save still being written
                stopped_by, writing = self.group.max([signals.received, int(self.checkpoints.writing())])
                window.outside["save"] += timed(partial(self.checkpoints.settle, bool(writing)))
                if stopped_by:
                    if self.saved_step != self.step and self.guard.healthy:
                        window.outside["save"] += timed(self.save)
                    break
        window.outside["save"] += timed(self.checkpoints.wait)  # the save in flight, complete before the job ends
        return stopped_by

    def _roll_back(self, spike_step: int) -> None:
        """Back to the newest checkpoint's weights, optimizer, schedule and step, but not its data position:
        training goes on from the data after the spike (PaLM's and OPT's remedy for loss spikes)."""
        checkpoint = self.checkpoints.newest()
        self.guard.allow_rollback(spike_step, checkpoint is not None)
        position, data_position = self.consumed_samples, self.data_position
        self.load_state_dict(self.checkpoints.restore(self.engine, checkpoint, self.config.deepspeed.zero_stage))
        skipped_samples = position - self.consumed_samples
        self.consumed_samples, self.data_position = position, data_position
        self.saved_step, self.save_owed = self.step, False
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
        self.job_time.add(window)
        self.metrics.log(self.step, row)
        self._print(format_progress(self.step, t.max_steps, row, (stop - self.step) * row["step_time_s"]))

    def evaluate(self) -> dict[str, float]:
        """The eval of this step (smollm2.evaluator.Evaluator) into the console, metrics.jsonl and TensorBoard;
        returns the seconds its parts took (eval, samples)."""
        self.watchdog.progress()
        self.engine.eval()
        evaluation = self.evaluator(self.engine, self.step, generator=self.engine.module, dtype=self.dtype)
        self.engine.train()
        self.metrics.log(self.step, evaluation.row)
        self.metrics.log_samples(self.step, evaluation.samples)
        self._print(f"eval step {self.step}: {evaluation.summary}")
        for prompt, text in evaluation.samples:
            self._print(f"  sample: {prompt + text!r}")
        return evaluation.seconds

    def save(self) -> None:
        """A checkpoint of this step (smollm2.checkpoint_manager: written in the background by default)."""
        self.watchdog.progress()
        self.checkpoints.save(self.engine, self.step, self.state_dict())
        self.saved_step, self.save_owed = self.step, False

    def release(self) -> None:
        """Close the logger and free the engine (its memory, DeepSpeed's hooks); the process group stays."""
        self.metrics.close()
        self.engine.destroy()
        self.engine = None

    def close(self) -> None:
        """Release everything once every rank is done with the engine; the process group stays (smollm2.train's)."""
        torch.distributed.barrier()
        self.release()

    # -- console -----------------------------------------------------------------------------------

    def _print(self, text: str) -> None:
        if self.env.is_main:
            print(text, flush=True)


def _due(step: int, every: int, stop: int) -> bool:
    """Whether an eval or save that comes every `every` steps (0: only at the end) is due after `step`."""
    return bool(every and step % every == 0) or step == stop
