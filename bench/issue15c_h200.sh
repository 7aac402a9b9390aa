#!/usr/bin/env bash
# Issue 15, third round on one H200: document masking with rows of one document through plain causal
# attention, and inductor's autotuned GEMMs (Triton templates with fused epilogues against cuBLAS).
# From the repository root on the device machine, carrying .device-wheels, data/bench-shakespeare and
# data/bench-paragraphs (as bench/issue15_h200.sh):
#   bash bench/issue15c_h200.sh PARTS     PARTS: any of "mask autotune masktrain recompiles zero3mask"
#   mask      135M at 2048, micro-batch 64 x 4 (bench/document_rows.py): whole plays without masking, with
#             the model's masking, with every row through FlexAttention; paragraphs with the model's masking
#   masktrain the same three on whole plays in the reverse order, then 150 training steps at micro-batch 16
#             with the model's masking and with every row through FlexAttention, compared step by step
#   recompiles the model's masking, 150 training steps and the eval, with TORCH_LOGS=recompiles: how many graphs
#             the decoder layers' shared code gets (dynamo falls back to eager past its recompile_limit)
#   zero3mask  135M at 2048 with the model's masking, micro-batch 64 x 4, ZeRO 1 and 3 under the deepspeed launcher
#   autotune  configs/smollm2-135m.yaml as committed, then with TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1 (each
#             process compiles its own layers; the autotuning runs at the first steps)
# Writes under $OUT: issue15c.log and one JSON per bench.
set -u
PARTS=${1:-mask autotune}
AUTOTUNE_LIMIT=${AUTOTUNE_LIMIT:-300}
LOG_NAME=issue15c.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee -a "$LOG"
if [[ " $PARTS " == *" mask "* ]]; then
  for mode in none model every-row; do
    run "plays $mode" 150 python3 bench/document_rows.py "$mode" data/bench-shakespeare bench "$OUT/bench_plays_$mode.json"
  done
  run "paragraphs model" 150 python3 bench/document_rows.py model data/bench-paragraphs bench \
    "$OUT/bench_paragraphs_model.json"
fi
if [[ " $PARTS " == *" masktrain "* ]]; then
  for mode in every-row model none; do
    run "plays $mode again" 150 python3 bench/document_rows.py "$mode" data/bench-shakespeare bench \
      "$OUT/bench_plays_${mode}_again.json"
  done
  for mode in model every-row; do
    run "train $mode" 150 python3 bench/document_rows.py "$mode" data/bench-shakespeare train "/tmp/run_$mode"
    cp "/tmp/run_$mode/metrics.jsonl" "$OUT/metrics_$mode.jsonl"
  done
  python3 bench/compare_runs.py /tmp/run_model /tmp/run_every-row --last 50 | tee -a "$LOG"
fi
if [[ " $PARTS " == *" autotune "* ]]; then
  BENCH=(python3 -m smollm2 bench --config configs/smollm2-135m.yaml --set data.path=data/bench-shakespeare
    --steps 8 --warmup 3)
  run "135m" 150 "${BENCH[@]}" --out "$OUT/bench_135m.json"
  run "135m autotuned gemms" "$AUTOTUNE_LIMIT" env TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1 "${BENCH[@]}" \
    --out "$OUT/bench_135m_autotune.json"
fi
if [[ " $PARTS " == *" recompiles "* ]]; then
  run "train model, recompiles logged" 150 env TORCH_LOGS=recompiles python3 bench/document_rows.py model \
    data/bench-shakespeare train /tmp/run_recompiles
  note "graphs of the decoder layer: $(grep -c 'Recompiling function forward.*model.py' "$LOG") recompiles"
  grep -E "Recompiling function|recompiles\]     - [0-9]+/[0-9]+:|recompile_limit" "$LOG" | sed 's/.*__recompiles\]//' \
    | cut -c1-300 | tail -60
fi
if [[ " $PARTS " == *" zero3mask "* ]]; then
  run "zero 1, 3 with masking" 200 deepspeed --num_gpus 1 --module smollm2 bench --config configs/smollm2-135m.yaml \
    --set data.path=data/bench-shakespeare model.block_size=2048 model.document_masking=true \
    train.micro_batch_size=64 train.global_batch_size=256 --vary deepspeed.zero_stage=1,3 --steps 6 --warmup 3 \
    --out "$OUT/bench_zero_masking.json"
fi
summarize_benches
