#!/usr/bin/env bash
# Does a change train like the code without it? Two `smollm2 train` runs of CONFIG on the Shakespeare data in the
# same data order, the run with SETTINGS and the reference with REFERENCE_SETTINGS, compared step by step by
# bench/compare_runs.py (the paired train-loss difference over the last 50 steps against the reference's
# step-to-step spread, and the final eval losses). By default the run is the fast path (the config as it is) and
# the reference the plain path (eager, logits + float32 cross-entropy, DeepSpeed bf16 weights):
#   bash bench/train_pair_h200.sh                                          the fast path against the plain path
#   bash bench/train_pair_h200.sh "SETTINGS" ["REFERENCE_SETTINGS"]         each KEY=VALUE words, space-separated
# From the repository root on the device machine, carrying .device-wheels and DATA (default data/bench-shakespeare).
# CONFIG (default configs/smollm2-135m.yaml); STEPS (default 200) optimizer steps of MICRO_BATCH (default 32)
# sequences, no accumulation, 20 warm-up steps of the schedule, the loss logged every step; LIMIT (default 150)
# seconds a run. Writes under $OUT: pair.log, metrics_run.jsonl, metrics_reference.jsonl.
set -u
PLAIN="train.compile=false train.fused_loss=false"
PLAIN+=" deepspeed.overrides.bf16.enabled=true deepspeed.overrides.torch_autocast.enabled=false"
SETTINGS=${1:-}
REFERENCE_SETTINGS=${2:-$PLAIN}
CONFIG=${CONFIG:-configs/smollm2-135m.yaml}
DATA=${DATA:-data/bench-shakespeare}
STEPS=${STEPS:-200}
MICRO_BATCH=${MICRO_BATCH:-32}
LOG_NAME=pair.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
COMMON=(data.path="$DATA" train.max_steps="$STEPS" train.micro_batch_size="$MICRO_BATCH"
  train.global_batch_size="$MICRO_BATCH" schedule.warmup_steps=20 logging.log_every=1 eval.eval_every=0
  checkpoint.save_every=0 data.num_workers=2)
for side in run reference; do
  settings=$SETTINGS
  [ $side = reference ] && settings=$REFERENCE_SETTINGS
  rm -rf "/tmp/pair_$side"
  # shellcheck disable=SC2086  # the settings are KEY=VALUE words
  run "train, $side: ${settings:-the config as it is}" "${LIMIT:-150}" python3 -m smollm2 train --config "$CONFIG" \
    --set "${COMMON[@]}" $settings train.out_dir="/tmp/pair_$side" --resume never
  cp "/tmp/pair_$side/metrics.jsonl" "$OUT/metrics_$side.jsonl" || exit 1
done
grep -E "step $STEPS/$STEPS |val loss" "$LOG" | cut -c1-200
python3 bench/compare_runs.py /tmp/pair_run /tmp/pair_reference --last 50 | tee -a "$LOG"
