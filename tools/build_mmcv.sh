#!/usr/bin/env bash
# Build an mmcv wheel with its C++ ops (and its CUDA ops when asked) from mmcv's sdist, against the
# torch of a Python environment. tools/setup_env.sh calls it; it needs no package registry, so a
# machine that has the sdist and a CUDA toolkit (or the nvidia-cuda-* packages) can call it alone.
#
# Usage: bash tools/build_mmcv.sh SDIST OUTDIR   build from SDIST (mmcv-X.Y.Z.tar.gz), then move
#                                                the wheel into OUTDIR (atomically) with its log
#        bash tools/build_mmcv.sh --check        check the settings below, print what would be
#                                                built (ops=cpu or e.g. ops=cu130-sm90), build nothing
# Env:   PYTHON               interpreter of the environment with torch (default: .venv/bin/python
#                             of this repository)
#        MMEFF_MMCV_CUDA      0 (default): C++ ops only; 1: C++ and CUDA ops
#        TORCH_CUDA_ARCH_LIST CUDA architectures to compile for, e.g. "9.0" (H100) or "8.0;9.0"
#                             ("+PTX" after one adds PTX); default: those of the visible GPUs
#        CUDA_HOME            the CUDA toolkit; default: nvcc's on the PATH, /usr/local/cuda, else
#                             the nvidia-cuda-nvcc packages installed in the environment
#        MMEFF_CUDA_TOOLKIT   auto (default): as above; pip: only those packages (nvidia/cu<major>/)
#        MAX_JOBS             parallel compile jobs (default: number of cores)
# Sourced (as tools/setup_env.sh does), it only defines the mmcv_* functions.

# Where a system-wide CUDA toolkit lives (the tests point it elsewhere).
MMCV_SYSTEM_CUDA="${MMCV_SYSTEM_CUDA:-/usr/local/cuda}"
# The error prefix names the script a user ran.
MMCV_ERR="${MMCV_ERR:-build_mmcv.sh: error:}"
mmcv_die() { echo "$MMCV_ERR $*" >&2; exit 1; }

# mmcv_torch_info PY: what the build depends on, from one interpreter start. Sets TORCH_VER,
# TORCH_CUDA (e.g. 13.0; empty for a CPU-only torch), PYTAG (py311), GPU_ARCHS (the visible GPUs'
# compute capabilities, e.g. "8.0;9.0"; empty without a GPU), TORCH_CUDA_WHY (torch's warning
# when it could not initialise CUDA, e.g. a driver too old for its CUDA version) and SITE.
mmcv_torch_info() {
  local out
  out="$("$1" -c '
import sys, sysconfig
import torch
import warnings
caps, why = set(), ""
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    if torch.version.cuda and torch.cuda.is_available():
        caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
for w in seen:  # e.g. "CUDA initialization: The NVIDIA driver on your system is too old ..."
    if "CUDA" in str(w.message) or "driver" in str(w.message):
        why = " ".join(str(w.message).split()).split(". ")[0].rstrip(".")[:300]
        break
print("TORCH_VER=" + torch.__version__.split("+")[0])
print("TORCH_CUDA=" + (torch.version.cuda or ""))
print("PYTAG=py%d%d" % sys.version_info[:2])
print("GPU_ARCHS=" + ";".join("%d.%d" % c for c in sorted(caps)))
print("TORCH_CUDA_WHY=" + why)
print("SITE=" + sysconfig.get_paths()["purelib"])
' 2>&1)" || mmcv_die "cannot import torch with $1 ($(echo "$out" | tail -n 1)): install torch first (bash tools/setup_env.sh does)"
  local line
  TORCH_VER="" TORCH_CUDA="" PYTAG="" GPU_ARCHS="" SITE="" TORCH_CUDA_WHY=""
  while IFS= read -r line; do
    case "$line" in
      TORCH_VER=*) TORCH_VER="${line#*=}" ;;
      TORCH_CUDA=*) TORCH_CUDA="${line#*=}" ;;
      PYTAG=*) PYTAG="${line#*=}" ;;
      GPU_ARCHS=*) GPU_ARCHS="${line#*=}" ;;
      TORCH_CUDA_WHY=*) TORCH_CUDA_WHY="${line#*=}" ;;
      SITE=*) SITE="${line#*=}" ;;
    esac
  done <<< "$out"
  if [ -z "$TORCH_VER" ] || [ -z "$PYTAG" ]; then
    mmcv_die "could not read torch's version with $1 (got: $(echo "$out" | tail -n 1))"
  fi
}

