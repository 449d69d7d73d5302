"""Weights files and exports under bad inputs and faults: files that would run code, random
bytes and text given as checkpoints, exports that fail or are killed over a good file, export
sizes no machine can hold, CUDA asked for without a GPU, a V1 checkpoint given to a V2 config,
detectors that find nothing, and the hub offline. Each case names the file or value and the
fix in one line, and nothing the user had is lost."""
import os
import os.path as osp
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from mmeff.checkpoint import (UNSAFE_ENV, CheckpointError, CheckpointMismatchError,
                              UnsafeCheckpointError, read_checkpoint_file)
from mmeff.cli import TRACEBACK_ENV, check_device, run
from mmeff.models import EfficientFormer

from helpers import load_tool, timm_efficientformer

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_ARCH = dict(depths=[1, 1, 1, 1], widths=[8, 16, 24, 32], num_vit=1)
L1_TIMM = 'efficientformer_l1.snap_dist_in1k'


class MakesDirectory:
    """A pickled object whose unpickling creates a directory: the payload of a weights file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def tool_env(tmp_path, **extra):
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1',
               HF_HOME=str(tmp_path / 'hf'), TORCH_HOME=str(tmp_path / 'torch'), **extra)
    for name in (TRACEBACK_ENV, UNSAFE_ENV):
        env.pop(name, None)
    return env


def run_tool(name, args, env, timeout=300):
    return subprocess.run([sys.executable, osp.join('tools', name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(stderr):
    return [ln for ln in stderr.splitlines() if ': error: ' in ln]


def run_main(main, argv, capsys, monkeypatch):
    """``mmeff.cli.run`` of a tool's main as its ``__main__`` does; (status, stderr)."""
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    status = run(main, argv, prog='tool.py')
    return status, capsys.readouterr().err


# ---------------------------------------------------------------------------- item 1: no code
def test_timm_weights_file_with_a_payload_is_refused(tmp_path, capsys, monkeypatch):
    """Valid L1 weights plus a payload: the converter refuses the file and the payload does not
    run (timm's own loader unpickles with weights_only=False and ran it)."""
    from mmeff.converters.timm_hub import load_timm_pretrained
    monkeypatch.delenv(UNSAFE_ENV, raising=False)
    marker = tmp_path / 'payload_ran'
    weights = tmp_path / 'efficientformer_l1.pth'
    sd = timm_efficientformer('l1', seed=3).state_dict()
    torch.save({'state_dict': sd, 'extra': MakesDirectory(marker)}, weights)
    with pytest.raises(UnsafeCheckpointError, match=f"'{weights}' was refused.*{UNSAFE_ENV}=1"):
        load_timm_pretrained(L1_TIMM, str(weights))
    assert not marker.exists()
    # The tool, as README's offline route runs it: one line, nothing written, nothing run.
    dst = tmp_path / 'out.pth'
    main = load_tool(ROOT, 'convert_checkpoint').main
    status, err = run_main(main, ['--timm', L1_TIMM, str(dst), '--timm-file', str(weights)],
                           capsys, monkeypatch)
    assert status == 1 and 'Traceback' not in err and len(error_lines(err)) == 1, err
    assert 'was refused' in err and not dst.exists() and not marker.exists()
    # The same tensors without the payload convert, from .pth and from safetensors.
    from safetensors.torch import save_file
    torch.save({'state_dict': sd}, weights)
    safe = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in sd.items()}, str(safe))
    for path in (weights, safe):
        got = load_timm_pretrained(L1_TIMM, str(path))
        assert all(torch.equal(got[k], v) for k, v in sd.items())
    # Opted in for a file the user trusts: loaded, and the payload ran (what the refusal stops).
    torch.save({'state_dict': sd, 'extra': MakesDirectory(marker)}, weights)
    monkeypatch.setenv(UNSAFE_ENV, '1')
    load_timm_pretrained(L1_TIMM, str(weights))
    assert marker.exists()


