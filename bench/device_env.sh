# Sourced by the bench/*_h200.sh scripts on the device machine, from the repository root:
#   LOG_NAME=final.log; source bench/device_env.sh
# Installs the carried .device-wheels (DeepSpeed and the pure-Python packages the lent GPU machine lacks, staged
# into the git-ignored .device-wheels/ before the call)
# into /tmp/site, unpacks the carried inductor cache if there is one, and defines note(), which prints a
# line with the seconds since START and appends it to $OUT/$LOG_NAME (LOG), run() (one command under a time
# limit, into LOG) and summarize_benches() (the rows of every $OUT/bench_*.json).
START=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .device-wheels/*.whl && export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH || exit 1
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_smollm2 NCCL_NVLS_ENABLE=0
[ -f data/bench-cache/ind_smollm2.tgz ] && tar xzf data/bench-cache/ind_smollm2.tgz -C /tmp
LOG=$OUT/$LOG_NAME
note() { echo "[$(( $(date +%s) - START )) s] $*" | tee -a "$LOG"; }
run() {  # NAME TIMEOUT COMMAND...: the command's output appended to LOG, its failure noted there
  local name=$1 limit=$2
  shift 2
  note "$name: $*"
  timeout "$limit" "$@" >> "$LOG" 2>&1 || note "$name: exit $?"
}
summarize_benches() {  # one line per row of every $OUT/bench_*.json, appended to LOG too
  python3 - "$OUT" <<'PY' | tee -a "$LOG"
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("bench_*.json")):
    for row in json.loads(path.read_text()).get("results", []):
        keys = ("name", "tokens_per_s", "mfu", "mfu_datasheet", "peak_mem_gib", "document_masking",
                "documents_per_block", "error")
        print(path.stem, {k: row[k] for k in keys if k in row})
PY
}
