"""tools/build_mmcv.sh (which tools/setup_env.sh runs): its checks before a build, and what a
failed or finished build leaves behind, without compiling anything.

The interpreter, nvcc, the CUDA toolkit folder and ``df`` are stand-ins: ``PYTHON`` points at a
script that answers the one torch query with canned values and plays ``pip wheel`` (writing its
environment and working folder to a file), nvcc answers ``--version`` and ``--list-gpu-code`` as
CUDA 13.0's does. Each test runs the real script in a few hundred milliseconds.
"""
import os
import os.path as osp
import stat
import subprocess
import sys
import tarfile

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SCRIPT = osp.join(ROOT, 'tools', 'build_mmcv.sh')

# What CUDA 13.0's nvcc prints (`nvcc --list-gpu-code`): it dropped Maxwell, Pascal and Volta.
NVCC_13_CODES = 'sm_75 sm_80 sm_86 sm_87 sm_88 sm_89 sm_90 sm_100 sm_110 sm_103 sm_120 sm_121'

FAKE_PYTHON = r'''#!/usr/bin/env bash
if [ "$1" = -c ]; then
  printf 'TORCH_VER=2.14.1\nTORCH_CUDA=%s\nPYTAG=py311\nGPU_ARCHS=%s\nSITE=%s\n' \
    "${FAKE_TORCH_CUDA-13.0}" "${FAKE_GPU_ARCHS:-}" "$FAKE_SITE"
  printf 'TORCH_CUDA_WHY=%s\n' "${FAKE_TORCH_WHY:-}"
  exit 0
fi
# python -m pip ... wheel ... . -w DIST
{ env; echo "PWD_SETUP_PY_CXX20=$(grep -c "'-std=c++20'" setup.py)"; } > "$FAKE_RECORD"
dist="${@: -1}"
mkdir -p "$dist"
case "${FAKE_PIP:-ok}" in
  ok) echo 'a wheel' > "$dist/mmcv-2.1.0-cp311-cp311-linux_x86_64.whl" ;;
  nospace) head -c 4096 /dev/zero > "$dist/mmcv-2.1.0-cp311-cp311-linux_x86_64.whl"
           echo "error: [Errno 28] No space left on device: 'build/temp/roi_align_cuda.o'" \
             >&2
           exit 1 ;;
  fail) echo "mmcv/ops/csrc/pytorch/cuda/nms_cuda.cu(12): error: identifier undefined" >&2
        exit 1 ;;
esac
'''

FAKE_NVCC = r'''#!/usr/bin/env bash
case "$1" in
  --version) R=${FAKE_NVCC_RELEASE:-13.0}; echo "Cuda compilation tools, release $R, V$R.88" ;;
  --list-gpu-code) for c in ''' + NVCC_13_CODES + r'''; do echo "$c"; done ;;
esac
'''


# What nvidia-smi prints on a machine whose driver (R550) supports CUDA 12.4 at most.
FAKE_NVIDIA_SMI = r'''#!/usr/bin/env bash
if [ "${1:-}" = -L ]; then
  echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)"
  echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-2)"
  exit 0
fi
echo "| NVIDIA-SMI 550.54.15  Driver Version: 550.54.15  CUDA Version: ${FAKE_DRIVER_CUDA:-12.4} |"
'''
OLD_DRIVER = ('CUDA initialization: The NVIDIA driver on your system is too old '
              '(found version 12040)')


def _exe(path, text):
    with open(path, 'w') as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


def _toolkit(folder, lib='lib'):
    """A CUDA folder laid out as the nvidia-cuda-* packages install it: bin/nvcc, the runtime
    header, and only the versioned libcudart.so.13."""
    os.makedirs(osp.join(folder, 'bin'))
    os.makedirs(osp.join(folder, 'include'))
    os.makedirs(osp.join(folder, lib))
    _exe(osp.join(folder, 'bin', 'nvcc'), FAKE_NVCC)
    open(osp.join(folder, 'include', 'cuda_runtime_api.h'), 'w').close()
    open(osp.join(folder, 'include', 'cusparse.h'), 'w').close()
    open(osp.join(folder, lib, 'libcudart.so.13'), 'w').close()
    return folder


