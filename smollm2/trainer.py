"""The training loop and the `smollm2 train` verb: a DeepSpeed engine over the data, with evals and checkpoints.

    smollm2 train --config FILE [--set key=value ...] [--resume auto|never|PATH]
    train("configs/tiny.yaml", ["train.max_steps=200"], resume="auto")

runs one job on every rank of whichever launcher started it (smollm2.distributed reads rank and world
size from `deepspeed`, `torchrun`, `srun`, `mpirun` or plain `python`). A Trainer is put together from
named builders that `smollm2 bench` calls too: the data (build_data), the model (build_model), the
engine (smollm2.engine.build_engine), the run directory (prepare_run_dir) and the metrics logger. It
holds the engine and the two numbers that, with the engine's own checkpoint, make a resume exact: the
optimizer steps done and the training samples consumed (the data position; DataLoader workers read
ahead of the loop, so the trainer counts, not the sampler). Its `state_dict()` / `load_state_dict()`
are what goes into the checkpoint's client state (smollm2/checkpoint.py).

Order of one optimizer step: `accumulation` micro-batches of forward, backward and engine.step()
(DeepSpeed averages the gradients over ranks and micro-batches and steps the optimizer and LR
schedule on the last), then log / eval / save when due, then the ranks agree (one scalar all_reduce
over gloo) whether any of them got SIGTERM or SIGUSR1 (preemption, a time limit near): if so, all save
a checkpoint at that step and the job ends with exit status 0, for a rerun to resume. Step s uses
learning rate lr * f(s).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from smollm2.atomic import write_atomic
from smollm2.checkpoint import (
    Checkpoint,
    check_resumable,
    check_same_architecture,
    gather_rng_states,
    load_checkpoint,
    load_model,
    read_client_state,
    resolve_resume,
    restore_rng_states,
    save_checkpoint,
)
from smollm2.config import Config, config_hash, config_yaml, load_config, save_config
from smollm2.data import DistributedBlockSampler, PackedTokenDataset
from smollm2.distributed import DistEnv, discover
from smollm2.engine import build_engine, init_distributed, leave_process_group, resolve_dtype
from smollm2.errors import UserError
from smollm2.evaluate import generate_samples, next_token_loss, perplexity, validation_loss
from smollm2.metrics import MetricsLogger, flops_per_token, format_progress, measure_peak_tflops, peak_memory_gib
from smollm2.model import SmolLM2Config, SmolLM2ForCausalLM
from smollm2.schedule import follow_config_after_resume
from smollm2.signals import StopSignals, ignore_stop_signals
from smollm2.tokenizer import eos_token_id, load_tokenizer, tokenizer_fingerprint


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
    """One training job: `resume` is "auto" (the run's latest checkpoint, if any), "never" or a path."""
    env = discover()
    config = load_config(config_path, overrides, env.world_size)
    checkpoint = resolve_resume(resume, Path(config.train.out_dir))
    stop = config.train.stop_at or config.train.max_steps
    if checkpoint is not None and (step := read_client_state(checkpoint)["step"]) >= stop:
        if env.is_main:
            print(f"step {step}: already at train.stop_at/max_steps ({stop}); nothing to do", flush=True)
        return
    trainer = Trainer(config, env, checkpoint)
    trainer.fit()
    trainer.close()


# -- builders: what `smollm2 train` and `smollm2 bench` put together --------------------------------


@dataclass
class TrainingData:
    """The tokenizer and the train and val blocks of data.path."""

    tokenizer: Any  # tokenizers.Tokenizer
    eos_id: int  # the id that ends every document
    fingerprint: str  # the tokenizer's (smollm2.tokenizer.tokenizer_fingerprint)
    train: PackedTokenDataset
    val: PackedTokenDataset


def build_data(config: Config) -> TrainingData:
    """data.path's tokenizer and token files, checked against the model config."""
    data_dir = Path(config.data.path)
    tokenizer = load_tokenizer(data_dir / "tokenizer.json")
    eos_id = eos_token_id(tokenizer)
    if eos_id != config.model.eos_token_id:
        raise UserError(
            f"model.eos_token_id: {config.model.eos_token_id}, but {data_dir / 'tokenizer.json'} "
            f"ends documents with id {eos_id}"
        )
    fingerprint = tokenizer_fingerprint(tokenizer)
    train, val = (
        PackedTokenDataset(
            data_dir / name,
            config.model.block_size,
            expected_vocab_size=config.model.vocab_size,
            expected_fingerprint=fingerprint,
        )
        for name in ("train.bin", "val.bin")
    )
    return TrainingData(tokenizer, eos_id, fingerprint, train, val)


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


def prepare_run_dir(config: Config) -> None:
    """The run directory's config.yaml (this job's resolved config) and tokenizer.json (the data's)."""
    run_dir = Path(config.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml", header="Resolved by `smollm2 train`: every key, defaults filled in.")
    source = Path(config.data.path) / "tokenizer.json"
    write_atomic(run_dir / "tokenizer.json", lambda tmp: shutil.copyfile(source, tmp))


class Trainer:
    """Engine, data, logger and the training position of one job, on one rank."""

    def __init__(self, config: Config, env: DistEnv, checkpoint: Checkpoint | None = None) -> None:
        self.config, self.env = config, env
        self.run_dir = Path(config.train.out_dir)
        self.step = 0
        self.consumed_samples = 0
        # Everything a user can get wrong is checked before joining the process group, so a bad input
        # ends every rank with one line and exit 2 instead of a hang.
        if checkpoint is not None:
            check_resumable(checkpoint, config.model.architecture(), config.deepspeed.zero_stage, env.world_size)
        self.data = build_data(config)
        model = build_model(config, self.data.fingerprint)
        self.num_parameters = model.num_parameters()
        self.flops_per_token = flops_per_token(config.model, config.model.block_size)

        self.device = init_distributed(env)
        # The per-step stop-signal vote goes over gloo on CPU tensors (StopSignals.agreed). A group of its
        # own on CPU-only runs too, so that every run takes this one code path.
        self.cpu_group = torch.distributed.new_group(backend="gloo")
        self.dtype = resolve_dtype(config.train.dtype, self.device)
        self.engine, self.grad_clip = build_engine(config, model.to(self.device), env.world_size, self.dtype)
        # DeepSpeed's optimizer wrappers (ZeRO, bf16 weights) clip and report the gradient norm; around
        # the bare torch optimizer (stage 0, fp32 weights) we clip (self.grad_clip) and take the norm.
        self.bare_optimizer = not hasattr(self.engine.optimizer, "_global_grad_norm")
        del model  # the engine owns it now; a stray reference would outlive the shutdown in close()
        self.accumulation = config.train.gradient_accumulation_steps(env.world_size)
        self.resumed_from = checkpoint
        if checkpoint is not None:
            self.load_state_dict(load_checkpoint(self.engine, checkpoint))
            follow_config_after_resume(self.engine.lr_scheduler, config.optimizer.lr)
        self.peak_tflops = config.logging.peak_tflops or measure_peak_tflops(self.device, self.dtype)

        if env.is_main:
            prepare_run_dir(config)
        # Rows past the step we start from (a crashed job's, or an older run's) are dropped.
        self.metrics = MetricsLogger(
            self.run_dir, enabled=env.is_main, tensorboard=config.logging.tensorboard, start_step=self.step
        )
        self.metrics.log_text("config", f"```\n{config_yaml(config)}```", self.step)

    # -- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's client state. Collective: gathers every rank's RNG states."""
        return {
            "step": self.step,
            "consumed_samples": self.consumed_samples,
            "rng": gather_rng_states(self.env.world_size, self.device),
            "model_config": self.config.model.architecture(),
            "config_hash": config_hash(self.config),
            "world_size": self.env.world_size,
            "zero_stage": self.config.deepspeed.zero_stage,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.consumed_samples = state["consumed_samples"]
        restore_rng_states(state["rng"], self.env.rank, self.env.world_size, self.device)

    # -- the loop ----------------------------------------------------------------------------------

    def batches(self, worker_init_fn: Callable[[int], None] | None = None):
        """This rank's (input_ids, next tokens) micro-batches from the current data position, endlessly."""
        t = self.config.train
        sampler = DistributedBlockSampler(
            len(self.data.train),
            t.micro_batch_size,
            self.env.rank,
            self.env.world_size,
            seed=t.seed,
            consumed_samples=self.consumed_samples,
        )
        workers = self.config.data.num_workers
        loader = torch.utils.data.DataLoader(
            self.data.train,
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

    def train_step(
        self, batches, window: Window, need_grad_norm: bool = False, mark: Callable[[], None] = lambda: None
    ) -> torch.Tensor | float | None:
        """One optimizer step: `accumulation` micro-batches of forward, backward and engine.step().

        DeepSpeed averages the gradients over ranks and micro-batches in the last backward and steps the
        optimizer and LR schedule in the last engine.step(). Losses and data wait go into `window`.
        Returns the gradient norm before clipping when DeepSpeed or our clipping computed it anyway,
        or when `need_grad_norm` (else None). `mark()` runs after each micro-batch's forward, backward
        and engine.step(): `smollm2 bench` times the phases with it.
        """
        grad_norm = None
        for micro in range(self.accumulation):
            started = time.perf_counter()
            input_ids, labels = next(batches)
            window.data_wait += time.perf_counter() - started
            input_ids = input_ids.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            loss = self.loss(input_ids, labels)
            mark()
            self.engine.backward(loss)
            mark()
            if micro == self.accumulation - 1 and self.bare_optimizer and (self.grad_clip or need_grad_norm):
                # The averaged gradients sit in .grad between the last backward and the optimizer step.
                params, foreach = list(self.engine.module.parameters()), self.device.type == "cuda"
                if self.grad_clip:
                    grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip, foreach=foreach)
                else:
                    grad_norm = torch.nn.utils.get_total_norm(
                        [p.grad for p in params if p.grad is not None], foreach=foreach
                    )
            self.engine.step()
            mark()
            window.loss_sum += loss.detach()
            window.micro_batches += 1
        if not self.bare_optimizer:
            grad_norm = self.engine.get_global_grad_norm()
        self.step += 1
        self.consumed_samples += self.config.train.global_batch_size
        window.steps += 1
        return grad_norm

    def fit(self) -> None:
        stop = self.config.train.stop_at or self.config.train.max_steps
        self._print_header(stop)
        # The handlers go in before the DataLoader workers fork, and the workers ignore the stop signals:
        # SLURM signals every process of a job step, and torch's own SIGTERM handler would end a worker,
        # which fails the step in progress ("DataLoader worker (pid N) is killed by signal: Terminated").
        with StopSignals() as signals:
            batches = self.batches(worker_init_fn=ignore_stop_signals)
            try:
                stopped_by = self._train_until(stop, batches, signals)
            finally:
                # Stop the workers here, on errors too: they ignore the SIGTERM with which Python's exit
                # would end them, and a traceback can hold the iterator until then.
                if hasattr(batches, "_shutdown_workers"):  # torch's own cleanup; no workers at data.num_workers=0
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
        elif self.env.is_main:
            print(
                f"done: step {self.step}; run directory {self.run_dir}; "
                f"TensorBoard: tensorboard --logdir {self.run_dir / 'tensorboard'}",
                flush=True,
            )

    def _train_until(self, stop: int, batches, signals: StopSignals) -> int:
        """Train, eval and save up to step `stop`, or to the step at which some rank got a stop signal.

        Returns that signal's number (0: none). A stop saves a checkpoint at its step.
        """
        window = Window(self.device)
        while self.step < stop:
            lr = self.engine.get_lr()[0]
            log_now = (self.step + 1) % self.config.logging.log_every == 0 or self.step + 1 == stop
            grad_norm = self.train_step(batches, window, need_grad_norm=log_now)
            if log_now:
                self._log(window, lr, grad_norm, stop)
                window = Window(self.device)
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

    def _log(self, window: Window, lr: float, grad_norm: float | torch.Tensor | None, stop: int) -> None:
        loss = window.loss_sum.clone()
        torch.distributed.all_reduce(loss)
        elapsed = time.perf_counter() - window.started - window.paused
        tokens_per_s = window.steps * self.config.train.global_batch_size * self.config.model.block_size / elapsed
        flops_per_device = tokens_per_s / self.env.world_size * self.flops_per_token
        datasheet = self.config.logging.datasheet_tflops
        row = {
            "loss": loss.item() / (window.micro_batches * self.env.world_size),
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens_per_s": tokens_per_s,
            "mfu": 100 * flops_per_device / (self.peak_tflops * 1e12),
            "mfu_datasheet": 100 * flops_per_device / (datasheet * 1e12) if datasheet else None,
            "peak_mem_gib": peak_memory_gib(self.device),
            "data_wait_ms": 1000 * window.data_wait / window.steps,
            "step_time_s": elapsed / window.steps,
            "consumed_samples": self.consumed_samples,
        }
        self.metrics.log(self.step, row)
        eta = (stop - self.step) * elapsed / window.steps
        self._print(format_progress(self.step, self.config.train.max_steps, row, eta))

    def evaluate(self) -> None:
        e = self.config.eval
        self.engine.eval()
        loss, _ = validation_loss(
            self.engine,
            self.data.val,
            e.num_blocks,
            e.micro_batch_size or self.config.train.micro_batch_size,
            self.device,
            self.env.rank,
            self.env.world_size,
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
        self.metrics.log(self.step, {"eval_loss": loss, "eval_ppl": perplexity(loss)})
        self.metrics.log_samples(self.step, samples)
        self._print(f"eval step {self.step}: val loss {loss:.4f} | ppl {perplexity(loss):.2f}")
        for prompt, text in samples:
            self._print(f"  sample: {prompt + text!r}")

    def save(self) -> None:
        path = save_checkpoint(
            self.engine, self.run_dir, self.step, self.state_dict(), self.config.checkpoint.keep_last, self.env.is_main
        )
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


class Window:
    """What accumulates between two logged steps."""

    def __init__(self, device: torch.device) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.micro_batches = 0
        self.steps = 0
        self.data_wait = 0.0
        self.paused = 0.0  # eval and checkpoint time, not counted in tokens/s
        self.started = time.perf_counter()
