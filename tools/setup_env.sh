#!/usr/bin/env bash
# Set up mmeff from nothing: .venv/ at the repo root, torch, mmcv 2.1.0 built from its
# sdist with its C++ ops (cached as a wheel outside the clone), mmengine/mmdet/mmseg, timm.
#
# Usage: bash tools/setup_env.sh            (idempotent; a second run takes seconds)
# Env:   PYTHON           interpreter to build the venv with (default: python3.11, else python3)
#        MMEFF_WHEELHOUSE where the built mmcv wheel is kept (default: ~/.cache/mmeff/wheelhouse)
#        MAX_JOBS         parallel compile jobs for mmcv (default: number of cores)
#        MMEFF_MMCV_CUDA  auto (default): build mmcv's CUDA ops too when nvcc is on the PATH and
#                         torch sees a GPU (what GPU training needs: RoIAlign, NMS... on CUDA
#                         tensors); 1: always (needs nvcc; set TORCH_CUDA_ARCH_LIST when the
#                         build machine has no GPU, e.g. "8.0;9.0"); 0: CPU ops only.
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

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

PYTAG="$("$PY" -c 'import sys; print(f"py{sys.version_info.major}{sys.version_info.minor}")')"
if [ "$PYTAG" != "py311" ]; then
  echo "warning: mmeff is tested on Python 3.11, this venv has $PYTAG" >&2
fi

log "build tools (setuptools<82 keeps pkg_resources, which mmcv's setup.py and mmengine need)"
"${PIP[@]}" install -q -U pip "setuptools>=77.0.3,<82" wheel ninja

if ! "$PY" -c "import torch, torchvision, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  log "installing torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION"
  "${PIP[@]}" install -q "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

# mmcv: no binary wheel exists on the registry; build once, keep the wheel keyed by versions
# (and by the CUDA version its ops were compiled for, or cpu).
MMCV_CUDA="${MMEFF_MMCV_CUDA:-auto}"
if [ "$MMCV_CUDA" = auto ]; then
  MMCV_CUDA=0
  if command -v nvcc >/dev/null 2>&1 && "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    MMCV_CUDA=1
  fi
fi
case "$MMCV_CUDA" in
  0) OPS_TAG=cpu ;;
  1) command -v nvcc >/dev/null 2>&1 || { echo "error: MMEFF_MMCV_CUDA=1 needs nvcc (the CUDA toolkit) on the PATH" >&2; exit 1; }
     OPS_TAG="cu$("$PY" -c 'import torch; print((torch.version.cuda or "none").replace(".", ""))')"
     [ "$OPS_TAG" != cunone ] || { echo "error: MMEFF_MMCV_CUDA=1 but this torch has no CUDA support" >&2; exit 1; }
     if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
       echo "error: no GPU is visible to pick the CUDA architectures to compile for: set TORCH_CUDA_ARCH_LIST, e.g. TORCH_CUDA_ARCH_LIST='8.0;9.0' (A100, H100)" >&2; exit 1
     fi ;;
  *) echo "error: MMEFF_MMCV_CUDA must be auto, 0 or 1 (got '$MMCV_CUDA')" >&2; exit 1 ;;
esac
WHEELHOUSE="${MMEFF_WHEELHOUSE:-$HOME/.cache/mmeff/wheelhouse}/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYTAG-$OPS_TAG"
mkdir -p "$WHEELHOUSE"
# The installed mmcv is kept only if it has the version and the kind of ops wanted (a CPU-only
# build reports its compiling CUDA version as 'not available').
if ! "$PY" -c "
import sys, mmcv, mmcv.ops
cuda = mmcv.ops.get_compiling_cuda_version() != 'not available'
sys.exit(mmcv.__version__ != '$MMCV_VERSION' or cuda != ($MMCV_CUDA == 1))" 2>/dev/null; then
  if ! ls "$WHEELHOUSE"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    BUILD="$(mktemp -d)"
    trap 'rm -rf "$BUILD"' EXIT
    if [ "$MMCV_CUDA" = 1 ]; then
      log "building mmcv $MMCV_VERSION with C++ and CUDA ($OPS_TAG) ops from its sdist (much longer than the CPU build; MAX_JOBS=${MAX_JOBS:-$(nproc)}) in $BUILD"
    else
      log "building mmcv $MMCV_VERSION with C++ ops from its sdist (about 6 to 10 min on 2 idle cores, several times longer under load) in $BUILD"
    fi
    "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation \
      "mmcv==$MMCV_VERSION" -d "$BUILD"
    tar xzf "$BUILD/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD"
    SRC="$BUILD/mmcv-$MMCV_VERSION"
    # torch 2.14's ATen headers refuse anything below C++20 (mmcv issue #3341).
    sed -i "s/'-std=c++17'/'-std=c++20'/g" "$SRC/setup.py"
    grep -q "c++20" "$SRC/setup.py" || { echo "error: could not patch -std in mmcv setup.py" >&2; exit 1; }
    if [ "$MMCV_CUDA" = 1 ]; then
      # torch guesses CUDA_HOME as nvcc's grandparent folder, which is wrong for a
      # /usr/local/bin/nvcc next to /usr/local/cuda: take the first folder with the headers.
      if [ -z "${CUDA_HOME:-}" ]; then
        for home in "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")" /usr/local/cuda; do
          if [ -f "$home/include/cuda_runtime_api.h" ]; then export CUDA_HOME="$home"; break; fi
        done
      fi
      # torch's CUDA headers include cusparse.h & co.; a minimal CUDA toolkit (nvcc only) lacks
      # them, while torch's pip dependencies ship them, matching torch's CUDA version.
      SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
      for inc in "$SITE"/nvidia/*/include; do
        if [ -f "$inc/cusparse.h" ]; then export CPATH="$inc${CPATH:+:$CPATH}"; fi
      done
    fi
    # No debug info (-g0: ~15x smaller objects, faster link), -O2 instead of Python's -O3,
    # ninja with one job per core. FORCE_CUDA=1 adds the CUDA kernels (nvcc gets -std=c++20 too).
    (cd "$SRC" && CFLAGS="-g0 -O2" CXXFLAGS="-g0 -O2" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      MMCV_WITH_OPS=1 FORCE_CUDA="$MMCV_CUDA" \
      "${PIP[@]}" wheel -q --no-build-isolation --no-deps . -w "$BUILD/dist")
    # Atomic publish into the cache: a killed build never leaves a half-written wheel.
    for whl in "$BUILD"/dist/mmcv-*.whl; do
      cp "$whl" "$WHEELHOUSE/.$(basename "$whl").tmp"
      mv "$WHEELHOUSE/.$(basename "$whl").tmp" "$WHEELHOUSE/$(basename "$whl")"
    done
  else
    log "reusing cached mmcv wheel from $WHEELHOUSE"
  fi
  "${PIP[@]}" install -q --no-deps --force-reinstall "$WHEELHOUSE"/mmcv-"$MMCV_VERSION"-*.whl
fi

log "installing pinned requirements and mmeff (editable)"
"${PIP[@]}" install -q -r "$ROOT/requirements.txt"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"

"$PY" -c "import mmcv.ops, mmdet, mmseg, mmeff.models; print('mmcv', mmcv.__version__, '(ops:', mmcv.ops.get_compiling_cuda_version().replace('not available', 'cpu') + ') | mmdet', mmdet.__version__, '| mmseg', mmseg.__version__)"
log "done: activate with 'source .venv/bin/activate'"
