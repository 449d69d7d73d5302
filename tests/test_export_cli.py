"""tools/export.py over the task adapters of mmeff.deploy.tasks: a flag a task or a format
cannot honour is refused in one line naming it, the detector honours what export_detector's
signature names, ``--cfg-options`` changes the config before the model is built, and the
INT8 (ONNX Runtime) and compressed (Core ML) exports with their bad inputs."""
import inspect
import json
import os.path as osp

import cv2
import numpy as np
import pytest

from mmeff.cli import TRACEBACK_ENV, run
from mmeff.deploy import tasks

from helpers import load_tool

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO_FPN = osp.join(ROOT, 'configs', 'demo', 'fpn_effformer_l1_synthetic.py')
RETINANET = osp.join(ROOT, 'configs', 'detection', 'retinanet_effformer_l1.py')
# A small V1 backbone (one block per stage, one MB3D block): exports in seconds.
TINY_ARCH = dict(depths=[1, 1, 1, 1], widths=[16, 32, 48, 64], num_vit=1)


@pytest.fixture(scope='module')
def tiny_backbone(tmp_path_factory):
    """A config whose model is the small backbone, for the INT8 and Core ML exports."""
    path = tmp_path_factory.mktemp('tiny') / 'tiny_backbone.py'
    path.write_text(f"model = dict(type='mmeff.EfficientFormer', arch={TINY_ARCH!r})\n")
    return str(path)


@pytest.fixture(scope='module')
def export():
    return load_tool(ROOT, 'export')


def run_main(main, argv, capsys, monkeypatch):
    """``mmeff.cli.run`` of the tool's main, as its ``__main__`` does: (status, stderr)."""
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)
    status = run(main, argv, prog='export.py')
    return status, capsys.readouterr().err


def usage_error(export, argv, capsys) -> str:
    """The one ``error:`` line argparse prints for ``argv`` (exit status 2)."""
    with pytest.raises(SystemExit) as info:
        export.parse_args(argv)
    assert info.value.code == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if 'error: ' in ln]
    return line


def image_folder(root, classes=2, per_class=2, size=(48, 40)):
    """An ImageFolder of random PNGs: ``root/class_i/img_j.png``."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f'class_{c}'
        folder.mkdir(parents=True)
        for j in range(per_class):
            cv2.imwrite(str(folder / f'img_{j}.png'),
                        rng.integers(0, 256, size + (3,), dtype=np.uint8))
    return root


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize('argv, message', [
    (['l1', '--format', 'onnx', '--precision', 'fp32'],
     'not an option of --format onnx: --precision (only for --format coreml)'),
    (['l1', '--format', 'onnx', '--compress', 'palettize4'],
     'not an option of --format onnx: --compress (only for --format coreml)'),
    (['l1', '--format', 'coreml', '--quantize', 'int8', '--calib-data', 'calib'],
     'not an option of --format coreml: --quantize (only for --format onnx), --calib-data '
     '(only for --format onnx)'),
    (['l1', '--format', 'onnx', '--quantize', 'int8'],
     '--quantize int8 needs --calib-data DIR'),
    (['l1', '--format', 'onnx', '--calib-data', 'calib'],
     '--calib-data needs --quantize int8'),
    (['l1', '--format', 'onnx', '--keep-fp32', 'stages.0'],
     '--keep-fp32 chooses modules that stay FP32 in an INT8 model: use it with --quantize '
     'int8 --calib-data DIR'),
    (['l1', '--format', 'onnx', '--quantize', 'int8', '--calib-data', 'calib', '--keep-fp32',
      'none', 'stages.0'],
     '--keep-fp32 none (every module INT8) cannot be combined with modules, got none stages.0'),
    (['l1', '--format', 'coreml', '--keep-fp32', 'stages.0'],
     'not an option of --format coreml: --keep-fp32 (only for --format onnx)'),
    ([DEMO_FPN, '--task', 'segmentor', '--format', 'onnx', '--quantize', 'int8',
      '--calib-data', 'calib'],
     'not an option of --task segmentor: --quantize (only for --task backbone or classifier), '
     '--calib-data (only for --task backbone or classifier)'),
    (['l1', '--task', 'classifier', '--format', 'onnx', '--out-indices', '3'],
     'not an option of --task classifier: --out-indices (only for --task backbone)'),
    (['l1', '--format', 'onnx', '--cfg-options', 'model.backbone.arch=l3'],
     '--cfg-options changes a config: MODEL must be a config file (.py), got \'l1\''),
])
def test_options_a_task_or_format_cannot_honour_are_refused(export, argv, message, capsys):
    line = usage_error(export, argv, capsys)
    assert message in line, line


def test_a_format_the_task_does_not_write_is_refused(export, capsys):
    """A backend registered in the runtime layer is a --format at once; backbones and
    classifiers export to it (mmeff.deploy.export.export_model), whole models refuse it."""
    from mmeff.runtime import Backend, register_backend, unregister_backend

    class Dummy(Backend):
        name, format, suffix = 'dummy-b2', 'dummyfmt', '.dummy'
    register_backend(Dummy())
    try:
        assert tasks.get_task('backbone').formats[-1] == 'dummyfmt'
        line = usage_error(export, [DEMO_FPN, '--task', 'segmentor', '--format', 'dummyfmt'],
                           capsys)
    finally:
        unregister_backend('dummy-b2')
    assert "--task segmentor exports to --format onnx or coreml, not 'dummyfmt'" in line, line


def _fake_detector_exporter(monkeypatch, extra=None):
    """Replace export_detector by a function with RetinaNet's export options (plus ``extra``)
    in its signature; returns the list its calls' keywords go to."""
    import mmeff.deploy.detector as detector
    calls = []

    def fake(config, **kwargs):
        calls.append(kwargs)
        return dict(path='fake.onnx', problems=[])
    params = [inspect.Parameter('config', inspect.Parameter.POSITIONAL_OR_KEYWORD)] + [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
        for name, default in (('checkpoint', None), ('fmt', 'onnx'), ('input_size', None),
                              ('out', None), ('max_dets', 100), ('score_thr', 0.05),
                              ('iou_thr', 0.5), ('precision', 'fp16'), ('image_input', False))]
    if extra:
        params.append(inspect.Parameter(extra, inspect.Parameter.KEYWORD_ONLY, default=None))
    fake.__signature__ = inspect.Signature(params)
    monkeypatch.setattr(detector, 'export_detector', fake)
    return calls