# ---------------------------------------------------------------------------- items 9, 10
def test_random_bytes_and_text_are_not_called_unsafe_pickles(tmp_path):
    """Random bytes (with or without a pickle's first byte) are corrupt / not a checkpoint:
    never the advice to switch the safety check off; a text file is named as one."""
    rng = np.random.default_rng(0)
    cases = {'random.pth': rng.bytes(4096),
             'pickle_head.pth': b'\x80\x02' + rng.bytes(4096),
             'notes.pth': b'epoch 12: loss 0.31\nsee the wiki for the real weights\n'}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            read_checkpoint_file(path)
        msg = str(info.value)
        assert not isinstance(info.value, UnsafeCheckpointError), msg
        assert UNSAFE_ENV not in msg and str(path) in msg, msg
        assert ('not a checkpoint' in msg or 'corrupt' in msg), msg
    msg = str(pytest.raises(CheckpointError, read_checkpoint_file, tmp_path / 'notes.pth').value)
    assert "a text file (it starts with 'epoch 12: loss 0.31 see the wiki" in msg
    # A real refusal still names the object and the opt-in.
    torch.save({'w': torch.ones(1), 'x': MakesDirectory(tmp_path / 'ran')}, tmp_path / 'u.pth')
    with pytest.raises(UnsafeCheckpointError, match=f'GLOBAL posix.mkdir.*{UNSAFE_ENV}=1'):
        read_checkpoint_file(tmp_path / 'u.pth')
    assert not (tmp_path / 'ran').exists()


@pytest.mark.parametrize('content,needle', [
    (None, 'does not exist'),
    (b'<html><body>404 Not Found</body></html>\n', 'is not a checkpoint: it is a text file'),
    (bytes(range(256)) * 4, 'is not a checkpoint'),
])
def test_export_checks_the_checkpoint_before_building(content, needle, tmp_path, capsys,
                                                      monkeypatch):
    """tools/export.py: a missing, text or random checkpoint is one line, before any model is
    built (the model builder here fails the test if it is reached)."""
    import mmeff.deploy
    ckpt = tmp_path / 'epoch_12.pth'
    if content is not None:
        ckpt.write_bytes(content)

    def no_build(*args, **kwargs):
        raise AssertionError('the model was built before the checkpoint was checked')
    monkeypatch.setattr(mmeff.deploy, 'build_model', no_build)
    main = load_tool(ROOT, 'export').main
    status, err = run_main(main, ['l1', '--format', 'onnx', '--checkpoint', str(ckpt),
                                  '--out', str(tmp_path / 'l1.onnx')], capsys, monkeypatch)
    assert status == 1 and 'Traceback' not in err, err
    (line,) = error_lines(err)
    assert str(ckpt) in line and needle in line and UNSAFE_ENV not in line, line


def test_export_size_beyond_memory_is_refused_up_front(tmp_path, capsys, monkeypatch):
    from mmeff.deploy.export import check_export_memory, export_memory_bytes
    model = EfficientFormer('l1')
    need, what = export_memory_bytes(model, (1, 3, 10000, 10000))
    # L1: one MHSA block on a 313x313 token grid, 8 heads: 8 x 97969 x 97969 floats.
    assert what == dict(attention_blocks=1, largest=(8, 97969, 97969))
    assert need == 4 * 6 * 8 * 97969 ** 2
    assert export_memory_bytes(model, (1, 3, 224, 224))[0] == 4 * 6 * 8 * 49 ** 2
    with pytest.raises(ValueError, match=r'exporting at 10000x10000 \(batch 1\) needs about '
                                         r'[\d.]+ GiB of memory, and this machine has 1\.0 GiB '
                                         r'available.*--input-size 512x512'):
        check_export_memory(model, (1, 3, 10000, 10000), available=2 ** 30)
    check_export_memory(model, (1, 3, 224, 224), available=2 ** 30)
    # The tool: one line, in seconds, nothing allocated for it and nothing written.
    out = tmp_path / 'big.onnx'
    t0 = time.perf_counter()
    status, err = run_main(load_tool(ROOT, 'export').main,
                           ['l1', '--format', 'onnx', '--input-size', '10000x10000', '--out',
                            str(out)], capsys, monkeypatch)
    assert status == 1 and 'Traceback' not in err, err
    (line,) = error_lines(err)
    assert 'exporting at 10000x10000' in line and 'GiB of memory' in line, line
    assert time.perf_counter() - t0 < 60 and not out.exists()


