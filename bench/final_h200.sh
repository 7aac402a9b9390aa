#!/usr/bin/env bash
# Issue 5's figures for configs/smollm2-135m.yaml as committed, on one GPU. Run it from the repository root on
# the device machine, carrying .device-wheels, data/bench-shakespeare (`smollm2 prepare` of the Shakespeare
# texts with the real SmolLM2 tokenizer) and, optionally, data/bench-cache (inductor caches).
#   bash bench/final_h200.sh [PARTS]      PARTS: any of "bench ac pair" (default: all three; about 9 minutes,
#                                         so give one device call "bench ac" and another "pair")
#   bench  `smollm2 bench` of the config (micro-batch 256, accumulation 4; 12 timed optimizer steps after 2)
#          and the transformers + torch.compile baseline at micro-batch 128 and 256 in the same process, with
#          a profiler table of the trainer's step;
#   ac     the activation-checkpointing table: off, selective, every 2nd layer, every layer (6 timed steps);
#   pair   200 training steps on Shakespeare through the fast path and through the plain path (no compile,
#          logits + cross-entropy, DeepSpeed bf16 weights), compared by bench/compare_runs.py.
#   BASELINES=128 bash bench/final_h200.sh bench    the baseline at micro-batch 128 only (default 128,256)
# Writes under $OUT: final.log, bench_main.json, bench_ac.json, prof/, metrics_{fast,plain}.jsonl.
set -u
PARTS=${1:-bench ac pair}
BASELINES=${BASELINES:-128,256}
LOG_NAME=final.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh

CFG=configs/smollm2-135m.yaml
DATA="data.path=data/bench-shakespeare"
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee -a "$LOG"
if [[ " $PARTS " == *" bench "* ]]; then
  note "bench: the config and the baselines"
  timeout 330 python3 -m smollm2 bench --config $CFG --set $DATA --steps 12 --warmup 2 --baseline \
    --baseline-micro-batch "$BASELINES" --profile "$OUT/prof" --out "$OUT/bench_main.json" >> "$LOG" 2>&1
fi
if [[ " $PARTS " == *" ac "* ]]; then
  note "ac: activation checkpointing settings"
  timeout 200 python3 -m smollm2 bench --config $CFG --set $DATA --steps 6 --warmup 2 \
    --vary train.activation_checkpointing=0,selective,2,1 --out "$OUT/bench_ac.json" >> "$LOG" 2>&1
fi
if [[ " $PARTS " == *" pair "* ]]; then
  # 32 x 512 tokens a step, about 2 epochs of the 1.5M training tokens.
  RUN="train.max_steps=200 train.micro_batch_size=32 train.global_batch_size=32 schedule.warmup_steps=20
       logging.log_every=1 eval.eval_every=0 checkpoint.save_every=0 data.num_workers=2"
  PLAIN_DS='deepspeed.overrides={"bf16": {"enabled": true}, "torch_autocast": {"enabled": false}}'
  note "pair: 200 steps, fast path"
  timeout 100 python3 -m smollm2 train --config $CFG --set $DATA $RUN train.out_dir=/tmp/run_fast --resume never \
    >> "$LOG" 2>&1
  note "pair: 200 steps, plain path"
  timeout 100 python3 -m smollm2 train --config $CFG --set $DATA $RUN train.out_dir=/tmp/run_plain \
    train.compile=false train.fused_loss=false "$PLAIN_DS" --resume never >> "$LOG" 2>&1
  cp /tmp/run_fast/metrics.jsonl "$OUT/metrics_fast.jsonl"; cp /tmp/run_plain/metrics.jsonl "$OUT/metrics_plain.jsonl"
fi
note "done"
grep -E "^(NVIDIA|bench |trainer|hf-)|x hf-|communication|rror|out of memory|^step 200|val loss" "$LOG" | tail -30
[[ " $PARTS " == *" pair "* ]] && python3 bench/compare_runs.py /tmp/run_fast /tmp/run_plain --last 50
exit 0
