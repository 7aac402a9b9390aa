#!/usr/bin/env bash
# Fills .fa3/ (git-ignored) for a device call to carry: FlashAttention-3's Hopper build as xformers 0.0.34 bundles it
# (xformers/flash_attn_3/_C.so, torch's stable C ABI, CUDA 12 runtime), xz-compressed from 355 to 37 MB so that
# it fits the 64 MiB a call carries, and libcudart.so.12, which it links against (torch 2.11 there brings CUDA 13's).
# Run once per checkout, from the repository root, on a machine that reaches the package index (bench/fa3_op.py
# loads the result).
set -eu
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  -d "$WORK" xformers==0.0.34 nvidia-cuda-runtime-cu12==12.9.79
mkdir -p .fa3
(cd "$WORK" && python3 -m zipfile -e xformers-0.0.34-*.whl x && python3 -m zipfile -e nvidia_cuda_runtime_cu12-*.whl r)
xz -9e -T2 -c "$WORK/x/xformers/flash_attn_3/_C.so" > .fa3/fa3.so.xz
cp "$WORK/r/nvidia/cuda_runtime/lib/libcudart.so.12" .fa3/
ls -l .fa3
