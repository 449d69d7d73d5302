#!/usr/bin/env bash
# Third GPU call of 2026-12-04 (a lent H200 with nvcc, its own python3/torch, no registry):
# the distributed supernet with two ranks on the one GPU (tests/test_cuda_dist.py) and the GPU
# row of the latency table with the `fastest` path. No mmcv CUDA ops are needed for either, so
# mmcv's sdist goes on the path as pure Python (no build).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/mmcvsrc && tar xzf .whl/mmcv-2.1.0.tar.gz -C /tmp/mmcvsrc
export PYTHONPATH=/tmp/site:/tmp/mmcvsrc/mmcv-2.1.0 PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
el "two ranks on one GPU"
timeout 150 python3 -m pytest -m cuda -q -s tests/test_cuda_dist.py -p no:cacheprovider 2>&1 \
  | tee "$OUT/pytest_cuda_dist.log" | tail -15
el "latency"
if [ -n "${LATENCY_CMD:-}" ]; then
  timeout 230 bash -c "$LATENCY_CMD" 2>&1 | tail -30
fi
el "end"
