#!/usr/bin/env bash
# Issue 15's figures on one H200: sequence 2048 with and without document masking, the 360M and 1.7B configs
# against the transformers + compile baseline at the same shape, and the 135M config at 512 as a check.
# From the repository root on the device machine, carrying .device-wheels, data/bench-shakespeare (the 42
# Shakespeare texts, one document per file, SmolLM2 tokenizer) and data/bench-paragraphs (the same texts, one
# document per paragraph: `smollm2 prepare ... --txt-mode paragraph`):
#   bash bench/issue15_h200.sh PARTS     PARTS: any of "mask family135 family" (each 3-6 minutes)
#   mask       135M at block 2048, micro-batch 64 x accumulation 4 (524,288 tokens a step, as at 512), masking
#              off and on, whole plays (about 1 document per block) and paragraphs (about 46 per block)
#   family135  configs/smollm2-135m.yaml at 512 with the baseline at micro-batch 128
#   family     360M (micro-batch 128, baseline 128) and 1.7B (micro-batch 32, baseline 32)
# Writes under $OUT: issue15.log and one JSON per bench.
set -u
PARTS=${1:-mask family135 family}
LOG_NAME=issue15.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee -a "$LOG"
bench() {  # NAME TIMEOUT ARGS...: one `smollm2 bench`, its log appended to LOG
  local name=$1 limit=$2
  shift 2
  note "bench $name: $*"
  timeout "$limit" python3 -m smollm2 bench "$@" --out "$OUT/bench_$name.json" >> "$LOG" 2>&1 || note "bench $name: exit $?"
}
MASK_SET=(model.block_size=2048 train.micro_batch_size=64 train.global_batch_size=256)
if [[ " $PARTS " == *" mask "* ]]; then
  bench mask_plays 300 --config configs/smollm2-135m.yaml --set data.path=data/bench-shakespeare "${MASK_SET[@]}" \
    --vary model.document_masking=false,true --steps 8 --warmup 3
  bench mask_paragraphs 240 --config configs/smollm2-135m.yaml --set data.path=data/bench-paragraphs \
    "${MASK_SET[@]}" model.document_masking=true --steps 8 --warmup 3
fi
if [[ " $PARTS " == *" family135 "* ]]; then
  bench 135m 300 --config configs/smollm2-135m.yaml --set data.path=data/bench-shakespeare --baseline \
    --baseline-micro-batch 128 --steps 8 --warmup 2
fi
if [[ " $PARTS " == *" family "* ]]; then
  bench 360m 300 --config configs/smollm2-360m.yaml --set data.path=data/bench-shakespeare --baseline \
    --baseline-micro-batch 128 --steps 6 --warmup 2
  bench 1.7b 280 --config configs/smollm2-1.7b.yaml --set data.path=data/bench-shakespeare \
    train.global_batch_size=128 --baseline --baseline-micro-batch 32 --steps 4 --warmup 2
fi
summarize_benches