# mmcv_pip_toolkit: sets PIP_TOOLKIT, the registry packages that make a CUDA $TORCH_CUDA compiler
# (nvcc, crt, runtime headers, cccl, nvvm; they install into nvidia/cu<major>/). Returns 1 for a
# CUDA major version the registry has no nvcc for: CUDA 12's nvidia-cuda-nvcc-cu12 (12.0 to 12.9)
# ships ptxas and NVVM only.
mmcv_pip_toolkit() {
  PIP_TOOLKIT=()
  case "$TORCH_CUDA" in
    13.*) PIP_TOOLKIT=("nvidia-cuda-nvcc==$TORCH_CUDA.*" "nvidia-cuda-crt==$TORCH_CUDA.*"
            "nvidia-cuda-runtime==$TORCH_CUDA.*" "nvidia-cuda-cccl==$TORCH_CUDA.*"
            "nvidia-nvvm==$TORCH_CUDA.*") ;;
    *) return 1 ;;
  esac
}

# mmcv_toolkit_fix: what to do when no CUDA $TORCH_CUDA toolkit was found (one sentence).
mmcv_toolkit_fix() {
  if mmcv_pip_toolkit; then
    echo "run tools/setup_env.sh, which installs the CUDA $TORCH_CUDA compiler packages, or pip install $(printf "'%s' " "${PIP_TOOLKIT[@]}" | sed 's/ $//')"
  else
    echo "install a CUDA $TORCH_CUDA toolkit (NVIDIA's cuda-toolkit-${TORCH_CUDA//./-} package or runfile) and set CUDA_HOME to it (the package registry has no nvcc for CUDA ${TORCH_CUDA%%.*}: nvidia-cuda-nvcc-cu${TORCH_CUDA%%.*} ships ptxas and NVVM only), or use torch's CUDA 13 build (pip install torch==$TORCH_VER) with a driver for CUDA 13"
  fi
}

# mmcv_gpu_problem: when nvidia-smi lists GPUs that torch cannot use (a CPU-only torch, a driver
# older than torch's CUDA version...), prints why and the fix, in one line; prints nothing when
# torch sees the GPUs or there are none. Needs mmcv_torch_info first.
mmcv_gpu_problem() {
  [ -z "$GPU_ARCHS" ] || return 0
  command -v nvidia-smi >/dev/null 2>&1 || return 0
  local n driver
  n="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')" || true
  [ "${n:-0}" -gt 0 ] || return 0
  driver="$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)"
  if [ -z "$TORCH_CUDA" ]; then
    echo "nvidia-smi lists $n GPU(s) but torch $TORCH_VER is a CPU-only build: install its CUDA build (pip install --force-reinstall torch==$TORCH_VER, CUDA 13 on Linux) and run bash tools/setup_env.sh again"
  elif [ -n "$driver" ] && [ "${driver%%.*}" -lt "${TORCH_CUDA%%.*}" ]; then
    # (a driver of the same major version runs torch's CUDA: minor version compatibility)
    echo "nvidia-smi lists $n GPU(s) but torch $TORCH_VER cannot use them: it was built with CUDA $TORCH_CUDA and the NVIDIA driver supports CUDA $driver at most${TORCH_CUDA_WHY:+ (torch: $TORCH_CUDA_WHY)}: update the driver (CUDA 13 needs R580 or newer), or install a torch $TORCH_VER built for CUDA ${driver%%.*} (PyTorch's index has one per CUDA version: https://download.pytorch.org/whl/) with a CUDA ${driver%%.*} toolkit (CUDA_HOME), then run bash tools/setup_env.sh again"
  else
    echo "nvidia-smi lists $n GPU(s) but torch $TORCH_VER (CUDA $TORCH_CUDA) cannot use them: ${TORCH_CUDA_WHY:-torch.cuda.is_available() is False}; check CUDA_VISIBLE_DEVICES and that python -c 'import torch; print(torch.cuda.is_available())' prints True, then run bash tools/setup_env.sh again"
  fi
}

