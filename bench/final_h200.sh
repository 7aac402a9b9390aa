#!/usr/bin/env bash
# One GPU call (issue 5, plan step 4), run from the repository root on the device machine with
# .device-wheels, data/bench-shakespeare (`smollm2 prepare` of the Shakespeare texts with the real
# SmolLM2 tokenizer) and, optionally, data/bench-cache (inductor caches of an earlier call) carried:
#   1. `smollm2 bench` of configs/smollm2-135m.yaml as the trainer runs it, plus the transformers +
#      torch.compile baseline at micro-batch 128 in the same process;
#   2. the activation-checkpointing table at micro-batch 256;
#   3. 200 training steps on Shakespeare through the fast path and through the plain path
#      (no compile, plain loss, DeepSpeed bf16), compared by bench/compare_runs.py.
# Writes under $OUT: final.log, bench_main.json, bench_ac.json, metrics_fast.jsonl, metrics_plain.jsonl.
#   bash bench/final_h200.sh
set -u
START=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .device-wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_smollm2
[ -f data/bench-cache/ind_smollm2.tgz ] && tar xzf data/bench-cache/ind_smollm2.tgz -C /tmp
LOG=$OUT/final.log
elapsed() { echo "[$(( $(date +%s) - START )) s] $*" | tee -a "$LOG"; }

CFG=configs/smollm2-135m.yaml
DATA="data.path=data/bench-shakespeare"
# 200-step comparison: 32 x 512 tokens a step, about 2 epochs of the 1.5M training tokens.
RUN="train.max_steps=200 train.micro_batch_size=32 train.global_batch_size=32 schedule.warmup_steps=20
     logging.log_every=1 eval.eval_every=0 checkpoint.save_every=0 data.num_workers=2"
PLAIN="train.compile=false train.fused_loss=false"

elapsed "bench: the trainer's defaults + baseline"
python3 -m smollm2 bench --config $CFG --set $DATA --steps 20 --warmup 5 --baseline --baseline-micro-batch 128 \
  --out "$OUT/bench_main.json" >> "$LOG" 2>&1
elapsed "bench: activation checkpointing at micro-batch 256"
python3 -m smollm2 bench --config $CFG --set $DATA train.micro_batch_size=256 train.global_batch_size=512 \
  --vary train.activation_checkpointing=0,selective,2,1 --steps 8 --warmup 3 \
  --out "$OUT/bench_ac.json" >> "$LOG" 2>&1
elapsed "train: 200 steps, fast path"
python3 -m smollm2 train --config $CFG --set $DATA $RUN train.out_dir=/tmp/run_fast --resume never >> "$LOG" 2>&1
elapsed "train: 200 steps, plain path"
python3 -m smollm2 train --config $CFG --set $DATA $RUN $PLAIN train.out_dir=/tmp/run_plain --resume never \
  >> "$LOG" 2>&1
cp /tmp/run_fast/metrics.jsonl "$OUT/metrics_fast.jsonl"; cp /tmp/run_plain/metrics.jsonl "$OUT/metrics_plain.jsonl"
elapsed "done"
grep -E "^(NVIDIA|bench|trainer|hf-)|x the|Error|error:" "$LOG" | grep -v "^\[" | tail -40
python3 bench/compare_runs.py /tmp/run_fast /tmp/run_plain --last 50