@pytest.fixture
def env(tmp_path):
    """Environment for the script: stand-in python, a site-packages without CUDA packages, a
    private TMPDIR (to see that the build folder goes), no GPU, torch built with CUDA 13.0."""
    shims = tmp_path / 'shims'
    shims.mkdir()
    _exe(str(tmp_path / 'python'), FAKE_PYTHON)
    (tmp_path / 'site').mkdir()
    (tmp_path / 'tmp').mkdir()
    e = {k: v for k, v in os.environ.items()
         if k not in ('CUDA_HOME', 'CUDA_PATH', 'TORCH_CUDA_ARCH_LIST', 'MMEFF_MMCV_CUDA',
                      'MMEFF_CUDA_TOOLKIT', 'LDFLAGS', 'CPATH', 'MAX_JOBS',
                      'MMCV_SYSTEM_CUDA')}
    e.update(PYTHON=str(tmp_path / 'python'), FAKE_SITE=str(tmp_path / 'site'),
             FAKE_RECORD=str(tmp_path / 'pip_record'), TMPDIR=str(tmp_path / 'tmp'),
             PATH=f'{shims}:{os.environ["PATH"]}', MAX_JOBS='1')
    return e


def run(env, *args, **extra):
    return subprocess.run(['bash', SCRIPT, *args], env={**env, **extra}, capture_output=True,
                          text=True, timeout=60)


def one_error_line(res):
    """The script's verdict: a non-zero exit and one 'error:' line, the last on stderr."""
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert lines, 'no message on stderr'
    assert lines[-1].startswith('build_mmcv.sh: error: '), res.stderr
    return lines[-1]


def sdist(tmp_path):
    """A stand-in mmcv sdist: its setup.py has the '-std=c++17' flags the script patches."""
    src = tmp_path / 'src' / 'mmcv-2.1.0'
    src.mkdir(parents=True)
    (src / 'setup.py').write_text("extra_compile_args['cxx'] = ['-std=c++17']\n"
                                  "extra_compile_args['nvcc'] += ['-std=c++17']\n")
    path = tmp_path / 'mmcv-2.1.0.tar.gz'
    with tarfile.open(path, 'w:gz') as tar:
        tar.add(src, arcname='mmcv-2.1.0')
    return str(path)


def record(tmp_path):
    with open(tmp_path / 'pip_record') as f:
        return dict(line.rstrip('\n').split('=', 1) for line in f if '=' in line)


# --- checks before a build -------------------------------------------------------------------

def test_cpu_check(env):
    res = run(env, '--check')
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == 'ops=cpu'


def test_cuda_without_gpu_or_arch_list(env, tmp_path):
    line = one_error_line(run(env, '--check', MMEFF_MMCV_CUDA='1',
                              CUDA_HOME=_toolkit(str(tmp_path / 'cuda'))))
    assert 'no GPU is visible' in line and "TORCH_CUDA_ARCH_LIST='9.0'" in line


def test_visible_gpus_pick_the_architectures(env, tmp_path):
    res = run(env, '--check', MMEFF_MMCV_CUDA='1', FAKE_GPU_ARCHS='8.0;9.0',
              CUDA_HOME=_toolkit(str(tmp_path / 'cuda')))
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert 'ops=cu130-sm80-sm90' in out and 'arch_list=8.0;9.0' in out


@pytest.mark.parametrize('arch_list, tag', [('9.0', 'cu130-sm90'),
                                            ('8.0;9.0+PTX', 'cu130-sm80-sm90ptx'),
                                            ('9.0a', 'cu130-sm90a')])
def test_named_architectures_key_the_cache(env, tmp_path, arch_list, tag):
    res = run(env, '--check', MMEFF_MMCV_CUDA='1', TORCH_CUDA_ARCH_LIST=arch_list,
              CUDA_HOME=_toolkit(str(tmp_path / 'cuda')))
    assert res.returncode == 0, res.stderr
    assert f'ops={tag}' in res.stdout.splitlines()