# mmcv_choose_ops auto|0|1: sets MMCV_CUDA (1: build the CUDA ops too) and GPU_PROBLEM. auto
# builds them when torch sees a GPU; GPUs it cannot use get a warning (mmcv_gpu_problem) and CPU
# ops, so that the CPU path works. For 1, the checks that need no toolkit run here.
mmcv_choose_ops() {
  GPU_PROBLEM=""
  case "$1" in
    auto) MMCV_CUDA=0
          if [ -n "$TORCH_CUDA" ] && [ -n "$GPU_ARCHS" ]; then MMCV_CUDA=1; fi
          GPU_PROBLEM="$(mmcv_gpu_problem)"
          if [ -n "$GPU_PROBLEM" ]; then echo "warning: $GPU_PROBLEM; mmcv gets CPU ops only for now" >&2; fi ;;
    0|1) MMCV_CUDA="$1" ;;
    *) mmcv_die "MMEFF_MMCV_CUDA must be auto, 0 or 1 (got '$1')" ;;
  esac
  if [ "$MMCV_CUDA" = 1 ]; then mmcv_check_cuda_target; fi
}

# mmcv_toolkit_from_pip: returns 0 when the CUDA compiler must come from the registry (no toolkit
# found, or MMEFF_CUDA_TOOLKIT=pip), with PIP_TOOLKIT and TOOLKIT_WHY set; 1 when a toolkit was
# found; fails with the fix when the registry has no nvcc for torch's CUDA version.
mmcv_toolkit_from_pip() {
  if mmcv_find_cuda_home; then return 1; fi
  TOOLKIT_WHY="no CUDA toolkit found"
  if [ "${MMEFF_CUDA_TOOLKIT:-auto}" = pip ]; then TOOLKIT_WHY="MMEFF_CUDA_TOOLKIT=pip"; fi
  mmcv_pip_toolkit || mmcv_die "$TOOLKIT_WHY for torch's CUDA $TORCH_CUDA: $(mmcv_toolkit_fix)"
}

# mmcv_find_cuda_home: sets CUDA_HOME and NVCC, or returns 1 when there is no toolkit. Order:
# CUDA_HOME, nvcc on the PATH, /usr/local/cuda, the nvidia-cuda-nvcc packages in SITE (they install
# into nvidia/cu<major>/, the folder torch's own CUDA libraries come from); only the last with
# MMEFF_CUDA_TOOLKIT=pip.
mmcv_find_cuda_home() {
  local nvcc home pkg="${SITE:+$SITE/nvidia/cu${TORCH_CUDA%%.*}}"
  case "${MMEFF_CUDA_TOOLKIT:-auto}" in
    auto) ;;
    pip) if [ -n "$pkg" ] && [ -x "$pkg/bin/nvcc" ]; then CUDA_HOME="$pkg"; NVCC="$pkg/bin/nvcc"; export CUDA_HOME; return 0; fi
         return 1 ;;
    *) mmcv_die "MMEFF_CUDA_TOOLKIT must be auto or pip (got '$MMEFF_CUDA_TOOLKIT')" ;;
  esac
  if [ -n "${CUDA_HOME:-}" ]; then
    [ -x "$CUDA_HOME/bin/nvcc" ] || mmcv_die "CUDA_HOME=$CUDA_HOME has no bin/nvcc: point CUDA_HOME at a CUDA toolkit, or unset it"
    NVCC="$CUDA_HOME/bin/nvcc"; return 0
  fi
  if nvcc="$(command -v nvcc)"; then
    # torch guesses CUDA_HOME as nvcc's grandparent folder, which is wrong for a
    # /usr/local/bin/nvcc next to /usr/local/cuda: take the first folder with the headers.
    for home in "$(dirname "$(dirname "$(readlink -f "$nvcc")")")" "$(dirname "$(dirname "$nvcc")")" "$MMCV_SYSTEM_CUDA"; do
      if [ -f "$home/include/cuda_runtime_api.h" ]; then CUDA_HOME="$home"; NVCC="$nvcc"; export CUDA_HOME; return 0; fi
    done
    mmcv_die "nvcc at $nvcc has no CUDA headers (include/cuda_runtime_api.h) beside it: set CUDA_HOME to its toolkit folder"
  fi
  for home in "$MMCV_SYSTEM_CUDA" ${pkg:+"$pkg"}; do
    if [ -x "$home/bin/nvcc" ]; then CUDA_HOME="$home"; NVCC="$home/bin/nvcc"; export CUDA_HOME; return 0; fi
  done
  return 1
}

