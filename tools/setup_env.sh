#!/usr/bin/env bash
# Set up mmeff from nothing: .venv/ at the repo root, torch, mmcv 2.1.0 built from its
# sdist with its C++ ops (cached as a wheel outside the clone), mmengine/mmdet/mmseg, timm.
#
# Usage: bash tools/setup_env.sh            (idempotent; a second run takes seconds)
# Env:   PYTHON           interpreter to build the venv with (default: python3.11, else python3)
#        MMEFF_WHEELHOUSE where the built mmcv wheel is kept (default: ~/.cache/mmeff/wheelhouse)
#        MAX_JOBS         parallel compile jobs for mmcv (default: number of cores)
#        MMEFF_MMCV_CUDA  auto (default): build mmcv's CUDA ops too when torch sees a GPU (what GPU
#                         training needs: RoIAlign, NMS... on CUDA tensors), for the visible GPUs'
#                         architectures; 1: always (set TORCH_CUDA_ARCH_LIST when the build machine
#                         has no GPU, e.g. "9.0" for an H100, "8.0;9.0"); 0: CPU ops only.
#                         With no CUDA toolkit found (CUDA_HOME, nvcc on the PATH, /usr/local/cuda),
#                         the compiler packages matching torch's CUDA version (nvidia-cuda-nvcc,
#                         -crt, -runtime, -cccl, nvidia-nvvm) are installed into the venv;
#                         the registry has them for CUDA 13 only (CUDA 12's nvidia-cuda-nvcc-cu12
#                         has no nvcc), so a torch built for CUDA 12 needs a toolkit (CUDA_HOME).
#                         GPUs that nvidia-smi lists but torch cannot use (a driver older than
#                         torch's CUDA, a CPU-only torch) get a warning that names the fix, and
#                         set-up goes on with CPU ops.
#        MMEFF_CUDA_TOOLKIT auto (default) or pip: use those packages even if a toolkit exists
#                         (e.g. one whose CUDA major version differs from torch's)
#        TORCH_CUDA_ARCH_LIST, CUDA_HOME: as in tools/build_mmcv.sh, which builds the wheel
#        MMEFF_PIP_ATTEMPTS how many times each install is tried before set-up gives up (default 4):
#                         a download cut off by the network is retried, and what pip already has
#                         is kept in its cache (~/.cache/pip), so a retry or a rerun resumes
#
# Every package is installed at the version in constraints.txt (the whole tested environment,
# transitive dependencies included): a new release on the registry changes nothing here.
set -euo pipefail
case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit 0 ;;
esac
if [ "$#" -gt 0 ]; then
  echo "setup_env.sh: error: takes no arguments (got: $*); settings are environment variables" >&2
  echo "Usage: bash tools/setup_env.sh   (--help for details)" >&2
  exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="$ROOT/.venv"
MMCV_VERSION=2.1.0
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1

log() { echo "[setup_env $(date +%H:%M:%S)] $*"; }

# pip_retry install|download ARGS...: that pip command, tried up to $ATTEMPTS times. A download
# the network cut off (pip's "incomplete-download", a reset connection) fails one try, not the
# set-up; the wheels already fetched stay in pip's cache, so the next try fetches only the rest.
pip_retry() {
  local try=1
  while true; do
    if "${PIP[@]}" "$@"; then return 0; fi
    if [ "$try" -ge "$ATTEMPTS" ]; then
      echo "error: pip $* failed $ATTEMPTS times (pip's message above). If it says the" \
        "download was cut off or the connection failed, the network is at fault: run" \
        "'bash tools/setup_env.sh' again (finished downloads are cached) or set MMEFF_PIP_ATTEMPTS" >&2
      return 1
    fi
    log "pip $1 failed (try $try of $ATTEMPTS); trying again in $((try * 15)) s"
    sleep $((try * 15))
    try=$((try + 1))
  done
}

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check --retries 10 --timeout 60)
CONSTRAINTS="$ROOT/constraints.txt"
ATTEMPTS="${MMEFF_PIP_ATTEMPTS:-4}"
case "$ATTEMPTS" in
  ''|*[!0-9]*|0) echo "error: MMEFF_PIP_ATTEMPTS must be a whole number of at least 1 (got '$ATTEMPTS')" >&2; exit 1 ;;
esac

PYTAG="$("$PY" -c 'import sys; print(f"py{sys.version_info.major}{sys.version_info.minor}")')"
if [ "$PYTAG" != "py311" ]; then
  echo "warning: mmeff is tested on Python 3.11, this venv has $PYTAG" >&2
fi

log "build tools (setuptools<82 keeps pkg_resources, which mmcv's setup.py and mmengine need)"
pip_retry install -q -U -c "$CONSTRAINTS" pip "setuptools>=77.0.3,<82" wheel ninja
# pip 25.1 and newer resume a cut-off download within one try (the one above upgraded pip)
if "${PIP[@]}" install --help 2>/dev/null | grep -q -- --resume-retries; then
  PIP+=(--resume-retries 10)
fi

if ! "$PY" -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  log "installing torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION"
  pip_retry install -q -c "$CONSTRAINTS" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

