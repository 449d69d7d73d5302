"""Command-line behaviour: a user's mistake is one line on stderr and a non-zero exit, the
shell tools answer --help, and the docs' commands and timings hold as written."""
import ast
import glob
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import pytest
import torch

from mmeff.cli import TRACEBACK_ENV, one_line, run

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = sorted(glob.glob(osp.join(ROOT, 'tools', '*.py')))
SCRIPTS = sorted(glob.glob(osp.join(ROOT, 'tools', '*.sh'))) + [osp.join(ROOT, '.ci', 'run')]
DOCS = [osp.join(ROOT, 'README.md')] + sorted(glob.glob(osp.join(ROOT, 'configs', '*',
                                                                 'README.md'))) \
    + sorted(glob.glob(osp.join(ROOT, 'docs', '*.md')))
CLS_CONFIG = 'configs/demo/effformer_l1_in1k_synthetic.py'
SEG_CONFIG = 'configs/demo/fpn_effformer_l1_synthetic.py'


def tool(*args, env=None, timeout=300):
    """Run ``tools/<args[0]>`` with this interpreter; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1', **(env or {}))
    full_env.pop(TRACEBACK_ENV, None)
    for name in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', 'LOCAL_RANK'):
        full_env.pop(name, None)
    return subprocess.run([sys.executable, osp.join('tools', args[0]), *args[1:]], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *needles):
    """Exit status 1, no traceback, and a last stderr line ``<tool>: error: ...`` holding every
    needle."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(r'^\S+\.py: error: ', last), last
    assert f'{TRACEBACK_ENV}=1' in last
    for needle in needles:
        assert needle in last, (needle, last)
    return last


# ---------------------------------------------------------------------------- mmeff.cli.run
def _raise(exc):
    def main():
        raise exc
    return main


