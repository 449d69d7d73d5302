"""The package metadata of pyproject.toml: it builds (a wheel of mmeff alone, with its
version, license and dependencies), the version is written once (mmeff/version.py), and the
dependencies accept the stack tools/setup_env.sh installs."""
import os.path as osp
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='module')
def pyproject():
    with open(osp.join(ROOT, 'pyproject.toml'), 'rb') as f:
        return tomllib.load(f)


def _requirements(pyproject):
    project = pyproject['project']
    reqs = [Requirement(r) for r in project['dependencies']]
    for extra in project['optional-dependencies'].values():
        reqs += [Requirement(r) for r in extra]
    return {r.name.lower(): r for r in reqs}


def _pins():
    """What tools/setup_env.sh installs: the versions it sets (torch, torchvision, mmcv) and
    requirements.txt's ``==`` pins."""
    with open(osp.join(ROOT, 'tools', 'setup_env.sh')) as f:
        script = f.read()
    pins = {name: re.search(rf'^{var}=(\S+)$', script, re.M).group(1)
            for name, var in (('torch', 'TORCH_VERSION'), ('torchvision', 'TORCHVISION_VERSION'),
                              ('mmcv', 'MMCV_VERSION'))}
    with open(osp.join(ROOT, 'requirements.txt')) as f:
        for line in f:
            line = line.split('#')[0].strip()
            if '==' in line:
                req = Requirement(line)
                pins[req.name.lower()] = next(iter(req.specifier)).version
    return pins


def test_dependencies_accept_the_installed_stack(pyproject):
    reqs, pins = _requirements(pyproject), _pins()
    for name in ('torch', 'torchvision', 'mmcv', 'mmengine', 'timm', 'mmdet', 'mmsegmentation',
                 'ruff', 'mmpretrain'):
        assert name in reqs, f'pyproject.toml does not declare {name}'
        assert name in pins, f'tools/setup_env.sh / requirements.txt pin no {name}'
        assert reqs[name].specifier.contains(pins[name], prereleases=True), \
            f'pyproject.toml asks for {reqs[name]}, setup installs {name}=={pins[name]}'
    # mmcv: the range mmdet 3.3 and mmseg 1.2 accept (both assert mmcv < 2.2.0)
    assert not reqs['mmcv'].specifier.contains('2.2.0')



def _constraints():
    pins = {}
    with open(osp.join(ROOT, 'constraints.txt')) as f:
        for line in f:
            line = line.split('#')[0].strip()
            if line:
                req = Requirement(line)
                spec = list(req.specifier)
                assert len(spec) == 1 and spec[0].operator == '==', \
                    f'constraints.txt: {line!r} is not an exact pin (name==version)'
                pins[req.name.lower().replace('_', '-')] = spec[0].version
    return pins


def test_constraints_pin_the_whole_stack():
    """constraints.txt (what setup installs everything at) pins every requirement of
    requirements.txt and every build tool set-up installs, at the versions they ask for: an
    unpinned package would take whatever the registry has that day (an opencv 5.1 release
    arriving between two CI runs, say)."""
    constraints, pins = _constraints(), _pins()
    with open(osp.join(ROOT, 'requirements.txt')) as f:
        names = [Requirement(line.split('#')[0].strip()) for line in f
                 if line.split('#')[0].strip()]
    for req in names:
        name = req.name.lower().replace('_', '-')
        assert name in constraints, f'constraints.txt pins no {name} (requirements.txt asks for it)'
        assert req.specifier.contains(constraints[name], prereleases=True), \
            f'requirements.txt asks for {req}, constraints.txt pins {name}=={constraints[name]}'
    for name, version in pins.items():
        assert constraints.get(name) == version, \
            f'setup installs {name}=={version}, constraints.txt pins {constraints.get(name)}'
    for tool in ('pip', 'setuptools', 'wheel', 'ninja'):
        assert tool in constraints, f'constraints.txt pins no {tool} (setup_env.sh installs it)'