DETECTOR_FLAGS = [  # (flag and value, format, the keyword and value export_detector gets)
    (['--opset', '17'], 'onnx', ('opset', 17)),
    (['--no-fuse'], 'onnx', ('fuse', False)),
    (['--compute-units', 'CPU_ONLY'], 'coreml', ('compute_units', 'CPU_ONLY')),
    (['--method', 'trace'], 'coreml', ('method', 'trace')),
    (['--dynamic-batch'], 'onnx', ('dynamic_batch', True)),
    (['--batch-size', '2'], 'onnx', ('batch_size', 2)),
    (['--cfg-options', 'model.bbox_head.num_classes=3'], 'onnx',
     ('cfg_options', {'model.bbox_head.num_classes': 3})),
]


@pytest.mark.parametrize('flag, fmt, keyword', DETECTOR_FLAGS, ids=lambda v: str(v))
def test_detector_honours_exactly_what_export_detector_takes(export, flag, fmt, keyword,
                                                            capsys, monkeypatch):
    """Each flag --task detector used to drop without a word: refused while export_detector
    has no such argument, forwarded with its value once it has."""
    argv = [RETINANET, '--task', 'detector', '--format', fmt, *flag]
    _fake_detector_exporter(monkeypatch)
    line = usage_error(export, argv, capsys)
    assert f'not an option of --task detector: {flag[0]} (' in line, line
    assert f"export_detector takes no {keyword[0]!r} argument" in line, line
    calls = _fake_detector_exporter(monkeypatch, extra=keyword[0])
    args = export.parse_args(argv)
    report = tasks.get_task('detector').export(
        args.model, args.format, log=lambda msg: None, **tasks.given_options(args))
    assert report['task'] == 'detector'
    (call,) = calls
    assert call[keyword[0]] == keyword[1] and call['fmt'] == fmt, call