@pytest.mark.parametrize('exc,shown', [
    (FileNotFoundError("Config file 'x.py' does not exist"), "Config file 'x.py' does not exist"),
    (ValueError('arch must be one of l1, l3, l7'), 'arch must be one of l1, l3, l7'),
    (KeyError('Foo is not in the mmdet::model registry'),
     'Foo is not in the mmdet::model registry'),
    (TypeError("__init__() got an unexpected keyword argument 'x'"), 'unexpected keyword'),
    (ValueError('Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most '
                'recent call last):\n  File "a.py", line 1\nValueError: bad label'),
     'Caught ValueError in DataLoader worker process 0: ValueError: bad label'),
])
def test_user_error_is_one_line(exc, shown, capsys, monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    assert run(_raise(exc), prog='t.py') == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err
    assert err.startswith('t.py: error: ') and shown in err
    assert f'{TRACEBACK_ENV}=1' in err


def test_checkpoint_error_is_a_user_error(capsys, monkeypatch):
    from mmeff.converters import CheckpointError  # a RuntimeError, not in USER_ERRORS itself
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    assert run(_raise(CheckpointError("'a.pth' is empty (0 bytes)")), prog='t.py') == 1
    assert capsys.readouterr().err.startswith("t.py: error: 'a.pth' is empty")


def test_mmeff_error_classes_are_user_errors(capsys, monkeypatch):
    """mmeff raises its own classes on purpose, whatever builtin they derive from."""
    class RefusedError(RuntimeError):
        pass
    RefusedError.__module__ = 'mmeff.checkpoint'
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    assert run(_raise(RefusedError("'a.pth' was refused")), prog='t.py') == 1
    assert capsys.readouterr().err.startswith("t.py: error: 'a.pth' was refused")


def test_unexpected_error_keeps_its_traceback(capsys, monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    assert run(_raise(RuntimeError('shape mismatch')), prog='t.py') == 1
    err = capsys.readouterr().err
    assert 'Traceback (most recent call last)' in err
    assert err.strip().splitlines()[-1].startswith('t.py: unexpected RuntimeError: shape mismatch')


def _call_a_string():
    handler = 'run'
    return handler()  # the bug tools/run_demo.py once had: a str shadowing a function


def _missing_key():
    return {}['arch']


@pytest.mark.parametrize('main,kind', [(_call_a_string, 'TypeError'), (_missing_key, 'KeyError')])
def test_interpreter_raised_type_and_key_errors_are_bugs(main, kind, capsys, monkeypatch):
    """TypeError/KeyError count as user mistakes only when a ``raise`` statement raised them."""
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    assert run(main, prog='t.py') == 1
    err = capsys.readouterr().err
    assert 'Traceback (most recent call last)' in err
    assert err.strip().splitlines()[-1].startswith(f't.py: unexpected {kind}: ')


def test_registry_config_mistakes_stay_user_errors(capsys, monkeypatch):
    """mmengine's registry re-raises a bad config entry with a ``raise`` statement: one line."""
    import mmeff.models  # noqa: F401
    from mmeff.registry import MODELS

    def bad_kwarg():
        MODELS.build(dict(type='mmeff.EfficientFormer', arch='l1', no_such_arg=1))

    def unknown_type():
        MODELS.build(dict(type='mmeff.NoSuchBackbone'))

    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    for main, needle in ((bad_kwarg, 'no_such_arg'), (unknown_type, 'NoSuchBackbone')):
        assert run(main, prog='t.py') == 1
        err = capsys.readouterr().err
        assert 'Traceback' not in err and err.startswith('t.py: error: ') and needle in err, err


def test_traceback_on_request(monkeypatch):
    monkeypatch.setenv(TRACEBACK_ENV, '1')
    with pytest.raises(FileNotFoundError):
        run(_raise(FileNotFoundError('x')), prog='t.py')


def test_exit_status_from_main(capsys):
    assert run(lambda: 3) == 3
    assert run(lambda: {'metrics': 1}) == 0  # tools return their results; that is success
    assert run(lambda: None) == 0
    assert run(_raise(KeyboardInterrupt()), prog='t.py') == 130
    assert capsys.readouterr().err == 't.py: interrupted\n'
    with pytest.raises(SystemExit):
        run(_raise(SystemExit(2)))  # argparse keeps its own usage message and status
    assert one_line(ValueError('')) == 'ValueError'


@pytest.mark.parametrize('path', TOOLS, ids=osp.basename)
def test_every_tool_ends_through_the_wrapper(path):
    with open(path) as f:
        tree = ast.parse(f.read())
    guard = tree.body[-1]
    assert isinstance(guard, ast.If) and "__name__ == '__main__'" in ast.unparse(guard.test)
    assert ast.unparse(guard).splitlines()[1:] == ['    from mmeff.cli import run',
                                                   '    sys.exit(run(main))'], path
    # The guard binds the module-level name ``run``: a tool's own top-level ``run`` would be
    # replaced by the wrapper before main() calls it (tools/run_demo.py's step runner was, and
    # README's first command died at once with "'str' object is not callable").
    own = [node.name for node in tree.body
           if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == 'run']
    own += [t.id for node in tree.body[:-1] if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name) and t.id == 'run']
    assert not own, f'{path} defines a top-level run, which its __main__ guard shadows'


# ------------------------------------------------------------------ tools, end to end
def test_missing_checkpoint_file(tmp_path):
    proc = tool('convert_checkpoint.py', str(tmp_path / 'nope.pth'), str(tmp_path / 'out.pth'))
    assert_one_line_error(proc, 'nope.pth')


def test_launcher_pytorch_without_torchrun(tmp_path):
    proc = tool('train.py', CLS_CONFIG, '--launcher', 'pytorch', '--work-dir', str(tmp_path))
    assert_one_line_error(proc, 'RANK', 'tools/dist_train.sh', 'torchrun')


def test_resume_with_empty_last_checkpoint(tmp_path):
    from mmeff.datasets import make_imagefolder_dataset
    data = make_imagefolder_dataset(str(tmp_path / 'in1k'), num_classes=2, per_class=(2, 1),
                                    size=32)
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'last_checkpoint').write_text('')
    proc = tool('train.py', CLS_CONFIG, '--resume', '--work-dir', str(work),
                '--cfg-options', f"data_root={data['data_root']}/")
    assert_one_line_error(proc, str(work / 'last_checkpoint'), 'is empty', '--resume')


def _rgb_label_maps(root):
    from PIL import Image
    from mmeff.datasets import make_ade_dataset
    ade = make_ade_dataset(str(root), num_images=(2, 1), size=(64, 64))
    for path in ade['training_labels'] + ade['validation_labels']:
        Image.open(path).convert('RGB').save(path)
    return ade


