#!/usr/bin/env bash
# The checks that need a CUDA GPU (the default test run is CPU-only). On a GPU machine:
# Usage: bash tools/gpu_checks.sh [OUT_DIR]          (default OUT_DIR: benchmarks)
# 1. `pytest -m cuda` (tests/test_cuda.py): backbone CUDA vs CPU parity for EfficientFormer
#    l1/l3/l7 and EfficientFormerV2 s0/s1/s2/l, fp16/bf16 autocast, torch.compile on the GPU,
#    a classification run with --amp through tools/train.py and tools/test.py, the benchmark's
#    CUDA path, mmcv's CUDA RoIAlign/NMS/focal loss vs CPU. Log: OUT_DIR/gpu_checks_pytest.log.
# 2. The main job on the GPU (tools/gpu_train_checks.py): mmcv's CUDA ops vs the CPU, then Mask
#    R-CNN (L1, V2-S0), RetinaNet-L1, Semantic FPN-L1 and the tiny slimming supernet trained a
#    few iterations with --amp through tools/train.py and resumed, on generated data.
#    Results: OUT_DIR/gpu_train_checks_<gpu>.{json,md}. Needs mmcv built with its CUDA ops
#    (MMEFF_MMCV_CUDA=1 bash tools/setup_env.sh).
# 3. Supernet cost (tools/benchmark_supernet.py): the l7space step at batch 128, fp32 and AMP.
# 4. GPU latency, side by side with timm (tools/benchmark_latency.py, JSON + Markdown), for
#    EfficientFormer l1/l3/l7 and EfficientFormerV2 s0/s1/s2/l: classifier at 224 (timm, eager,
#    fused, torch.compile, fastest) and backbone at 512x512 and 800x1333 (timm, eager,
#    fused), batch 1, fp32.
# PYTHON overrides the interpreter (default .venv/bin/python). Exit status: non-zero if any
# step failed; every step runs regardless.
set -u
case "${1:-}" in
  -h|--help) sed -n '2,/^set -u/p' "$0" | sed -e '/^set -u/d' -e 's/^# \{0,1\}//'; exit 0 ;;
esac
if [ "$#" -gt 1 ]; then
  echo "gpu_checks.sh: error: expected at most one argument (OUT_DIR), got $#" >&2
  echo "Usage: bash tools/gpu_checks.sh [OUT_DIR]   (--help for details)" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT_DIR=${1:-benchmarks}
mkdir -p "$OUT_DIR"
GPU=$("$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.cuda.get_device_name(0).lower().replace('nvidia ', '').replace(' ', '-'))") \
    || { echo "gpu_checks: no CUDA device visible to $PYTHON" >&2; exit 1; }
rc=0
"$PYTHON" -m pytest -m cuda -s -q tests/test_cuda.py 2>&1 | tee "$OUT_DIR/gpu_checks_pytest.log"
[ "${PIPESTATUS[0]}" = 0 ] || rc=1
"$PYTHON" tools/gpu_train_checks.py --out-dir "$OUT_DIR" \
    --work-dir "work_dirs/gpu_train_checks_$$" || rc=1
"$PYTHON" tools/benchmark_supernet.py --device cuda --amp both --out-dir "$OUT_DIR" || rc=1
"$PYTHON" tools/benchmark_latency.py --device cuda --archs l1 l3 l7 --input-sizes 224 \
    --batch-sizes 1 --runtimes timm eager fused compile fastest --task classifier --warmup 20 \
    --reps 200 --out-dir "$OUT_DIR" --name "l1_l3_l7_224_cuda_${GPU}" || rc=1
"$PYTHON" tools/benchmark_latency.py --device cuda --archs l1 l3 l7 \
    --input-sizes 512x512 800x1333 --batch-sizes 1 --runtimes timm eager fused \
    --task backbone --warmup 10 --reps 100 --out-dir "$OUT_DIR" \
    --name "l1_l3_l7_dense_cuda_${GPU}" || rc=1
# EfficientFormerV2 (S0/S1/S2/L), the same two measurements.
"$PYTHON" tools/benchmark_latency.py --device cuda --archs s0 s1 s2 l --input-sizes 224 \
    --batch-sizes 1 --runtimes timm eager fused compile fastest --task classifier --warmup 20 \
    --reps 200 --out-dir "$OUT_DIR" --name "v2_224_cuda_${GPU}" || rc=1
"$PYTHON" tools/benchmark_latency.py --device cuda --archs s0 s1 s2 l \
    --input-sizes 512x512 800x1333 --batch-sizes 1 --runtimes timm eager fused \
    --task backbone --warmup 10 --reps 100 --out-dir "$OUT_DIR" \
    --name "v2_dense_cuda_${GPU}" || rc=1
echo "gpu_checks: results in $OUT_DIR (exit $rc)"
exit $rc
