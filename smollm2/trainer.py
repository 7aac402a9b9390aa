"""The training loop and the `smollm2 train` verb: a DeepSpeed engine over the data, with evals and checkpoints.

    smollm2 train --config FILE [--set key=value ...] [--resume auto|never|PATH]
    train("configs/tiny.yaml", ["train.max_steps=200"], resume="auto")

runs one job on every rank of whichever launcher started it (smollm2.distributed reads rank and world
size from `deepspeed`, `torchrun`, `srun`, `mpirun` or plain `python`). A Trainer is put together from
named builders that `smollm2 bench` calls too: the data (build_data), the model (build_model), the
engine (smollm2.engine.build_engine), the run directory (prepare_run_dir) and the metrics logger. It
holds the engine and what, with the engine's own checkpoint, makes a resume exact: the optimizer steps
done and the data position, the blocks drawn so far from each data source (smollm2.mixture; data.path
is a mixture of one; DataLoader workers read ahead of the loop, so the trainer counts, not the sampler).
Its `state_dict()` / `load_state_dict()` are what goes into the checkpoint's client state
(smollm2/checkpoint.py).

Order of one optimizer step: `accumulation` micro-batches of forward, backward and engine.step()
(DeepSpeed averages the gradients over ranks and micro-batches and steps the optimizer and LR
schedule on the last), then log / eval / save when due, then the ranks agree (one scalar all_reduce
over gloo) whether any of them got SIGTERM or SIGUSR1 (preemption, a time limit near): if so, all save
a checkpoint at that step and the job ends with exit status 0, for a rerun to resume. Step s uses
learning rate lr * f(s).
"""

from __future__ import annotations

import argparse
import datetime
import math
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from smollm2 import faults, tasks
from smollm2.atomic import write_atomic
from smollm2.checkpoint import (
    Checkpoint,
    check_resumable,
    check_same_architecture,
    check_same_checkpoint,
    gather_rng_states,
    latest_good_checkpoint,
    load_checkpoint,
    load_model,
    read_client_state,
    reshard_needed,
    resolve_resume,
    restore_rng_states,
    save_checkpoint,
    write_universal,
)
from smollm2.config import Config, config_hash, config_yaml, load_config, save_config
from smollm2.distributed import DistEnv, discover
from smollm2.engine import build_engine, init_distributed, leave_process_group, resolve_dtype
from smollm2.errors import RunFailed, UserError, write_failed
from smollm2.evaluate import generate_samples, next_token_loss, perplexity, sources_validation_loss
from smollm2.metrics import MetricsLogger, flops_per_token, format_progress, measure_peak_tflops, peak_memory_gib
from smollm2.mixture import Mixture, open_mixture, resolve_sources
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM
from smollm2.schedule import follow_config_after_resume
from smollm2.signals import StopSignals, ignore_stop_signals
from smollm2.tokenizer import eos_token_id, load_tokenizer, tokenizer_fingerprint
from smollm2.watchdog import StallWatchdog


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
    check_run_dir_writable(Path(config.train.out_dir))
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


# -- builders: what `smollm2 train` and `smollm2 bench` put together --------------------------------


@dataclass
class TrainingData:
    """The tokenizer and the blocks of data.path, or of the weighted mixture data.sources (smollm2.mixture)."""

    tokenizer: Any  # tokenizers.Tokenizer
    tokenizer_path: Path  # the first source's tokenizer.json; every token file was made by it
    eos_id: int  # the id that ends every document
    fingerprint: str  # the tokenizer's (smollm2.tokenizer.tokenizer_fingerprint)
    mixture: Mixture  # train blocks of every source, val blocks of those that have them, the global order