# mmcv: no binary wheel exists on the registry; build once with tools/build_mmcv.sh (the same
# script builds on a machine without a registry), keep the wheel keyed by versions, CUDA version
# and architectures (or cpu).
# shellcheck source=tools/build_mmcv.sh
MMCV_ERR="error:"
source "$ROOT/tools/build_mmcv.sh"
mmcv_torch_info "$PY"
mmcv_choose_ops "${MMEFF_MMCV_CUDA:-auto}"
OPS_TAG=cpu
if [ "$MMCV_CUDA" = 1 ]; then
  # No toolkit (as on most GPU images: a driver and torch's wheels only): the compiler packages
  # matching torch's CUDA version go into the venv, beside the CUDA libraries torch already uses.
  if mmcv_toolkit_from_pip; then
    log "$TOOLKIT_WHY: installing the CUDA $TORCH_CUDA compiler packages into $VENV"
    pip_retry install -q "${PIP_TOOLKIT[@]}" \
      || { echo "error: could not install the CUDA $TORCH_CUDA compiler packages (pip's message above): install a CUDA $TORCH_CUDA toolkit and set CUDA_HOME to it, or run where the package registry is reachable" >&2; exit 1; }
  fi
  # Versions and architectures are checked here, before anything is compiled.
  mmcv_check_cuda
fi
WHEELHOUSE="${MMEFF_WHEELHOUSE:-$HOME/.cache/mmeff/wheelhouse}/mmcv-$MMCV_VERSION-torch$TORCH_VER-$PYTAG-$OPS_TAG"
# The installed mmcv is kept only if it has the version and the ops wanted: the tag of the wheel
# it came from is noted in the venv (a CPU-only build also reports its CUDA version as 'not available').
OPS_NOTE="$VENV/.mmcv-ops"
# Whether _ext holds CUDA kernels is read from the library file (the name of a CUDA launcher is
# in its symbol table), not from mmcv.ops.get_compiling_cuda_version(): that call segfaulted in
# an mmcv built with CUDA 13.0 for torch 2.11 on an H200 while every op worked
# (benchmarks/gpu_path_h200.md).
MMCV_PROBE="import importlib.util, mmcv.ops
lib = open(importlib.util.find_spec('mmcv._ext').origin, 'rb').read()
cuda = b'ROIAlignForwardCUDAKernelLauncher' in lib"
if ! { [ "$(cat "$OPS_NOTE" 2>/dev/null)" = "$OPS_TAG" ] && "$PY" -c "
import sys, mmcv
$MMCV_PROBE
sys.exit(mmcv.__version__ != '$MMCV_VERSION' or cuda != ($MMCV_CUDA == 1))" 2>/dev/null; }; then
  if ! ls "$WHEELHOUSE"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    SDIST_DIR="$(mktemp -d)"
    trap 'rm -rf "$SDIST_DIR"' EXIT
    if [ "$MMCV_CUDA" = 1 ]; then
      log "building mmcv $MMCV_VERSION with C++ and CUDA ops ($OPS_TAG) from its sdist (on 2 cores from about 20 min idle to over 2 h under load, see benchmarks/mmcv_cuda_build_cpu.md)"
    else
      log "building mmcv $MMCV_VERSION with C++ ops from its sdist (about 6 to 10 min on 2 idle cores, several times longer under load)"
    fi
    pip_retry download -q --no-deps --no-binary :all: --no-build-isolation \
      "mmcv==$MMCV_VERSION" -d "$SDIST_DIR"
    # Its own process, with the settings resolved above: the same command a machine without a
    # package registry runs with a pre-fetched sdist.
    env PYTHON="$PY" MMEFF_MMCV_CUDA="$MMCV_CUDA" ${ARCH_LIST:+"TORCH_CUDA_ARCH_LIST=$ARCH_LIST"} \
      ${CUDA_HOME:+"CUDA_HOME=$CUDA_HOME"} \
      bash "$ROOT/tools/build_mmcv.sh" "$SDIST_DIR/mmcv-$MMCV_VERSION.tar.gz" "$WHEELHOUSE"
  else
    log "reusing cached mmcv wheel from $WHEELHOUSE"
  fi
  "${PIP[@]}" install -q --no-deps --force-reinstall "$WHEELHOUSE"/mmcv-"$MMCV_VERSION"-*.whl
  echo "$OPS_TAG" > "$OPS_NOTE"
fi

log "installing pinned requirements and mmeff (editable)"
pip_retry install -q -r "$ROOT/requirements.txt" -c "$CONSTRAINTS"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"

"$PY" -c "import mmcv, mmdet, mmseg, mmeff.models
$MMCV_PROBE
print('mmcv', mmcv.__version__, '(ops: $OPS_TAG' if cuda else '(ops: cpu', end='')
print(') | mmdet', mmdet.__version__, '| mmseg', mmseg.__version__)"
if [ -n "$GPU_PROBLEM" ]; then echo "warning: $GPU_PROBLEM" >&2; fi
log "done: activate with 'source .venv/bin/activate'"
