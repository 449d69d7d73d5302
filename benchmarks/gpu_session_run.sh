#!/usr/bin/env bash
# What one lent GPU machine ran for the GPU path (issue 21 item 3, issue 16 item 6): a machine
# with the NVIDIA driver, nvcc, its own python3 and torch, and no package registry. The pure-
# Python packages travel as wheels in .whl/ (with mmcv's sdist); mmcv's CUDA ops are built
# there for the machine's GPU only, with the flags and C++20 patch of tools/setup_env.sh; then
# the checks run, their results written under $OUT (copied into benchmarks/ afterwards).
# On an ordinary GPU machine the same is: MMEFF_MMCV_CUDA=1 bash tools/setup_env.sh, then
# bash tools/gpu_checks.sh.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/env.txt"
python3 -c "import torch, setuptools, sys; print('python', sys.version.split()[0], 'torch',
torch.__version__, 'cuda', torch.version.cuda, 'setuptools', setuptools.__version__)" | tee -a "$OUT/env.txt"
nvcc --version | tail -2 | tee -a "$OUT/env.txt"
CAP=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability(0))")
el "building mmcv 2.1.0 CUDA ops for sm ${CAP} (MAX_JOBS=$(nproc))"
B=/tmp/mmcvbuild; mkdir -p $B && tar xzf .whl/mmcv-2.1.0.tar.gz -C $B
sed -i "s/'-std=c++17'/'-std=c++20'/g" $B/mmcv-2.1.0/setup.py
( cd $B/mmcv-2.1.0 && CFLAGS="-g0 -O2" CXXFLAGS="-g0 -O2" MAX_JOBS=$(nproc) \
  TORCH_CUDA_ARCH_LIST="$CAP" MMCV_WITH_OPS=1 FORCE_CUDA=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} \
  python3 -m pip wheel -v --no-build-isolation --no-deps . -w $B/dist ) > "$OUT/mmcv_build.log" 2>&1 &
BUILD=$!
# While mmcv compiles (CPU): the supernet's step time on the GPU, fp32 and AMP (no mmcv ops).
if [ -f tools/benchmark_supernet.py ]; then
  el "supernet benchmark"
  PYTHONPATH=/tmp/site:$B/mmcv-2.1.0 timeout 200 python3 tools/benchmark_supernet.py \
    --device cuda --amp both --out-dir "$OUT" > /tmp/benchmark_supernet.log 2>&1
  BENCH=$?; el "supernet benchmark rc=$BENCH"; tail -20 /tmp/benchmark_supernet.log
fi
wait $BUILD; RC=$?
el "mmcv build rc=$RC"; grep -c "nvcc\b" "$OUT/mmcv_build.log"; tail -5 "$OUT/mmcv_build.log"; gzip -kf "$OUT/mmcv_build.log" && rm "$OUT/mmcv_build.log"
if [ $RC = 0 ]; then
  python3 -m pip install -q --no-index --no-deps --no-cache-dir --target /tmp/site $B/dist/mmcv-*.whl
  ls -la $B/dist | tee -a "$OUT/env.txt"
  el "training checks"
  timeout 300 python3 tools/gpu_train_checks.py --out-dir "$OUT" --name ${CHECKS_NAME:-gpu_train_checks_h200} \
    --timeout 240 2>&1 | tail -30
  el "training checks done"
  timeout 150 python3 -m pytest -m cuda -q tests/test_cuda.py -k "v2 or mmcv or amp" -p no:cacheprovider 2>&1 \
    | tee "$OUT/pytest_cuda_v2.log" | tail -8
  el "pytest done"
  if [ "${BENCH:-0}" != 0 ]; then
    timeout 150 python3 tools/benchmark_supernet.py --device cuda --amp both --out-dir "$OUT" \
      > /tmp/benchmark_supernet_after_build.log 2>&1; el "supernet benchmark again rc=$?"
    tail -20 /tmp/benchmark_supernet_after_build.log
  fi
fi
el "end"
