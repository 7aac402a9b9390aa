#!/usr/bin/env bash
# One GPU call (issue 5, second session): what the fused projections, SDPA's enable_gqa, the trainer's own
# foreach clipping and micro-batch 256 give. Run from the repository root on the device machine, carrying
# .device-wheels, data/bench-shakespeare and (optionally) data/bench-cache.
#   1. bench/step_explore.py: the model before/after the fusions, micro-batch 128 and 256, random tokens;
#   2. `smollm2 bench` of configs/smollm2-135m.yaml at micro-batch 128 and 256 (the real trainer: data
#      loader, accumulation, clipping), the transformers + torch.compile baseline at 128 and 256 in the
#      same process, and a profiler table of one optimizer step of each.
# Writes under $OUT: fusion.log, explore.jsonl, bench_mb.json, prof/profile-{0,1}.txt, ind_smollm2.tgz.
#   bash bench/fusion_h200.sh
set -u
START=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .device-wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_smollm2
[ -f data/bench-cache/ind_smollm2.tgz ] && tar xzf data/bench-cache/ind_smollm2.tgz -C /tmp
LOG=$OUT/fusion.log
note() { echo "[$(( $(date +%s) - START )) s] $*" | tee -a "$LOG"; }

note "step_explore: fusions"
timeout 260 python3 bench/step_explore.py --out "$OUT" --deadline-s 200 --only \
  ds0-autocast-foreachclip-unfused-repeatkv ds0-autocast-foreachclip-fused-repeatkv ds0-autocast-foreachclip-fused-gqa \
  ds0-autocast-foreachclip-unfused-gqa ds0-autocast-foreachclip-fused-gqa-mb256 >> "$LOG" 2>&1
note "smollm2 bench: micro-batch 128 and 256 + baselines"
timeout 320 python3 -m smollm2 bench --config configs/smollm2-135m.yaml --set data.path=data/bench-shakespeare \
  --vary train.micro_batch_size=128,256 --steps 3 --warmup 1 --baseline --baseline-micro-batch 128,256 \
  --profile "$OUT/prof" --out "$OUT/bench_mb.json" >> "$LOG" 2>&1
note "done"
tar czf /tmp/ind_smollm2.tgz -C /tmp ind_smollm2 && [ "$(stat -c%s /tmp/ind_smollm2.tgz)" -lt 16000000 ] \
  && cp /tmp/ind_smollm2.tgz "$OUT/"
grep -E "Error|error|Traceback" "$LOG" | sort | uniq -c | head
python3 bench/step_explore.py --table "$OUT/explore.jsonl"
grep -E "^(NVIDIA|bench |trainer|hf-)|x hf-|out of memory" "$LOG"
head -30 "$OUT/prof/profile-0.txt" | cut -c1-200
