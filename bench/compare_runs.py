"""Does the fast path train like the plain one? Compare the losses of two runs over the same data order.

    python bench/compare_runs.py RUN_DIR_FAST RUN_DIR_PLAIN [--last 50]

Reads each run's metrics.jsonl (log every step for a paired comparison). Prints each run's final
eval loss, its mean train loss over the last N logged steps, and the paired per-step difference
(fast - plain) with its standard error. The scale of the noise is the step-to-step spread of the
plain run's loss over those steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def read_metrics(run_dir: Path) -> tuple[dict[int, float], float | None]:
    """({step: train loss}, last eval loss) from RUN_DIR/metrics.jsonl."""
    train, eval_loss = {}, None
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            train[row["step"]] = row["loss"]
        if "eval_loss" in row:
            eval_loss = row["eval_loss"]
    return train, eval_loss


def compare(fast_dir: Path, plain_dir: Path, last: int) -> dict:
    fast, fast_eval = read_metrics(fast_dir)
    plain, plain_eval = read_metrics(plain_dir)
    steps = sorted(set(fast) & set(plain))[-last:]
    if len(steps) < 2:
        raise SystemExit(f"fewer than 2 common logged steps in {fast_dir} and {plain_dir}")
    diffs = [fast[s] - plain[s] for s in steps]
    return {
        "steps": [steps[0], steps[-1]],
        "fast_mean_loss": statistics.fmean(fast[s] for s in steps),
        "plain_mean_loss": statistics.fmean(plain[s] for s in steps),
        "mean_diff": statistics.fmean(diffs),
        "diff_stderr": statistics.stdev(diffs) / len(diffs) ** 0.5,
        "plain_step_std": statistics.stdev(plain[s] for s in steps),
        "fast_eval_loss": fast_eval,
        "plain_eval_loss": plain_eval,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("fast", type=Path)
    parser.add_argument("plain", type=Path)
    parser.add_argument("--last", type=int, default=50, help="compare the last N common logged steps")
    args = parser.parse_args()
    r = compare(args.fast, args.plain, args.last)
    print(json.dumps(r))
    print(
        f"steps {r['steps'][0]}..{r['steps'][1]}: train loss fast {r['fast_mean_loss']:.4f}, plain "
        f"{r['plain_mean_loss']:.4f}; paired difference {r['mean_diff']:+.4f} +- {r['diff_stderr']:.4f} (stderr); "
        f"step-to-step std of the plain loss {r['plain_step_std']:.4f}"
    )
    if r["fast_eval_loss"] is not None and r["plain_eval_loss"] is not None:
        print(
            f"final eval loss: fast {r['fast_eval_loss']:.4f}, plain {r['plain_eval_loss']:.4f} "
            f"({r['fast_eval_loss'] - r['plain_eval_loss']:+.4f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
