# Sourced by the bench/*_h200.sh scripts on the device machine, from the repository root:
#   LOG_NAME=final.log; source bench/device_env.sh
# Installs the carried .device-wheels (DeepSpeed and the pure-Python packages the lent GPU machine lacks, staged
# into the git-ignored .device-wheels/ before the call)
# into /tmp/site, unpacks the carried inductor cache if there is one, and defines note(), which prints a
# line with the seconds since START and appends it to $OUT/$LOG_NAME (LOG).
START=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .device-wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH || exit 1
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_smollm2 NCCL_NVLS_ENABLE=0
[ -f data/bench-cache/ind_smollm2.tgz ] && tar xzf data/bench-cache/ind_smollm2.tgz -C /tmp
LOG=$OUT/$LOG_NAME
note() { echo "[$(( $(date +%s) - START )) s] $*" | tee -a "$LOG"; }