# mmcv_check_cuda: the checks a CUDA build needs before it starts (each failure is one line that
# names the fix); sets ARCH_LIST (what TORCH_CUDA_ARCH_LIST the build gets) and OPS_TAG
# (cu130-sm80-sm90: the wheel cache key part). Needs mmcv_torch_info first.
mmcv_check_cuda() {
  mmcv_check_cuda_target
  mmcv_find_cuda_home || mmcv_die "no CUDA toolkit found (no nvcc$([ "${MMEFF_CUDA_TOOLKIT:-auto}" = pip ] || echo " under CUDA_HOME, on the PATH, in /usr/local/cuda or") in $SITE/nvidia/cu${TORCH_CUDA%%.*}): $(mmcv_toolkit_fix)"
  mmcv_check_nvcc
}

# mmcv_check_cuda_target: a CUDA build of torch, and architectures to build for (sets ARCH_LIST).
mmcv_check_cuda_target() {
  [ -n "$TORCH_CUDA" ] || mmcv_die "MMEFF_MMCV_CUDA=1 but torch $TORCH_VER has no CUDA support: install a CUDA build of torch, or set MMEFF_MMCV_CUDA=0"
  ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$GPU_ARCHS}"
  if [ -z "$ARCH_LIST" ]; then
    local problem
    problem="$(mmcv_gpu_problem)"
    [ -z "$problem" ] || mmcv_die "$problem (or, to build for GPUs elsewhere, set TORCH_CUDA_ARCH_LIST)"
    mmcv_die "no GPU is visible to pick the CUDA architectures to compile for: set TORCH_CUDA_ARCH_LIST, e.g. TORCH_CUDA_ARCH_LIST='9.0' (H100) or '8.0;9.0' (A100 and H100)"
  fi
}

