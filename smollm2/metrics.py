"""What a run reports: a console line per logged step, RUN_DIR/metrics.jsonl, TensorBoard, samples.

Rank 0 writes; the other ranks hold a disabled logger. One row per logged step, the same numbers in
all three places:

| metrics.jsonl key | TensorBoard tag      | meaning                                                      |
|-------------------|----------------------|--------------------------------------------------------------|
| loss              | train/loss           | mean training loss over the steps since the last row that    |
|                   |                      | made an update (null when none did)                          |
| lr                | train/lr             | learning rate of the last step                               |
| grad_norm         | train/grad_norm      | global gradient norm before clipping, last step              |
| skipped_steps     | train/skipped_steps  | steps so far that made no update (non-finite, or a spike)    |
| tokens_per_s      | perf/tokens_per_s    | training tokens per second, all ranks together               |
| mfu               | perf/mfu             | percent of the per-device peak (flops_per_token below)       |
| mfu_datasheet     | perf/mfu_datasheet   | the same against logging.datasheet_tflops, when set          |
| peak_mem_gib      | perf/peak_mem_gib    | peak GPU memory allocated (CPU: peak resident set size)      |
| data_wait_ms      | perf/data_wait_ms    | time per step spent waiting for the next batch               |
| step_time_s       | perf/step_time_s     | wall time per optimizer step                                 |
| goodput           | perf/goodput         | share of the wall time since the last row spent training     |
|                   |                      | (in the steps, not waiting for data)                         |
| time_share/<part> | the same             | share of that wall time spent on data_wait, eval, samples,   |
|                   |                      | save (the loop's wait for checkpoints) and logging           |
| consumed_samples  | -                    | training samples seen so far (the data position)             |
| eval_loss, eval_ppl | eval/loss, eval/ppl | validation loss and perplexity (rows of their own)          |
| rollback_from_step, skipped_samples | - | a rollback to this step after a loss spike (a row of its own)  |
| eval/<task>/acc, eval/<task>/acc_norm | the same | multiple-choice accuracy (smollm2/tasks.py), eval rows    |
| data/tokens/<name> | the same            | a data mixture's training tokens from source <name> so far   |
| eval/loss/<name>  | the same             | a data mixture's val loss on source <name> (eval rows)       |

A key with a "/" in it is its own TensorBoard tag.

metrics.jsonl is strict JSON: a value that is not finite (a loss of NaN) is written as null and its key
listed in the row's "nonfinite". Generation samples go to RUN_DIR/samples.jsonl and to TensorBoard text
`samples/<i>`. A job starting at step S (0 for a new run; the step rolled back to) drops the rows past S
that an interrupted job left (in the JSON files and, through SummaryWriter's purge_step, in TensorBoard):
every file tells one history, each step once.

Dashboards: every TensorBoard log directory also holds a custom-scalars layout (DASHBOARD_LAYOUT: train and
eval loss on one chart, lr, tokens/s, MFU, memory, task scores) and the run's config as hyperparameters
for the HParams tab (one "section.key" each; the tab compares the runs under one --logdir). With
logging.wandb (offline or online) the same rows, samples and config also go to Weights & Biases, into
RUN_DIR/wandb, under a run id kept in RUN_DIR/wandb-run-id so that a resumed job continues the same run
(W&B keeps only increasing steps: after a rollback it drops the rows of steps it already has).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from pathlib import Path
from typing import Any

from smollm2.atomic import write_text_atomic
from smollm2.errors import UserError

TENSORBOARD_TAGS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "skipped_steps": "train/skipped_steps",
    "tokens_per_s": "perf/tokens_per_s",
    "mfu": "perf/mfu",
    "mfu_datasheet": "perf/mfu_datasheet",
    "peak_mem_gib": "perf/peak_mem_gib",
    "data_wait_ms": "perf/data_wait_ms",
    "step_time_s": "perf/step_time_s",
    "goodput": "perf/goodput",
    "eval_loss": "eval/loss",
    "eval_ppl": "eval/ppl",
}


# TensorBoard's custom-scalars layout: category -> chart title -> ["Multiline", regular expressions over tags].
DASHBOARD_LAYOUT = {
    "training": {
        "loss: train and eval": ["Multiline", [r"^train/loss$", r"^eval/loss$"]],
        "val loss by data source": ["Multiline", [r"^eval/loss/"]],
        "learning rate": ["Multiline", [r"^train/lr$"]],
        "gradient norm before clipping": ["Multiline", [r"^train/grad_norm$"]],
    },
    "performance": {
        "tokens per second": ["Multiline", [r"^perf/tokens_per_s$"]],
        "MFU (%)": ["Multiline", [r"^perf/mfu"]],
        "peak memory (GiB)": ["Multiline", [r"^perf/peak_mem_gib$"]],
        "goodput and where the rest of the time goes": ["Multiline", [r"^perf/goodput$", r"^time_share/"]],
    },
    "downstream tasks": {
        "accuracy": ["Multiline", [r"^eval/.+/acc$"]],
        "accuracy, length-normalized": ["Multiline", [r"^eval/.+/acc_norm$"]],
    },
}
WANDB_RUN_ID_FILE = "wandb-run-id"


def hparams(config: dict[str, Any]) -> dict[str, float | str]:
    """A nested config (dataclasses.asdict of smollm2.config.Config) as TensorBoard hyperparameters:
    "section.key" -> its number, or its YAML-like text for anything else (true, null, [a, b])."""
    flat: dict[str, float | str] = {}
    for section, values in config.items():
        for name, value in values.items():
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            flat[f"{section}.{name}"] = value if is_number else value if isinstance(value, str) else json.dumps(value)
    return flat


class MetricsLogger:
    """metrics.jsonl + samples.jsonl + TensorBoard for one run directory (a no-op when not enabled)."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        enabled: bool,
        tensorboard: bool,
        start_step: int = 0,
        metrics_file: str = "metrics.jsonl",
        samples_file: str = "samples.jsonl",
        tensorboard_dir: str = "tensorboard",
        wandb: str | bool = False,
        wandb_project: str = "smollm2",
    ) -> None:
        """The file names are the trainer's by default; `smollm2 eval --watch` writes files of its own beside them.
        `wandb`: False, "offline" or "online" (logging.wandb)."""
        self.enabled = enabled
        self.metrics_path = Path(run_dir) / metrics_file
        self.samples_path = Path(run_dir) / samples_file
        self.writer = None
        self.wandb_run = None
        if not enabled:
            return
        for path in (self.metrics_path, self.samples_path):
            _drop_rows_after(path, start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / tensorboard_dir), purge_step=start_step + 1)
            self.writer.add_custom_scalars(DASHBOARD_LAYOUT)
        if wandb:
            self.wandb_run = _start_wandb(Path(run_dir), wandb, wandb_project)

    @classmethod
    def for_run(cls, run_dir: str | os.PathLike, settings: Any, enabled: bool, start_step: int) -> MetricsLogger:
        """The trainer's logger (the logging.* section `settings`) from `start_step` on: rows past it (a crashed
        job's, an abandoned branch's) go."""
        return cls(
            run_dir,
            enabled=enabled,
            tensorboard=settings.tensorboard,
            start_step=start_step,
            wandb=settings.wandb,
            wandb_project=settings.wandb_project,
        )

    def log(self, step: int, row: dict[str, Any]) -> None:
        """One metrics row; None and non-finite values are written as null to the JSON (the latter listed in
        "nonfinite") and left out of TensorBoard."""
        if not self.enabled:
            return
        nonfinite = [key for key, value in row.items() if isinstance(value, float) and not math.isfinite(value)]
        row = {key: None if key in nonfinite else value for key, value in row.items()}
        _append_json(self.metrics_path, {"step": step, **row, **({"nonfinite": nonfinite} if nonfinite else {})})
        scalars = {
            tag: value
            for key, value in row.items()
            if (tag := TENSORBOARD_TAGS.get(key, key if "/" in key else None)) is not None and value is not None
        }
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
            self.writer.flush()
        if self.wandb_run is not None and scalars:
            self.wandb_run.log(scalars, step=step)

    def log_samples(self, step: int, samples: list[tuple[str, str]]) -> None:
        """(prompt, generated continuation) pairs."""
        if not self.enabled:
            return
        for i, (prompt, text) in enumerate(samples):
            _append_json(self.samples_path, {"step": step, "prompt": prompt, "text": text})
            if self.writer is not None:
                # Markdown: a code block keeps the model's line breaks and odd characters readable.
                self.writer.add_text(f"samples/{i}", f"**{prompt}**\n\n```\n{prompt}{text}\n```", step)
        if self.writer is not None:
            self.writer.flush()
        if self.wandb_run is not None and samples:
            import wandb

            table = wandb.Table(columns=["prompt", "text"], data=[[prompt, prompt + text] for prompt, text in samples])
            self.wandb_run.log({"samples": table}, step=step)

    def log_hparams(self, config: dict[str, Any]) -> None:
        """The run's config (dataclasses.asdict of the Config) as hyperparameters: TensorBoard's HParams tab
        (with every scalar tag of the run as a metric) and the W&B run's config."""
        if not self.enabled:
            return
        if self.writer is not None:
            from torch.utils.tensorboard.summary import hparams as hparams_summaries

            # Only the session's start: without an experiment summary the HParams tab takes every scalar
            # tag as a metric (the task scores too) and compares runs of different configs side by side.
            _, session_start, _ = hparams_summaries(hparams(config), {})
            self.writer.file_writer.add_summary(session_start)
            self.writer.flush()
        if self.wandb_run is not None:
            self.wandb_run.config.update(config, allow_val_change=True)

    def log_text(self, tag: str, text: str, step: int) -> None:
        """TensorBoard text only (e.g. the resolved config)."""
        if self.enabled and self.writer is not None:
            self.writer.add_text(tag, text, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def _start_wandb(run_dir: Path, mode: str, project: str):
    """A W&B run logging into RUN_DIR/wandb; the id in RUN_DIR/wandb-run-id makes a resumed job continue it."""
    try:
        import wandb
    except ImportError:
        raise UserError(f"logging.wandb: {mode} needs the wandb package: pip install -e .[wandb]") from None
    id_file = run_dir / WANDB_RUN_ID_FILE
    if not id_file.exists():
        write_text_atomic(id_file, secrets.token_hex(4) + "\n")  # W&B ids: 8 lowercase letters or digits
    return wandb.init(
        project=project,
        name=run_dir.resolve().name,
        id=id_file.read_text().strip(),
        resume="allow",
        dir=str(run_dir),
        mode=mode,
        # Our console stays ours: W&B neither prints its banner and notes nor captures stdout.
        settings=wandb.Settings(silent=True, console="off"),
    )


def _append_json(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row, allow_nan=False) + "\n")


