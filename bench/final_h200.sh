#!/usr/bin/env bash
# One GPU call: issue 5's figures for configs/smollm2-135m.yaml as committed. Run it from the repository
# root on the device machine, carrying .device-wheels, data/bench-shakespeare (`smollm2 prepare` of the
# Shakespeare texts with the real SmolLM2 tokenizer) and, optionally, data/bench-cache (inductor caches).
#   1. `smollm2 bench` of the config (micro-batch 256, accumulation 4) with activation checkpointing off,
#      selective, every 2nd layer and every layer, and the transformers + torch.compile baseline at
#      micro-batch 128 and 256, all in one process; a profiler table of each config's step;
#   2. 200 training steps on Shakespeare through the fast path and through the plain path (no compile,
#      logits + cross-entropy, DeepSpeed bf16 weights), compared by bench/compare_runs.py.
# Writes under $OUT: final.log, bench_main.json, prof/, metrics_fast.jsonl, metrics_plain.jsonl.
#   bash bench/final_h200.sh
set -u
LOG_NAME=final.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh

CFG=configs/smollm2-135m.yaml
DATA="data.path=data/bench-shakespeare"
note "bench: the config, activation checkpointing settings, baselines"
timeout 330 python3 -m smollm2 bench --config $CFG --set $DATA --vary train.activation_checkpointing=0,selective,2,1 \
  --steps 12 --warmup 2 --baseline --baseline-micro-batch 128,256 --profile "$OUT/prof" --out "$OUT/bench_main.json" \
  >> "$LOG" 2>&1
# 200-step comparison: 32 x 512 tokens a step, about 2 epochs of the 1.5M training tokens.
RUN="train.max_steps=200 train.micro_batch_size=32 train.global_batch_size=32 schedule.warmup_steps=20
     logging.log_every=1 eval.eval_every=0 checkpoint.save_every=0 data.num_workers=2"
PLAIN_DS='deepspeed.overrides={"bf16": {"enabled": true}, "torch_autocast": {"enabled": false}}'
note "train: 200 steps, fast path"
timeout 80 python3 -m smollm2 train --config $CFG --set $DATA $RUN train.out_dir=/tmp/run_fast --resume never \
  >> "$LOG" 2>&1
note "train: 200 steps, plain path"
timeout 90 python3 -m smollm2 train --config $CFG --set $DATA $RUN train.out_dir=/tmp/run_plain train.compile=false \
  train.fused_loss=false "$PLAIN_DS" --resume never >> "$LOG" 2>&1
cp /tmp/run_fast/metrics.jsonl "$OUT/metrics_fast.jsonl"; cp /tmp/run_plain/metrics.jsonl "$OUT/metrics_plain.jsonl"
note "done"
grep -E "^(NVIDIA|bench |trainer|hf-)|x hf-|rror|out of memory|^step 200|val loss" "$LOG" | tail -30
python3 bench/compare_runs.py /tmp/run_fast /tmp/run_plain --last 50
