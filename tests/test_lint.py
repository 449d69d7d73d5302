"""The repository holds up on its own: the lint configuration of pyproject.toml ([tool.ruff])
finds nothing in mmeff/, tools/, tests/ and configs/ (run it yourself with
``.venv/bin/python -m ruff check mmeff tools tests configs``; ``--fix`` repairs most findings),
and no code, script or document points at files a clone does not have."""
import os
import os.path as osp
import re
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CHECKED = ('mmeff', 'tools', 'tests', 'configs')


def ruff(*args, cwd=ROOT):
    """``ruff check`` with this interpreter's ruff (tools/setup_env.sh installs it); no cache
    folder is written into the clone."""
    try:
        import ruff  # noqa: F401
    except ImportError:
        raise AssertionError('ruff is not installed in this environment: run bash '
                             'tools/setup_env.sh (or pip install -r requirements.txt)') from None
    return subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_ruff_finds_nothing():
    proc = ruff(*CHECKED)
    assert proc.returncode == 0, (
        f'ruff check {" ".join(CHECKED)} found problems (fix them, most with --fix):\n'
        f'{proc.stdout[-6000:]}{proc.stderr[-2000:]}')


def test_the_configuration_is_the_one_in_use(tmp_path):
    """The rules of pyproject.toml apply to a file anywhere in the tree: an unused import, a
    comparison to None, a line over 100 characters, an undefined name are reported."""
    src = tmp_path / 'configs' / 'bad.py'
    src.parent.mkdir()
    src.write_text('import os\n\n\ndef f(x):\n    return x == None\n\n\n'
                   f"LONG = '{'x' * 100}'\n" 'print(undefined_name)\n')
    proc = ruff('--config', osp.join(ROOT, 'pyproject.toml'), '--output-format', 'concise',
                'configs', cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = {line.split(': ')[1].split()[0] for line in proc.stdout.splitlines()
             if line.startswith('configs')}
    assert found == {'F401', 'E711', 'E501', 'F821'}, proc.stdout


# Places outside a clone that notes of the development machine once pointed to: a user who
# clones the repository has none of them (cite the public paper, issue or code instead).
OUTSIDE = re.compile(r'\.\./shared/|(?<![\w.])/work/|OPENMMLAB-NOTES|PAPER-V2|/\.library/'
                     r'|STYLE rule')
TEXT_FILES = ('.py', '.sh', '.md', '.toml', '.txt', '.ini', '.cfg')


def _repository_files():
    """The files a clone has (git's view; the working tree without ignored folders when the
    clone's metadata is missing)."""
    proc = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'],
                          cwd=ROOT, capture_output=True, text=True)
    if proc.returncode == 0:
        return proc.stdout.splitlines()
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith('.') and d not in ('work_dirs',
                                                                          '__pycache__')]
        files += [osp.relpath(osp.join(folder, n), ROOT) for n in names]
    return files


def test_nothing_points_outside_the_repository():
    here = osp.relpath(__file__, ROOT)
    found = []
    for rel in _repository_files():
        if not rel.endswith(TEXT_FILES) or rel == here or not osp.isfile(osp.join(ROOT, rel)):
            continue
        with open(osp.join(ROOT, rel), errors='replace') as f:
            for number, line in enumerate(f, 1):
                if OUTSIDE.search(line):
                    found.append(f'{rel}:{number}: {line.strip()[:120]}')
    assert not found, 'references to files outside the repository:\n' + '\n'.join(found)
