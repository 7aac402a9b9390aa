#!/usr/bin/env bash
# ZeRO stages and weak scaling: `smollm2 bench` of CONFIG under the deepspeed launcher (one process a GPU, NCCL) on
# N GPUs for each N of GPU_COUNTS, one row a ZeRO stage of STAGES (--vary), MICRO_BATCH sequences a GPU and
# ACCUMULATION micro-batches a step (global batch MICRO_BATCH x N x ACCUMULATION: the same work a GPU at every N),
# each row with one profiled step for its NCCL kernel time; then, with TRAIN_STEPS > 0, `smollm2 train` of CONFIG
# (ZeRO 1, the config's batch) on the largest N for TRAIN_STEPS steps; then the table: per-GPU tokens/s and MFU,
# the efficiency against N = 1, the step time added over N = 1 (communication that compute did not hide), the NCCL
# kernel time and peak memory.
#   bash bench/zero_scaling_h200.sh [GPU_COUNTS [TRAIN_STEPS]]      default "1 2 4 8" and 200
#   bash bench/zero_scaling_h200.sh 1 0                             ZeRO 1, 2, 3 on one GPU at micro-batch 128
#   MICRO_BATCH=256 ACCUMULATION=4 STAGES=1,3 bash bench/zero_scaling_h200.sh 1 0         the 135M config's batch
#   CONFIG=configs/smollm2-1.7b.yaml MICRO_BATCH=32 ACCUMULATION=4 STAGES=1,3 bash bench/zero_scaling_h200.sh 1 0
# On a device machine with that many GPUs (kind nvidia-h100-x8 or nvidia-h200-x8 for 8), from the repository root,
# carrying .device-wheels, data/bench-shakespeare and optionally data/bench-cache. CONFIG (default
# configs/smollm2-135m.yaml), STAGES (default 1,2,3), MICRO_BATCH (default 128), ACCUMULATION (default 1), SET (more
# KEY=VALUE settings), STEPS (default 5) timed steps after 2, LIMIT (default 280) seconds a bench, NAME (default
# zero) names $OUT/bench_NAME_nN.json. A call of 10 minutes holds about two GPU counts: split them
# (`"1 2" 0`, then `"4 8" 200`); the efficiency column needs N = 1's file, so carry the first call's
# bench_NAME_n1.json back as data/bench-cache/bench_NAME_n1.json (it is copied into $OUT), or include 1 in each call.
set -u
GPU_COUNTS=${1:-1 2 4 8}
TRAIN_STEPS=${2:-200}
CONFIG=${CONFIG:-configs/smollm2-135m.yaml}
MICRO_BATCH=${MICRO_BATCH:-128}
ACCUMULATION=${ACCUMULATION:-1}
NAME=${NAME:-zero}
LOG_NAME=zero_scaling.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
CACHED=data/bench-cache/bench_${NAME}_n1.json
[ -f "$CACHED" ] && [ ! -f "$OUT/bench_${NAME}_n1.json" ] && cp "$CACHED" "$OUT/"
for n in $GPU_COUNTS; do
  # shellcheck disable=SC2086  # SET: KEY=VALUE words
  run "bench on $n GPU(s), ZeRO ${STAGES:-1,2,3}" "${LIMIT:-280}" deepspeed --num_gpus "$n" --master_port $((29700 + n)) \
    --module smollm2 bench --config "$CONFIG" --set data.path=data/bench-shakespeare \
    train.micro_batch_size="$MICRO_BATCH" train.global_batch_size=$((MICRO_BATCH * n * ACCUMULATION)) ${SET:-} \
    --vary deepspeed.zero_stage="${STAGES:-1,2,3}" --steps "${STEPS:-5}" --warmup 2 --profile "$OUT/prof_${NAME}_n$n" \
    --out "$OUT/bench_${NAME}_n$n.json"
done
if [ "$TRAIN_STEPS" -gt 0 ]; then
  n=$(echo "$GPU_COUNTS" | tr ' ' '\n' | sort -n | tail -1)
  run "train: $TRAIN_STEPS steps of the config on $n GPU(s)" 240 deepspeed --num_gpus "$n" --master_port 29790 \
    --module smollm2 train --config "$CONFIG" --set data.path=data/bench-shakespeare train.max_steps="$TRAIN_STEPS" \
    schedule.warmup_steps=20 logging.log_every=10 eval.eval_every=0 checkpoint.save_every=0 deepspeed.zero_stage=1 \
    train.out_dir="/tmp/run_n$n" --resume never
  cp "/tmp/run_n$n/metrics.jsonl" "$OUT/metrics_train_n$n.jsonl"
fi
note "done"
python3 - "$OUT" "$NAME" <<'PY' | tee -a "$LOG"
import glob, json, re, sys
out, name = sys.argv[1], sys.argv[2]
runs = {}
for path in glob.glob(f"{out}/bench_{name}_n*.json"):
    runs[int(re.search(r"_n(\d+)\.json$", path).group(1))] = json.load(open(path))
rows = {(n, r["zero_stage"]): r for n, report in runs.items() for r in report["results"] if "tokens_per_s" in r}
print(f"{'ZeRO':>4} {'GPUs':>4} {'tokens/s/GPU':>13} {'MFU':>6} {'efficiency':>10} {'step ms':>8} {'+ms vs 1':>8} "
      f"{'NCCL ms':>8} {'mem GiB':>8}")
for stage in sorted({stage for _, stage in rows}):
    one = rows.get((1, stage))
    for n in sorted(runs):
        r = rows.get((n, stage))
        if r is None:
            continue
        eff = f"{r['tokens_per_s_per_device'] / one['tokens_per_s_per_device']:10.1%}" if one else f"{'-':>10}"
        added = f"{r['step_ms'] - one['step_ms']:8.1f}" if one else f"{'-':>8}"
        comm = r.get("communication_kernel_ms")
        print(f"{stage:4d} {n:4d} {r['tokens_per_s_per_device']:13,.0f} {r['mfu']:6.1%} {eff} {r['step_ms']:8.1f} "
              f"{added} {comm if comm is None else round(comm, 1)!s:>8} {r['peak_mem_gib']:8.1f}")
for path in glob.glob(f"{out}/metrics_train_n*.jsonl"):
    recs = [json.loads(line) for line in open(path)]
    tr = [r for r in recs if "tokens_per_s" in r and r["step"] > 20]
    if tr:
        print(f"{path}: steps {tr[0]['step']}..{tr[-1]['step']}: loss {tr[0]['loss']:.3f} -> {tr[-1]['loss']:.3f}, "
              f"{sum(r['tokens_per_s'] for r in tr) / len(tr):,.0f} tokens/s, MFU {sum(r['mfu'] for r in tr) / len(tr):.1f} %")
PY