def test_rgb_label_map_named(tmp_path):
    ade = _rgb_label_maps(tmp_path / 'ade')
    proc = tool('train.py', SEG_CONFIG, '--work-dir', str(tmp_path / 'work'),
                '--cfg-options', f"data_root={ade['data_root']}", 'model.backbone.init_cfg=None')
    assert_one_line_error(proc, sorted(ade['training_labels'])[0], '3 channels', 'mode RGB')


def test_rgb_label_map_in_a_batch(tmp_path):
    """A single RGB file among good ones reaches the training loop: the data check hook names it
    before the loss sees an (H, W, 3) target."""
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData

    from mmeff.segmentation import check_label_range
    ade = _rgb_label_maps(tmp_path / 'ade')
    sample = SegDataSample(metainfo=dict(seg_map_path=ade['training_labels'][0]))
    sample.gt_sem_seg = PixelData(data=torch.zeros(64, 64, 3, dtype=torch.int64))
    with pytest.raises(ValueError) as info:
        check_label_range([sample], num_classes=150)
    assert ade['training_labels'][0] in str(info.value) and '3 channels' in str(info.value)


def test_invalid_annotation_json_named(tmp_path):
    from mmdet.datasets import CocoDataset
    from mmeff.engine import explain_dataset_errors
    ann = tmp_path / 'instances_val2017.json'
    ann.write_text('<html>Not Found</html>')
    (tmp_path / 'val2017').mkdir()
    with pytest.raises(ValueError) as info, explain_dataset_errors():
        CocoDataset(data_root=str(tmp_path), ann_file=ann.name,
                    data_prefix=dict(img='val2017/'), pipeline=[])
    msg = str(info.value)
    assert str(ann) in msg and 'is not valid JSON' in msg and 'line 1, column 1' in msg


@pytest.mark.parametrize('shape,needles,unwanted', [
    ((0, 3, 64, 64), ['empty batch', '(0, 3, 64, 64)'], []),
    ((2, 4, 3, 64, 64), ['5D', 'x.flatten(0, 1)'], ['x[None]']),
    ((3, 64, 64), ['x[None]'], []),
])
def test_backbone_input_rank_and_batch(shape, needles, unwanted):
    from mmeff.models import EfficientFormer
    model = EfficientFormer('l1').eval()
    with pytest.raises(ValueError) as info:
        model(torch.zeros(shape))
    for needle in needles:
        assert needle in str(info.value)
    for needle in unwanted:
        assert needle not in str(info.value)


# ---------------------------------------------------------------------------- shell tools
def bash(*args, env=None, cwd=ROOT):
    return subprocess.run(['bash', *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})))


