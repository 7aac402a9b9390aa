#!/usr/bin/env bash
# One GPU call on nvidia-h200-x4 (issue 5 scaling, issue 4's GPU run). From the repository root on the device
# machine, carrying .device-wheels, data/bench-shakespeare and data/bench-cache:
#   1. weak scaling: `smollm2 train` of configs/smollm2-135m.yaml under the deepspeed launcher on 1, 2 and 4
#      GPUs, ZeRO 1 and 2, micro-batch 128 per GPU, no accumulation (global batch 128 x GPUs), real data;
#      per-GPU tokens/s read from metrics.jsonl (steps after the compile warm-up);
#   2. a few hundred real training steps on one GPU each with activation checkpointing off and on
#      (every layer), side by side on GPUs 0 and 1.
#   bash bench/scaling_h200.sh   ->  $OUT/scaling.log, $OUT/scaling.json, $OUT/ac_off.jsonl, $OUT/ac_on.jsonl
set -u
LOG_NAME=scaling.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$LOG"
CFG=configs/smollm2-135m.yaml
COMMON="data.path=data/bench-shakespeare train.micro_batch_size=128 logging.log_every=5 eval.eval_every=0
        checkpoint.save_every=0 schedule.warmup_steps=10 data.num_workers=2"

# 2. activation checkpointing off / on, 300 steps each, one GPU each, at the same time (GPUs 0 and 1)
note "AC off / AC on: 300 steps, 1 GPU each"
for ac in 0 1; do
  CUDA_VISIBLE_DEVICES=$ac timeout 280 python3 -m smollm2 train --config $CFG --set $COMMON \
    train.global_batch_size=128 train.max_steps=300 train.activation_checkpointing=$ac \
    train.out_dir=/tmp/run_ac$ac --resume never > "$OUT/train_ac$ac.log" 2>&1 &
done
wait
cp /tmp/run_ac0/metrics.jsonl "$OUT/ac_off.jsonl"; cp /tmp/run_ac1/metrics.jsonl "$OUT/ac_on.jsonl"

# 1. weak scaling
for stage in 1 2; do
  for n in 1 2 4; do
    note "ZeRO-$stage on $n GPU(s)"
    CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1))) MASTER_PORT=$((29600 + 10 * stage + n)) timeout 150 \
      bash launch/deepspeed_single_node.sh $CFG --set $COMMON train.global_batch_size=$((128 * n)) \
      train.max_steps=40 deepspeed.zero_stage=$stage train.out_dir=/tmp/scale_z${stage}_n$n --resume never \
      >> "$OUT/scale_z${stage}_n$n.log" 2>&1 || note "failed: see scale_z${stage}_n$n.log"
  done
done
note "done"
python3 - "$OUT" <<'PY'
import json, os, sys, statistics
out = sys.argv[1]
rows = []
def steady(path, skip_steps=15):
    recs = [json.loads(l) for l in open(path) if '"tokens_per_s"' in l]
    recs = [r for r in recs if r["step"] > skip_steps]
    return recs
for stage in (1, 2):
    base = None
    for n in (1, 2, 4):
        p = f"/tmp/scale_z{stage}_n{n}/metrics.jsonl"
        if not os.path.exists(p):
            print(f"ZeRO-{stage} n={n}: no metrics"); continue
        recs = steady(p)
        tps = statistics.median(r["tokens_per_s"] for r in recs) / n
        mfu = statistics.median(r["mfu"] for r in recs)
        base = base or tps
        rows.append(dict(stage=stage, gpus=n, tokens_per_s_per_gpu=round(tps), mfu_pct=round(mfu, 1),
                         efficiency=round(tps / base, 3), peak_mem_gib=recs[-1].get("peak_mem_gib")))
        print(f"ZeRO-{stage} {n} GPU: {tps:,.0f} tokens/s/GPU  MFU {mfu:.1f}%  weak-scaling eff {tps / base:.1%}")
for name in ("ac_off", "ac_on"):
    recs = [json.loads(l) for l in open(f"{out}/{name}.jsonl")]
    tr = [r for r in recs if "tokens_per_s" in r and r["step"] > 15]
    print(f"{name}: loss {tr[0]['loss']:.3f} (step {tr[0]['step']}) -> {tr[-1]['loss']:.3f} (step {tr[-1]['step']}); "
          f"{statistics.median(r['tokens_per_s'] for r in tr):,.0f} tokens/s; MFU {statistics.median(r['mfu'] for r in tr):.1f}%; "
          f"peak {max(r.get('peak_mem_gib') or 0 for r in tr):.1f} GiB")
json.dump(rows, open(f"{out}/scaling.json", "w"), indent=1)
PY
