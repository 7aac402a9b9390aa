#!/usr/bin/env bash
# Issue 15, sixth round on one H200: FlashAttention-3 against cuDNN for the model's causal attention.
# From the repository root on the device machine, carrying .device-wheels, data/bench-shakespeare, .fa3
# (bench/stage_fa3.sh) and .variants (two copies of smollm2/ and configs/: .variants/head as committed and
# .variants/fa3 with bench/fa3_experiment.patch applied):
#   bash bench/issue15f_h200.sh PARTS     PARTS: any of "kernels 135m 135m2048 1.7b 360m", run in that order
#   kernels  python3 bench/fa3_attention.py: attention alone at the family's shapes, both kernels, their errors
#   135m     bench/compare_code_h200.sh .variants/head .variants/fa3 on configs/smollm2-135m.yaml (STEPS=6)
#   135m2048 the same at model.block_size=2048, micro-batch 64 x 4, no masking (STEPS=6)
#   1.7b     the same on configs/smollm2-1.7b.yaml, train.global_batch_size=128 (STEPS=4)
#   360m     the same on configs/smollm2-360m.yaml (STEPS=4)
# Writes under $OUT: issue15f.log, fa3.txt, compare_<part>.log and the benches' JSON in json.tgz.
set -u
PARTS=${1:-kernels 135m}
LOG_NAME=issue15f.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee -a "$LOG"
export SMOLLM2_FA3=$PWD/.fa3 SMOLLM2_FA3_OP_DIR=$PWD/bench  # read by .variants/fa3 only
if [[ " $PARTS " == *" kernels "* ]]; then
  note "fa3 kernels"
  timeout 240 python3 bench/fa3_attention.py .fa3 > "$OUT/fa3.txt" 2>&1 || note "fa3 kernels: exit $?"
  cat "$OUT/fa3.txt" >> "$LOG"
fi
compare() {  # PART CONFIG STEPS [KEY=VALUE ...]
  LOG_NAME=compare_$1.log STEPS=$3 CONFIG=$2 SET="${*:4}" bash bench/compare_code_h200.sh .variants/head .variants/fa3 | tee -a "$LOG"
  (cd "$OUT" && for f in bench_head1 bench_head2 bench_fa31 bench_fa32; do
     [ -f "$f.json" ] && mv "$f.json" "${f}_$1.json"; done)
}
[[ " $PARTS " == *" 135m "* ]] && compare 135m configs/smollm2-135m.yaml 6
[[ " $PARTS " == *" 135m2048 "* ]] && compare 135m2048 configs/smollm2-135m.yaml 6 model.block_size=2048 \
  train.micro_batch_size=64 train.global_batch_size=256
[[ " $PARTS " == *" 1.7b "* ]] && compare 1.7b configs/smollm2-1.7b.yaml 4 train.global_batch_size=128
[[ " $PARTS " == *" 360m "* ]] && compare 360m configs/smollm2-360m.yaml 4
summarize_benches
(cd "$OUT" && tar czf json.tgz bench_*.json && rm bench_*.json)
