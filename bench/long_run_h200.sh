#!/usr/bin/env bash
# What a long run costs besides its steps, for one config on one GPU (issue 30): the loop's stall per checkpoint save
# with and without checkpoint.background, goodput of a real run that evaluates and saves, and the time of a
# universal-checkpoint conversion (a resume on another ZeRO stage), all in one device call:
#   bash bench/long_run_h200.sh CONFIG [KEY=VALUE ...]
# For example:
#   bash bench/long_run_h200.sh configs/smollm2-135m.yaml
#   STEPS=300 EVERY=100 bash bench/long_run_h200.sh configs/smollm2-135m.yaml      (issue 30's goodput run)
#   STEPS=24 EVERY=8 SAVE_STEPS=16 SAVE_EVERY=8 bash bench/long_run_h200.sh configs/smollm2-1.7b.yaml \
#       train.global_batch_size=128
# Parts, each its own process, the KEY=VALUE settings added to every one:
#   1. bench: `smollm2 bench` of the config (tokens/s of the step alone, the reference for 3);
#   2. saves: `smollm2 train` for SAVE_STEPS (default 30) steps saving every SAVE_EVERY (default 10), once with
#      checkpoint.background=false, once with true; each save's "the loop waited S s" line is the stall;
#   3. goodput: `smollm2 train` for STEPS (default 300) steps, evaluating and saving every EVERY (default 100), in
#      ZeRO 1; its job line "done: ... goodput ..." and the tokens/s over wall time after its first 10 steps
#      (compilation), against part 1's;
#   4. universal: the run of part 3 resumed with deepspeed.zero_stage=2 for one more step: the conversion to
#      DeepSpeed's universal format, its seconds in universal/reshard.json.
# From the repository root on the device machine, carrying .device-wheels and DATA (default data/bench-shakespeare;
# bench/README.md says how to make both). Logs under $OUT (long_run.log, the runs' own logs), the summary printed
# last. LIMIT (default 550) bounds the whole call.
set -u
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: bash bench/long_run_h200.sh CONFIG [KEY=VALUE ...] (CONFIG: a config file)" >&2
  exit 2
fi
CONFIG=$1
shift
DATA=${DATA:-data/bench-shakespeare}
STEPS=${STEPS:-300} EVERY=${EVERY:-100} SAVE_STEPS=${SAVE_STEPS:-30} SAVE_EVERY=${SAVE_EVERY:-10}
LOG_NAME=long_run.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
deadline=$(( START + ${LIMIT:-550} ))
left() { echo $(( deadline - $(date +%s) > 10 ? deadline - $(date +%s) : 10 )); }
common=(--config "$CONFIG" --set data.path="$DATA" "$@")
train() {  # NAME RUN_DIR KEY=VALUE...: one `smollm2 train`, its output in $OUT/NAME.log
  local name=$1 run_dir=$2
  shift 2
  note "$name"
  timeout "$(left)" python3 -m smollm2 train "${common[@]}" train.out_dir="$run_dir" logging.log_every=10 "$@" \
    > "$OUT/$name.log" 2>&1 || note "$name: exit $?"
}

note "1. bench: $CONFIG $*"
timeout "$(left)" python3 -m smollm2 bench "${common[@]}" --steps 8 --warmup 2 --out "$OUT/long_run_bench.json" \
  2>> "$OUT/long_run_bench.log" | tee -a "$LOG"
for background in false true; do
  train "saves_$background" "/tmp/saves_$background" train.max_steps="$SAVE_STEPS" schedule.warmup_steps=5 \
    eval.eval_every=0 checkpoint.save_every="$SAVE_EVERY" checkpoint.keep_last=2 checkpoint.background="$background"
done
train goodput /tmp/goodput train.max_steps="$STEPS" schedule.warmup_steps=10 eval.eval_every="$EVERY" \
  checkpoint.save_every="$EVERY" checkpoint.keep_last=2 deepspeed.zero_stage=1
train universal /tmp/goodput train.max_steps=$(( STEPS + 1 )) deepspeed.zero_stage=2 eval.eval_every=0 \
  schedule.warmup_steps=10
[ -f "/tmp/goodput/checkpoints/step_$(printf %08d "$STEPS")/universal/reshard.json" ] && \
  cp "/tmp/goodput/checkpoints/step_$(printf %08d "$STEPS")/universal/reshard.json" "$OUT/reshard.json"

python3 - "$OUT" <<'EOF' | tee -a "$LOG"
import json, re, sys
from pathlib import Path

out = Path(sys.argv[1])
bench = json.loads((out / "long_run_bench.json").read_text()) if (out / "long_run_bench.json").exists() else None
step_tokens_per_s = bench["results"][0]["tokens_per_s"] if bench and bench["results"] else None
print(f"bench: {step_tokens_per_s and round(step_tokens_per_s):,} tokens/s")
for background in ("false", "true"):
    log = out / f"saves_{background}.log"
    waits = [float(w) for w in re.findall(r"the loop waited ([\d.]+) s", log.read_text())] if log.exists() else []
    print(f"saves, checkpoint.background={background}: the loop waited {waits} s per save")
rows = [json.loads(line) for line in Path("/tmp/goodput/metrics.jsonl").read_text().splitlines()] if Path(
    "/tmp/goodput/metrics.jsonl").exists() else []
rows = [row for row in rows if "tokens_per_s" in row and row["step"] > 10]
# Each row covers log_every steps: its wall time is its tokens over its tokens/s, which counts only the steps.
tokens = [row["tokens_per_s"] * row["step_time_s"] * 10 for row in rows]
walls = [row["step_time_s"] * 10 / (row["goodput"] + row["time_share/data_wait"]) for row in rows]
if rows:
    overall = sum(tokens) / sum(walls)
    ratio = f", {overall / step_tokens_per_s:.3f} of the bench's" if step_tokens_per_s else ""
    print(f"goodput run, steps 11-{rows[-1]['step']}: {overall:,.0f} tokens/s over wall time{ratio}")
log = out / "goodput.log"
done = re.search(r"^done: .*$", log.read_text(), re.MULTILINE) if log.exists() else None
print(done.group(0) if done else "goodput run: no done line (see goodput.log)")
reshard = out / "reshard.json"
print(f"universal conversion: {json.loads(reshard.read_text()) if reshard.exists() else 'none (see universal.log)'}")
EOF
