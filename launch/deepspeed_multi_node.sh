#!/usr/bin/env bash
# Train on several nodes under DeepSpeed's launcher. The hostfile lists the nodes ("worker-0 slots=8",
# see launch/hostfile.example); its first line is node rank 0. The nodes need the same paths
# (a shared disk, or the same container image).
#
#   bash launch/deepspeed_multi_node.sh HOSTFILE CONFIG [--set key=value ...] [--resume auto|never|PATH]
#
# With passwordless ssh between the nodes: run it once, on the first node. DeepSpeed starts the
# other nodes through pdsh over ssh.
#   bash launch/deepspeed_multi_node.sh launch/hostfile configs/smollm2-135m.yaml
#
# Without ssh (the usual case on clusters): run it on every node, each with its own NODE_RANK (the
# line of the hostfile it is); all of them meet at MASTER_ADDR (default: the first hostfile entry).
#   NODE_RANK=0 bash launch/deepspeed_multi_node.sh hosts configs/smollm2-135m.yaml   # on worker-0
#   NODE_RANK=1 bash launch/deepspeed_multi_node.sh hosts configs/smollm2-135m.yaml   # on worker-1
# (under SLURM, launch/slurm/multi_node.sbatch does exactly this with LAUNCHER=deepspeed).
#
# Through another DeepSpeed backend (openmpi, mpich, impi, mvapich, slurm), run it once:
#   DS_LAUNCHER=openmpi bash launch/deepspeed_multi_node.sh hosts configs/smollm2-135m.yaml
#
# Environment:
#   NODE_RANK    this node's line in the hostfile, 0-based: selects the no-ssh route
#   MASTER_ADDR  address of node rank 0 (ssh route default: its `hostname -I`; no-ssh: its hostfile name)
#   MASTER_PORT  rendezvous port (default 29500)
#   DS_LAUNCHER  DeepSpeed's multi-node backend for the route with one command (default pdsh)
# Over pdsh only PYTHON*, NCCL*, UCX* and the variables in a `.deepspeed_env` file (KEY=value lines,
# in $HOME or the current directory) reach the other nodes: each starts from its ssh login's environment.
# Put PATH there with your environment's bin/ first (DeepSpeed builds its just-in-time ops with the ninja
# it finds, and another ninja than the one they were built with rebuilds them), and whatever else the
# ranks need (OMP_NUM_THREADS, say). Arguments after CONFIG go to `smollm2 train` as they are; relative
# paths are relative to the current directory, on every node.
set -euo pipefail
if [ $# -lt 2 ] || [ "${1#-}" != "$1" ] || [ "${2#-}" != "$2" ]; then
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
fi
hostfile=$1
config=$2
shift 2
[ -f "$hostfile" ] || { echo "$hostfile: no such hostfile" >&2; exit 2; }
command -v deepspeed >/dev/null || { echo "deepspeed not found: activate the environment smollm2 is installed in" >&2; exit 2; }
# The `smollm2` entry point is a Python file: every DeepSpeed backend can run it as the "user
# script" (its slurm backend cannot run a module, `--module smollm2`).
smollm2_script=$(command -v smollm2)

launcher_args=(--hostfile "$hostfile" --master_port "${MASTER_PORT:-29500}")
if [ -n "${NODE_RANK:-}" ]; then
  first_host=$(awk '$1 !~ /^#/ && NF { print $1; exit }' "$hostfile")
  launcher_args+=(--no_ssh --node_rank "$NODE_RANK" --master_addr "${MASTER_ADDR:-$first_host}")
else
  launcher_args+=(--launcher "${DS_LAUNCHER:-pdsh}")
  [ -n "${MASTER_ADDR:-}" ] && launcher_args+=(--master_addr "$MASTER_ADDR")
fi
exec deepspeed "${launcher_args[@]}" "$smollm2_script" train --config "$config" "$@"
