#!/usr/bin/env bash
# Issue 15, fourth round on one H200: where the GEMM and attention time of a layer goes, kernel by kernel.
# From the repository root on the device machine, carrying .device-wheels and data/bench-shakespeare:
#   bash bench/issue15d_h200.sh PARTS     PARTS: any of "kernels profile cublaslt 360m 1.7b"
#   kernels   bench/layer_kernels.py at the 135M, 360M and 1.7B configs' micro-batches: each GEMM of a layer
#             (fwd, dgrad, wgrad) through cuBLAS and cuBLASLt, attention through each SDPA backend
#   profile   configs/smollm2-135m.yaml as committed, with a torch.profiler table of one more step
#   cublaslt  the same config with TORCH_BLAS_PREFER_CUBLASLT=1 (every matmul of the step through cuBLASLt)
#   360m      configs/smollm2-360m.yaml at micro-batch 128 and 256, with the baseline in the process
#   1.7b      configs/smollm2-1.7b.yaml (global batch 128) at micro-batch 32 and 64, with the baseline
# Writes under $OUT: issue15d.log (the kernel tables too), prof/ and one JSON per bench.
set -u
PARTS=${1:-kernels profile cublaslt}
LOG_NAME=issue15d.log
# shellcheck source=bench/device_env.sh
source bench/device_env.sh
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader | tee -a "$LOG"
if [[ " $PARTS " == *" kernels "* ]]; then
  for size in 135m 360m 1.7b; do
    run "kernels $size" 120 python3 bench/layer_kernels.py "configs/smollm2-$size.yaml"
  done
fi
BENCH=(python3 -m smollm2 bench --config configs/smollm2-135m.yaml --set data.path=data/bench-shakespeare
  --steps 6 --warmup 2)
if [[ " $PARTS " == *" profile "* ]]; then
  run "135m profiled" 200 "${BENCH[@]}" --profile "$OUT/prof" --out "$OUT/bench_135m.json"
fi
if [[ " $PARTS " == *" cublaslt "* ]]; then
  run "135m cublaslt" 200 env TORCH_BLAS_PREFER_CUBLASLT=1 "${BENCH[@]}" --out "$OUT/bench_135m_cublaslt.json"
fi
SHAKESPEARE=(--set data.path=data/bench-shakespeare)
if [[ " $PARTS " == *" 360m "* ]]; then
  run "360m" 280 python3 -m smollm2 bench --config configs/smollm2-360m.yaml "${SHAKESPEARE[@]}" \
    --vary train.micro_batch_size=128,256 --baseline --baseline-micro-batch 128 --steps 6 --warmup 2 \
    --out "$OUT/bench_360m.json"
fi
if [[ " $PARTS " == *" 1.7b "* ]]; then
  run "1.7b" 280 python3 -m smollm2 bench --config configs/smollm2-1.7b.yaml "${SHAKESPEARE[@]}" \
    train.global_batch_size=128 --vary train.micro_batch_size=32,64 --baseline --baseline-micro-batch 32 \
    --steps 4 --warmup 2 --out "$OUT/bench_1.7b.json"
fi
summarize_benches