def test_setup_installs_through_the_constraints_with_retries():
    """Every install from the registry goes through pip_retry with constraints.txt (but the CUDA
    compiler packages, whose version follows the torch build found); only local installs with
    --no-deps (the mmcv wheel, mmeff itself) call pip directly."""
    with open(osp.join(ROOT, 'tools', 'setup_env.sh')) as f:
        script = f.read()
    installs = re.findall(r'^\s*(\S+)\s+install\b(.*)$', script, re.M)
    assert installs
    for command, args in installs:
        if '--no-deps' in args:
            continue
        assert command == 'pip_retry', f'a pip install outside pip_retry: {command} install{args}'
        if '"${PIP_TOOLKIT[@]}"' in args:  # tools/build_mmcv.sh's mmcv_pip_toolkit
            continue
        assert '-c "$CONSTRAINTS"' in args, f'installs without constraints.txt: install{args}'
    assert re.search(r'^\s*pip_retry download ', script, re.M)

def test_metadata_names_the_variants_and_the_license(pyproject):
    project = pyproject['project']
    assert project['name'] == 'mmeff'
    assert 'L1/L3/L7' in project['description'] and 'EfficientFormerV2' in project['description']
    assert project['license'] == 'Apache-2.0' and project['license-files'] == ['LICENSE']
    with open(osp.join(ROOT, 'LICENSE')) as f:
        text = f.read()
    assert 'Apache License' in text and 'Version 2.0, January 2004' in text
    assert 'END OF TERMS AND CONDITIONS' in text


def test_the_version_is_written_once(pyproject):
    import mmeff
    import mmeff.version
    assert pyproject['project']['dynamic'] == ['version']
    assert pyproject['tool']['setuptools']['dynamic']['version'] == {
        'attr': 'mmeff.version.__version__'}
    assert mmeff.__version__ == mmeff.version.__version__
    for path in ('mmeff/__init__.py', 'setup.py'):
        if osp.isfile(osp.join(ROOT, path)):
            with open(osp.join(ROOT, path)) as f:
                assert not re.search(r'''version_*\s*=\s*['"]\d''', f.read()), \
                    f'{path} writes a version of its own: read mmeff/version.py'


def test_the_wheel_builds(tmp_path):
    """setuptools builds a wheel from a copy of the sources (as ``pip install .`` does, here
    without build isolation: the registry is not needed), holding mmeff and nothing else."""
    import mmeff.version
    src = tmp_path / 'src'
    src.mkdir()
    for name in ('pyproject.toml', 'LICENSE', 'README.md'):
        shutil.copy(osp.join(ROOT, name), src / name)
    shutil.copytree(osp.join(ROOT, 'mmeff'), src / 'mmeff',
                    ignore=shutil.ignore_patterns('__pycache__'))
    code = ('import sys, setuptools.build_meta as b; '
            'print(b.build_wheel(sys.argv[1]))')
    proc = subprocess.run([sys.executable, '-c', code, str(tmp_path / 'dist')], cwd=src,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = proc.stdout.strip().splitlines()[-1]
    assert name == f'mmeff-{mmeff.version.__version__}-py3-none-any.whl', name
    with zipfile.ZipFile(tmp_path / 'dist' / name) as wheel:
        files = wheel.namelist()
        info = f'mmeff-{mmeff.version.__version__}.dist-info'
        metadata = wheel.read(f'{info}/METADATA').decode()
    assert {f.split('/')[0] for f in files} == {'mmeff', info}, sorted(files)
    assert 'mmeff/models/backbones/efficientformer.py' in files
    assert f'{info}/licenses/LICENSE' in files
    assert f'Version: {mmeff.version.__version__}' in metadata
    assert 'License-Expression: Apache-2.0' in metadata
    assert re.search(r'^Requires-Dist: mmcv<2\.2\.0,>=2\.1\.0$', metadata, re.M), metadata
