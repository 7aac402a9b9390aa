#!/usr/bin/env bash
# Train under Open MPI's mpirun: NPROC processes, on this machine or across the hosts of a hostfile.
# Each rank finds its rank, world size and local rank through smollm2.distributed (Open MPI's
# variables, mpi4py for the rendezvous: 127.0.0.1 when all ranks share one host, else rank 0's host).
# Needs mpi4py (`pip install -e .[mpi]`); MPI only starts the processes, training talks NCCL/gloo.
#
#   bash launch/mpirun.sh CONFIG [--set key=value ...] [--resume auto|never|PATH]
#
#   bash launch/mpirun.sh configs/smollm2-135m.yaml                                     # every visible GPU
#   NPROC=2 bash launch/mpirun.sh configs/tiny.yaml --set train.max_steps=50             # 2 CPU ranks
#   NPROC=16 HOSTFILE=hosts bash launch/mpirun.sh configs/smollm2-135m.yaml   # hosts: "node-0 slots=8" lines
#
# Environment:
#   NPROC     processes in all (default: every visible GPU; on a CPU-only machine, 1)
#   HOSTFILE  an Open MPI hostfile, for several hosts (needs the same paths on each, e.g. a shared disk)
#   MPIRUN_ARGS  more mpirun options, e.g. "--mca btl_tcp_if_include eth0"
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
command -v mpirun >/dev/null || { echo "mpirun not found: install Open MPI (apt-get install openmpi-bin libopenmpi-dev)" >&2; exit 2; }
python=$(command -v python)  # the same interpreter on every rank, wherever mpirun starts it

nproc_total=${NPROC:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}
[ "${nproc_total:-0}" -gt 0 ] || nproc_total=1
# --bind-to none: Open MPI would pin each rank to one core, starving its threads and data workers.
mpi_args=(-np "$nproc_total" --bind-to none --map-by slot)
[ "$(id -u)" = 0 ] && mpi_args+=(--allow-run-as-root)  # containers often run as root
if [ -n "${HOSTFILE:-}" ]; then
  mpi_args+=(--hostfile "$HOSTFILE")
else
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / nproc_total > 0 ? $(nproc) / nproc_total : 1 ))}
fi
# Local ranks inherit the whole environment; remote ones only what -x names.
for var in PATH LD_LIBRARY_PATH PYTHONPATH VIRTUAL_ENV OMP_NUM_THREADS MASTER_ADDR MASTER_PORT \
           HF_HOME HF_DATASETS_OFFLINE HF_HUB_OFFLINE DS_ACCELERATOR CUDA_VISIBLE_DEVICES; do
  [ -n "${!var:-}" ] && mpi_args+=(-x "$var")
done
# shellcheck disable=SC2206  # MPIRUN_ARGS is meant to split into words
mpi_args+=(${MPIRUN_ARGS:-})
exec mpirun "${mpi_args[@]}" "$python" -m smollm2 train --config "$config" "$@"