def test_a_registered_adapter_is_offered_and_its_options_checked(export, tmp_path, capsys,
                                                                 monkeypatch):
    """tools/export.py has no branch per task: an adapter added to EXPORT_TASKS is a --task,
    honours what it declares and is refused the rest; main calls its export and describe."""
    calls = []

    class Dummy(tasks.TaskAdapter):
        name = 'dummy'
        default_size = '32x48'

        def keywords(self):
            return frozenset({'opset'})

        def export(self, model, fmt, out=None, input_size=None, checkpoint=None, log=print,
                   **options):
            calls.append(dict(model=model, fmt=fmt, input_size=input_size, **options))
            return dict(path=str(tmp_path / 'dummy.onnx'), problems=[])

        def describe(self, report):
            return f"dummy export at {report['path']}"
    monkeypatch.setitem(tasks.EXPORT_TASKS, 'dummy', Dummy())
    line = usage_error(export, ['l1', '--task', 'dummy', '--format', 'onnx', '--no-fuse'],
                       capsys)
    assert 'not an option of --task dummy: --no-fuse (only for --task backbone, classifier' \
        in line, line
    assert export.main(['l1', '--task', 'dummy', '--format', 'onnx', '--opset', '17']) == 0
    assert calls == [dict(model='l1', fmt='onnx', input_size='32x48', opset=17)]
    assert 'dummy export at' in capsys.readouterr().out


# ----------------------------------------------------------------------------- --cfg-options
def test_cfg_options_change_the_config_before_the_segmentor_is_built(export, tmp_path):
    """mmseg's own tools take --cfg-options; here it sets the class count of the demo's
    Semantic FPN (on the small backbone), which the exported graph's logits then have."""
    import onnx
    config = tmp_path / 'fpn_tiny.py'
    arch = dict(TINY_ARCH, _delete_=True)  # replaces the base's arch name
    config.write_text(f"_base_ = {DEMO_FPN!r}\nmodel = dict(backbone=dict(arch={arch!r}), "
                      f"neck=dict(in_channels={TINY_ARCH['widths']!r}))\n")
    out, rep = tmp_path / 'fpn7.onnx', tmp_path / 'report.json'
    rc = export.main([str(config), '--task', 'segmentor', '--format', 'onnx', '--input-size',
                      '64x64', '--output', 'logits', '--out', str(out), '--report-json',
                      str(rep), '--cfg-options', 'model.decode_head.num_classes=7'])
    report = json.loads(rep.read_text())
    assert rc == 0 and report['num_classes'] == 7 and report['problems'] == []
    assert report['outputs'] == [dict(name='logits', shape=[1, 7, 64, 64], dtype='FLOAT')]
    (output,) = onnx.load(str(out)).graph.output
    assert [d.dim_value for d in output.type.tensor_type.shape.dim] == [1, 7, 64, 64]


def test_cfg_options_change_the_classifier_classes(export, tmp_path):
    """The same on a classification config: the class count, in the ONNX logits."""
    config = tmp_path / 'cls_tiny.py'
    base = osp.join(ROOT, 'configs', 'classification', 'effformer_l1_in1k.py')
    arch = dict(TINY_ARCH, _delete_=True)
    config.write_text(f"_base_ = {base!r}\nmodel = dict(backbone=dict(arch={arch!r}))\n")
    out, rep = tmp_path / 'cls5.onnx', tmp_path / 'report.json'
    rc = export.main([str(config), '--task', 'classifier', '--format', 'onnx', '--input-size',
                      '64', '--out', str(out), '--report-json', str(rep), '--cfg-options',
                      'model.num_classes=5'])
    report = json.loads(rep.read_text())
    assert rc == 0 and [(o['name'], o['shape']) for o in report['outputs']] == [
        ('logits', [1, 5])], report['outputs']


def test_cfg_options_with_a_misspelt_key_is_one_line(export, tmp_path, capsys, monkeypatch):
    out = tmp_path / 'x.onnx'
    status, err = run_main(export.main, [DEMO_FPN, '--task', 'segmentor', '--format', 'onnx',
                                         '--out', str(out), '--cfg-options',
                                         'modle.decode_head.num_classes=7'], capsys,
                           monkeypatch)
    (line,) = [ln for ln in err.splitlines() if ': error: ' in ln]
    assert status == 1 and 'Traceback' not in err, err
    assert "--cfg-options modle.decode_head.num_classes=...: the config has no top-level " \
           "'modle'" in line and "did you mean 'model'" in line, line
    assert not out.exists()


