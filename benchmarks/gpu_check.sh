#!/usr/bin/env bash
# The native CUDA backend on one GPU, in one command (under 8 minutes on an H100/H200):
#   1. every Triton kernel on CUDA against the torch integer reference (tests/test_kernels_int8.py,
#      tests/test_kernel_select_quant.py: int32 accumulations exact, whole programs >= 99.9 % same bits);
#   2. the full-size EDSR-baseline x4 CADyQ model (benchmarks/bench_models.py) through native vs the torch
#      reference, then native vs torch fp16 channels_last vs torch.compile(max-autotune) fp16 on 96-px tile
#      batches (16, 66) and on a 4K frame (960x540 LR, 66 tiles, tiling and stitching on the GPU).
# Time limits: kernels 150 s, models 40 s, benchmark 280 s (torch.compile max-autotune included): under 8 minutes.
# Logs and gpu_check.json go to $OUT (default benchmarks/gpu_logs).
#   bash benchmarks/gpu_check.sh [OUT]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-benchmarks/gpu_logs}}"
mkdir -p "$OUT"
PY="${PY:-python3}"
unset TRITON_INTERPRET
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__); assert torch.cuda.is_available(), 'no CUDA GPU visible to torch'"
} 2>&1 | tee "$OUT/env.log"
if ! $PY -c "import cadyq" 2>/dev/null; then
  $PY -m pip install -q -e . 2>&1 | tail -2 | tee -a "$OUT/env.log"   # the CUDA torch already installed is kept
fi
rc=0
timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_kernels_int8.py tests/test_kernel_select_quant.py \
  -m "not trt" 2>&1 | tee "$OUT/kernels.log" || rc=1
timeout 40 $PY benchmarks/bench_models.py "$OUT/models" 2>&1 | tee "$OUT/models.log" || rc=1
timeout 280 $PY benchmarks/gpu_check.py "$OUT/models/edsr-cadyq-x4-bench.safetensors" --out "$OUT" 2>&1 \
  | tee "$OUT/gpu_check.log" || rc=1
echo "gpu_check: exit $rc (logs in $OUT)"
exit $rc
