"""INT8 ONNX export (mmeff.deploy.quantize): the calibration folder's checks, the calibration
preprocessing against timm's evaluation transform, ONNX Runtime static quantisation of V1/V2
classifiers and backbones (operators kept in FP32 named, errors against the FP32 graph), a
trained classifier's top-1 in INT8, and the atomic output on bad input."""
import os
import os.path as osp
import re

import numpy as np
import pytest
import torch

from mmeff.datasets import make_imagefolder_dataset
from mmeff.deploy import export_onnx
from mmeff.deploy.quantize import (DEFAULT_KEEP_FP32, KEEP_FP32, KEEP_FP32_DEFAULT_REASON,
                                   MIXER_CONV_REASON, SOFTMAX_NEIGHBOUR_REASON,
                                   calibration_inputs, check_calib_data, export_onnx_int8,
                                   format_int8_report, module_nodes, node_modules, onnx_top1,
                                   quantize_onnx_file)
from mmeff.models import EfficientFormer, EfficientFormerV2
from mmeff.models.layers import Meta4D
from mmeff.models.classifiers import EfficientFormerClassifier

from helpers import load_tool, randomise_

pytest.importorskip('onnxruntime')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# Small archs of both families (one attention block each) at 64x64: seconds per export.
TINY = {'v1': ('mmeff.EfficientFormer', EfficientFormer,
               dict(depths=[1, 1, 2, 2], widths=[16, 32, 48, 64], num_vit=1)),
        'v2': ('mmeff.EfficientFormerV2', EfficientFormerV2,
               dict(depths=[1, 1, 2, 2], widths=[16, 32, 48, 64], num_vit=1))}
SIZE = 64


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('imagenet'))
    return make_imagefolder_dataset(root, num_classes=3, per_class=(8, 4), size=SIZE)


def tiny_model(family, task, num_classes=3):
    btype, cls, arch = TINY[family]
    if task == 'backbone':
        return randomise_(cls(arch), 0).eval()
    clf = EfficientFormerClassifier(backbone=dict(type=btype, arch=arch), num_classes=num_classes)
    return randomise_(clf, 0).as_inference_module()


# ----------------------------------------------------------------------------- bad input
def test_check_calib_data_missing_file_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"calibration folder '.*nope' does not exist: "
                                                r'pass an ImageFolder .*--calib-data'):
        check_calib_data(str(tmp_path / 'nope'))
    (tmp_path / 'a.txt').write_text('x')
    with pytest.raises(FileNotFoundError, match='is a file, not a folder'):
        check_calib_data(str(tmp_path / 'a.txt'))
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(ValueError, match=r"calibration folder '.*empty' is empty: it holds no "
                                         r'class folder; pass an ImageFolder split folder'):
        check_calib_data(str(empty))
    (empty / 'img.JPEG').write_bytes(b'')
    with pytest.raises(ValueError, match=r'1 images lie directly in it: put them in class '
                                         r'sub-folders'):
        check_calib_data(str(empty))
    (empty / 'n0').mkdir()
    with pytest.raises(ValueError, match=r"class folder '.*n0' of the calibration folder holds "
                                         r'no image'):
        check_calib_data(str(empty))


def test_check_calib_data_class_count_and_order(data):
    val = osp.join(data['data_root'], 'val')
    with pytest.raises(ValueError, match=r"has 3 class folders but the classifier has 1000 "
                                         r'classes: calibrate with images of the classes it was '
                                         r'trained on'):
        check_calib_data(val, num_classes=1000)
    paths = check_calib_data(val, num_classes=3)
    assert len(paths) == 12
    # round-robin over the classes: any prefix covers them evenly
    assert [osp.basename(osp.dirname(p)) for p in paths[:3]] == data['classes']