@pytest.mark.parametrize('arch, says', [
    ('7.9', "'7.9' is not one nvcc 13.0 can build for: pick from 7.5 8.0"),
    ('7.0', "'7.0' is not one nvcc 13.0 can build for"),  # Volta: dropped in CUDA 13
    ('sm_90', "'sm_90' is not a compute capability: write it as major.minor"),
    ('Hopper', "'Hopper' is not a compute capability"),
])
def test_unsupported_architecture(env, tmp_path, arch, says):
    line = one_error_line(run(env, '--check', MMEFF_MMCV_CUDA='1',
                              TORCH_CUDA_ARCH_LIST=f'8.0;{arch}',
                              CUDA_HOME=_toolkit(str(tmp_path / 'cuda'))))
    assert says in line and '9.0' in line


def test_toolkit_of_another_cuda_major(env, tmp_path):
    line = one_error_line(run(env, '--check', MMEFF_MMCV_CUDA='1', TORCH_CUDA_ARCH_LIST='9.0',
                              FAKE_NVCC_RELEASE='12.4', CUDA_HOME=_toolkit(str(tmp_path / 'cuda'))))
    assert 'is CUDA 12.4 but torch 2.14.1 was built with CUDA 13.0' in line
    assert 'MMEFF_CUDA_TOOLKIT=pip' in line


def test_toolkit_of_another_minor_is_accepted(env, tmp_path):
    res = run(env, '--check', MMEFF_MMCV_CUDA='1', TORCH_CUDA_ARCH_LIST='9.0',
              FAKE_NVCC_RELEASE='13.2', CUDA_HOME=_toolkit(str(tmp_path / 'cuda')))
    assert res.returncode == 0, res.stderr


def test_cpu_only_torch(env):
    line = one_error_line(run(env, '--check', MMEFF_MMCV_CUDA='1', FAKE_TORCH_CUDA=''))
    assert 'torch 2.14.1 has no CUDA support' in line and 'MMEFF_MMCV_CUDA=0' in line


def test_cuda_home_without_nvcc(env, tmp_path):
    line = one_error_line(run(env, '--check', MMEFF_MMCV_CUDA='1', TORCH_CUDA_ARCH_LIST='9.0',
                              CUDA_HOME=str(tmp_path)))
    assert f'CUDA_HOME={tmp_path} has no bin/nvcc' in line


def test_nvcc_on_the_path_gives_cuda_home(env, tmp_path):
    home = _toolkit(str(tmp_path / 'cuda'))
    res = run(env, '--check', MMEFF_MMCV_CUDA='1', TORCH_CUDA_ARCH_LIST='9.0',
              PATH=f'{home}/bin:{env["PATH"]}')
    assert res.returncode == 0, res.stderr
    assert f'cuda_home={home}' in res.stdout.splitlines()


def test_pip_toolkit_missing_and_found(env, tmp_path):
    line = one_error_line(run(env, '--check', MMEFF_MMCV_CUDA='1', TORCH_CUDA_ARCH_LIST='9.0',
                              MMEFF_CUDA_TOOLKIT='pip'))
    assert "no CUDA toolkit found (no nvcc in" in line and "'nvidia-cuda-nvcc==13.0.*'" in line
    home = _toolkit(str(tmp_path / 'site' / 'nvidia' / 'cu13'))
    res = run(env, '--check', MMEFF_MMCV_CUDA='1', TORCH_CUDA_ARCH_LIST='9.0',
              MMEFF_CUDA_TOOLKIT='pip')
    assert res.returncode == 0, res.stderr
    assert f'cuda_home={home}' in res.stdout.splitlines()


@pytest.mark.parametrize('args, says', [((), 'expected SDIST OUTDIR'),
                                        (('--check', 'x'), 'expected SDIST OUTDIR')])
def test_usage_errors(env, args, says):
    res = run(env, *args)
    assert res.returncode == 2 and says in res.stderr


def test_bad_switch_values(env):
    assert "MMEFF_MMCV_CUDA must be 0 or 1 (got 'yes')" in one_error_line(
        run(env, '--check', MMEFF_MMCV_CUDA='yes'))


# --- the build: environment, failures, publishing --------------------------------------------