def test_cuda_without_a_gpu_is_a_user_error(capsys, monkeypatch):
    def main():
        if torch.cuda.is_available():  # what torch raises on a machine without one
            raise RuntimeError('Found no NVIDIA driver on your system. Please check that you '
                               'have an NVIDIA GPU and installed a driver')
        torch.zeros(1, device='cuda')
    status, err = run_main(lambda argv=None: main(), None, capsys, monkeypatch)
    assert status == 1 and 'Traceback' not in err, err
    (line,) = error_lines(err)
    assert 'a CUDA device was asked for' in line and '--device cpu' in line, line
    bad = 'cuda:99' if torch.cuda.is_available() else 'cuda'
    with pytest.raises(ValueError, match=f"--device '{bad}': this machine has"):
        check_device(bad)
    assert check_device('cpu') == 'cpu'


def _library_raises_at_run_time():
    torch.nn.Module().register_buffer(1, None)  # torch's own ``raise TypeError``


def test_library_type_errors_at_run_time_are_bugs(capsys, monkeypatch):
    """A TypeError a library raises in the middle of a run (as torch.distributed's 'data should
    be a Tensor' in a DDP broadcast) is the project's bug: shown with its traceback, not as
    'error: ...' blaming the user. Errors while building from a config stay one line."""
    status, err = run_main(lambda argv=None: _library_raises_at_run_time(), None, capsys,
                           monkeypatch)
    assert status == 1 and 'Traceback (most recent call last)' in err, err
    assert err.strip().splitlines()[-1].startswith('tool.py: unexpected TypeError: buffer name')
    import mmeff.models  # noqa: F401
    from mmeff.registry import MODELS
    status, err = run_main(lambda argv=None: MODELS.build(
        dict(type='mmeff.EfficientFormer', arch='l1', no_such_arg=1)), None, capsys, monkeypatch)
    assert status == 1 and 'Traceback' not in err and 'no_such_arg' in err, err


# ---------------------------------------------------------------------------- item 2: atomic
def tiny_config(path):
    path.write_text(textwrap.dedent(f"""
        model = dict(type='mmeff.EfficientFormer', arch={TINY_ARCH!r})
        """))
    return str(path)


def staging_entries(folder, name):
    return [n for n in os.listdir(folder) if n.startswith(f'.{name}.tmp.')]


def test_failed_onnx_export_keeps_the_previous_file(tmp_path):
    """A NaN checkpoint fails the export's checks: the good file at --out is untouched."""
    from mmeff.deploy import export_onnx
    out = tmp_path / 'model.onnx'
    export_onnx(EfficientFormer(TINY_ARCH).eval(), str(out), 64)
    good = out.read_bytes()
    broken = EfficientFormer(TINY_ARCH).eval()
    with torch.no_grad():
        broken.stages[3].blocks[0].mlp.fc1.weight[0, :3] = float('nan')
    with pytest.raises(ValueError, match='hold NaN or Inf'):
        export_onnx(broken, str(out), 64)
    assert out.read_bytes() == good
    assert os.listdir(tmp_path) == ['model.onnx']  # no staging left


def test_failed_coreml_export_keeps_the_previous_package(tmp_path):
    """A NaN checkpoint's Core ML package fails its checks: the previous .mlpackage is kept
    whole, the failed one lies beside it for inspection."""
    from mmeff.deploy import export_coreml
    pkg = tmp_path / 'model.mlpackage'
    good = export_coreml(EfficientFormer(TINY_ARCH).eval(), str(pkg), 64)
    assert good['problems'] == [] and good['path'] == str(pkg)
    before = {osp.relpath(osp.join(r, f), pkg): open(osp.join(r, f), 'rb').read()
              for r, _, files in os.walk(pkg) for f in files}
    broken = EfficientFormer(TINY_ARCH).eval()
    with torch.no_grad():
        broken.stages[3].blocks[0].mlp.fc1.weight[0, :3] = float('nan')
    report = export_coreml(broken, str(pkg), 64)
    assert report['problems'] and report['rejected'] == str(pkg)
    assert report['path'] == str(tmp_path / 'model.failed.mlpackage')
    after = {osp.relpath(osp.join(r, f), pkg): open(osp.join(r, f), 'rb').read()
             for r, _, files in os.walk(pkg) for f in files}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ['model.failed.mlpackage', 'model.mlpackage']