def test_calibration_inputs_are_the_eval_pipeline(data):
    """The preprocessing is timm's evaluation transform (resize SIZE/0.875 bicubic, centre
    crop, ImageNet mean/std), batched and padded to the input's batch size."""
    from PIL import Image
    from timm.data import create_transform
    paths = check_calib_data(osp.join(data['data_root'], 'val'))[:5]
    batches = calibration_inputs(paths, (2, 3, SIZE, SIZE), max_images=None)
    assert [b.shape for b in batches] == [(2, 3, SIZE, SIZE)] * 3
    ref = create_transform(input_size=SIZE, crop_pct=0.875, interpolation='bicubic')
    for i, p in enumerate(paths):
        expected = ref(Image.open(p).convert('RGB')).numpy()
        np.testing.assert_allclose(batches[i // 2][i % 2], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(batches[2][1], batches[0][0])  # padded with the first


def test_bad_calibration_leaves_the_target_alone(tmp_path, data):
    """A missing, empty or wrong-count calibration folder stops the export before anything is
    written: the previous file stays, byte for byte, and nothing is left beside it."""
    out = tmp_path / 'model.onnx'
    out.write_bytes(b'previous')
    model = tiny_model('v1', 'classifier', num_classes=5)
    val = osp.join(data['data_root'], 'val')
    for calib, exc, msg in [(str(tmp_path / 'none'), FileNotFoundError, 'does not exist'),
                            (val, ValueError, 'has 3 class folders but the classifier has 5')]:
        with pytest.raises(exc, match=msg):
            export_onnx_int8(model, str(out), SIZE, calib, task='classifier')
        assert out.read_bytes() == b'previous'
        assert sorted(os.listdir(tmp_path)) == ['model.onnx']


def test_quantize_onnx_file_is_atomic(tmp_path, data):
    from mmeff.runtime import write_onnx
    fp32 = str(tmp_path / 'fp32.onnx')
    write_onnx(tiny_model('v1', 'backbone'), torch.zeros(1, 3, SIZE, SIZE), fp32,
               method='torchscript')
    out = tmp_path / 'int8.onnx'
    out.write_bytes(b'previous')
    with pytest.raises(ValueError, match=r'calibration input 0 has shape \[1, 3, 32, 32\], the '
                                         r'model .* takes \[1, 3, 64, 64\]'):
        quantize_onnx_file(fp32, str(out), [np.zeros((1, 3, 32, 32), np.float32)])
    with pytest.raises(FileNotFoundError, match='FP32 ONNX model .* does not exist: export it'):
        quantize_onnx_file(str(tmp_path / 'x.onnx'), str(out), [])
    assert out.read_bytes() == b'previous'
    assert sorted(os.listdir(tmp_path)) == ['fp32.onnx', 'int8.onnx']


# ----------------------------------------------------------------------------- exports
def softmax_io_as_run(path):
    """For each Softmax of the graph ONNX Runtime runs for ``path``: whether its input comes
    dequantised (``'INT8'``) or not, and whether its output is quantised, as a set."""
    import onnx

    from mmeff.runtime import ort_session
    optimized = path + '.optimized.onnx'
    ort_session(path, optimized_model_path=optimized)
    nodes = onnx.load(optimized).graph.node
    os.remove(optimized)
    producer = {o: n.op_type for n in nodes for o in n.output}
    found = set()
    for node in nodes:
        if node.op_type == 'Softmax':
            readers = {n.op_type for n in nodes if node.output[0] in n.input}
            found.add(('INT8' if producer.get(node.input[0]) == 'DequantizeLinear' else 'FP32',
                       'INT8' if 'QuantizeLinear' in readers else 'FP32'))
    return found


@pytest.mark.parametrize('family', ['v1', 'v2'])
@pytest.mark.parametrize('task', ['classifier', 'backbone'])
def test_export_onnx_int8(tmp_path, data, family, task):
    model = tiny_model(family, task)
    out = str(tmp_path / 'int8.onnx')
    report = export_onnx_int8(model, out, SIZE, osp.join(data['data_root'], 'train'), task=task,
                              method='torchscript')  # 5x faster to export than dynamo here
    assert report['problems'] == [] and report['path'] == out and osp.isfile(out)
    assert sorted(os.listdir(tmp_path)) == ['int8.onnx']  # no FP32 copy or staging left
    assert report['calibration']['images'] == 24
    # the stem and the first stage stay FP32 by default (named as in the model)
    assert report['settings']['keep_fp32'] == [('backbone.' if task == 'classifier' else '') + m
                                               for m in DEFAULT_KEEP_FP32]
    assert KEEP_FP32_DEFAULT_REASON in report['kept_fp32_reasons']['Conv']
    # the convolutions and matrix products run in INT8 ...
    assert report['int8_ops'].get('Conv', 0) >= 4
    assert report['int8_ops'].get('MatMul', 0) + report['int8_ops'].get('Gemm', 0) >= 2
    assert report['op_histogram']['QuantizeLinear'] > 0
    # ... softmax and the normalisations stay FP32, and the report says why
    assert report['fp32_ops'].get('Softmax', 0) >= 1
    assert set(report['kept_fp32_reasons']) == set(report['fp32_ops'])
    assert report['kept_fp32_reasons']['Softmax'] == KEEP_FP32['Softmax']
    # Convs and MatMuls are INT8 but for V1's mixers (two depthwise 1x1 convs per MB4D block)
    # and the attention's operators on either side of each softmax (V1's q @ k and attn @ v,
    # V2's talking heads), kept FP32 ...
    assert not set(report['int8_ops']) & set(report['fp32_ops']) - {'Reshape', 'Transpose',
                                                                      'Conv', 'MatMul'}
    mixers = sum(isinstance(m, Meta4D) for m in model.modules())
    assert report['settings']['fp32_mixer_convs'] == 2 * mixers
    assert report['settings']['fp32_softmax_neighbours'] >= 2
    assert report['fp32_ops'].get('Conv', 0) >= 2 * mixers
    if mixers:
        assert MIXER_CONV_REASON in report['kept_fp32_reasons']['Conv']
    assert SOFTMAX_NEIGHBOUR_REASON in '; '.join(report['kept_fp32_reasons'].values())
    # ... and so ONNX Runtime, which fuses every operator whose inputs and output are
    # quantised (V2's residual sums: QLinearAdd), runs each softmax in FP32 on FP32 logits
    # and hands on FP32 probabilities.
    ran = report['onnxruntime_ops']
    assert ran['fp32']['Softmax'] == report['fp32_ops']['Softmax']
    assert 'QLinearSoftmax' not in ran['int8'] and ran['int8']['QLinearConv'] >= 4
    assert re.search(r'ONNX Runtime runs \(this CPU\): integer kernels .*QLinearConv \d+.*; '
                     r'FP32 .*Softmax \d+', format_int8_report(report))
    assert softmax_io_as_run(out) == {('FP32', 'FP32')}
    if family == 'v1':
        assert report['fp32_ops'].get('LayerNormalization', 0) >= 1
    assert report['file_size_bytes'] < report['fp32_file_size_bytes']
    err = report['int8_vs_fp32']
    names = [o['name'] for o in report['outputs']]
    assert list(err['rel_err_per_output']) == names
    if task == 'backbone':
        assert names == ['stage0', 'stage1', 'stage2', 'stage3']
    else:
        assert names == ['logits'] and 0 <= err['top1_agreement'] <= 1
    # 8-bit rounding shows, but the INT8 model computes the same function
    assert 1e-4 < err['rel_err'] < 0.3, err
    # timed on this CPU against the FP32 graph, interleaved
    sp = report['speed']
    assert sp['int8_ms'] > 0 and sp['fp32_ms'] > 0 and 3 <= sp['reps'] <= 20
    assert sp['speedup'] == pytest.approx(sp['fp32_ms'] / sp['int8_ms'], rel=0.01)
    assert sp['input_shape'] == [1, 3, SIZE, SIZE]
    text = format_int8_report(report)
    assert 'kept FP32: ' in text and 'checks: all passed' in text
    assert re.search(r'speed on this CPU \(ONNX Runtime, 1x3x\d+x\d+, median of \d+ '
                     r'interleaved calls\): INT8 [\d.]+ ms, FP32 [\d.]+ ms', text)


def test_int8_report_says_when_int8_is_not_faster():
    """The report's speed line, and a note with the file size and what to do where INT8 was
    slower than FP32 on this CPU (V2-S1 at 224 on the project's 2-core Xeon)."""
    base = dict(path='m.onnx', file_size_bytes=2**20, fp32_file_size_bytes=4 * 2**20,
                settings=dict(format='QDQ', weights='int8', per_channel=True,
                              activations='uint8 (MinMax)'),
                calibration=dict(images=8, source='calib'), int8_ops={'Conv': 3},
                fp32_ops={'Softmax': 1}, problems=[])
    faster = dict(base, speed=dict(int8_ms=10.0, fp32_ms=13.0, speedup=1.3, reps=20,
                                   threads=None, input_shape=[1, 3, 224, 224]))
    text = format_int8_report(faster)
    assert ('speed on this CPU (ONNX Runtime, 1x3x224x224, median of 20 interleaved calls): '
            'INT8 10.00 ms, FP32 13.00 ms (1.30x)') in text
    assert 'not faster' not in text
    slower = dict(base, speed=dict(faster['speed'], int8_ms=13.0, fp32_ms=11.0, speedup=0.85),
                  onnxruntime_ops=dict(int8={'QLinearConv': 96}, fp32={
                      'Gelu': 49, 'ReorderOutput': 60, 'Transpose': 46, 'Softmax': 5, 'Add': 11}))
    text = format_int8_report(slower)
    assert '(0.85x)' in text and 'INT8 is not faster than FP32 here' in text
    assert 'runs in FP32 (most: Gelu 49, Transpose 46, Add 11) cost more' in text
    assert 'the file is 4.0x smaller' in text and '--runtimes onnxruntime onnxruntime-int8' in text
    assert 'More stages FP32 may help (--keep-fp32 stem stages.0 stages.1 stages.2)' in text
    assert 'speed on this CPU' not in format_int8_report(base)  # speed=False: no line


def test_int8_export_fails_where_onnx_runtime_would_quantise_the_softmax(tmp_path, data,
                                                                          monkeypatch):
    """Without the talking-head convs beside V2's softmax kept FP32, ONNX Runtime fuses the
    softmax into a QLinearSoftmax (8-bit logits in, 8-bit probabilities out): the export
    names it and leaves no file."""
    import mmeff.deploy.quantize as quantize
    monkeypatch.setattr(quantize, 'softmax_neighbours', lambda proto: [])
    out = tmp_path / 'int8.onnx'
    report = export_onnx_int8(tiny_model('v2', 'classifier'), str(out), SIZE,
                              osp.join(data['data_root'], 'train'), task='classifier',
                              method='torchscript')
    assert 'QLinearSoftmax' in report['onnxruntime_ops']['int8']
    assert any(p.startswith('ONNX Runtime runs Softmax as INT8 kernels (QLinearSoftmax): keep '
                            'the operators beside it FP32') for p in report['problems'])
    assert not out.exists() and report['rejected'] == str(out)


@pytest.mark.slow  # training + two exports: ~40 s here
@pytest.mark.parametrize('family', ['v1', 'v2'])
def test_int8_classifier_that_learned_keeps_its_top1(tmp_path, data, family):
    """A classifier trained on the generated classes (tools/benchmark_int8.py's training):
    the INT8 model's top-1 on the val split stays that of the FP32 model."""
    from mmeff.deploy import export_onnx
    tool = load_tool(ROOT, 'benchmark_int8')
    btype, _, arch = TINY[family]
    model = tool.train_classifier(arch, data['data_root'], SIZE, steps=25, lr=3e-3,
                                  log=lambda *_: None, backbone_type=btype)
    val, train = (osp.join(data['data_root'], s) for s in ('val', 'train'))
    fp32 = str(tmp_path / 'fp32.onnx')
    export_onnx(model, fp32, (1, 3, SIZE, SIZE), method='torchscript')
    int8 = str(tmp_path / 'int8.onnx')
    export_onnx_int8(model, int8, SIZE, train, task='classifier', method='torchscript')
    top_fp32, top_int8 = onnx_top1(fp32, val), onnx_top1(int8, val)
    assert top_fp32['images'] == 12
    assert top_fp32['top1'] >= 0.75  # it learned the classes (chance: 1/3)
    assert top_int8['top1'] >= top_fp32['top1'] - 1 / 12  # at most one image changes


# ----------------------------------------------------------------------------- mixed precision
def test_node_modules_reads_both_exporters():
    """Module paths from the torch.export-based exporter's name scopes (the last entry is the
    FX node) and from the TorchScript exporter's node names; named relative to the export
    wrapper every path starts with."""
    from onnx import helper

    def node(name, scopes=None):
        n = helper.make_node('Relu', ['x'], [name + '_out'], name=name)
        if scopes is not None:
            entry = n.metadata_props.add()
            entry.key, entry.value = 'pkg.torch.onnx.name_scopes', repr(scopes)
        return n

    nodes = [node('node_conv2d', ['', 'model', 'model.stages', 'model.stages.0',
                                  'model.stages.0.blocks.0.mlp.fc1.conv', 'conv2d']),
             node('/model/stages.1/blocks.0/mlp/fc1/Conv'),
             node('/model/stem/conv1/Conv'), node('Identity_3'), node('bad', 'not a list')]
    proto = helper.make_model(helper.make_graph(nodes, 'g', [], []))
    assert node_modules(proto) == {'node_conv2d': 'model.stages.0.blocks.0.mlp.fc1.conv',
                                   '/model/stages.1/blocks.0/mlp/fc1/Conv':
                                       'model.stages.1.blocks.0.mlp.fc1',
                                   '/model/stem/conv1/Conv': 'model.stem.conv1',
                                   'Identity_3': '', 'bad': ''}
    assert module_nodes(proto, ['stages.0']) == ['node_conv2d']
    assert module_nodes(proto, ['model.stages.1', 'stem']) == [
        '/model/stages.1/blocks.0/mlp/fc1/Conv', '/model/stem/conv1/Conv']
    assert module_nodes(proto, ['stages']) == ['node_conv2d',
                                               '/model/stages.1/blocks.0/mlp/fc1/Conv']
    with pytest.raises(ValueError, match=r"no operator of the exported graph comes from "
                                         r"module\(s\) \['stages.2', 'stage'\]: name modules as "
                                         r"the model's named_modules\(\) does, e.g. stages.0, "
                                         r"stages.1, stem.conv1"):
        module_nodes(proto, ['stages.0', 'stages.2', 'stage'])


@pytest.mark.parametrize('method', ['torchscript', 'dynamo'])
def test_export_onnx_int8_keeps_the_modules_asked_fp32(tmp_path, data, method):
    """Mixed precision: every convolution of the modules kept FP32 stays FP32 (its weight is
    not dequantised) and the others are INT8, with the reason in the report. By default the
    stem and the first stage; --keep-fp32 names others; [] (--keep-fp32 none) keeps none."""
    import onnx
    model = tiny_model('v1', 'backbone')
    train = osp.join(data['data_root'], 'train')
    export_onnx(model, str(tmp_path / 'fp32.onnx'), SIZE, method=method)
    exported = node_modules(onnx.load(str(tmp_path / 'fp32.onnx')))

    def int8_convs(keep, name):
        out = str(tmp_path / f'{name}.onnx')
        report = export_onnx_int8(model, out, SIZE, train, task='backbone', method=method,
                                  speed=False, **({} if keep == 'default' else
                                                  dict(keep_fp32=keep)))
        assert report['problems'] == []
        proto = onnx.load(out)
        # module paths as exported (the INT8 graph keeps node names, not always the metadata)
        paths = dict(node_modules(proto), **{n: p for n, p in exported.items() if p})
        producer = {o: n.op_type for n in proto.graph.node for o in n.output}
        found = {}
        for n in proto.graph.node:
            if n.op_type == 'Conv':
                module = re.sub(r'^model\.', '', paths[n.name])
                where = module.split('.')[0] if module.startswith('stem') else \
                    '.'.join(module.split('.')[:2])
                found.setdefault(where, []).append(producer.get(n.input[1]) == 'DequantizeLinear')
        return report, {k: sum(v) for k, v in found.items()}, {k: len(v) for k, v in found.items()}

    default, int8, total = int8_convs('default', 'default')
    assert default['settings']['keep_fp32'] == list(DEFAULT_KEEP_FP32) == ['stem', 'stages.0']
    assert KEEP_FP32_DEFAULT_REASON in default['kept_fp32_reasons']['Conv']
    assert int8['stem'] == int8['stages.0'] == 0 and total['stem'] == 2
    assert all(int8[s] > 0 for s in ('stages.1', 'stages.2', 'stages.3'))
    asked, int8_asked, _ = int8_convs(['stages.1'], 'asked')
    assert asked['settings']['keep_fp32'] == ['stages.1']
    assert 'in a module kept FP32 as asked (stages.1)' in asked['kept_fp32_reasons']['Conv']
    assert int8_asked['stages.1'] == 0 and int8_asked['stem'] == 2 and int8_asked['stages.0'] > 0
    none, int8_none, _ = int8_convs([], 'none')
    assert none['settings']['keep_fp32'] == [] and int8_none['stem'] == 2
    mixers = 2 * sum(isinstance(m, Meta4D) for m in model.stages[0].modules())  # FP32 anyway
    assert int8_none['stages.0'] == total['stages.0'] - mixers > 0
    assert none['int8_ops']['Conv'] == default['int8_ops']['Conv'] + 2 + int8_none['stages.0']


def test_keep_fp32_names_a_classifiers_modules_as_its_backbones(tmp_path, data):
    report = export_onnx_int8(tiny_model('v2', 'classifier'), str(tmp_path / 'int8.onnx'), SIZE,
                              osp.join(data['data_root'], 'train'), task='classifier',
                              method='torchscript', speed=False,
                              keep_fp32=['stages.1', 'backbone.stem'])
    assert report['problems'] == []
    assert report['settings']['keep_fp32'] == ['backbone.stages.1', 'backbone.stem']
    assert ('in a module kept FP32 as asked (backbone.stages.1, backbone.stem)'
            in report['kept_fp32_reasons']['Conv'])


def test_keep_fp32_names_a_module_the_model_lacks(tmp_path, data):
    out = tmp_path / 'int8.onnx'
    with pytest.raises(ValueError, match=r"--keep-fp32 stage.0: the model has no such module; "
                                         r"name modules as its named_modules\(\) does, e.g. "
                                         r".*stages.0"):
        export_onnx_int8(tiny_model('v1', 'backbone'), str(out), SIZE,
                         osp.join(data['data_root'], 'train'), task='backbone',
                         keep_fp32=['stage.0'])
    assert not os.listdir(tmp_path)