def _drop_rows_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = [
        line for line in path.read_text().splitlines(keepends=True) if line.strip() and json.loads(line)["step"] <= step
    ]
    write_text_atomic(path, "".join(kept))


def eval_rows(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The eval rows of a run's metrics.jsonl, in step order."""
    path = Path(run_dir) / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return [row for row in rows if "eval_loss" in row]


def before_after_table(runs: dict[str, str | os.PathLike]) -> str:
    """A console table of each run's first and last eval (val loss, perplexity, task accuracies), then each
    run's samples of the first prompt at those two steps: what `launch/demo.sh` ends with."""
    first_last = {}
    for name, run_dir in runs.items():
        rows = eval_rows(run_dir)
        if not rows:
            raise UserError(f"{Path(run_dir) / 'metrics.jsonl'}: no eval rows")
        first_last[name] = (rows[0], rows[-1])
    task_keys = sorted(
        {key for _, last in first_last.values() for key in last if re.fullmatch(r"eval/.+/acc(_norm)?", key)}
    )
    measures = [("val loss", "eval_loss", "{:.3f}"), ("perplexity", "eval_ppl", "{:,.1f}")]
    measures += [(" ".join(key.split("/")[1:]), key, "{:.3f}") for key in task_keys]

    def cell(first: dict[str, Any], last: dict[str, Any], key: str, form: str) -> str:
        values = [form.format(row[key]) if row.get(key) is not None else "-" for row in (first, last)]
        return " -> ".join(values)

    header = ["", *(f"{name} (step {first['step']} -> {last['step']})" for name, (first, last) in first_last.items())]
    table = [header]
    table += [[label, *(cell(*first_last[name], key, form) for name in runs)] for label, key, form in measures]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(row, widths)).rstrip() for row in table]
    for name, run_dir in runs.items():
        first, last = first_last[name]
        path = Path(run_dir) / "samples.jsonl"
        samples = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        for row in [first, last] if last["step"] != first["step"] else [last]:
            text = next((s["prompt"] + s["text"] for s in samples if s["step"] == row["step"]), None)
            if text is not None:
                lines += ["", f"{name}, step {row['step']}:", *("  | " + line for line in text.splitlines())]
    return "\n".join(lines)


