#!/usr/bin/env bash
# Issue 15, fifth round on one H200: where the device sits idle within a training step, and what the step's one
# host synchronization (the trainer reads the gradient norm's finiteness before the optimizer) costs.
# From the repository root on the device machine, carrying .device-wheels and data/bench-shakespeare:
#   bash bench/issue15e_h200.sh PARTS     PARTS: any of "gaps nosync inductor 1.7b"
#   gaps     configs/smollm2-135m.yaml and configs/smollm2-360m.yaml (micro-batch 256) with --profile: each
#            table ends with the profiled step's idle time and longest gaps (smollm2.bench.idle_gaps)
#   nosync   bench/compare_code_h200.sh of this code against a copy whose trainer never reads the norm back
#            (so never skips a step): an upper bound on what removing that synchronization can gain, not a
#            trainer to keep
#   inductor configs/smollm2-135m.yaml with inductor's defaults, with TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1
#            (block sizes of the norm/RoPE/SwiGLU kernels tuned by trial) and with
#            TORCHINDUCTOR_MAX_AUTOTUNE_POINTWISE=1, in the order A B C C B A
#   1.7b     bench/issue15d_h200.sh's part of that name: configs/smollm2-1.7b.yaml (global batch 128) at
#            micro-batch 32 and 64, with the baseline (its log: issue15d.log)
# Writes under $OUT: issue15e.log, compare_nosync.log, issue15d.log (1.7b), prof*/ and the benches' JSON in
# json.tgz (the device machine sends back 8 files at most).
set -u
PARTS=${1:-gaps nosync}
LOG_NAME=issue15e.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee -a "$LOG"
SHAKESPEARE=(--set data.path=data/bench-shakespeare)
if [[ " $PARTS " == *" gaps "* ]]; then
  run "135m profiled" 200 python3 -m smollm2 bench --config configs/smollm2-135m.yaml "${SHAKESPEARE[@]}" \
    --steps 6 --warmup 2 --profile "$OUT/prof135m" --out "$OUT/bench_135m.json"
  run "360m profiled" 250 python3 -m smollm2 bench --config configs/smollm2-360m.yaml "${SHAKESPEARE[@]}" \
    train.micro_batch_size=256 --steps 4 --warmup 2 --profile "$OUT/prof360m" --out "$OUT/bench_360m.json"
  tail -n 17 "$OUT"/prof*/profile-0.txt | tee -a "$LOG"
fi
if [[ " $PARTS " == *" nosync "* ]]; then
  mkdir -p /tmp/cmp/head /tmp/cmp/nosync
  cp -r smollm2 configs /tmp/cmp/head/ && cp -r smollm2 configs /tmp/cmp/nosync/
  python3 - <<'PY' || exit 1
import pathlib
path = pathlib.Path("/tmp/cmp/nosync/smollm2/trainer.py")
text = path.read_text()
old = "result.skipped = not bool(torch.isfinite(result.grad_norm)) or skip_for_spike"
assert text.count(old) == 1, "the trainer's synchronization line moved"
path.write_text(text.replace(old, "result.skipped = skip_for_spike"))
PY
  LOG_NAME=compare_nosync.log STEPS=6 bash bench/compare_code_h200.sh /tmp/cmp/head /tmp/cmp/nosync | tee -a "$LOG"
fi
if [[ " $PARTS " == *" inductor "* ]]; then
  variant() {  # NAME RUN [ENV=VALUE]
    run "135m $1 $2" 300 env "${@:3}" python3 -m smollm2 bench --config configs/smollm2-135m.yaml \
      "${SHAKESPEARE[@]}" --steps 6 --warmup 2 --out "$OUT/bench_$1$2.json"
  }
  variant default 1 && variant cdt 1 TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1
  variant pointwise 1 TORCHINDUCTOR_MAX_AUTOTUNE_POINTWISE=1 && variant pointwise 2 TORCHINDUCTOR_MAX_AUTOTUNE_POINTWISE=1
  variant cdt 2 TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 && variant default 2
fi
if [[ " $PARTS " == *" 1.7b "* ]]; then
  bash bench/issue15d_h200.sh 1.7b | tee -a "$LOG"
fi
summarize_benches
(cd "$OUT" && tar czf json.tgz bench_*.json && rm bench_*.json)
