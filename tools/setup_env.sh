#!/usr/bin/env bash
# Set up mmeff from nothing: .venv/ at the repo root, torch, mmcv 2.1.0 built from its
# sdist with its C++ ops (cached as a wheel outside the clone), mmengine/mmdet/mmseg, timm.
#
# Usage: bash tools/setup_env.sh            (idempotent; a second run takes seconds)
# Env:   PYTHON           interpreter to build the venv with (default: python3.11, else python3)
#        MMEFF_WHEELHOUSE where the built mmcv wheel is kept (default: ~/.cache/mmeff/wheelhouse)
#        MAX_JOBS         parallel compile jobs for mmcv (default: number of cores)
set -euo pipefail

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

# mmcv: no binary wheel exists on the registry; build once, keep the wheel keyed by versions.
WHEELHOUSE="${MMEFF_WHEELHOUSE:-$HOME/.cache/mmeff/wheelhouse}/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$PYTAG-cpu"
mkdir -p "$WHEELHOUSE"
if ! "$PY" -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
  if ! ls "$WHEELHOUSE"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    BUILD="$(mktemp -d)"
    trap 'rm -rf "$BUILD"' EXIT
    log "building mmcv $MMCV_VERSION with C++ ops from its sdist (about 10 min on 2 cores) in $BUILD"
    "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation \
      "mmcv==$MMCV_VERSION" -d "$BUILD"
    tar xzf "$BUILD/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD"
    SRC="$BUILD/mmcv-$MMCV_VERSION"
    # torch 2.14's ATen headers refuse anything below C++20 (mmcv issue #3341).
    sed -i "s/'-std=c++17'/'-std=c++20'/g" "$SRC/setup.py"
    grep -q "c++20" "$SRC/setup.py" || { echo "error: could not patch -std in mmcv setup.py" >&2; exit 1; }
    # No debug info (-g0: ~15x smaller objects, faster link), -O2 instead of Python's -O3,
    # ninja with one job per core. FORCE_CUDA unset: CPU ops only.
    (cd "$SRC" && CFLAGS="-g0 -O2" CXXFLAGS="-g0 -O2" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      MMCV_WITH_OPS=1 "${PIP[@]}" wheel -q --no-build-isolation --no-deps . -w "$BUILD/dist")
    # Atomic publish into the cache: a killed build never leaves a half-written wheel.
    for whl in "$BUILD"/dist/mmcv-*.whl; do
      cp "$whl" "$WHEELHOUSE/.$(basename "$whl").tmp"
      mv "$WHEELHOUSE/.$(basename "$whl").tmp" "$WHEELHOUSE/$(basename "$whl")"
    done
  else
    log "reusing cached mmcv wheel from $WHEELHOUSE"
  fi
  "${PIP[@]}" install -q --no-deps "$WHEELHOUSE"/mmcv-"$MMCV_VERSION"-*.whl
fi

log "installing pinned requirements and mmeff (editable)"
"${PIP[@]}" install -q -r "$ROOT/requirements.txt"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"

"$PY" -c "import mmcv.ops, mmdet, mmseg, mmeff.models; print('mmcv', mmcv.__version__, '| mmdet', mmdet.__version__, '| mmseg', mmseg.__version__)"
log "done: activate with 'source .venv/bin/activate'"
