# shellcheck shell=bash
# Sourced by the bench/*_h200.sh scripts on the device machine, from the repository root:
#   LOG_NAME=step.log; source bench/device_env.sh
# Installs the carried .device-wheels (DeepSpeed and the pure-Python packages the lent GPU machine lacks, staged
# from ../shared/device/ into the git-ignored .device-wheels/ before the call: bash ../shared/device/stage.sh)
# into /tmp/site, unpacks the carried inductor cache if there is one (data/bench-cache/ind_smollm2.tgz), writes
# the GPUs' names into $OUT/$LOG_NAME (LOG), and defines note(), which prints a line with the seconds since
# START and appends it to LOG, and run() (one command under a time limit, its output into LOG).
START=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .device-wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH || exit 1
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_smollm2 NCCL_NVLS_ENABLE=0
[ -f data/bench-cache/ind_smollm2.tgz ] && tar xzf data/bench-cache/ind_smollm2.tgz -C /tmp
LOG=$OUT/${LOG_NAME:-bench.log}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv,noheader | tee -a "$LOG"
note() { echo "[$(( $(date +%s) - START )) s] $*" | tee -a "$LOG"; }
run() {  # NAME TIMEOUT COMMAND...: the command's output appended to LOG, its failure noted there
  local name=$1 limit=$2
  shift 2
  note "$name: $*"
  timeout "$limit" "$@" >> "$LOG" 2>&1 || note "$name: exit $?"
}
