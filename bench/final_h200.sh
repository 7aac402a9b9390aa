#!/usr/bin/env bash
# One GPU call (issue 5, plan step 4). Run it from the repository root on the device machine, with these carried:
# .device-wheels, data/bench-shakespeare (`smollm2 prepare` of the Shakespeare texts with the real
# SmolLM2 tokenizer) and, optionally, data/bench-cache (inductor caches of an earlier call).
#   1. `smollm2 bench` of configs/smollm2-135m.yaml as the trainer runs it, plus the transformers +
#      torch.compile baseline at micro-batch 128 in the same process;
#   2. the activation-checkpointing table at micro-batch 256;
#   3. 200 training steps on Shakespeare through the fast path and through the plain path (no compile,
#      logits + cross-entropy, DeepSpeed bf16 weights), compared by bench/compare_runs.py;
#   4. follow-up step_explore variants, while time is left: foreach clipping, the fp32 residual, FA2.
# Writes under $OUT: final.log, bench_main.json, bench_ac.json, metrics_fast.jsonl, metrics_plain.jsonl,
# explore.jsonl.
#   bash bench/final_h200.sh [DEADLINE_S]
set -u
START=$(date +%s)
DEADLINE=${1:-400}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .device-wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_smollm2
[ -f data/bench-cache/ind_smollm2.tgz ] && tar xzf data/bench-cache/ind_smollm2.tgz -C /tmp
LOG=$OUT/final.log
note() { echo "[$(( $(date +%s) - START )) s] $*" | tee -a "$LOG"; }

CFG=configs/smollm2-135m.yaml
DATA="data.path=data/bench-shakespeare"
# 200-step comparison: 32 x 512 tokens a step, about 2 epochs of the 1.5M training tokens.
RUN="train.max_steps=200 train.micro_batch_size=32 train.global_batch_size=32 schedule.warmup_steps=20
     logging.log_every=1 eval.eval_every=0 checkpoint.save_every=0 data.num_workers=2"
PLAIN_DS='deepspeed.overrides={"bf16": {"enabled": true}, "torch_autocast": {"enabled": false}}'

note "bench: the trainer as configured + the baseline"
timeout 220 python3 -m smollm2 bench --config $CFG --set $DATA --vary deepspeed.zero_stage=0,1 --steps 20 --warmup 5 \
  --baseline --baseline-micro-batch 128 --out "$OUT/bench_main.json" >> "$LOG" 2>&1
note "bench: activation checkpointing at micro-batch 256"
timeout 120 python3 -m smollm2 bench --config $CFG --set $DATA train.micro_batch_size=256 train.global_batch_size=512 \
  --vary train.activation_checkpointing=0,selective,2,1 --steps 6 --warmup 2 --out "$OUT/bench_ac.json" >> "$LOG" 2>&1
note "train: 200 steps, fast path"
timeout 90 python3 -m smollm2 train --config $CFG --set $DATA $RUN train.out_dir=/tmp/run_fast --resume never \
  >> "$LOG" 2>&1
note "train: 200 steps, plain path"
timeout 100 python3 -m smollm2 train --config $CFG --set $DATA $RUN train.out_dir=/tmp/run_plain train.compile=false \
  train.fused_loss=false "$PLAIN_DS" --resume never >> "$LOG" 2>&1
cp /tmp/run_fast/metrics.jsonl "$OUT/metrics_fast.jsonl"; cp /tmp/run_plain/metrics.jsonl "$OUT/metrics_plain.jsonl"
LEFT=$(( DEADLINE - ($(date +%s) - START) ))
note "explore follow-ups, $LEFT s left"
[ "$LEFT" -gt 30 ] && timeout $(( LEFT + 20 )) python3 bench/step_explore.py --out "$OUT" --deadline-s $(( LEFT - 25 )) \
  --only ds0-autocast-foreachclip ds0-autocast-foreachclip-fp32res ds0-autocast-foreachclip-flash \
  ds0-autocast-foreachclip-mb256 >> "$LOG" 2>&1
note "done"
grep -E "^(NVIDIA|bench |trainer|hf-)|x the|rror|out of memory|^step 200|val loss" "$LOG" | tail -40
python3 bench/compare_runs.py /tmp/run_fast /tmp/run_plain --last 50
[ -f "$OUT/explore.jsonl" ] && python3 bench/step_explore.py --table "$OUT/explore.jsonl"
