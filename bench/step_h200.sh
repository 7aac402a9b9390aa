#!/usr/bin/env bash
# The training step of one config on one GPU: `smollm2 bench` of CONFIG on the Shakespeare data (tokens/s, MFU, the
# step's forward / backward / optimizer / data-wait split, peak memory), with any further `smollm2 bench` arguments:
#   bash bench/step_h200.sh CONFIG [BENCH_ARG ...]
# It runs `python3 -m smollm2 bench --config CONFIG --set data.path=$DATA --steps $STEPS --warmup $WARMUP BENCH_ARG...
# --out $OUT/bench_$NAME.json`. For example:
#   bash bench/step_h200.sh configs/smollm2-135m.yaml --baseline --baseline-micro-batch 128
#        the config and transformers + torch.compile at micro-batch 128 in one process: the ratio of the two
#   STEPS=6 bash bench/step_h200.sh configs/smollm2-135m.yaml --vary train.activation_checkpointing=0,selective,2,1
#   STEPS=6 bash bench/step_h200.sh configs/smollm2-135m.yaml --profile "$OUT/prof"
#        torch.profiler's kernel table of one more step, ending with the device's idle time and longest gaps
#   STEPS=4 bash bench/step_h200.sh configs/smollm2-1.7b.yaml --set train.global_batch_size=128 \
#        --vary train.micro_batch_size=32,64 --baseline --baseline-micro-batch 32
#   TORCH_BLAS_PREFER_CUBLASLT=1 bash bench/step_h200.sh configs/smollm2-135m.yaml     (the environment passes through)
# From the repository root on the device machine, carrying .device-wheels and DATA (default data/bench-shakespeare;
# bench/README.md says how to make it). STEPS (default 8) timed optimizer steps after WARMUP (default 2); LIMIT
# (default 300) seconds; NAME (default: the config file's name without .yaml). The bench's rows are printed and
# appended to $OUT/step.log, its warnings and errors to $OUT/bench_$NAME.log. Exits with the bench's status.
set -u
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: bash bench/step_h200.sh CONFIG [BENCH_ARG ...] (CONFIG: a config file, e.g. configs/smollm2-135m.yaml)" >&2
  exit 2
fi
CONFIG=$1
shift
NAME=${NAME:-$(basename "$CONFIG" .yaml)}
DATA=${DATA:-data/bench-shakespeare}
LOG_NAME=step.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
note "bench $NAME: $CONFIG $*"
timeout "${LIMIT:-300}" python3 -m smollm2 bench --config "$CONFIG" --set data.path="$DATA" --steps "${STEPS:-8}" \
  --warmup "${WARMUP:-2}" "$@" --out "$OUT/bench_$NAME.json" 2>> "$OUT/bench_$NAME.log" | tee -a "$LOG"
status=${PIPESTATUS[0]}
[ "$status" = 0 ] || note "bench $NAME: exit $status (the end of $OUT/bench_$NAME.log says why)"
exit "$status"