def test_checkpoint_is_checked_against_the_config_with_its_options(export, tmp_path, capsys,
                                                                   monkeypatch):
    """The checkpoint's arch is matched, before anything is built, against what the config
    builds once --cfg-options is merged: an L1 checkpoint for the L1 config set to arch l3."""
    import torch

    from mmeff.models import EfficientFormer
    ckpt = tmp_path / 'l1.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in
                               EfficientFormer('l1').state_dict().items()}}, ckpt)
    status, err = run_main(export.main, [DEMO_FPN, '--task', 'segmentor', '--format', 'onnx',
                                         '--checkpoint', str(ckpt), '--out',
                                         str(tmp_path / 'x.onnx'), '--cfg-options',
                                         'model.backbone.arch=l3'], capsys, monkeypatch)
    (line,) = [ln for ln in err.splitlines() if ': error: ' in ln]
    assert status == 1 and "checkpoint of arch 'l1'" in line and "builds arch 'l3'" in line, line
    assert not (tmp_path / 'x.onnx').exists()


# ----------------------------------------------------------------------------- INT8, Core ML
def test_int8_backbone_export(export, tiny_backbone, tmp_path):
    """--quantize int8: ONNX Runtime's static quantisation, calibrated on an ImageFolder."""
    calib = image_folder(tmp_path / 'calib')
    out, rep = tmp_path / 'tiny_int8.onnx', tmp_path / 'report.json'
    rc = export.main([tiny_backbone, '--format', 'onnx', '--input-size', '64', '--quantize', 'int8',
                      '--calib-data', str(calib), '--out', str(out), '--report-json',
                      str(rep)])
    report = json.loads(rep.read_text())
    assert rc == 0 and out.exists() and report['problems'] == [], report.get('problems')
    assert osp.samefile(report['path'], out) and report['model']['arch'] == 'custom'
    assert report['task'] == 'backbone' and report['int8_vs_fp32']


@pytest.mark.parametrize('case', ['missing', 'empty', 'class count'])
def test_int8_with_a_bad_calibration_folder_is_one_line(export, case, tmp_path, capsys,
                                                        monkeypatch):
    """A missing or empty folder, or one with another class count than the classifier's
    (1000 here, 2 folders there): one line naming the folder, exit 1, nothing written."""
    calib = tmp_path / 'calib'
    if case == 'empty':
        calib.mkdir()
    elif case == 'class count':
        image_folder(calib, classes=2)
    out = tmp_path / 'cls_int8.onnx'
    status, err = run_main(export.main, ['l1', '--task', 'classifier', '--format', 'onnx',
                                         '--input-size', '64', '--quantize', 'int8',
                                         '--calib-data', str(calib), '--out', str(out)],
                           capsys, monkeypatch)
    lines = [ln for ln in err.splitlines() if ': error: ' in ln]
    assert status == 1 and 'Traceback' not in err and len(lines) == 1, err
    assert str(calib) in lines[0], lines[0]
    if case == 'class count':
        assert '2' in lines[0] and '1000' in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if case == 'missing' else ['calib'])


def test_compressed_coreml_export_and_an_unknown_mode(export, tiny_backbone, tmp_path, capsys,
                                                     monkeypatch):
    """--compress int8: the package is written and checked with its compression figures in the
    report; a mode coremltools does not have is one line, nothing written."""
    pytest.importorskip('coremltools')
    out, rep = tmp_path / 'tiny_int8.mlpackage', tmp_path / 'report.json'
    rc = export.main([tiny_backbone, '--format', 'coreml', '--input-size', '64', '--compress',
                      'int8', '--out', str(out), '--report-json', str(rep)])
    report = json.loads(rep.read_text())
    assert rc == 0 and out.exists() and report['problems'] == [], report.get('problems')
    assert report['compression']['mode'] == 'int8', sorted(report)
    assert report['compression']['weight_bytes'] < report['compression']['fp16_weight_bytes']
    assert report['metadata']['mmeff.compress'] == 'int8'  # the package says how it was made
    bad = tmp_path / 'tiny_pal3.mlpackage'
    argv = [tiny_backbone, '--format', 'coreml', '--input-size', '64', '--compress',
            'palettize3', '--out', str(bad)]
    status, err = run_main(export.main, argv, capsys, monkeypatch)
    lines = [ln for ln in err.splitlines() if ': error: ' in ln]
    assert status == 1 and 'Traceback' not in err and len(lines) == 1, err
    assert 'palettize3' in lines[0] and not bad.exists(), lines[0]
