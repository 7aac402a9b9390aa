#!/usr/bin/env bash
# `smollm2 bench` of configs/smollm2-135m.yaml for two copies of the code, in ABBA order on one GPU: a change
# timed against the code before it, on the same GPU in the same call (clock drift between runs cancels out).
#   bash bench/compare_code_h200.sh DIR_A DIR_B [STEPS]    each DIR holds a copy of smollm2/ and configs/
# Run from the repository root on the device machine, carrying .device-wheels, data/bench-shakespeare and the
# two folders (e.g. made with `git archive COMMIT smollm2 configs | tar -x -C DIR`). Writes under $OUT:
# compare.log and bench_{a1,b1,b2,a2}.json; prints each run's tokens/s and B's mean over A's.
set -u
A=$1 B=$2 STEPS=${3:-8}
LOG_NAME=compare.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
ROOT=$PWD
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee -a "$LOG"
bench() {  # LABEL DIR: run inside DIR, so that `python -m smollm2` imports DIR's copy
  note "bench $1: $2"
  (cd "$2" && PYTHONPATH=/tmp/site timeout 230 python3 -m smollm2 bench --config configs/smollm2-135m.yaml \
    --set data.path="$ROOT/data/bench-shakespeare" --steps "$STEPS" --warmup 2 --out "$OUT/bench_$1.json") >> "$LOG" 2>&1
}
bench a1 "$A"; bench b1 "$B"; bench b2 "$B"; bench a2 "$A"
note "done"
python3 - "$OUT" <<'PY'
import json, sys
rows = {}
for run in ("a1", "b1", "b2", "a2"):
    try:
        rows[run] = json.load(open(f"{sys.argv[1]}/bench_{run}.json"))["results"][0]
    except (OSError, KeyError, IndexError) as exc:
        print(f"{run}: no result ({exc})")
for run, row in rows.items():
    print(f"{run}: {row['tokens_per_s']:,.0f} tokens/s, MFU {row['mfu']:.2%}, peak {row['peak_tflops']:.1f}, "
          f"step {row['step_ms']:.1f} ms, {row['peak_mem_gib']:.1f} GiB")
if len(rows) == 4:
    a = (rows["a1"]["tokens_per_s"] + rows["a2"]["tokens_per_s"]) / 2
    b = (rows["b1"]["tokens_per_s"] + rows["b2"]["tokens_per_s"]) / 2
    print(f"B / A = {b / a:.4f} ({100 * (b / a - 1):+.2f} %)")
PY
