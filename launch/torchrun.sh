#!/usr/bin/env bash
# Train under torchrun: one process per GPU (or NPROC CPU processes), on one node or several.
#
#   bash launch/torchrun.sh CONFIG [--set key=value ...] [--resume auto|never|PATH]
#
#   bash launch/torchrun.sh configs/smollm2-135m.yaml                                  # every visible GPU
#   NPROC=2 bash launch/torchrun.sh configs/tiny.yaml --set train.max_steps=50          # 2 CPU ranks
#   # two nodes: run on each, NODE_RANK 0 on the node named by MASTER_ADDR
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node-0 bash launch/torchrun.sh configs/smollm2-135m.yaml
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node-0 bash launch/torchrun.sh configs/smollm2-135m.yaml
#
# Environment:
#   NPROC        processes per node (default: every visible GPU; on a CPU-only machine, 1)
#   NNODES       nodes (default 1); NODE_RANK this node's index, 0..NNODES-1 (default 0)
#   MASTER_ADDR  the host of NODE_RANK 0 (default 127.0.0.1, one node)
#   MASTER_PORT  rendezvous port on it (default 29500); give each concurrent job its own
# Arguments after CONFIG go to `smollm2 train` as they are. Relative paths, here and in the config,
# are relative to the current directory. Run it from anywhere, in the environment smollm2 is
# installed in (`source launch/venv.sh` on a fresh machine).
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
fi
config=$1
shift
command -v torchrun >/dev/null || { echo "torchrun not found: activate the environment smollm2 is installed in" >&2; exit 2; }

if [ -n "${NPROC:-}" ]; then
  nproc_per_node=$NPROC
  # Ranks share the cores; torchrun would otherwise set one thread per rank.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}
elif nvidia-smi -L >/dev/null 2>&1; then
  nproc_per_node=gpu  # torchrun counts the GPUs torch sees (CUDA_VISIBLE_DEVICES respected)
else
  nproc_per_node=1
fi
# Stop signals: torchrun passes SIGTERM, SIGINT, SIGHUP and SIGQUIT on to the ranks, but SIGUSR1 (SLURM's
# usual warning before the time limit, --signal=USR1@300) would kill torchrun itself and leave the ranks
# without a launcher. Here it passes SIGUSR1 on too, and waits up to 280 s (not 30) for the ranks to finish
# their step, save a checkpoint and exit. Older torch (< 2.9) lacks these flags: USR1 stays fatal there.
torchrun_flags=$(torchrun --help 2>/dev/null || true)
stop_signals=()
[[ $torchrun_flags == *--signals-to-handle* ]] && stop_signals+=(--signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1)
[[ $torchrun_flags == *--shutdown-timeout* ]] && stop_signals+=(--shutdown-timeout 280)
# A static rendezvous: rank 0's node hosts the store at MASTER_ADDR:MASTER_PORT.
exec torchrun --nnodes "${NNODES:-1}" --node-rank "${NODE_RANK:-0}" --nproc-per-node "$nproc_per_node" \
  --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" "${stop_signals[@]}" \
  -m smollm2 train --config "$config" "$@"
