"""Does a run train like its reference? Compare the losses of two runs over the same data order, step by step.

    python bench/compare_runs.py RUN_DIR REFERENCE_DIR [--last 50]

Reads each run's metrics.jsonl (log every step for a paired comparison). Prints each run's final eval loss,
its mean train loss over the last N common logged steps, and the paired per-step difference (run - reference)
with its standard error. The scale of the noise is the step-to-step spread of the reference's loss over those
steps. bench/train_pair_h200.sh makes the two runs (by default the fast path against the plain path) and runs this.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def read_metrics(run_dir: Path) -> tuple[dict[int, float], float | None]:
    """({step: train loss}, last eval loss) from RUN_DIR/metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise SystemExit(f"{path}: cannot read ({exc.strerror})") from None
    train, eval_loss = {}, None
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise SystemExit(f"{path}:{number}: not a JSON line") from None
        if "loss" in row:
            train[row["step"]] = row["loss"]
        if "eval_loss" in row:
            eval_loss = row["eval_loss"]
    return train, eval_loss


def compare(run_dir: Path, reference_dir: Path, last: int) -> dict:
    run, run_eval = read_metrics(run_dir)
    reference, reference_eval = read_metrics(reference_dir)
    steps = sorted(set(run) & set(reference))[-last:]
    if len(steps) < 2:
        raise SystemExit(f"fewer than 2 common logged steps in {run_dir} and {reference_dir}")
    diffs = [run[s] - reference[s] for s in steps]
    return {
        "steps": [steps[0], steps[-1]],
        "run_mean_loss": statistics.fmean(run[s] for s in steps),
        "reference_mean_loss": statistics.fmean(reference[s] for s in steps),
        "mean_diff": statistics.fmean(diffs),
        "diff_stderr": statistics.stdev(diffs) / len(diffs) ** 0.5,
        "reference_step_std": statistics.stdev(reference[s] for s in steps),
        "run_eval_loss": run_eval,
        "reference_eval_loss": reference_eval,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, metavar="RUN_DIR")
    parser.add_argument("reference", type=Path, metavar="REFERENCE_DIR")
    parser.add_argument("--last", type=int, default=50, help="compare the last N common logged steps")
    args = parser.parse_args()
    r = compare(args.run, args.reference, args.last)
    print(json.dumps(r))
    print(
        f"steps {r['steps'][0]}..{r['steps'][1]}: train loss run {r['run_mean_loss']:.4f}, reference "
        f"{r['reference_mean_loss']:.4f}; paired difference {r['mean_diff']:+.4f} +- {r['diff_stderr']:.4f} "
        f"(stderr); step-to-step std of the reference's loss {r['reference_step_std']:.4f}"
    )
    if r["run_eval_loss"] is not None and r["reference_eval_loss"] is not None:
        print(
            f"final eval loss: run {r['run_eval_loss']:.4f}, reference {r['reference_eval_loss']:.4f} "
            f"({r['run_eval_loss'] - r['reference_eval_loss']:+.4f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