def format_progress(step: int, max_steps: int, row: dict[str, Any], eta_s: float | None) -> str:
    """`step 120/1000 (12%) | loss 4.1234 | lr 3.00e-03 | ... | ETA 0:12:34` for the console."""
    loss = "-" if row["loss"] is None else f"{row['loss']:.4f}"  # every step since the last row made no update
    parts = [f"step {step}/{max_steps} ({100 * step / max_steps:.0f}%)", f"loss {loss}", f"lr {row['lr']:.2e}"]
    if row.get("grad_norm") is not None:
        parts.append(f"grad {row['grad_norm']:.3f}")
    if row.get("skipped_steps"):
        parts.append(f"skipped {row['skipped_steps']}")
    parts.append(f"{row['tokens_per_s']:,.0f} tok/s")
    if row.get("mfu") is not None:
        parts.append(f"MFU {row['mfu']:.1f}%")
    parts.append(f"data {row['data_wait_ms']:.1f} ms")
    parts.append(f"mem {row['peak_mem_gib']:.2f} GiB")
    if eta_s is not None:
        parts.append(f"ETA {_hms(eta_s)}")
    return " | ".join(parts)


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_start(trainer: Any, stop: int) -> str:
    """The first line of a job (a smollm2.trainer.Trainer): what it trains, on what, from where to where."""
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


def format_end(trainer: Any, stopped_by: str | None) -> str:
    """The last line of a job (a smollm2.trainer.Trainer): where it stopped and what it saved, or that it is done,
    with its goodput."""
    if stopped_by is None:
        return (
            f"done: step {trainer.step}; {trainer.job_time.describe()}; run directory {trainer.run_dir}; "
            f"TensorBoard: tensorboard --logdir {trainer.run_dir / 'tensorboard'}"
        )
    if trainer.saved_step == trainer.step:
        saved = "checkpoint saved: run the same `smollm2 train` command to resume from it"
    else:
        saved = (
            f"not saved (the last step made no update): {trainer.checkpoints.describe_newest()}; run the same "
            "`smollm2 train` command to resume from it"
        )
    return f"stopped at step {trainer.step} on {stopped_by}, {saved} (--resume auto, the default)"
