#!/usr/bin/env bash
# Issue 6: weak scaling to 8 H200s (kind nvidia-h200-x8) with ZeRO 1, 2 and 3 under the deepspeed launcher.
# From the repository root on the device machine, carrying .device-wheels, data/bench-shakespeare and
# (optionally) data/bench-cache:
#   1. for each GPU count N: `smollm2 bench` under `deepspeed --num_gpus N` with micro-batch 128 per GPU and
#      no accumulation (global batch 128 x N: the same work per GPU at every N), ZeRO 1, 2, 3 in one process
#      group (--vary), each with a profiled step: its NCCL kernel time (communication_kernel_ms);
#   2. `smollm2 train` of configs/smollm2-135m.yaml on the largest N for TRAIN_STEPS real steps (ZeRO 1;
#      1024 sequences a step: 128 per GPU on 8);
#   3. the table: per-GPU tokens/s and MFU against N=1's, the step time added over N=1 (communication that
#      compute did not hide) and the NCCL kernel time.
# One call of 10 minutes holds about two GPU counts: split them, e.g.
#   bash bench/scaling8_h200.sh "1 2" 0      then      bash bench/scaling8_h200.sh "4 8" 200
# (the table reads every bench_n*.json under $OUT of that call; N=1 comes from the first call's files, so
# copy its bench_n1.json back in as data/bench-cache/bench_n1.json, or include 1 in each call).
# Known before running (N=1, bench/RESULTS.md): ZeRO 3 runs compiled since each layer is a ZeRO-3 leaf and
# memory_efficient_linear is off, at 283K tokens/s against ZeRO 1's 385K: its kernels take as long as ZeRO 1's,
# the rest is DeepSpeed's hooks on the host.
set -u
LOG_NAME=scaling8.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
GPU_COUNTS=${1:-1 2 4 8}
TRAIN_STEPS=${2:-200}
[ -f data/bench-cache/bench_n1.json ] && [ ! -f "$OUT/bench_n1.json" ] && cp data/bench-cache/bench_n1.json "$OUT/"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$LOG"
CFG=configs/smollm2-135m.yaml
DATA=data.path=data/bench-shakespeare

for n in $GPU_COUNTS; do
  note "bench on $n GPU(s), ZeRO 1, 2, 3"
  timeout 280 deepspeed --num_gpus "$n" --master_port $((29700 + n)) --module smollm2 bench --config $CFG \
    --set $DATA train.micro_batch_size=128 train.global_batch_size=$((128 * n)) --vary deepspeed.zero_stage=1,2,3 \
    --steps 5 --warmup 2 --profile "$OUT/prof_n$n" --out "$OUT/bench_n$n.json" >> "$LOG" 2>&1 \
    || note "bench on $n GPU(s) failed: see scaling8.log"
done
if [ "$TRAIN_STEPS" -gt 0 ]; then
  n=$(echo $GPU_COUNTS | tr ' ' '\n' | sort -n | tail -1)
  note "train: $TRAIN_STEPS steps of the config on $n GPU(s)"
  timeout 240 deepspeed --num_gpus "$n" --master_port 29790 --module smollm2 train --config $CFG --set $DATA \
    train.max_steps=$TRAIN_STEPS schedule.warmup_steps=20 logging.log_every=10 eval.eval_every=0 \
    checkpoint.save_every=0 deepspeed.zero_stage=1 train.out_dir=/tmp/run_n$n --resume never >> "$LOG" 2>&1
  cp /tmp/run_n$n/metrics.jsonl "$OUT/metrics_train_n$n.jsonl"
fi
note "done"
python3 - "$OUT" <<'PY'
import glob, json, re, sys
out = sys.argv[1]
runs = {int(re.search(r"bench_n(\d+)\.json$", p).group(1)): json.load(open(p)) for p in glob.glob(f"{out}/bench_n*.json")}
rows = {(n, r["zero_stage"]): r for n, report in runs.items() for r in report["results"]}
print(f"{'ZeRO':>4} {'GPUs':>4} {'tokens/s/GPU':>13} {'MFU':>6} {'efficiency':>10} {'step ms':>8} {'+ms vs 1':>8} "
      f"{'NCCL ms':>8} {'mem GiB':>8}")
for stage in (1, 2, 3):
    one = rows.get((1, stage))
    for n in sorted(runs):
        r = rows.get((n, stage))
        if r is None:
            continue
        eff = f"{r['tokens_per_s_per_device'] / one['tokens_per_s_per_device']:10.1%}" if one else f"{'-':>10}"
        added = f"{r['step_ms'] - one['step_ms']:8.1f}" if one else f"{'-':>8}"
        comm = r.get("communication_kernel_ms")
        print(f"{stage:4d} {n:4d} {r['tokens_per_s_per_device']:13,.0f} {r['mfu']:6.1%} {eff} {r['step_ms']:8.1f} "
              f"{added} {comm if comm is None else round(comm, 1)!s:>8} {r['peak_mem_gib']:8.1f}")
for p in glob.glob(f"{out}/metrics_train_n*.jsonl"):
    recs = [json.loads(line) for line in open(p)]
    tr = [r for r in recs if "tokens_per_s" in r and r["step"] > 20]
    if tr:
        print(f"{p}: steps {tr[0]['step']}..{tr[-1]['step']}: loss {tr[0]['loss']:.3f} -> {tr[-1]['loss']:.3f}, "
              f"{sum(r['tokens_per_s'] for r in tr) / len(tr):,.0f} tokens/s, MFU {sum(r['mfu'] for r in tr) / len(tr):.1f} %")
PY