# mmcv_check_nvcc: nvcc's CUDA version against torch's, ARCH_LIST against what nvcc builds for;
# sets OPS_TAG.
mmcv_check_nvcc() {
  local release
  release="$("$NVCC" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)"
  [ -n "$release" ] || mmcv_die "$NVCC --version does not say its CUDA release: check the toolkit in $CUDA_HOME"
  # torch's extension builder refuses a toolkit of another major version, but only once the
  # compile starts; a different minor version is fine (CUDA minor version compatibility).
  if [ "${release%%.*}" != "${TORCH_CUDA%%.*}" ]; then
    if mmcv_pip_toolkit; then
      mmcv_die "nvcc at $NVCC is CUDA $release but torch $TORCH_VER was built with CUDA $TORCH_CUDA: set CUDA_HOME to a CUDA ${TORCH_CUDA%%.*}.x toolkit, or MMEFF_CUDA_TOOLKIT=pip (tools/setup_env.sh then installs the CUDA $TORCH_CUDA compiler packages into the venv)"
    fi
    mmcv_die "nvcc at $NVCC is CUDA $release but torch $TORCH_VER was built with CUDA $TORCH_CUDA: set CUDA_HOME to a CUDA ${TORCH_CUDA%%.*}.x toolkit (the package registry has no nvcc for CUDA ${TORCH_CUDA%%.*}: nvidia-cuda-nvcc-cu${TORCH_CUDA%%.*} ships ptxas and NVVM only)"
  fi
  local codes arch num tag="" supported
  codes=" $("$NVCC" --list-gpu-code 2>/dev/null | tr '\n' ' ') "
  supported="$(echo "$codes" | tr ' ' '\n' | sed -n 's/^sm_\([0-9]*\)\([0-9]\)$/\1.\2/p' | tr '\n' ' ')"
  for arch in ${ARCH_LIST//;/ }; do
    if ! [[ "$arch" =~ ^([0-9]+)\.([0-9])([af]?)(\+PTX)?$ ]]; then
      mmcv_die "TORCH_CUDA_ARCH_LIST entry '$arch' is not a compute capability: write it as major.minor, e.g. TORCH_CUDA_ARCH_LIST='9.0' (H100) or '8.0;9.0'; nvcc $release builds for: ${supported% }"
    fi
    num="${BASH_REMATCH[1]}${BASH_REMATCH[2]}"
    # nvcc lists the base codes (sm_90); '9.0a' is the arch-specific variant of a listed one.
    if [[ "$codes" != *" sm_$num "* ]]; then
      mmcv_die "CUDA architecture '$arch' is not one nvcc $release can build for: pick from ${supported% } (TORCH_CUDA_ARCH_LIST='9.0' for an H100)"
    fi
    tag="$tag-sm$num${BASH_REMATCH[3]}${BASH_REMATCH[4]:+ptx}"
  done
  OPS_TAG="cu${TORCH_CUDA//./}$tag"
}

# mmcv_check_space DIR MIB WHAT: fail before a build that could not finish for lack of disk space.
mmcv_check_space() {
  local avail
  avail="$(df -Pk "$1" 2>/dev/null | awk 'NR == 2 {print int($4 / 1024)}')"
  if [ -n "$avail" ] && [ "$avail" -lt "$2" ]; then
    mmcv_die "only $avail MiB free in $1, $3 needs about $2 MiB: free some space, or point TMPDIR (build folder) / MMEFF_WHEELHOUSE (wheel cache) elsewhere"
  fi
}

# mmcv_build_env DIR: sets MMCV_BUILD_ENV, the variables (NAME=value) the build runs with; for a
# CUDA build it makes DIR/cuda-lib (see below). MMCV_CUDA and mmcv_check_cuda's results must be set.
mmcv_build_env() {
  local build="$1"
  # No debug info (-g0: ~15x smaller objects, faster link), -O2 instead of Python's -O3.
  MMCV_BUILD_ENV=(CFLAGS="-g0 -O2" CXXFLAGS="-g0 -O2" MAX_JOBS="${MAX_JOBS:-$(nproc)}" MMCV_WITH_OPS=1)
  if [ "$MMCV_CUDA" = 1 ]; then
    # torch links the extension with -L$CUDA_HOME/lib64 (or lib) -lcudart; the nvidia-cuda-runtime
    # package ships only libcudart.so.<major>, so the linker finds nothing: give it a private
    # folder with the unversioned name (the extension still records libcudart.so.<major>, which
    # torch has loaded by then).
    mkdir -p "$build/cuda-lib"
    if [ ! -e "$CUDA_HOME/lib64/libcudart.so" ] && [ ! -e "$CUDA_HOME/lib/libcudart.so" ]; then
      local so="" f
      for f in "$CUDA_HOME"/lib64/libcudart.so.[0-9]* "$CUDA_HOME"/lib/libcudart.so.[0-9]*; do
        if [ -e "$f" ]; then so="$f"; break; fi
      done
      [ -n "$so" ] || mmcv_die "no libcudart.so* under $CUDA_HOME/lib64 or lib: install nvidia-cuda-runtime==$TORCH_CUDA.* or a full CUDA toolkit"
      ln -s "$so" "$build/cuda-lib/libcudart.so"
    fi
    # torch's CUDA headers include cusparse.h & co.; a minimal toolkit (nvcc only) lacks them,
    # while torch's pip dependencies ship them, matching torch's CUDA version.
    local cpath="${CPATH:-}" inc
    if [ ! -f "$CUDA_HOME/include/cusparse.h" ]; then
      for inc in "$SITE"/nvidia/*/include; do
        if [ -f "$inc/cusparse.h" ]; then cpath="$inc${cpath:+:$cpath}"; fi
      done
    fi
    MMCV_BUILD_ENV+=(FORCE_CUDA=1 CUDA_HOME="$CUDA_HOME" TORCH_CUDA_ARCH_LIST="$ARCH_LIST"
          PATH="$CUDA_HOME/bin:$PATH" CPATH="$cpath" LDFLAGS="-L$build/cuda-lib${LDFLAGS:+ $LDFLAGS}")
  else
    # mmcv compiles its CUDA kernels whenever torch sees a GPU: hide them for a C++-only build.
    MMCV_BUILD_ENV+=(FORCE_CUDA=0 CUDA_VISIBLE_DEVICES="")
  fi
}

# mmcv_build SDIST OUTDIR: MMCV_CUDA (0/1) and, for 1, mmcv_check_cuda's results must be set.
mmcv_build() {
  local sdist="$1" outdir="$2" build src log whl name
  [ -f "$sdist" ] || mmcv_die "no mmcv sdist at '$sdist': pass the mmcv-X.Y.Z.tar.gz file (pip download --no-deps --no-binary :all: mmcv==X.Y.Z fetches it)"
  mkdir -p "$outdir" || mmcv_die "cannot create the wheel folder $outdir: pick a writable one"
  build="$(mktemp -d)"
  # The build folder (sources, objects, the unpublished wheel) goes whatever happens; the log
  # stays beside the wheel cache, so a failed build can be read.
  trap 'rm -rf "$build"; rm -f "$outdir"/.mmcv-*.whl.tmp' EXIT
  # Generous: the build folder of the sm_90 CUDA build holds well under 1 GB (see
  # benchmarks/mmcv_cuda_build_cpu.md); pip keeps copies in TMPDIR too.
  if [ "$MMCV_CUDA" = 1 ]; then mmcv_check_space "$build" 2048 "mmcv's CUDA build"; else mmcv_check_space "$build" 1024 "mmcv's C++ build"; fi
  mmcv_check_space "$outdir" 256 "the mmcv wheel"
  tar xzf "$sdist" -C "$build" || mmcv_die "cannot unpack $sdist (a partial download?): delete it and fetch it again"
  src="$(find "$build" -mindepth 2 -maxdepth 2 -name setup.py -printf '%h\n' | head -n 1)"
  [ -n "$src" ] || mmcv_die "$sdist has no setup.py: pass mmcv's source archive (mmcv-X.Y.Z.tar.gz)"
  # torch 2.14's ATen headers refuse anything below C++20 (mmcv issue #3341): both the C++ and
  # the nvcc flags are raised from c++17.
  sed -i "s/'-std=c++17'/'-std=c++20'/g" "$src/setup.py"
  grep -q "c++20" "$src/setup.py" || mmcv_die "could not patch -std in $src/setup.py (not mmcv 2.x?): build the mmcv version tools/setup_env.sh pins"
  mmcv_build_env "$build"
  log="$outdir/build.log"
  echo "building mmcv (ops: ${OPS_TAG:-cpu}, MAX_JOBS=${MAX_JOBS:-$(nproc)}) in $build; log: $log"
  if ! (cd "$src" && env "${MMCV_BUILD_ENV[@]}" "$PY" -m pip --disable-pip-version-check wheel --no-build-isolation --no-deps . -w "$build/dist") > "$log" 2>&1; then
    tail -n 25 "$log" >&2
    if grep -q "No space left on device" "$log"; then
      mmcv_die "the build ran out of disk space in $build: free some space or set TMPDIR to a larger disk, then run it again (full log: $log)"
    fi
    mmcv_die "mmcv's build failed (last lines above, full log: $log); nothing was added to $outdir"
  fi
  for whl in "$build"/dist/mmcv-*.whl; do
    [ -f "$whl" ] || mmcv_die "the build finished without an mmcv wheel in $build/dist (log: $log)"
    name="$(basename "$whl")"
    # Atomic publish into the cache: a killed or failed copy never leaves a half-written wheel.
    cp "$whl" "$outdir/.$name.tmp" || mmcv_die "could not copy the wheel into $outdir (disk full?): free some space and run it again"
    mv "$outdir/.$name.tmp" "$outdir/$name"
    echo "wrote $outdir/$name"
  done
  rm -rf "$build"
  trap - EXIT
}

mmcv_main() {
  set -euo pipefail
  local root check=0
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  case "${1:-}" in
    -h|--help) sed -n '2,/^# Sourced/p' "${BASH_SOURCE[0]}" | sed -e 's/^# \{0,1\}//'; exit 0 ;;
    --check) check=1; shift ;;
  esac
  if { [ "$check" = 1 ] && [ "$#" -ne 0 ]; } || { [ "$check" = 0 ] && [ "$#" -ne 2 ]; }; then
    echo "$MMCV_ERR expected SDIST OUTDIR, or --check alone (got: ${*:-nothing})" >&2
    echo "Usage: bash tools/build_mmcv.sh SDIST OUTDIR | --check   (--help for details)" >&2
    exit 2
  fi
  PY="${PYTHON:-$root/.venv/bin/python}"
  [ -x "$PY" ] || command -v "$PY" >/dev/null 2>&1 || mmcv_die "no Python at $PY: set PYTHON to the interpreter of the environment with torch"
  MMCV_CUDA="${MMEFF_MMCV_CUDA:-0}"
  case "$MMCV_CUDA" in
    0|1) ;;
    *) mmcv_die "MMEFF_MMCV_CUDA must be 0 or 1 (got '$MMCV_CUDA')" ;;
  esac
  mmcv_torch_info "$PY"
  OPS_TAG=cpu
  if [ "$MMCV_CUDA" = 1 ]; then mmcv_check_cuda; fi
  if [ "$check" = 1 ]; then
    echo "ops=$OPS_TAG"
    echo "torch=$TORCH_VER ${PYTAG}"
    if [ "$MMCV_CUDA" = 1 ]; then
      echo "cuda_home=$CUDA_HOME"
      echo "arch_list=$ARCH_LIST"
    fi
    exit 0
  fi
  mmcv_build "$1" "$2"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  mmcv_main "$@"
fi