def test_killed_export_keeps_the_previous_file(tmp_path):
    """kill -9 while tools/export.py writes: --out still holds the previous, complete file;
    the next export to it cleans the killed one's staging up."""
    cfg = tiny_config(tmp_path / 'tiny.py')
    out = tmp_path / 'tiny.onnx'
    out.write_bytes(b'previous export')
    env = tool_env(tmp_path)
    proc = subprocess.Popen([sys.executable, 'tools/export.py', cfg, '--format', 'onnx',
                             '--input-size', '64', '--out', str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if staging_entries(tmp_path, 'tiny.onnx') or out.read_bytes() != b'previous export':
                break
            time.sleep(0.02)
        assert proc.poll() is None, 'the export finished before it could be killed'
        time.sleep(0.3)  # into the write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.read_bytes() == b'previous export'
    # What the killed export left is recognised as such (its writer is gone) and removed by the
    # next export to that path.
    from mmeff.deploy.output import remove_stale_staging
    left = staging_entries(tmp_path, 'tiny.onnx')
    assert [osp.basename(p) for p in remove_stale_staging(str(out))] == left
    assert len(left) == 1 and sorted(os.listdir(tmp_path)) == ['tiny.onnx', 'tiny.py']


def test_write_dir_atomic_and_staged_outputs(tmp_path):
    """Directories (.mlpackage) are replaced whole or not at all; an export whose checks
    report problems goes beside the target, which keeps its previous content."""
    from mmeff.deploy.output import StagedOutput, failed_path, place_checked
    from mmeff.engine.checkpointing import write_dir_atomic
    pkg = tmp_path / 'model.mlpackage'
    pkg.mkdir()
    (pkg / 'old.bin').write_text('old')

    def fill(d, fail=False):
        with open(osp.join(d, 'new.bin'), 'w') as f:
            f.write('new')
        if fail:
            raise RuntimeError('conversion failed')
    with pytest.raises(RuntimeError, match='conversion failed'):
        write_dir_atomic(str(pkg), lambda d: fill(d, fail=True))
    assert os.listdir(pkg) == ['old.bin'] and sorted(os.listdir(tmp_path)) == ['model.mlpackage']
    write_dir_atomic(str(pkg), fill)
    assert os.listdir(pkg) == ['new.bin'] and sorted(os.listdir(tmp_path)) == ['model.mlpackage']

    target = tmp_path / 'm.onnx'
    target.write_text('good')
    # Checks passed: placed; then checks failed: the target keeps what the first one placed.
    for problems, expected in (([], 'checked'), (['2 constant(s) hold NaN'], 'checked')):
        with StagedOutput(str(target)) as staged:
            with open(staged.path, 'w') as f:
                f.write('checked' if not problems else 'bad')
            report = place_checked(staged, dict(problems=problems))
        assert target.read_text() == expected
    assert report == dict(problems=['2 constant(s) hold NaN'], path=failed_path(str(target)),
                          rejected=str(target))
    assert (tmp_path / 'm.failed.onnx').read_text() == 'bad'
    assert sorted(os.listdir(tmp_path)) == ['m.failed.onnx', 'm.onnx', 'model.mlpackage']


# ---------------------------------------------------------------------------- item 14
def test_detector_export_with_no_detections_on_either_side_passes(tmp_path):
    from mmeff.deploy.detector import compare_detections, detection_problems, export_detector
    empty = (np.zeros((5, 4), np.float32), np.zeros(5, np.float32), -np.ones(5, np.int64))
    one = (np.array([[1, 2, 30, 40]] + [[0] * 4] * 4, np.float32),
           np.array([0.9, 0, 0, 0, 0], np.float32), np.array([0, -1, -1, -1, -1]))
    assert detection_problems(compare_detections(empty, empty)) == []
    assert detection_problems(compare_detections(one, one)) == []
    assert 'finds 1 detections where torch finds none' in \
        detection_problems(compare_detections(empty, one))[0]
    assert "detections differ from torch's" in detection_problems(compare_detections(one,
                                                                                     empty))[0]
    # The whole export of a detector that finds nothing on the check image (its classifier
    # says "background" everywhere, with RetinaNet's default score threshold).
    from mmeff.deploy.detector import build_detector
    cfg = tmp_path / 'retinanet_tiny.py'
    retinanet = osp.join(ROOT, 'configs', 'detection', 'retinanet_effformer_l1.py')
    cfg.write_text(textwrap.dedent(f"""
        _base_ = {retinanet!r}
        model = dict(backbone=dict(init_cfg=None), bbox_head=dict(num_classes=3))
        """))
    model, _, _ = build_detector(str(cfg))
    with torch.no_grad():
        model.bbox_head.retina_cls.weight.zero_()
        model.bbox_head.retina_cls.bias.fill_(-10.)
    ckpt = tmp_path / 'epoch_12.pth'
    torch.save({'state_dict': model.state_dict()}, ckpt)
    report = export_detector(str(cfg), str(ckpt), input_size=(64, 64),
                             out=str(tmp_path / 'det.onnx'))
    assert report['onnxruntime']['detections_a'] == report['onnxruntime']['detections_b'] == 0
    assert report['problems'] == [] and report['path'] == str(tmp_path / 'det.onnx')
    assert 'rejected' not in report and osp.isfile(tmp_path / 'det.onnx')


def test_detection_check_allows_what_rounding_moves_in_torch_itself():
    """A detector whose candidates tie on the check image keeps other rows when the image
    moves by a rounding-sized amount; the export check then allows ONNX Runtime as many
    unmatched rows as torch has against itself (and no more), and a detector without ties
    keeps every row."""
    import torch.nn as nn

    from mmeff.deploy.detector import detection_problems, rounding_agreement

    class TopTen(nn.Module):  # boxes at the 10 largest of 50 pixels: ties pick at random
        def forward(self, x):
            v = x.flatten()[:50]
            idx = v.argsort(descending=True)[:10].float()
            boxes = torch.stack([idx, idx, idx + 1, idx + 1], 1) * 10
            return boxes, v.sort(descending=True).values[:10], torch.zeros(10, dtype=torch.long)

    model = TopTen()
    tied = torch.full((1, 3, 4, 20), 100.)
    ref = [t.numpy() for t in model(tied)]
    moved = rounding_agreement(model, tied, ref)
    assert moved['detections_a'] == 10 and moved['matched'] < 10
    distinct = torch.arange(240.).reshape(1, 3, 4, 20)
    assert rounding_agreement(model, distinct, [t.numpy() for t in model(distinct)])[
        'matched'] == 10
    agree = dict(detections_a=100, detections_b=100, matched=85)
    assert detection_problems(agree, 0.1)  # 15 of 100 missing: more than 10 %
    assert detection_problems(dict(agree, torch_rounding_matched=85), 0.1) == []
    assert detection_problems(dict(agree, torch_rounding_matched=86), 0.1)
    assert detection_problems(dict(agree, torch_rounding_matched=95), 0.1)


# ---------------------------------------------------------------------------- item 17
def test_timm_download_offline_fails_fast_in_one_line(tmp_path):
    """The hub unreachable (HF_ENDPOINT on a closed local port, HF_HUB_OFFLINE unset): one line
    within seconds, not a minute of retry lines."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = tool_env(tmp_path, HF_ENDPOINT=f'http://127.0.0.1:{port}')
    env.pop('HF_HUB_OFFLINE', None)
    dst = tmp_path / 'out.pth'
    t0 = time.perf_counter()
    res = run_tool('convert_checkpoint.py', ['--timm', L1_TIMM, str(dst)], env, timeout=120)
    took = time.perf_counter() - t0
    assert res.returncode == 1 and 'Traceback' not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == error_lines(res.stderr), res.stderr
    (line,) = error_lines(res.stderr)
    assert f'http://127.0.0.1:{port} does not answer' in line, line
    assert '--timm-file PATH' in line and not dst.exists()
    # Imports included (~10 s on an idle machine); the hub is asked once, for at most 5 s.
    # Before, huggingface_hub's retries alone took ~46 s (and printed 12 lines).
    assert took < 40, took
    # Weights timm downloaded earlier are in the Hugging Face cache: used as they are, offline.
    from safetensors.torch import save_file
    snapshot = tmp_path / 'hf' / 'hub' / f'models--timm--{L1_TIMM}' / 'snapshots' / ('0' * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / 'refs').mkdir()
    (snapshot.parent.parent / 'refs' / 'main').write_text('0' * 40)
    sd = timm_efficientformer('l1', seed=5).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(snapshot / 'model.safetensors'))
    res = run_tool('convert_checkpoint.py', ['--timm', L1_TIMM, str(dst)], env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    from mmeff.converters import convert_timm
    got = torch.load(dst, weights_only=True)['state_dict']
    assert all(torch.equal(got[k], v) for k, v in convert_timm(sd).items())


# ---------------------------------------------------------------------------- item 18
def test_v1_checkpoint_for_a_v2_config_names_the_v1_config(tmp_path, capsys, monkeypatch):
    """A V1 (L1) checkpoint exported with a V2 config: it says it is a V1 checkpoint and names
    the V1 config, instead of suggesting arch='l1', which V2 rejects."""
    import mmeff.deploy

    def no_build(*args, **kwargs):
        raise AssertionError('the model was built before the checkpoint was checked')
    v1 = tmp_path / 'l1_backbone.pth'
    sd = {'backbone.' + k: v for k, v in EfficientFormer('l1').state_dict().items()}
    torch.save({'state_dict': sd}, v1)
    cfg = osp.join('configs', 'segmentation', 'fpn_effformerv2_s0_ade20k_40k.py')
    monkeypatch.chdir(ROOT)
    with monkeypatch.context() as patch:  # found before anything is built
        patch.setattr(mmeff.deploy, 'build_model', no_build)
        status, err = run_main(load_tool(ROOT, 'export').main,
                               [cfg, '--format', 'onnx', '--checkpoint', str(v1), '--out',
                                str(tmp_path / 'x.onnx')], capsys, monkeypatch)
        assert status == 1 and 'Traceback' not in err and 'V1' in err, err
        # Another arch of the same family, given by name: build the checkpoint's arch.
        status, err = run_main(load_tool(ROOT, 'export').main,
                               ['l3', '--format', 'onnx', '--checkpoint', str(v1)], capsys,
                               monkeypatch)
        (line,) = error_lines(err)
        assert status == 1 and "an EfficientFormer (V1) checkpoint of arch 'l1', and the " \
            "model builds arch 'l3'. To use it, build arch 'l1' instead of 'l3'" in line, line
    status, err = run_main(load_tool(ROOT, 'export').main,
                           [cfg, '--format', 'onnx', '--checkpoint', str(v1), '--out',
                            str(tmp_path / 'x.onnx')], capsys, monkeypatch)
    assert status == 1 and 'Traceback' not in err, err
    (line,) = error_lines(err)
    assert "It is an EfficientFormer (V1) checkpoint (arch 'l1')" in line, line
    assert 'EfficientFormerV2 backbone' in line, line
    assert 'configs/segmentation/fpn_effformer_l1_ade20k_40k.py' in line, line
    assert "arch='l1'" not in line and 'Set arch=' not in line, line
    # The whole-model fit check (tools/test.py, export of segmentors/detectors) says the same.
    from mmeff.checkpoint import check_model_fit
    from mmeff.models.classifiers import EfficientFormerClassifier
    v2 = EfficientFormerClassifier(backbone=dict(type='mmeff.EfficientFormerV2', arch='s0'),
                                   num_classes=10)
    v1_cls = EfficientFormerClassifier(backbone=dict(arch='l1'), num_classes=10)
    with pytest.raises(CheckpointMismatchError) as info:
        check_model_fit(v2, v1_cls.state_dict(), 'l1_cls.pth', config=osp.join(
            'configs', 'classification', 'effformerv2_s0_in1k.py'))
    msg = str(info.value)
    assert "It is an EfficientFormer (V1) checkpoint (arch 'l1')" in msg, msg
    assert 'configs/classification/effformer_l1_in1k.py' in msg, msg
    assert 'model.backbone.arch' not in msg, msg
