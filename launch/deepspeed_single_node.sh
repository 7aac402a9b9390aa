#!/usr/bin/env bash
# Train on one machine under DeepSpeed's own launcher: one process per GPU, or NPROC CPU processes.
#
#   bash launch/deepspeed_single_node.sh CONFIG [--set key=value ...] [--resume auto|never|PATH]
#
#   bash launch/deepspeed_single_node.sh configs/smollm2-135m.yaml                      # every visible GPU
#   CUDA_VISIBLE_DEVICES=0,1 bash launch/deepspeed_single_node.sh configs/smollm2-135m.yaml
#   NPROC=2 bash launch/deepspeed_single_node.sh configs/tiny.yaml --set train.max_steps=50   # 2 CPU ranks
#
# Environment:
#   NPROC        processes to start (default: every visible GPU; without GPUs, one per NUMA node)
#   MASTER_PORT  rendezvous port on 127.0.0.1 (default 29500); give each concurrent job its own
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
command -v deepspeed >/dev/null || { echo "deepspeed not found: activate the environment smollm2 is installed in" >&2; exit 2; }

launcher_args=(--master_port "${MASTER_PORT:-29500}" --module)
if [ -n "${NPROC:-}" ]; then
  # --num_gpus also sets the rank count on CPU, where DeepSpeed otherwise starts one rank per NUMA node.
  launcher_args+=(--num_gpus "$NPROC")
  # Ranks share the cores: without this each would start one thread per core (torchrun does the same).
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}
fi
# Without NPROC the launcher takes every GPU in CUDA_VISIBLE_DEVICES (with --num_gpus it would ignore it).
exec deepspeed "${launcher_args[@]}" smollm2 train --config "$config" "$@"
