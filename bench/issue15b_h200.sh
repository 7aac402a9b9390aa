#!/usr/bin/env bash
# Issue 15, second round on one H200: attention kernels and FlexAttention's options for document masking,
# ZeRO 3 against ZeRO 1, and the micro-batch of the 360M and 1.7B configs.
# From the repository root on the device machine, carrying .device-wheels, data/bench-shakespeare and
# data/bench-paragraphs (as bench/issue15_h200.sh):
#   bash bench/issue15b_h200.sh PARTS     PARTS: any of "attn flexopts zero3 persist family zero3big"
#   attn      attention alone, forward + backward, every kernel (bench/attention_kernels.py)
#   flexopts  135M at 2048, micro-batch 64 x 4, whole plays: without masking, and FlexAttention with
#             ROWS_GUARANTEED_SAFE (bench/flex_options.py). (Call 2 ran ROWS_GUARANTEED_SAFE with
#             BLOCKS_ARE_CONTIGUOUS, and with USE_TMA too: both trained on NaN, see bench/RESULTS.md.)
#   zero3     135M, ZeRO 1 and 3 under the deepspeed launcher: the config (256 x 4) and micro-batch 128 x 1
#   persist   135M, micro-batch 128 x 1: ZeRO 1 and ZeRO 3 (stage3_param_persistence_threshold 1e6, the
#             default of smollm2/engine.py since 1ca7d7c: every decoder weight kept whole on each GPU, 0.4 GB
#             of fp32 at 135M), and ZeRO 3 at DeepSpeed's 1e5. (Call 4 ran before 1ca7d7c: its plain ZeRO 3
#             was at 1e5 and a third process set 1e6.)
#   family    360M at micro-batch 128 and 256, 1.7B at 32 and 64, each with the baseline in the process
#   zero3big  1.7B (micro-batch 32 x 4), ZeRO 1 and 3 under the deepspeed launcher
# Writes under $OUT: issue15b.log, attention.txt and one JSON per bench.
set -u
PARTS=${1:-attn flexopts zero3}
LOG_NAME=issue15b.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee -a "$LOG"
SHAKESPEARE=(--set data.path=data/bench-shakespeare)
zero_135m_mb128() {  # ZeRO 1 and 3 at 135M, micro-batch 128 x 1 (parts zero3 and persist)
  run "zero mb128" 150 deepspeed --num_gpus 1 --module smollm2 bench --config configs/smollm2-135m.yaml \
    "${SHAKESPEARE[@]}" train.micro_batch_size=128 train.global_batch_size=128 --vary deepspeed.zero_stage=1,3 \
    --steps 5 --warmup 2 --out "$OUT/bench_zero_135m_mb128.json"
}
if [[ " $PARTS " == *" attn "* ]]; then
  note "attention kernels"
  timeout 150 python3 bench/attention_kernels.py data/bench-shakespeare data/bench-paragraphs 2>&1 \
    | tee "$OUT/attention.txt" >> "$LOG"
fi
if [[ " $PARTS " == *" flexopts "* ]]; then
  run "no masking" 150 python3 bench/flex_options.py data/bench-shakespeare "$OUT/bench_flex_none.json" null
  run "flex rows safe" 150 python3 bench/flex_options.py data/bench-shakespeare "$OUT/bench_flex_rows_safe.json" \
    '{"ROWS_GUARANTEED_SAFE": true}'
fi
if [[ " $PARTS " == *" zero3 "* ]]; then
  run "zero3 config" 200 deepspeed --num_gpus 1 --module smollm2 bench --config configs/smollm2-135m.yaml \
    "${SHAKESPEARE[@]}" --vary deepspeed.zero_stage=1,3 --steps 5 --warmup 2 --out "$OUT/bench_zero_135m.json"
  zero_135m_mb128
fi
if [[ " $PARTS " == *" persist "* ]]; then
  zero_135m_mb128
  run "zero3 mb128 deepspeed's threshold" 150 deepspeed --num_gpus 1 --module smollm2 bench \
    --config configs/smollm2-135m.yaml "${SHAKESPEARE[@]}" train.micro_batch_size=128 train.global_batch_size=128 \
    deepspeed.zero_stage=3 deepspeed.overrides.zero_optimization.stage3_param_persistence_threshold=100000 \
    --steps 5 --warmup 2 --out "$OUT/bench_zero3_135m_mb128_threshold_1e5.json"
fi
if [[ " $PARTS " == *" family "* ]]; then
  run "360m" 280 python3 -m smollm2 bench --config configs/smollm2-360m.yaml "${SHAKESPEARE[@]}" \
    --vary train.micro_batch_size=128,256 --baseline --baseline-micro-batch 128 --steps 6 --warmup 2 \
    --out "$OUT/bench_360m.json"
  run "1.7b" 280 python3 -m smollm2 bench --config configs/smollm2-1.7b.yaml "${SHAKESPEARE[@]}" \
    train.global_batch_size=128 --vary train.micro_batch_size=32,64 --baseline --baseline-micro-batch 32 \
    --steps 4 --warmup 2 --out "$OUT/bench_1.7b.json"
fi
if [[ " $PARTS " == *" zero3big "* ]]; then
  run "zero3 1.7b" 280 deepspeed --num_gpus 1 --module smollm2 bench --config configs/smollm2-1.7b.yaml \
    "${SHAKESPEARE[@]}" train.global_batch_size=128 --vary deepspeed.zero_stage=1,3 --steps 4 --warmup 2 \
    --out "$OUT/bench_zero_1.7b.json"
fi
summarize_benches
