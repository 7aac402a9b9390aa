"""The training loop: a DeepSpeed engine over the packed data, with eval, samples, metrics, checkpoints.

    train("configs/tiny.yaml", ["train.max_steps=200"], resume="auto")

runs one job on every rank of whichever launcher started it. `Trainer` holds the engine and the two
numbers that, with the engine's own checkpoint, make a resume exact: the optimizer steps done and the
training samples consumed (the data position; DataLoader workers read ahead of the loop, so the
trainer counts, not the sampler). Its `state_dict()` / `load_state_dict()` are what goes into the
checkpoint's client state, next to every rank's RNG states and the model config.

Order of one optimizer step: `accumulation` micro-batches of forward, backward and engine.step()
(DeepSpeed averages the gradients over ranks and micro-batches and steps the optimizer and LR
schedule on the last), then log / eval / save when due, then the ranks agree (one scalar all_reduce
over gloo) whether any of them got SIGTERM or SIGUSR1 (preemption, a time limit near): if so, all save
a checkpoint at that step and the job ends with exit status 0, for a rerun to resume. Step s uses
learning rate lr * f(s).
"""
from __future__ import annotations

import dataclasses
import gc
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from smollm2.config import Config, config_hash, config_yaml, load_config, save_config
from smollm2.distributed import DistEnv, discover
from smollm2.errors import UserError
from smollm2.evaluate import generate_samples, next_token_loss, perplexity, validation_loss
from smollm2.metrics import MetricsLogger, format_progress, measure_peak_tflops, peak_memory_gib
from smollm2.run_dir import (CHECKPOINTS, LATEST, TAG_PATTERN, Checkpoint, checkpoint_tag, find_checkpoint,
                             latest_checkpoint, read_client_state)
from smollm2.schedule import follow_config_after_resume


def train(config_path: str | os.PathLike, overrides: list[str], resume: str = "auto") -> None:
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


def resolve_resume(resume: str, run_dir: Path) -> Checkpoint | None:
    if resume == "auto":
        return latest_checkpoint(run_dir)
    if resume == "never":
        if latest_checkpoint(run_dir) is not None:
            raise UserError(f"--resume never: {run_dir} already has checkpoints; use --resume auto to continue "
                            "it, or another train.out_dir")
        return None
    return find_checkpoint(resume)


def check_resumable(checkpoint: Checkpoint, config: Config, world_size: int) -> None:
    """Refuse a checkpoint this config cannot continue."""
    state = read_client_state(checkpoint)
    ours = dataclasses.asdict(config.model.architecture())
    for key, value in state["model_config"].items():
        if ours.get(key) != value:
            raise UserError(f"model.{key}: the config says {ours.get(key)!r} but checkpoint {checkpoint.path} "
                            f"was trained with {value!r}; a resumed run must keep the model")
    if state["zero_stage"] != config.deepspeed.zero_stage:
        raise UserError(f"deepspeed.zero_stage: the config says {config.deepspeed.zero_stage} but checkpoint "
                        f"{checkpoint.path} was written with stage {state['zero_stage']}")
    if state["zero_stage"] > 0 and state["world_size"] != world_size:
        # ZeRO shards the optimizer state by rank; DeepSpeed cannot re-shard it on load.
        raise UserError(f"{checkpoint.path}: written by {state['world_size']} ranks with ZeRO stage "
                        f"{state['zero_stage']}, cannot resume on {world_size}; resume on "
                        f"{state['world_size']} ranks (stage 0 checkpoints resume on any number)")


# Fields that change the function a model computes; init_from weights must agree on these.
ARCHITECTURE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                     "tie_word_embeddings")


def build_model(config: Config, data_tokenizer_fingerprint: str):
    """A freshly initialized model (seeded: every rank builds the same one), or the init_from weights."""
    from smollm2.model import SmolLM2ForCausalLM

    architecture = config.model.architecture()
    torch.manual_seed(config.train.seed)
    if config.model.init_from is None:
        return SmolLM2ForCausalLM(architecture)
    from smollm2.loading import load_model
    from smollm2.tokenizer import tokenizer_fingerprint

    source = config.model.init_from
    loaded, tokenizer = load_model(source)
    for key in ARCHITECTURE_KEYS:
        if getattr(loaded.config, key) != getattr(architecture, key):
            raise UserError(f"model.{key}: the config says {getattr(architecture, key)!r} but model.init_from "
                            f"{source} has {getattr(loaded.config, key)!r}")
    if tokenizer is not None and tokenizer_fingerprint(tokenizer) != data_tokenizer_fingerprint:
        raise UserError(f"model.init_from: {source} comes with another tokenizer than data.path's; prepare the "
                        "data with the model's tokenizer (smollm2 tokenizer extract / the folder's tokenizer.json)")
    model = SmolLM2ForCausalLM(architecture)  # our block size, initializer and token ids
    model.load_state_dict(loaded.state_dict())
    return model