@pytest.mark.parametrize('script', SCRIPTS, ids=lambda p: osp.relpath(p, ROOT))
@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_shell_help(script, flag, tmp_path):
    # A copy in an empty tree: were --help ignored, the script would find no venv, no tools and
    # (PYTHON=false) no interpreter, and fail fast instead of setting anything up.
    rel = osp.relpath(script, ROOT)
    copy = tmp_path / rel
    copy.parent.mkdir(parents=True)
    shutil.copy(script, copy)
    proc = bash(str(copy), flag, env=dict(PYTHON='false'), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert 'Usage' in proc.stdout or 'usage' in proc.stdout.lower(), proc.stdout
    assert sorted(os.listdir(tmp_path)) == sorted({rel.split('/')[0]}), os.listdir(tmp_path)


@pytest.mark.parametrize('script,args', [
    ('tools/dist_train.sh', []), ('tools/dist_train.sh', ['cfg.py']),
    ('tools/dist_train.sh', ['cfg.py', 'two']),
    ('tools/dist_test.sh', ['cfg.py', 'ckpt.pth']),
    ('tools/slurm_train.sh', ['partition', 'job', 'cfg.py']),
    ('tools/setup_env.sh', ['--yes']), ('tools/gpu_checks.sh', ['a', 'b']), ('.ci/run', ['x']),
])
def test_shell_wrong_arguments(script, args, tmp_path):
    copy = tmp_path / script
    copy.parent.mkdir(parents=True)
    shutil.copy(osp.join(ROOT, script), copy)
    proc = bash(str(copy), *args, env=dict(PYTHON='false'), cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert 'error' in proc.stderr and 'Usage: ' in proc.stderr, proc.stderr
    assert 'unbound variable' not in proc.stderr


@pytest.mark.parametrize('script,args', [
    ('dist_train.sh', ['cfg.py', '2', '--amp']),
    ('dist_test.sh', ['cfg.py', 'ckpt.pth', '2']),
])
def test_launchers_use_the_repo_venv(script, args, tmp_path):
    (tmp_path / 'tools').mkdir()
    shutil.copy(osp.join(ROOT, 'tools', script), tmp_path / 'tools')
    fake = tmp_path / '.venv' / 'bin' / 'python'
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/usr/bin/env bash\necho "venv python $*"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHON'}
    proc = subprocess.run(['bash', str(tmp_path / 'tools' / script), *args], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith('venv python -m torch.distributed.run'), proc.stdout
    assert '--nproc_per_node=2' in proc.stdout and '--launcher pytorch' in proc.stdout


# ------------------------------------------------------------------------------------ docs
def _doc_commands(path):
    """Shell lines of the code blocks (not ``python`` blocks) and inline code spans."""
    with open(path) as f:
        text = f.read()
    lines = []
    for lang, body in re.findall(r'```(\w*)\n(.*?)```', text, flags=re.S):
        if lang not in ('python', 'json', 'text'):
            lines += body.splitlines()
    lines += re.findall(r'`([^`\n]+)`', re.sub(r'```.*?```', '', text, flags=re.S))
    return lines


@pytest.mark.parametrize('path', DOCS, ids=lambda p: osp.relpath(p, ROOT))
def test_doc_commands_use_the_venv_interpreter(path):
    """`python tools/...` fails with "No module named 'mmengine'" wherever `python` is not the
    venv's; every command names the interpreter that setup_env.sh installs into."""
    bare = re.compile(r'(^|[\s$(;&|"])(python3?|pytest)\s+\S')  # a command, not the word
    bad = [line.strip() for line in _doc_commands(path)
           if bare.search(re.sub(r'\.venv/bin/python(\s+-m\s+pytest)?', '', line))]
    assert not bad, f'{osp.relpath(path, ROOT)}: use .venv/bin/python: {bad}'


# A duration (not a per-call latency in ms): "2 min 20 s", "15 s", "about 2 minutes", "21 min".
DURATION = re.compile(r'\b\d+(\.\d+)?\**\s?(min|minutes?|s|seconds?|h|hours?)\b')
MACHINE = re.compile(r'core|CPU|GPU|H200|Mac|iPhone', re.I)
LOAD = re.compile(r'idle|under load|busy', re.I)


@pytest.mark.parametrize('path', DOCS, ids=lambda p: osp.relpath(p, ROOT))
def test_doc_timings_state_their_conditions(path):
    """Every paragraph that gives a duration names the machine and its load, and a file with
    durations says that under load they grow several-fold."""
    with open(path) as f:
        text = re.sub(r'```.*?```', '', f.read(), flags=re.S)  # tool output, code
    paragraphs = [p for p in re.split(r'\n\s*\n', text) if DURATION.search(p)
                  and not p.lstrip().startswith('|')]
    for p in paragraphs:
        assert MACHINE.search(p) and LOAD.search(p), f'{osp.relpath(path, ROOT)}: {p[:300]}'
    if paragraphs:
        assert re.search(r'several[^.]{0,80}under load|under load[^.]{0,80}several', text), path


def test_rgb_label_maps_left_to_a_custom_loader(tmp_path):
    """Only mmseg's LoadAnnotations needs index maps; a pipeline with its own loader may decode
    colour maps itself."""
    from mmeff.engine.diagnostics import check_label_maps
    ade = _rgb_label_maps(tmp_path / 'ade')
    folder = osp.dirname(ade['training_labels'][0])
    check_label_maps(folder, pipeline=[dict(type='LoadImageFromFile'),
                                       dict(type='MyColourMapLoader')])
    with pytest.raises(ValueError, match='3 channels'):
        check_label_maps(folder, pipeline=[dict(type='LoadAnnotations')])
