#!/usr/bin/env bash
# One GPU call: configs/smollm2-135m.yaml as a user runs it, and a repeat of the bench for its spread.
#   1. `smollm2 train` for 30 steps on Shakespeare (the trainer's own logged tokens/s and MFU, then its
#      eval, samples and checkpoint at the last step);
#   2. `smollm2 bench` of the config with the transformers + torch.compile baseline at micro-batch 128 and 256.
# Carry .device-wheels, data/bench-shakespeare and optionally data/bench-cache. Writes under $OUT:
# confirm.log, metrics_config.jsonl, bench_repeat.json.
#   bash bench/confirm_h200.sh
set -u
LOG_NAME=confirm.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh

CFG=configs/smollm2-135m.yaml
note "train: 30 steps of the config"
timeout 150 python3 -m smollm2 train --config $CFG --set data.path=data/bench-shakespeare train.max_steps=30 \
  schedule.warmup_steps=10 logging.log_every=10 eval.eval_every=0 checkpoint.save_every=0 \
  train.out_dir=/tmp/run_config --resume never >> "$LOG" 2>&1
cp /tmp/run_config/metrics.jsonl "$OUT/metrics_config.jsonl"
note "bench: the config and the baselines, again"
timeout 330 python3 -m smollm2 bench --config $CFG --set data.path=data/bench-shakespeare --steps 12 --warmup 2 \
  --baseline --baseline-micro-batch 128,256 --out "$OUT/bench_repeat.json" >> "$LOG" 2>&1
note "done"
grep -E "^(starting|step |eval|  sample|saved|done|NVIDIA|bench |trainer|hf-)|x hf-|rror|out of memory" "$LOG" | cut -c1-230