def build_data(config: Config) -> TrainingData:
    """The data's tokenizer and token files, checked against the model config (data.path is one source)."""
    sources, stages = resolve_sources(config.data, config.train.max_steps)
    mixture = open_mixture(
        sources,
        stages,
        block_size=config.model.block_size,
        global_batch_size=config.train.global_batch_size,
        seed=config.train.seed,
        expected_vocab_size=config.model.vocab_size,
    )
    if not mixture.val:
        raise UserError(
            f"{sources[0].path}: no validation data (val.bin with more than model.block_size "
            f"{config.model.block_size} tokens){' in any data source' if len(sources) > 1 else ''}; "
            "re-run `smollm2 prepare` with --val-fraction or --val-docs"
        )
    tokenizer_path = sources[0].path / "tokenizer.json"
    tokenizer = load_tokenizer(tokenizer_path)
    eos_id = eos_token_id(tokenizer)
    if eos_id != config.model.eos_token_id:
        raise UserError(
            f"model.eos_token_id: {config.model.eos_token_id}, but {tokenizer_path} ends documents with id {eos_id}"
        )
    fingerprint = tokenizer_fingerprint(tokenizer)
    if fingerprint != mixture.tokenizer_fingerprint:
        raise UserError(
            f"{tokenizer_path}: not the tokenizer that made the token files (fingerprint {fingerprint[:12]}..., "
            f"theirs {mixture.tokenizer_fingerprint[:12]}...): re-run `smollm2 prepare` with this tokenizer"
        )
    return TrainingData(tokenizer, tokenizer_path, eos_id, fingerprint, mixture)


def build_model(config: Config, data_tokenizer_fingerprint: str) -> SmolLM2ForCausalLM:
    """A freshly initialized model (seeded: every rank builds the same one), or the model.init_from weights."""
    architecture = SmolLM2Config(**config.model.architecture())
    torch.manual_seed(config.train.seed)
    if config.model.init_from is None:
        return SmolLM2ForCausalLM(architecture)
    source = config.model.init_from
    loaded, tokenizer = load_model(source)
    check_same_architecture(config.model.architecture(), vars(loaded.config), f"model.init_from {source}")
    if tokenizer is not None and tokenizer_fingerprint(tokenizer) != data_tokenizer_fingerprint:
        raise UserError(
            f"model.init_from: {source} comes with another tokenizer than data.path's; prepare the "
            "data with the model's tokenizer (smollm2 tokenizer extract / the folder's tokenizer.json)"
        )
    model = SmolLM2ForCausalLM(architecture)  # our block size, initializer and token ids
    model.load_state_dict(loaded.state_dict())
    return model