class Trainer:
    """Engine, data, logger and the training position of one job, on one rank."""

    def __init__(self, config: Config, env: DistEnv, checkpoint: Checkpoint | None = None) -> None:
        from smollm2.data import PackedTokenDataset
        from smollm2.engine import build_engine, init_distributed, resolve_dtype
        from smollm2.tokenizer import eos_token_id, load_tokenizer, tokenizer_fingerprint

        self.config, self.env = config, env
        self.run_dir = Path(config.train.out_dir)
        self.step = 0
        self.consumed_samples = 0
        # Everything a user can get wrong is checked before joining the process group, so a bad input
        # ends every rank with one line and exit 2 instead of a hang.
        if checkpoint is not None:
            check_resumable(checkpoint, config, env.world_size)
        data_dir = Path(config.data.path)
        self.tokenizer = load_tokenizer(data_dir / "tokenizer.json")
        self.eos_id = eos_token_id(self.tokenizer)
        if self.eos_id != config.model.eos_token_id:
            raise UserError(f"model.eos_token_id: {config.model.eos_token_id}, but {data_dir / 'tokenizer.json'} "
                            f"ends documents with id {self.eos_id}")
        fingerprint = tokenizer_fingerprint(self.tokenizer)
        block_size = config.model.block_size
        self.train_data, self.val_data = (
            PackedTokenDataset(data_dir / name, block_size, expected_vocab_size=config.model.vocab_size,
                               expected_fingerprint=fingerprint) for name in ("train.bin", "val.bin"))
        model = build_model(config, fingerprint)
        self.flops_per_token = model.flops_per_token(block_size)
        self.num_parameters = model.num_parameters()

        self.device = init_distributed(env)
        # The per-step stop-signal vote goes over gloo on CPU tensors: over NCCL, reading its result would
        # wait for the GPU to finish the step, and the next step could not be queued behind it. (A group of
        # its own on CPU-only runs too, so that every run takes this one code path.)
        self.cpu_group = torch.distributed.new_group(backend="gloo")
        self.dtype = resolve_dtype(config.train.dtype, self.device)
        self.engine, self.grad_clip = build_engine(config, model.to(self.device), env.world_size, self.dtype)
        # DeepSpeed's optimizer wrappers (ZeRO, bf16 weights) clip and report the gradient norm; around
        # the bare torch optimizer (stage 0, fp32 weights) we clip (self.grad_clip) and take the norm.
        self.bare_optimizer = not hasattr(self.engine.optimizer, "_global_grad_norm")
        del model  # the engine owns it now; a stray reference would outlive the shutdown below
        self.accumulation = config.train.gradient_accumulation_steps(env.world_size)
        if checkpoint is not None:
            path, client_state = self.engine.load_checkpoint(str(checkpoint.root), tag=checkpoint.tag)
            if path is None:
                raise RuntimeError(f"DeepSpeed could not load {checkpoint.path}")
            self.load_state_dict(client_state["smollm2"])
            follow_config_after_resume(self.engine.lr_scheduler, config.optimizer.lr)
        self.resumed_from = checkpoint
        self.peak_tflops = config.logging.peak_tflops or measure_peak_tflops(self.device, self.dtype)

        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / "config.yaml",
                        header="Resolved by `smollm2 train`: every key, defaults filled in.")
            shutil.copyfile(data_dir / "tokenizer.json", self.run_dir / ".tokenizer.json.tmp")
            os.replace(self.run_dir / ".tokenizer.json.tmp", self.run_dir / "tokenizer.json")
        # Rows past the step we start from (a crashed job's, or an older run's) are dropped.
        self.metrics = MetricsLogger(self.run_dir, enabled=env.is_main, tensorboard=config.logging.tensorboard,
                                     start_step=self.step)
        self.metrics.log_text("config", f"```\n{config_yaml(config)}```", self.step)

    # -- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's client state. Collective: gathers every rank's RNG states."""
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None}
        all_rng: list[Any] = [None] * self.env.world_size
        torch.distributed.all_gather_object(all_rng, rng)
        return {
            "step": self.step,
            "consumed_samples": self.consumed_samples,
            "rng": all_rng,
            "model_config": dataclasses.asdict(self.config.model.architecture()),
            "config_hash": config_hash(self.config),
            "world_size": self.env.world_size,
            "zero_stage": self.config.deepspeed.zero_stage,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.consumed_samples = state["consumed_samples"]
        # RNG states go back rank by rank when the world size is unchanged (the data order does not
        # depend on them: it is a function of consumed_samples).
        if len(state["rng"]) == self.env.world_size:
            rng = state["rng"][self.env.rank]
            random.setstate(rng["python"])
            np.random.set_state(rng["numpy"])
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"])

    # -- the loop ----------------------------------------------------------------------------------

    def batches(self, worker_init_fn: Callable[[int], None] | None = None):
        """This rank's (input_ids, next tokens) micro-batches from the current data position, endlessly."""
        from smollm2.data import DistributedBlockSampler

        t = self.config.train
        sampler = DistributedBlockSampler(len(self.train_data), t.micro_batch_size, self.env.rank,
                                          self.env.world_size, seed=t.seed, consumed_samples=self.consumed_samples)
        workers = self.config.data.num_workers
        loader = torch.utils.data.DataLoader(self.train_data, batch_sampler=sampler, num_workers=workers,
                                             pin_memory=self.device.type == "cuda",
                                             prefetch_factor=4 if workers else None, worker_init_fn=worker_init_fn)
        return iter(loader)

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one micro-batch (labels: the next tokens)."""
        if self.config.train.fused_loss:  # the model's chunked LM head + cross-entropy: no logits tensor
            return self.engine(input_ids, targets=labels).loss
        return next_token_loss(self.engine(input_ids).logits, labels)

    def train_step(self, batches, window: Window, need_grad_norm: bool = False,
                   mark: Callable[[], None] = lambda: None) -> torch.Tensor | float | None:
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
                    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None],
                                                              foreach=foreach)
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
            self._print(f"stopped at step {self.step} on {signal.Signals(stopped_by).name}, checkpoint saved: run the "
                        "same `smollm2 train` command to resume from it (--resume auto, the default)")
        elif self.env.is_main:
            print(f"done: step {self.step}; run directory {self.run_dir}; "
                  f"TensorBoard: tensorboard --logdir {self.run_dir / 'tensorboard'}", flush=True)

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
            if self.step < stop and (stopped_by := self._agreed_stop_signal(signals)):
                if not saved:
                    self.save()
                return stopped_by
        return 0

    def _agreed_stop_signal(self, signals: StopSignals) -> int:
        """The stop signal some rank has received (0: none), the same on every rank. Collective: one scalar."""
        flag = torch.tensor(signals.received)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self.cpu_group)
        return int(flag)

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
        loss, _ = validation_loss(self.engine, self.val_data, e.num_blocks, e.micro_batch_size or
                                  self.config.train.micro_batch_size, self.device, self.env.rank,
                                  self.env.world_size)
        # The engine autocasts its own forward; generate() calls the module directly.
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            samples = generate_samples(self.engine.module, self.tokenizer, e.prompts, max_new_tokens=e.max_new_tokens,
                                       temperature=e.temperature, top_k=e.top_k, seed=e.seed, device=self.device,
                                       eos_id=self.eos_id)
        self.engine.train()
        self.metrics.log(self.step, {"eval_loss": loss, "eval_ppl": perplexity(loss)})
        self.metrics.log_samples(self.step, samples)
        self._print(f"eval step {self.step}: val loss {loss:.4f} | ppl {perplexity(loss):.2f}")
        for prompt, text in samples:
            self._print(f"  sample: {prompt + text!r}")

    def save(self) -> None:
        root, tag = self.run_dir / CHECKPOINTS, checkpoint_tag(self.step)
        self.engine.save_checkpoint(str(root), tag=tag, client_state={"smollm2": self.state_dict()},
                                    save_latest=False)  # returns after a barrier: every rank has written
        if self.env.is_main:
            tmp = root / f".{LATEST}.tmp"
            tmp.write_text(tag)
            os.replace(tmp, root / LATEST)  # atomic: `latest` never names a half-written checkpoint
            self._prune(root, keep=tag)
            self._print(f"saved checkpoint {root / tag}")

    def _prune(self, root: Path, keep: str) -> None:
        tags = sorted((int(m.group(1)), p.name) for p in root.iterdir()
                      if p.is_dir() and (m := TAG_PATTERN.fullmatch(p.name)))
        for _, name in tags[:-self.config.checkpoint.keep_last]:
            if name != keep:
                shutil.rmtree(root / name)

    def close(self) -> None:
        """Leave the process group in the order that avoids gloo's abort at exit (cpu-feasibility §2.5)."""
        self.metrics.close()
        torch.distributed.barrier()
        self.engine.destroy()
        self.engine = None
        gc.collect()
        torch.distributed.destroy_process_group()
        gc.collect()

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
            f"{' (measured)' if c.logging.peak_tflops is None else ''}")

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


# SLURM sends SIGUSR1 ahead of the time limit (sbatch --signal) and SIGTERM on preemption and scancel.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """While active, SIGTERM and SIGUSR1 only note their number in `received`, for Trainer.fit to act on.

    The step in progress and a checkpoint being written go on undisturbed by any number of signals.
    The handlers replace whatever was there, SIG_IGN included (launch/slurm/multi_node.sbatch starts the
    DeepSpeed launcher ignoring both, and the ranks inherit that), and what was there comes back on
    exit. Python installs handlers only in the main thread; elsewhere the signals keep their effect.
    """

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._note) for sig in STOP_SIGNALS}
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.received = signum

    def __exit__(self, *exc_info: Any) -> None:
        for sig, handler in self._previous.items():
            # None: a handler installed outside Python, which Python cannot put back.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker_init_fn: the trainer decides when to stop, and stops its workers itself."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