def test_cuda_build_links_against_the_versioned_runtime(env, tmp_path):
    """torch links with -L$CUDA_HOME/lib -lcudart; the runtime package ships only
    libcudart.so.13: the build gets a folder with the unversioned name through LDFLAGS."""
    home = _toolkit(str(tmp_path / 'cuda'))
    out = tmp_path / 'wheels'
    res = run(env, sdist(tmp_path), str(out), MMEFF_MMCV_CUDA='1', TORCH_CUDA_ARCH_LIST='9.0',
              CUDA_HOME=home, LDFLAGS='-Wl,--as-needed')
    assert res.returncode == 0, res.stderr
    seen = record(tmp_path)
    assert seen['FORCE_CUDA'] == '1' and seen['TORCH_CUDA_ARCH_LIST'] == '9.0'
    assert seen['CUDA_HOME'] == home and seen['PATH'].startswith(f'{home}/bin:')
    assert seen['PWD_SETUP_PY_CXX20'] == '2'
    private, user = seen['LDFLAGS'].split(' ', 1)
    assert private.startswith('-L') and user == '-Wl,--as-needed'
    # The build folder (and the private lib folder in it) went with the build.
    assert not os.listdir(tmp_path / 'tmp')
    assert sorted(os.listdir(out)) == ['build.log', 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl']


def test_cuda_build_env_symlink(env, tmp_path):
    home = _toolkit(str(tmp_path / 'cuda'))
    keep = tmp_path / 'keep'
    script = (f'source {SCRIPT}; PY="$PYTHON"; MMCV_CUDA=1; mmcv_torch_info "$PY"; '
              f'mmcv_check_cuda; mmcv_build_env {keep}; printf "%s\\n" "${{MMCV_BUILD_ENV[@]}}"')
    res = subprocess.run(['bash', '-c', script], capture_output=True, text=True, timeout=60,
                         env={**env, 'CUDA_HOME': home, 'TORCH_CUDA_ARCH_LIST': '9.0'})
    assert res.returncode == 0, res.stderr
    assert f'LDFLAGS=-L{keep}/cuda-lib' in res.stdout.splitlines()
    assert os.readlink(keep / 'cuda-lib' / 'libcudart.so') == f'{home}/lib/libcudart.so.13'


def test_cpp_build_hides_gpus(env, tmp_path):
    res = run(env, sdist(tmp_path), str(tmp_path / 'wheels'), FAKE_GPU_ARCHS='9.0')
    assert res.returncode == 0, res.stderr
    seen = record(tmp_path)
    assert seen['FORCE_CUDA'] == '0' and seen['CUDA_VISIBLE_DEVICES'] == ''


@pytest.mark.parametrize('outcome, says', [
    ('nospace', 'the build ran out of disk space in'),
    ('fail', "mmcv's build failed (last lines above, full log:"),
])
def test_failed_build_leaves_no_wheel(env, tmp_path, outcome, says):
    out = tmp_path / 'wheels'
    (out).mkdir()
    res = run(env, sdist(tmp_path), str(out), FAKE_PIP=outcome, MMEFF_MMCV_CUDA='1',
              TORCH_CUDA_ARCH_LIST='9.0', CUDA_HOME=_toolkit(str(tmp_path / 'cuda')))
    line = one_error_line(res)
    assert says in line
    if outcome == 'nospace':
        assert 'set TMPDIR to a larger disk' in line
    assert os.listdir(out) == ['build.log']      # the log, no wheel, no temporary file
    assert not os.listdir(tmp_path / 'tmp')      # nor the build folder


def test_too_little_disk_stops_before_the_build(env, tmp_path):
    _exe(str(tmp_path / 'shims' / 'df'),
         '#!/usr/bin/env bash\necho "Filesystem 1024-blocks Used Available Capacity Mounted on"\n'
         'echo "/dev/x 9999999 9000000 512000 95% /"\n')
    res = run(env, sdist(tmp_path), str(tmp_path / 'wheels'), MMEFF_MMCV_CUDA='1',
              TORCH_CUDA_ARCH_LIST='9.0', CUDA_HOME=_toolkit(str(tmp_path / 'cuda')))
    line = one_error_line(res)
    assert "only 500 MiB free in" in line and "mmcv's CUDA build needs about" in line
    assert not osp.exists(tmp_path / 'pip_record')
    assert not os.listdir(tmp_path / 'tmp')


def test_missing_sdist(env, tmp_path):
    line = one_error_line(run(env, str(tmp_path / 'nope.tar.gz'), str(tmp_path / 'wheels')))
    assert f"no mmcv sdist at '{tmp_path}/nope.tar.gz'" in line


# --- GPU machines without a usable toolkit or torch (what tools/setup_env.sh decides) ----------

def no_toolkit(env, tmp_path):
    """This machine has a CUDA toolkit (/usr/local/cuda, nvcc in /usr/local/bin); a driver-only
    GPU machine has none: no nvcc on the PATH and no system CUDA folder."""
    return {**env, 'PATH': f'{tmp_path / "shims"}:/usr/bin:/bin',
            'MMCV_SYSTEM_CUDA': str(tmp_path / 'no-cuda')}


def source(env, commands):
    """Runs COMMANDS after sourcing build_mmcv.sh (as tools/setup_env.sh does) and reading the
    stand-in torch; returns the finished process."""
    script = (f'set -euo pipefail; source {SCRIPT}; PY="$PYTHON"; mmcv_torch_info "$PY"; '
              + commands)
    return subprocess.run(['bash', '-c', script], capture_output=True, text=True, timeout=60,
                          env=env)


def test_gpus_torch_cannot_use_get_cpu_ops_and_the_fix(env, tmp_path):
    """A driver older than torch's CUDA: torch sees no GPU, so auto builds CPU ops; the set-up
    says so with the driver's and torch's CUDA versions and both fixes."""
    _exe(str(tmp_path / 'shims' / 'nvidia-smi'), FAKE_NVIDIA_SMI)
    res = source({**env, 'FAKE_TORCH_WHY': OLD_DRIVER},
                 'mmcv_choose_ops auto; echo "MMCV_CUDA=$MMCV_CUDA"')
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ['MMCV_CUDA=0']
    warning = res.stderr.strip()
    assert warning.startswith('warning: nvidia-smi lists 2 GPU(s) but torch 2.14.1 cannot use')
    assert 'built with CUDA 13.0 and the NVIDIA driver supports CUDA 12.4 at most' in warning
    assert f'(torch: {OLD_DRIVER})' in warning
    assert 'update the driver (CUDA 13 needs R580 or newer)' in warning
    assert 'torch 2.14.1 built for CUDA 12' in warning and 'download.pytorch.org/whl/' in warning
    assert warning.endswith('mmcv gets CPU ops only for now')
    # Forcing the CUDA build there, without naming architectures: one line with the same fix.
    line = one_error_line(run(env, '--check', MMEFF_MMCV_CUDA='1', FAKE_TORCH_WHY=OLD_DRIVER,
                              CUDA_HOME=_toolkit(str(tmp_path / 'cuda'))))
    assert 'the NVIDIA driver supports CUDA 12.4 at most' in line
    assert 'set TORCH_CUDA_ARCH_LIST' in line


def test_gpus_with_a_cpu_only_torch(env, tmp_path):
    _exe(str(tmp_path / 'shims' / 'nvidia-smi'), FAKE_NVIDIA_SMI)
    res = source({**env, 'FAKE_TORCH_CUDA': ''}, 'mmcv_choose_ops auto; echo "$MMCV_CUDA"')
    assert res.returncode == 0 and res.stdout.split() == ['0'], res.stderr
    assert 'torch 2.14.1 is a CPU-only build' in res.stderr
    assert 'pip install --force-reinstall torch==2.14.1' in res.stderr


def test_gpus_torch_uses_or_none_at_all_say_nothing(env, tmp_path):
    # No nvidia-smi (this CPU machine, CI): CPU ops, nothing said.
    res = source(env, 'mmcv_choose_ops auto; echo "$MMCV_CUDA"')
    assert res.returncode == 0 and res.stdout.split() == ['0'] and not res.stderr, res.stderr
    # GPUs torch sees: the CUDA ops, nothing said.
    _exe(str(tmp_path / 'shims' / 'nvidia-smi'), FAKE_NVIDIA_SMI)
    res = source({**env, 'FAKE_GPU_ARCHS': '9.0', 'FAKE_DRIVER_CUDA': '13.0'},
                 'mmcv_choose_ops auto; echo "$MMCV_CUDA $ARCH_LIST"')
    assert res.returncode == 0 and res.stdout.split() == ['1', '9.0'], res.stderr
    assert not res.stderr


def test_driver_only_machine_gets_the_cuda13_packages(env, tmp_path):
    """No toolkit anywhere, torch built with CUDA 13.0: the registry's compiler packages."""
    res = source({**no_toolkit(env, tmp_path), 'FAKE_GPU_ARCHS': '9.0'},
                 'mmcv_choose_ops auto; mmcv_toolkit_from_pip; echo "$TOOLKIT_WHY"; '
                 'printf "%s\\n" "${PIP_TOOLKIT[@]}"')
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out[0] == 'no CUDA toolkit found'
    assert out[1:] == [f'{name}==13.0.*' for name in (
        'nvidia-cuda-nvcc', 'nvidia-cuda-crt', 'nvidia-cuda-runtime', 'nvidia-cuda-cccl',
        'nvidia-nvvm')]
    # A toolkit on the machine: none from the registry.
    res = source({**env, 'CUDA_HOME': _toolkit(str(tmp_path / 'cuda')), 'FAKE_GPU_ARCHS': '9.0'},
                 'mmcv_choose_ops auto; if mmcv_toolkit_from_pip; then echo pip; else echo own; fi')
    assert res.returncode == 0 and res.stdout.split() == ['own'], res.stderr


def test_cuda12_torch_without_a_toolkit(env, tmp_path):
    """The registry has no nvcc for CUDA 12 (nvidia-cuda-nvcc-cu12 ships ptxas and NVVM only):
    set-up stops before downloading anything, naming the toolkit to install."""
    res = source({**no_toolkit(env, tmp_path), 'FAKE_TORCH_CUDA': '12.8', 'MMCV_ERR': 'error:',
                  'FAKE_GPU_ARCHS': '9.0'},
                 'mmcv_choose_ops auto; mmcv_toolkit_from_pip; echo reached')
    assert res.returncode != 0 and 'reached' not in res.stdout
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("error: no CUDA toolkit found for torch's CUDA 12.8: install a CUDA "
                           "12.8 toolkit (NVIDIA's cuda-toolkit-12-8 package")
    assert 'set CUDA_HOME to it' in line and 'no nvcc for CUDA 12' in line
    # build_mmcv.sh alone says the same.
    line = one_error_line(run(no_toolkit(env, tmp_path), '--check', MMEFF_MMCV_CUDA='1',
                              TORCH_CUDA_ARCH_LIST='9.0', FAKE_TORCH_CUDA='12.8'))
    assert "cuda-toolkit-12-8" in line and 'nvidia-cuda-nvcc==' not in line


def test_cuda12_torch_with_a_cuda13_toolkit(env, tmp_path):
    line = one_error_line(run(env, '--check', MMEFF_MMCV_CUDA='1', TORCH_CUDA_ARCH_LIST='9.0',
                              FAKE_TORCH_CUDA='12.8', CUDA_HOME=_toolkit(str(tmp_path / 'cuda'))))
    assert 'is CUDA 13.0 but torch 2.14.1 was built with CUDA 12.8' in line
    assert 'set CUDA_HOME to a CUDA 12.x toolkit' in line and 'MMEFF_CUDA_TOOLKIT=pip' not in line


def test_torch_query_reports_why_cuda_failed(tmp_path):
    """mmcv_torch_info's own Python (not the stand-in): a torch whose CUDA initialisation warns,
    as torch does with a driver older than its CUDA, reports the warning's first sentence."""
    fake = tmp_path / 'fake' / 'torch'
    fake.mkdir(parents=True)
    (fake / '__init__.py').write_text(
        'import warnings, types\n'
        '__version__ = "2.14.1+cu130"\n'
        'version = types.SimpleNamespace(cuda="13.0")\n'
        'def _available():\n'
        f'    warnings.warn("{OLD_DRIVER}. Please update your GPU driver by downloading '
        'and installing a new version")\n'
        '    return False\n'
        'cuda = types.SimpleNamespace(is_available=_available)\n')
    res = subprocess.run(
        ['bash', '-c', f'source {SCRIPT}; mmcv_torch_info {sys.executable}; '
                       'echo "$TORCH_VER|$TORCH_CUDA|$GPU_ARCHS|$TORCH_CUDA_WHY"'],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, 'PYTHONPATH': str(tmp_path / 'fake')})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f'2.14.1|13.0||{OLD_DRIVER}'
