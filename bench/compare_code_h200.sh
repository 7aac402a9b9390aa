#!/usr/bin/env bash
# `smollm2 bench` of $CONFIG (default configs/smollm2-135m.yaml) for two or more copies of the code on one GPU in
# one call, forward then backward (A B B A, A B C C B A): a change timed against the code before it, with the
# clock drift between runs cancelling out.
#   bash bench/compare_code_h200.sh DIR_A DIR_B [DIR_C ...]     each DIR holds a copy of smollm2/ and configs/
# Run from the repository root on the device machine, carrying .device-wheels, data/bench-shakespeare and the
# folders (e.g. made with `git archive COMMIT smollm2 configs | tar -x -C DIR`). STEPS (default 8) timed steps a
# run; SET: more KEY=VALUE config settings for every run; LIMIT (default 230) seconds a run. Writes under $OUT:
# compare.log and bench_<dir name><1|2>.json; prints each run's tokens/s and each copy's mean over the first's.
set -u
[ $# -ge 2 ] || { echo "usage: bash bench/compare_code_h200.sh DIR_A DIR_B [DIR_C ...]" >&2; exit 2; }
for dir in "$@"; do
  [ -f "$dir/smollm2/__init__.py" ] || { echo "compare_code_h200.sh: $dir holds no smollm2/ (expected a copy of the code)" >&2; exit 2; }
done
STEPS=${STEPS:-8}
CONFIG=${CONFIG:-configs/smollm2-135m.yaml}
LOG_NAME=${LOG_NAME:-compare.log}
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
ROOT=$PWD
bench() {  # LABEL DIR: run inside DIR, so that `python -m smollm2` imports DIR's copy
  note "bench $1: $2"
  # shellcheck disable=SC2086  # SET: KEY=VALUE words
  (cd "$2" && PYTHONPATH=/tmp/site timeout "${LIMIT:-230}" python3 -m smollm2 bench --config "$CONFIG" \
    --set data.path="$ROOT/data/bench-shakespeare" ${SET:-} --steps "$STEPS" --warmup 2 --out "$OUT/bench_$1.json") >> "$LOG" 2>&1
}
DIRS=("$@")
for dir in "${DIRS[@]}"; do bench "$(basename "$dir")1" "$dir"; done
for ((i = ${#DIRS[@]} - 1; i >= 0; i--)); do bench "$(basename "${DIRS[i]}")2" "${DIRS[i]}"; done
note "done"
python3 - "$OUT" "${DIRS[@]}" <<'PY'
import json, os, sys
out, names = sys.argv[1], [os.path.basename(d) for d in sys.argv[2:]]
means = {}
for name in names:
    rows = []
    for run in (1, 2):
        try:
            rows.append(json.load(open(f"{out}/bench_{name}{run}.json"))["results"][0])
        except (OSError, KeyError, IndexError) as exc:
            print(f"{name}{run}: no result ({exc})")
            continue
        row = rows[-1]
        print(f"{name}{run}: {row['tokens_per_s']:,.0f} tokens/s, MFU {row['mfu']:.2%}, peak {row['peak_tflops']:.1f}, "
              f"step {row['step_ms']:.1f} ms, {row['peak_mem_gib']:.1f} GiB")
    if len(rows) == 2:
        means[name] = sum(r["tokens_per_s"] for r in rows) / 2
first = names[0]
for name in names[1:]:
    if first in means and name in means:
        ratio = means[name] / means[first]
        print(f"{name} / {first} = {ratio:.4f} ({100 * (ratio - 1):+.2f} %)")
PY
