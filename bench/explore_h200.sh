#!/usr/bin/env bash
# One GPU call (issue 5, plan step 1): the transformers + torch.compile baseline, then
# bench/step_explore.py's variants until DEADLINE seconds after the start, then the table.
# Run from the repository root on the device machine, with .device-wheels carried; writes under $OUT.
#   bash bench/explore_h200.sh [DEADLINE_S]
set -u
START=$(date +%s)
DEADLINE=${1:-440}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .device-wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv \
  > "$OUT/gpu.txt" 2>&1
timeout 210 python3 .device-wheels/hf_baseline.py ceil compile > "$OUT/hf_baseline.log" 2>&1
echo "hf_baseline done after $(( $(date +%s) - START )) s"
LEFT=$(( DEADLINE - ($(date +%s) - START) ))
TORCHINDUCTOR_CACHE_DIR=/tmp/ind_smollm2 timeout $(( LEFT + 70 )) \
  python3 bench/step_explore.py --out "$OUT" --deadline-s "$LEFT" > "$OUT/explore.log" 2>&1
echo "explore rc=$? after $(( $(date +%s) - START )) s"
# Compile caches for the next call (carried back in), if small enough to come back.
for d in ind_smollm2 torchinductor_root; do
  [ -d "/tmp/$d" ] && tar czf "/tmp/$d.tgz" -C /tmp "$d" && ls -la "/tmp/$d.tgz" \
    && [ "$(stat -c%s "/tmp/$d.tgz")" -lt 16000000 ] && cp "/tmp/$d.tgz" "$OUT/"
done
grep -E "Error|error" "$OUT/explore.log" | grep -v '"kind"' | sort | uniq -c | head -20
python3 -c "import json,sys; [print(json.dumps(r)) for r in json.load(open(sys.argv[1]))]" "$OUT/anchor.json"
python3 bench/step_explore.py --table "$OUT/explore.jsonl"
