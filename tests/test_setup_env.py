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
                      'MMEFF_CUDA_TOOLKIT', 'LDFLAGS', 'CPATH', 'MAX_JOBS')}
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