def check_run_dir_writable(run_dir: Path) -> None:
    """Every rank writes into the run directory (its checkpoint shards): a folder that cannot be written fails
    here, in one line, not at the first save after hours of training."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"train.out_dir: {write_failed(run_dir, exc)}") from None


def prepare_run_dir(config: Config, tokenizer_path: Path) -> None:
    """The run directory's config.yaml (this job's resolved config) and tokenizer.json (the data's)."""
    run_dir = Path(config.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml", header="Resolved by `smollm2 train`: every key, defaults filled in.")
    write_atomic(run_dir / "tokenizer.json", lambda tmp: shutil.copyfile(tokenizer_path, tmp))


class Trainer:
    """Engine, data, logger and the training position of one job, on one rank."""

    def __init__(self, config: Config, env: DistEnv, checkpoint: Checkpoint | None = None) -> None:
        self.config, self.env = config, env
        self.run_dir = Path(config.train.out_dir)
        self.step = 0
        self.consumed_samples = 0
        self.skipped_steps = 0  # steps that made no update (the stability guard), over the whole run
        self.bad_in_a_row = 0
        self.rollbacks = 0
        self.spikes = SpikeDetector(config.stability.spike_window, config.stability.spike_sigmas)
        # Everything a user can get wrong is checked before joining the process group, so a bad input
        # ends every rank with one line and exit 2 instead of a hang.
        if checkpoint is not None:
            check_resumable(checkpoint, config.model.architecture(), config.deepspeed.zero_stage)
        self.data = build_data(config)
        # The blocks drawn so far (smollm2.mixture.DataPosition); a checkpoint's must suit this config.
        self.data_position = self.data.mixture.start()
        if checkpoint is not None:
            self.data.mixture.position_from_state(_data_state(read_client_state(checkpoint)), str(checkpoint.path))
        self.tasks = tasks.load_tasks(config.eval.tasks, "eval.tasks", self.data.tokenizer, config.model.block_size)
        model = build_model(config, self.data.fingerprint)
        self.num_parameters = model.num_parameters()
        self.flops_per_token = flops_per_token(config.model, config.model.block_size)

        timeout_s = config.train.collective_timeout_s
        self.device = init_distributed(env, timeout_s)
        # The per-step votes (stop signals, which rank failed) go over gloo on CPU tensors: over NCCL, reading
        # a result would wait for the GPU to finish the step. A group of its own on CPU-only runs too, so that
        # every run takes this one code path.
        self.cpu_group = torch.distributed.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
        choices = [None] * env.world_size
        torch.distributed.all_gather_object(choices, checkpoint and checkpoint.tag, group=self.cpu_group)
        check_same_checkpoint(choices)
        self.dtype = resolve_dtype(config.train.dtype, self.device)
        self.engine, self.grad_clip = build_engine(config, model.to(self.device), env.world_size, self.dtype)
        # DeepSpeed's optimizer wrappers (ZeRO, bf16 weights) clip and report the gradient norm; around
        # the bare torch optimizer (stage 0, fp32 weights) we clip (self.grad_clip) and take the norm.
        self.bare_optimizer = not hasattr(self.engine.optimizer, "_global_grad_norm")
        if config.stability.spike == "skip" and not self.bare_optimizer:
            raise UserError(
                f"stability.spike: skip needs the trainer to step the optimizer, but DeepSpeed wraps it in "
                f"{type(self.engine.optimizer).__name__} (deepspeed.overrides); use rollback or log"
            )
        del model  # the engine owns it now; a stray reference would outlive the shutdown in close()
        self.accumulation = config.train.gradient_accumulation_steps(env.world_size)
        self.resumed_from = checkpoint
        if checkpoint is not None:
            self._restore(checkpoint)
        self.peak_tflops = config.logging.peak_tflops or measure_peak_tflops(self.device, self.dtype)

        self.store = torch.distributed.distributed_c10d._get_default_store()  # the rendezvous's; for heartbeats
        self.progress = (self.step, 0)  # steps done, forward passes of the next (_beat)
        self.watchdog = StallWatchdog(
            timeout_s, lambda: self._who_stopped_answering(TimeoutError(f"no step finished for {timeout_s:g} s"))
        )
        if env.is_main:
            prepare_run_dir(config, self.data.tokenizer_path)
        self.metrics = self._metrics_logger()
        self.metrics.log_text("config", f"```\n{config_yaml(config)}```", self.step)
        self.metrics.log_hparams(asdict(config))

    def _metrics_logger(self) -> MetricsLogger:
        """The run's logger from the current step on: rows past it (a crashed job's, an abandoned branch's) go."""
        settings = self.config.logging
        return MetricsLogger(
            self.run_dir,
            enabled=self.env.is_main,
            tensorboard=settings.tensorboard,
            start_step=self.step,
            wandb=settings.wandb,
            wandb_project=settings.wandb_project,
        )

    # -- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's client state. Collective: gathers every rank's RNG states."""
        return {
            "step": self.step,
            "consumed_samples": self.consumed_samples,
            "data": self.data.mixture.state_dict(self.data_position),
            "skipped_steps": self.skipped_steps,
            "rng": gather_rng_states(self.env.world_size, self.device),
            "model_config": self.config.model.architecture(),
            "config_hash": config_hash(self.config),
            "world_size": self.env.world_size,
            "zero_stage": self.config.deepspeed.zero_stage,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.consumed_samples = state["consumed_samples"]
        self.data_position = self.data.mixture.position_from_state(_data_state(state), f"checkpoint, step {self.step}")
        self.skipped_steps = state.get("skipped_steps", 0)  # absent in checkpoints of older versions
        restore_rng_states(state["rng"], self.env.rank, self.env.world_size, self.device)

    def _restore(self, checkpoint: Checkpoint) -> None:
        """Load a checkpoint into the engine and this trainer. One sharded for another world size or ZeRO stage
        is first converted (rank 0, once per checkpoint) into DeepSpeed's universal format, which any
        partitioning loads: same weights, AdamW moments and step counts, schedule and data position."""
        universal = reshard_needed(checkpoint, self.config.deepspeed.zero_stage, self.env.world_size)
        if universal:
            failure = [None]
            if self.env.is_main:
                try:
                    write_universal(checkpoint, report=self._print)
                except UserError as exc:
                    failure = [str(exc)]
                except Exception as exc:  # the others must hear of it, not wait for the collective timeout
                    failure = [f"{checkpoint.path}: conversion to DeepSpeed's universal format failed ({exc!r})"]
            # The others wait here (up to train.collective_timeout_s) and share rank 0's verdict.
            torch.distributed.broadcast_object_list(failure, src=0, group=self.cpu_group)
            if failure[0] is not None:
                raise UserError(failure[0])
        self.load_state_dict(load_checkpoint(self.engine, checkpoint, universal))
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
        optimizer and LR schedule in the last engine.step(). A step whose gradient norm is not finite (a
        non-finite loss on any rank gives one on every rank, through that average) makes no update: around
        the bare optimizer the trainer drops the gradients before engine.step(), and DeepSpeed's own
        wrappers skip such a step themselves. Either way the LR schedule moves on with the step. Losses and
        data wait go into `window`. `mark()` runs after each micro-batch's forward, backward and
        engine.step(): `smollm2 bench` times the phases with it.
        """
        step_loss = torch.zeros((), device=self.device)
        data_step = self.consumed_samples // self.config.train.global_batch_size + 1
        skips_before = self.engine.skipped_steps
        result = StepResult()
        faults.stall(data_step, self.env.rank)
        for micro in range(self.accumulation):
            started = time.perf_counter()
            input_ids, labels = next(batches)
            window.data_wait += time.perf_counter() - started
            input_ids = input_ids.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            loss = faults.corrupt_loss(self.loss(input_ids, labels), data_step, self.env.rank)
            self._beat(forwards=micro + 1)
            mark()
            self.engine.backward(loss)
            mark()
            step_loss += loss.detach()
            if micro == self.accumulation - 1:
                if self.config.stability.spike != "none":  # one all-reduce and one device sync per step
                    result.loss = self._mean_over_ranks(step_loss) / self.accumulation
                    result.spike = self.spikes.is_spike(result.loss)
                if self.bare_optimizer:
                    result.grad_norm = self._clip_gradients()
                    # The decision needs the norm on the host: one device sync, before the optimizer's kernels.
                    skip_for_spike = result.spike and self.config.stability.spike == "skip"
                    result.skipped = not bool(torch.isfinite(result.grad_norm)) or skip_for_spike
                    if result.skipped:
                        for param in self.engine.module.parameters():
                            param.grad = None  # torch's AdamW leaves a parameter without a gradient untouched
            self.engine.step()
            mark()
        if not self.bare_optimizer:
            result.grad_norm = self.engine.get_global_grad_norm()
            if self.engine.skipped_steps > skips_before:
                result.skipped = True
                self.engine.lr_scheduler.step()  # DeepSpeed holds the schedule back; ours moves on with the step
        if result.skipped:
            result.nonfinite_loss_ranks = self._ranks_where(not bool(torch.isfinite(step_loss)))
        else:
            window.loss_sum += step_loss
            window.micro_batches += self.accumulation
            if result.loss is not None and not result.spike:
                self.spikes.add(result.loss)
        self.step += 1
        self.consumed_samples += self.config.train.global_batch_size
        before, self.data_position = self.data_position, self.data.mixture.advance(self.data_position)
        for line in self.data.mixture.epoch_messages(before, self.data_position):
            self._print(line)
        window.steps += 1
        return result

    def _clip_gradients(self) -> torch.Tensor:
        """The global gradient norm before clipping, the gradients clipped to optimizer.grad_clip (0: not)."""
        params, foreach = list(self.engine.module.parameters()), self.device.type == "cuda"
        if self.grad_clip:
            return torch.nn.utils.clip_grad_norm_(params, self.grad_clip, foreach=foreach)
        return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], foreach=foreach)

    def _mean_over_ranks(self, value: torch.Tensor) -> float:
        total = value.detach().clone()
        torch.distributed.all_reduce(total)
        return total.item() / self.env.world_size

    def _ranks_where(self, condition: bool) -> list[int]:
        """The ranks on which `condition` holds. Collective (gloo)."""
        flags = torch.zeros(self.env.world_size, dtype=torch.int32)
        flags[self.env.rank] = int(condition)
        torch.distributed.all_reduce(flags, group=self.cpu_group)
        return [rank for rank, flag in enumerate(flags.tolist()) if flag]

    def fit(self, signals: StopSignals) -> None:
        stop = self.config.train.stop_at or self.config.train.max_steps
        self._print_header(stop)
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
                spike = None
                try:
                    stopped_by = self._train_until(stop, batches, signals)
                except Rollback as rollback:
                    spike = rollback.step
                except (RuntimeError, torch.distributed.DistError) as exc:
                    if not _is_collective_failure(exc):
                        raise
                    raise RankLost(self._who_stopped_answering(exc)) from None
                finally:
                    # Stop the workers here, on errors too: they ignore the SIGTERM with which Python's exit
                    # would end them, and a traceback can hold the iterator until then.
                    if hasattr(batches, "_shutdown_workers"):  # torch's own cleanup; none at data.num_workers=0
                        batches._shutdown_workers()
                if spike is None:
                    break
                self._roll_back(spike)
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
        elif self.env.is_main:
            print(
                f"done: step {self.step}; run directory {self.run_dir}; "
                f"TensorBoard: tensorboard --logdir {self.run_dir / 'tensorboard'}",
                flush=True,
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
            self._beat()
            self._check_stability(result)
            if (self.step % self.config.logging.log_every == 0 or self.step == stop) and window.steps:
                self._log(window, lr, result.grad_norm, stop)
                window = Window(self.device)
            if result.spike and self.config.stability.spike == "rollback":
                raise Rollback(self.step)
            eval_every = self.config.eval.eval_every
            if (eval_every and self.step % eval_every == 0) or self.step == stop:
                window.paused += self._timed(self.evaluate)
            save_every = self.config.checkpoint.save_every
            saved = (save_every and self.step % save_every == 0) or self.step == stop
            if saved:
                window.paused += self._timed(self.save)
            if self.step < stop and (stopped_by := signals.agreed(self.cpu_group)):
                if not saved:
                    self.save()
                return stopped_by
        return 0

    def _check_stability(self, result: StepResult) -> None:
        """Count and report skipped steps and spikes; stop the run after too many skipped steps in a row."""
        if result.spike:
            self._print(
                f"step {self.step}: loss spike: {result.loss:.4f} against {self.spikes.describe()}"
                + {"log": "", "skip": "; no update", "rollback": "; rolling back"}[self.config.stability.spike]
            )
        if not result.skipped:
            self.bad_in_a_row = 0
            return
        self.skipped_steps += 1
        self.bad_in_a_row += 1
        if result.skipped and not result.spike:
            where = (
                f"a non-finite loss on rank {', '.join(map(str, result.nonfinite_loss_ranks))}"
                if result.nonfinite_loss_ranks
                else f"a non-finite gradient norm ({float(result.grad_norm)})"
            )
            self._print(f"step {self.step}: skipped, no update: {where}")
        limit = self.config.stability.max_bad_steps
        if self.bad_in_a_row >= limit:
            newest = latest_good_checkpoint(self.run_dir)
            raise RunFailed(
                f"steps {self.step - limit + 1}-{self.step}: {limit} steps in a row (stability.max_bad_steps) made "
                "no update (non-finite loss or gradient norm); nothing was saved, "
                + (f"the newest checkpoint is {newest.path}" if newest else "there is no checkpoint yet")
                + ": lower optimizer.lr, check those steps' data, or raise stability.max_bad_steps"
            )

    def _roll_back(self, spike_step: int) -> None:
        """Back to the newest checkpoint's weights, optimizer, schedule and step, but not its data position:
        training goes on from the data after the spike (PaLM's and OPT's remedy for loss spikes)."""
        checkpoint = latest_good_checkpoint(self.run_dir, report=self._print)
        if checkpoint is None or self.rollbacks >= self.config.stability.max_rollbacks:
            reason = (
                "no checkpoint to roll back to"
                if checkpoint is None
                else f"{self.rollbacks} rollbacks already in this job (stability.max_rollbacks)"
            )
            raise RunFailed(f"loss spike at step {spike_step} and {reason}; lower optimizer.lr or check the data")
        position, data_position = self.consumed_samples, self.data_position
        self._restore(checkpoint)
        skipped_samples = position - self.consumed_samples
        self.consumed_samples, self.data_position = position, data_position
        self.rollbacks += 1
        self.metrics.close()  # the rows past the checkpoint's step belong to the abandoned steps
        self.metrics = self._metrics_logger()
        self.metrics.log(self.step, {"rollback_from_step": spike_step, "skipped_samples": skipped_samples})
        self._print(
            f"rolled back to {checkpoint.path} (step {self.step}); the {skipped_samples} samples after it, "
            "up to and including the spike's, are skipped"
        )

    def _beat(self, forwards: int = 0) -> None:
        """Note in the rendezvous store how far this rank got: `self.step` steps done and `forwards` forward
        passes of the next one. If a rank stops answering, the others read who is behind from there. (One
        small write per micro-batch, against the tens of milliseconds a micro-batch takes.)"""
        self.progress = (self.step, forwards)
        self.watchdog.progress()
        if self.store is not None:
            self.store.set(f"smollm2/heartbeat/{self.env.rank}", f"{self.step} {forwards} {time.time()}")

    def _who_stopped_answering(self, exc: Exception) -> str:
        """One line for a collective that failed: the ranks whose last heartbeat is behind this rank's step."""
        timeout = self.config.train.collective_timeout_s
        try:
            beats = {}
            for rank in range(self.env.world_size):
                key = f"smollm2/heartbeat/{rank}"
                if self.store.check([key]):
                    step, forwards, at = self.store.get(key).decode().split()
                    beats[rank] = (int(step), int(forwards), float(at))
        except Exception:  # the store lives in rank 0's process: this is how its death shows
            return (
                f"a collective failed at step {self.step + 1} and rank 0, which hosts the rendezvous store, does "
                f"not answer (dead or stalled); this rank ({self.env.rank}) stops too"
            )
        behind = [
            f"rank {rank} is behind: it never reported" if rank not in beats else
            f"rank {rank} is behind: it finished step {beats[rank][0]}"
            + (f" and {beats[rank][1]} forward pass(es) of the next" if beats[rank][1] else "")
            + f", {time.time() - beats[rank][2]:.0f} s ago"
            for rank in range(self.env.world_size)
            if beats.get(rank, (-1, 0, 0))[:2] < self.progress
        ]  # fmt: skip
        cause = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return (
            f"a collective failed at step {self.step + 1} (train.collective_timeout_s is {timeout:g}): "
            + ("; ".join(behind) if behind else "every rank got as far as this one (the collective itself hangs)")
            + f" (dead, stalled or unreachable); this rank ({self.env.rank}) stops too [{cause}]"
        )

    def _log(self, window: Window, lr: float, grad_norm: float | torch.Tensor | None, stop: int) -> None:
        """One row: the mean loss of the window's steps that made an update (none: null), its last step's
        gradient norm before clipping (not finite: null, flagged by the logger), throughput, memory."""
        loss = window.loss_sum.clone()
        torch.distributed.all_reduce(loss)
        elapsed = time.perf_counter() - window.started - window.paused
        tokens_per_s = window.steps * self.config.train.global_batch_size * self.config.model.block_size / elapsed
        flops_per_device = tokens_per_s / self.env.world_size * self.flops_per_token
        datasheet = self.config.logging.datasheet_tflops
        row = {
            "loss": loss.item() / (window.micro_batches * self.env.world_size) if window.micro_batches else None,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "skipped_steps": self.skipped_steps,
            "tokens_per_s": tokens_per_s,
            "mfu": 100 * flops_per_device / (self.peak_tflops * 1e12),
            "mfu_datasheet": 100 * flops_per_device / (datasheet * 1e12) if datasheet else None,
            "peak_mem_gib": peak_memory_gib(self.device),
            "data_wait_ms": 1000 * window.data_wait / window.steps,
            "step_time_s": elapsed / window.steps,
            "consumed_samples": self.consumed_samples,
        }
        if len(self.data.mixture.sources) > 1:  # the mixture as realised: every source's training tokens so far
            row |= {f"data/tokens/{name}": n for name, n in self.data.mixture.tokens(self.data_position).items()}
        self.metrics.log(self.step, row)
        eta = (stop - self.step) * elapsed / window.steps
        self._print(format_progress(self.step, self.config.train.max_steps, row, eta))

    def _validation_loss(self, micro_batch_size: int) -> tuple[float, dict[str, float]]:
        """The val loss over the first eval.num_blocks val blocks of every source that has some, and, for a
        mixture, each source's own (`eval/loss/<name>`: how a mixture is watched)."""
        return sources_validation_loss(
            self.engine,
            self.data.mixture.val,
            len(self.data.mixture.sources),
            self.config.eval.num_blocks,
            micro_batch_size,
            self.device,
            self.env.rank,
            self.env.world_size,
        )

    def evaluate(self) -> None:
        self.watchdog.progress()
        e = self.config.eval
        micro_batch_size = e.micro_batch_size or self.config.train.micro_batch_size
        self.engine.eval()
        loss, source_losses = self._validation_loss(micro_batch_size)
        task_results = tasks.evaluate_tasks(
            self.engine,
            self.data.tokenizer,
            self.tasks,
            micro_batch_size=micro_batch_size,
            device=self.device,
            max_length=self.config.model.block_size,
            rank=self.env.rank,
            world_size=self.env.world_size,
        )
        # The engine autocasts its own forward; generate() calls the module directly.
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            samples = generate_samples(
                self.engine.module,
                self.data.tokenizer,
                e.prompts,
                max_new_tokens=e.max_new_tokens,
                temperature=e.temperature,
                top_k=e.top_k,
                seed=e.seed,
                device=self.device,
                eos_id=self.data.eos_id,
            )
        self.engine.train()
        row = {"eval_loss": loss, "eval_ppl": perplexity(loss), **source_losses, **tasks.metrics_row(task_results)}
        self.metrics.log(self.step, row)
        self.metrics.log_samples(self.step, samples)
        line = f"eval step {self.step}: val loss {loss:.4f} | ppl {perplexity(loss):.2f}"
        self._print(line + (f" | {tasks.describe(task_results)}" if task_results else ""))
        for prompt, text in samples:
            self._print(f"  sample: {prompt + text!r}")

    def save(self) -> None:
        """A checkpoint of this step, unless a weight is not finite: then the run stops, its checkpoints intact."""
        self.watchdog.progress()
        if bad := self._ranks_where(not self._weights_finite()):
            newest = latest_good_checkpoint(self.run_dir)
            raise RunFailed(
                f"step {self.step}: non-finite weights on rank {', '.join(map(str, bad))}, not saved; "
                + (f"the newest checkpoint is {newest.path}" if newest else "there is no checkpoint yet")
            )
        path = save_checkpoint(
            self.engine,
            self.run_dir,
            self.step,
            self.state_dict(),
            self.config.checkpoint.keep_last,
            self.env.is_main,
            self.cpu_group,
        )
        self._print(f"saved checkpoint {path}")

    def _weights_finite(self) -> bool:
        """Whether every weight this rank holds is finite (under ZeRO 3, its shard of each parameter)."""
        weights = [getattr(p, "ds_tensor", p).detach() for p in self.engine.module.parameters()]
        largest = torch.stack([torch.linalg.vector_norm(w.float(), float("inf")) for w in weights if w.numel()])
        return bool(torch.isfinite(largest).all())

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

    def _print_header(self, stop: int) -> None:
        t, c = self.config.train, self.config
        start = f"resuming from {self.resumed_from.path} at step {self.step}" if self.resumed_from else "starting"
        dtype = str(self.dtype).removeprefix("torch.")
        self._print(
            f"{start}: {self.num_parameters:,} parameters, {self.env.world_size} rank(s) on {self.device.type} "
            f"({self.env.launcher}), ZeRO {c.deepspeed.zero_stage}, {dtype}, micro-batch {t.micro_batch_size} x "
            f"accumulation {self.accumulation} x {self.env.world_size} = {t.global_batch_size} samples = "
            f"{t.global_batch_size * c.model.block_size:,} tokens per step, steps {self.step} -> {stop} of "
            f"{t.max_steps}; MFU against {self.peak_tflops:.3g} TFLOP/s per device"
            f"{' (measured)' if c.logging.peak_tflops is None else ''}"
        )

    @staticmethod
    def _timed(fn) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started


def _data_state(client_state: dict[str, Any]) -> dict[str, Any]:
    """The data position part of a checkpoint's client state (before mixtures: step and consumed_samples)."""
    return client_state.get("data", client_state)


@dataclass
class StepResult:
    """What one optimizer step did, as far as the loop after it needs to know."""

    grad_norm: float | torch.Tensor | None = None  # global, before clipping
    skipped: bool = False  # no update was made (non-finite gradient norm, or a spike with stability.spike skip)
    nonfinite_loss_ranks: list[int] = field(default_factory=list)  # of a skipped step
    loss: float | None = None  # mean over ranks and micro-batches: watched for spikes (stability.spike)
    spike: bool = False


class RankLost(RunFailed):
    """A collective timed out or lost its peer: some rank died or stopped answering."""


class Rollback(Exception):  # noqa: N818  (control flow, not an error)
    """A loss spike at `step`, with stability.spike rollback: Trainer.fit rolls back and goes on."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


class SpikeDetector:
    """A loss is a spike when it exceeds the mean + `sigmas` standard deviations of the last `window` losses."""

    def __init__(self, window: int, sigmas: float) -> None:
        self.losses: deque[float] = deque(maxlen=window)
        self.sigmas = sigmas

    def add(self, loss: float) -> None:
        self.losses.append(loss)

    def limit(self) -> float | None:
        """The loss above which the next one is a spike; None until the window is full."""
        if len(self.losses) < self.losses.maxlen:
            return None
        mean = sum(self.losses) / len(self.losses)
        std = (sum((x - mean) ** 2 for x in self.losses) / len(self.losses)) ** 0.5
        return mean + self.sigmas * max(std, 1e-3 * abs(mean))  # a flat window still lets noise through

    def is_spike(self, loss: float) -> bool:
        limit = self.limit()
        return limit is not None and math.isfinite(loss) and loss > limit

    def describe(self) -> str:
        mean = sum(self.losses) / max(1, len(self.losses))
        return f"a limit of {self.limit():.4f} (mean {mean:.4f} of the last {len(self.losses)} steps)"


def _is_collective_failure(exc: Exception) -> bool:
    """Whether an exception out of a step is a collective that timed out or lost its peer (gloo's words)."""
    text = str(exc).lower()
    return any(
        words in text
        for words in ("timed out", "timeout", "connection closed by peer", "connection reset by peer", "broken pipe")
    )


class Window:
    """What accumulates between two logged steps."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)  # over the steps that made an update
        self.micro_batches = 0
        self.steps = 0
        self.data_wait = 0.0
        self.paused = 0.0  # eval and checkpoint time, not counted in tokens/s
        self.started = time.perf_counter()
