"""Fusion (BN + layer scales + cached bias), ONNX and Core ML export, the export and Core ML
latency tools. Core ML predictions need macOS: here the conversion and the spec checks run,
and the latency tool's refusal (with proxies) is tested."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from mmeff.converters import convert_timm
from mmeff.deploy.export import ExportGroupNorm
from mmeff.deploy import (build_model, cache_attention_bias, coreml_problems, export_coreml,
                          export_onnx, fuse_conv_bn, fuse_model, fusion_report, inspect_coreml,
                          parse_input_shape, token_grid)
from mmeff.models import EfficientFormer
from mmeff.models.classifiers import EfficientFormerClassifier
from mmeff.models.layers import Attention, LayerScale, Meta4D

from helpers import load_tool, randomise_, rel_err, timm_efficientformer

# (arch, input size) per case: l1 at the paper's 224, l3/l7 at a small non-square size whose
# 4x3 token grid needs the resized bias (keeps the test fast on 2 cores).
FUSE_CASES = [('l1', (224, 224)), ('l3', (128, 96)), ('l7', (128, 96))]
N_MB4D = {'l1': 14, 'l3': 22, 'l7': 30}


def randomised_backbone(arch, seed=0, **kwargs):
    return randomise_(EfficientFormer(arch, **kwargs), seed).eval()


# ----------------------------------------------------------------------------- fusion
def test_fuse_conv_bn_equals_conv_then_bn():
    g = torch.Generator().manual_seed(0)
    for bias in (True, False):
        conv = nn.Conv2d(6, 10, 3, 2, 1, bias=bias)
        bn = nn.BatchNorm2d(10, eps=1e-3)
        for t in (*conv.parameters(), bn.weight, bn.bias, bn.running_mean):
            t.data.copy_(torch.randn(t.shape, generator=g))
        bn.running_var.copy_(0.1 + torch.rand(10, generator=g))
        bn.eval()
        x = torch.randn(2, 6, 9, 11, generator=g)
        with torch.no_grad():
            assert rel_err(fuse_conv_bn(conv, bn)(x), bn(conv(x))) < 1e-6


@pytest.mark.parametrize('arch,size', FUSE_CASES)
def test_fused_equals_unfused(arch, size):
    model = randomised_backbone(arch)  # layer scales ~1, random BN statistics
    fused = fuse_model(model, size)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, outs = model(x), fused(x)
    for o, e in zip(outs, expected):
        assert e.abs().mean() > 1e-2  # every block matters
        assert rel_err(o, e) <= 1e-5, (arch, rel_err(o, e))
    report = fusion_report(fused)
    n_attn = EfficientFormer.arch_settings[arch]['num_vit']
    assert report == dict(batchnorms=0, layer_scales=N_MB4D[arch], mb4d_ls1=N_MB4D[arch],
                          attention=n_attn, cached_bias_grids=[token_grid(*size)])
    # the argument is not modified
    assert fusion_report(model)['batchnorms'] > 0
    assert fusion_report(model)['cached_bias_grids'] == []


def test_fused_model_still_runs_at_other_sizes():
    model = randomised_backbone('l1', out_norm_cfg=None)
    fused = fuse_model(model, 224)  # bias cached for 7x7
    x = torch.randn(1, 3, 100, 164)  # 4x6 tokens: computed on the fly, like the unfused model
    with torch.no_grad():
        for o, e in zip(fused(x), model(x)):
            assert rel_err(o, e) <= 1e-5
    dynamic = fuse_model(model)  # no input size: nothing cached
    assert fusion_report(dynamic)['cached_bias_grids'] == []
    with torch.no_grad():
        assert rel_err(dynamic(x)[-1], model(x)[-1]) <= 1e-5


def test_fuse_classifier_inference_module():
    clf = EfficientFormerClassifier(backbone=dict(arch='l1'), num_classes=10)
    randomise_(clf)
    net = clf.as_inference_module()
    fused = fuse_model(net, (160, 192))
    x = torch.randn(2, 3, 160, 192)
    with torch.no_grad():
        assert rel_err(fused(x), net(x)) <= 1e-5
    assert fusion_report(fused)['batchnorms'] == 0


def test_unfoldable_norms_are_kept():
    # With GroupNorm there is no BN to fold; MB4D ls2 must then stay after the norm.
    model = randomised_backbone('l1', norm_cfg=dict(type='GN', num_groups=4))
    fused = fuse_model(model, 64)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for o, e in zip(fused(x), model(x)):
            assert rel_err(o, e) <= 1e-5
    blocks = [m for m in fused.modules() if isinstance(m, Meta4D)]
    assert all(isinstance(b.ls2, LayerScale) for b in blocks)
    assert all(isinstance(b.mlp.norm2, nn.GroupNorm) for b in blocks)


def test_fuse_errors_and_input_sizes():
    with pytest.raises(ValueError, match='contains no mmeff EfficientFormer'):
        fuse_model(nn.Sequential(nn.Conv2d(3, 3, 1)))
    with pytest.raises(ValueError, match="is not 'N' or 'HxW'"):
        fuse_model(EfficientFormer('l1'), 'big')
    assert parse_input_shape('800x1333') == (1, 3, 800, 1333)
    assert parse_input_shape((2, 3, 64, 96)) == (2, 3, 64, 96)
    assert parse_input_shape(224) == (1, 3, 224, 224)
    assert token_grid(800, 1333) == (25, 42)
    assert token_grid(224, 224) == (7, 7)


def test_cache_attention_bias_only():
    model = EfficientFormer('l3').eval()
    cached = cache_attention_bias(model, (512, 512))
    attns = [m for m in cached.modules() if isinstance(m, Attention)]
    assert all(a._cached_grid == (16, 16) and a.cached_bias.shape == (8, 256, 256)
               for a in attns)
    assert fusion_report(cached)['batchnorms'] == fusion_report(model)['batchnorms'] > 0


# ----------------------------------------------------------------------------- building
def test_build_model_from_config_ignores_the_current_default_scope(repo_root):
    """A Runner of mmseg/mmdet earlier in the process leaves its default scope current; the
    export tools must still build mmeff's classifier from its config (seen in the full suite:
    'EfficientFormerClassifier is not in the mmseg::model registry')."""
    from mmengine.registry import DefaultScope
    cls_cfg = os.path.join(repo_root, 'configs/classification/effformer_l1_in1k.py')
    DefaultScope.get_instance('test_leaked_mmseg_scope', scope_name='mmseg')
    try:
        net, meta = build_model(cls_cfg, task='classifier')
    finally:
        DefaultScope._instance_dict.pop('test_leaked_mmseg_scope', None)
    assert meta['arch'] == 'l1' and net(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_build_model_from_config_and_checkpoints(tmp_path, repo_root):
    cfg = os.path.join(repo_root, 'configs/segmentation/fpn_effformer_l1_ade20k_40k.py')
    model, meta = build_model(cfg, task='backbone')
    assert isinstance(model, EfficientFormer) and model.out_indices == (0, 1, 2, 3)
    assert meta['arch'] == 'l1' and meta['weights'].startswith('random')

    ref = timm_efficientformer('l1', num_classes=10)
    ckpt = tmp_path / 'timm_l1.pth'
    torch.save(ref.state_dict(), ckpt)  # timm layout: converted on load
    x = torch.randn(1, 3, 224, 224)
    bb, meta = build_model('l1', task='backbone', checkpoint=str(ckpt), out_indices=(3,))
    assert 'timm layout' in meta['weights']
    with torch.no_grad():
        expected = ref.forward_intermediates(x, intermediates_only=True)[-1]
        raw = EfficientFormer('l1', out_indices=(3,), out_norm_cfg=None)
        raw.load_state_dict({k[9:]: v for k, v in convert_timm(ref.state_dict()).items()
                             if k.startswith('backbone.')})
        assert rel_err(raw.eval()(x)[0], expected) < 1e-5
        # the built backbone has the loaded weights (its output GroupNorm is extra)
        assert torch.equal(bb.stem.conv1.weight, raw.stem.conv1.weight)
    with pytest.raises(Exception, match='num_classes'):  # 10-class checkpoint, 1000 classes
        build_model('l1', task='classifier', checkpoint=str(ckpt), num_classes=1000)
    clf, _ = build_model('l1', task='classifier', checkpoint=str(ckpt), num_classes=10)
    with torch.no_grad():
        assert rel_err(clf(x), ref(x)) < 1e-5
    cls_cfg = os.path.join(repo_root, 'configs/classification/effformer_l1_in1k.py')
    net, meta = build_model(cls_cfg, task='classifier')
    assert meta['arch'] == 'l1'
    with torch.no_grad():
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(ValueError) as error:  # names every family's archs, then the config
        build_model('l2')
    from mmeff.models.families import FAMILIES
    for family in FAMILIES.values():
        assert f'an {family.label} arch: one of {sorted(family.archs)}' in str(error.value)
    assert str(error.value).endswith("or a config file path ending in .py, got 'l2'")
    with pytest.raises(ValueError, match='model.backbone is not an EfficientFormer|'
                                         "needs model.type 'EfficientFormerClassifier'"):
        build_model(cfg, task='classifier')


# ----------------------------------------------------------------------------- ONNX
def test_onnx_export_matches_torch(tmp_path):
    import onnxruntime as ort
    model = randomised_backbone('l1')
    path = str(tmp_path / 'l1.onnx')
    report = export_onnx(model, path, (1, 3, 128, 192), dynamic_batch=True)
    assert report['gather_ops'] == 0
    assert report['onnxruntime']['rel_err'] < 1e-4
    assert 'BatchNormalization' not in report['op_histogram']
    assert [o['name'] for o in report['outputs']] == ['stage0', 'stage1', 'stage2', 'stage3']
    # independently: ONNX Runtime at batch 3 against the *unfused* torch model
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    x = torch.randn(3, 3, 128, 192, generator=torch.Generator().manual_seed(3))
    outs = sess.run(None, {'image': x.numpy()})
    with torch.no_grad():
        expected = model(x)
    for o, e in zip(outs, expected):
        assert o.shape == tuple(e.shape)
        assert rel_err(torch.from_numpy(o), e) < 1e-4


def test_export_group_norm_keeps_onnx_runtime_accurate(tmp_path):
    import onnxruntime as ort
    g = torch.Generator().manual_seed(0)
    for groups in (1, 4):
        gn = nn.GroupNorm(groups, 48)
        gn.weight.data.normal_(generator=g)
        gn.bias.data.normal_(generator=g)
        x = torch.randn(2, 48, 9, 11, generator=g) + 3
        with torch.no_grad():
            assert rel_err(ExportGroupNorm(gn)(x), gn(x)) < 1e-6
    # Stage 0 of an 800x1333 input: 3.2M values per group, with an offset. One-pass float32
    # sums in ONNX Runtime lose ~1e-3 here; the two-step reduction stays at torch's accuracy.
    x = torch.randn(1, 48, 200, 334, generator=g) * 0.5 + 3
    with torch.no_grad():
        expected = gn.double()(x.double())
    gn.float()
    path = str(tmp_path / 'gn.onnx')
    torch.onnx.export(ExportGroupNorm(gn).eval(), (x,), path, input_names=['x'], dynamo=True,
                      external_data=False, verbose=False)
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    out = torch.from_numpy(sess.run(None, {'x': x.numpy()})[0])
    assert rel_err(out, expected) < 2e-6


# ----------------------------------------------------------------------------- Core ML
@pytest.fixture(scope='module')
def coreml_exports(tmp_path_factory):
    """L1 classifier at 224 (the paper's model) and L1 backbone at 128x192 (dense, non-square),
    converted once for the tests below."""
    out = tmp_path_factory.mktemp('coreml')
    clf = EfficientFormerClassifier(backbone=dict(arch='l1'), num_classes=1000)
    cls_report = export_coreml(clf.as_inference_module(), str(out / 'l1_cls_224.mlpackage'),
                               224, metadata={'mmeff.arch': 'l1', 'mmeff.task': 'classifier'})
    bb = EfficientFormer('l1')
    bb_report = export_coreml(bb, str(out / 'l1_bb_128x192.mlpackage'), (128, 192),
                              metadata={'mmeff.arch': 'l1', 'mmeff.task': 'backbone'})
    return dict(classifier=(cls_report, clf), backbone=(bb_report, bb))


@pytest.mark.parametrize('which', ['classifier', 'backbone'])
def test_coreml_export_spec_checks(coreml_exports, which):
    report, model = coreml_exports[which]
    assert report['problems'] == []
    assert report['method'] == 'torch.export' and report['fallback_reason'] is None
    assert report['model_type'] == 'mlProgram' and report['spec_version'] >= 7  # iOS 16
    assert report['gather_ops'] == 0
    assert report['non_fp16_tensors'] == []
    assert report['float_dtypes']['FLOAT16'] > 100
    hist = report['op_histogram']
    assert hist['conv'] == 33 and 'batch_norm' not in hist  # L1: 33 convs, all BN folded
    # kept MB4D ls1, attention scale, head average, 2 per output GroupNorm: no other layer scale
    n_gn = sum(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert hist['mul'] <= N_MB4D['l1'] + 2 + 2 * n_gn
    n_params = sum(p.numel() for p in model.parameters())
    assert 1.9 * n_params < report['file_size_bytes'] < 2.2 * n_params  # FP16 weights
    inputs, outputs = report['inputs'], report['outputs']
    assert inputs[0]['dtype'] == 'FLOAT32' and all(o['dtype'] == 'FLOAT32' for o in outputs)
    assert all(t.startswith('cast') for t in report['io_tensors'])
    assert len(report['io_tensors']) == 1 + len(outputs)  # input cast + output casts
    if which == 'classifier':
        assert inputs[0]['shape'] == [1, 3, 224, 224]
        assert outputs == [dict(name='logits', kind='tensor', shape=[1, 1000], dtype='FLOAT32')]
    else:
        assert inputs[0]['shape'] == [1, 3, 128, 192]
        assert [o['name'] for o in outputs] == ['stage0', 'stage1', 'stage2', 'stage3']
        assert [o['shape'][1:] for o in outputs] == [list(s) for s in model.output_shape(128, 192)]
    # reloading from disk gives the same report (inspection works on Linux)
    again = inspect_coreml(report['path'])
    assert again['op_histogram'] == hist and again['metadata']['mmeff.compute_units'] == 'ALL'


@pytest.mark.parametrize('arch,task,size', [
    ('l3', 'classifier', 224), ('l1', 'backbone', (800, 1333)),
    pytest.param('l7', 'classifier', 224, marks=pytest.mark.slow)])
def test_coreml_export_heavier_cases(tmp_path, arch, task, size):
    model, _ = build_model(arch, task=task)
    report = export_coreml(model, str(tmp_path / f'{arch}.mlpackage'), size)
    assert report['problems'] == [] and report['method'] == 'torch.export'
    assert report['gather_ops'] == 0 and 'batch_norm' not in report['op_histogram']
    h, w = (size, size) if isinstance(size, int) else size
    assert report['inputs'][0]['shape'] == [1, 3, h, w]


def test_coreml_checks_catch_fp32_and_gather(tmp_path):
    import coremltools as ct
    model = EfficientFormer('l1', out_indices=(3,), out_norm_cfg=None).eval()
    report = export_coreml(model, str(tmp_path / 'fp32.mlpackage'), 64, precision='fp32')
    assert report['non_fp16_tensors'] and not report['float_dtypes'].get('FLOAT16')
    problems = coreml_problems(report, expect_fp16=True)
    assert problems[0].endswith(f"are not FP16, e.g. {report['non_fp16_tensors'][:3]}")
    assert coreml_problems(report, expect_fp16=False) == []
    # A graph that does gather at run time (index_select on the input) is caught.
    class Gatherer(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer('idx', torch.tensor([2, 0, 1]))

        def forward(self, x):
            return x[:, self.idx] * 2

    x = torch.randn(1, 3, 8, 8)
    ep = torch.export.export(Gatherer(), (x,)).run_decompositions({})
    mlmodel = ct.convert(ep, inputs=[ct.TensorType(name='image', shape=x.shape)],
                         convert_to='mlprogram', minimum_deployment_target=ct.target.iOS16,
                         skip_model_load=True)
    mlmodel.save(str(tmp_path / 'gather.mlpackage'))
    raw = inspect_coreml(str(tmp_path / 'gather.mlpackage'))
    assert raw['gather_ops'] == 1
    assert any('1 gather op(s) remain' in p for p in coreml_problems(raw))


def test_coreml_export_compressed(tmp_path):
    """export_coreml(compress=...) compresses the weights before the package is saved: the
    report carries the compression figures and passes the checks, the package records the
    mode; a mode that does not exist fails before anything is converted or written."""
    model = EfficientFormer(dict(depths=[1, 1, 1, 1], widths=[16, 32, 48, 64], num_vit=1),
                            out_norm_cfg=None).eval()
    report = export_coreml(model, str(tmp_path / 'c.mlpackage'), (1, 3, 64, 64), compress='int8')
    assert report['problems'] == []
    info = report['compression']
    assert info['mode'] == 'int8' and 0 < info['weight_bytes'] < 0.75 * info['fp16_weight_bytes']
    assert report['metadata']['mmeff.compress'] == 'int8'
    kind = 'constexpr_affine_dequantize'
    assert report['op_histogram'][kind] == info['compressed_tensors'][kind] >= 4
    with pytest.raises(ValueError, match='compression mode must be one of'):
        export_coreml(model, str(tmp_path / 'd.mlpackage'), (1, 3, 64, 64),
                      compress='palettize2')
    assert sorted(os.listdir(tmp_path)) == ['c.mlpackage']


def test_coreml_trace_fallback_with_image_input(tmp_path):
    model = EfficientFormer('l1', out_indices=(3,), out_norm_cfg=None)
    report = export_coreml(model, str(tmp_path / 'img.mlpackage'), (64, 96), method='trace',
                           image_input=True, compute_units='CPU_AND_NE')
    assert report['method'] == 'torch.jit.trace'
    assert report['problems'] == []
    assert report['inputs'][0]['kind'] == 'image' and report['inputs'][0]['dtype'] == 'RGB'
    assert report['metadata']['mmeff.compute_units'] == 'CPU_AND_NE'
    # the ImageType's 1/255 scale runs on the FP32 input before the cast: an I/O tensor
    assert any(t.startswith('mul') for t in report['io_tensors'])
    with pytest.raises(ValueError, match='ending in .mlpackage'):
        export_coreml(model, str(tmp_path / 'x.mlmodel'), 64)


# ----------------------------------------------------------------------------- tools
def _run_tool(repo_root, *args):
    return subprocess.run([sys.executable, *args], cwd=repo_root, capture_output=True,
                          text=True, timeout=300)


def test_export_tool_onnx(tmp_path, repo_root):
    export_tool = load_tool(repo_root, 'export')
    out, rep = tmp_path / 'm.onnx', tmp_path / 'report.json'
    rc = export_tool.main(['l1', '--format', 'onnx', '--input-size', '64x96', '--out',
                           str(out), '--report-json', str(rep), '--out-indices', '2', '3'])
    assert rc == 0 and out.exists()
    report = json.loads(rep.read_text())
    assert report['model']['arch'] == 'l1' and report['gather_ops'] == 0
    assert report['fusion']['batchnorms'] == 0 and report['fusion']['cached_bias_grids'] == [
        [2, 3]]
    assert [o['shape'] for o in report['outputs']] == [[1, 224, 4, 6], [1, 448, 2, 3]]
    assert report['onnxruntime']['rel_err'] < 1e-4


def test_coreml_latency_refuses_on_linux_and_prints_proxies(coreml_exports, repo_root):
    report, _ = coreml_exports['backbone']
    if sys.platform == 'darwin':
        pytest.skip('this is the non-macOS path; on macOS the tool times Core ML')
    res = _run_tool(repo_root, 'tools/coreml_latency.py', report['path'], '--proxy-reps', '2',
                    '--proxy-warmup', '0', '--threads', '1')
    assert res.returncode == 3, res.stderr[-2000:]
    assert 'cannot time Core ML predictions here' in res.stderr
    assert 'need macOS' in res.stderr and 'Performance Report' in res.stderr
    assert 'NOT iPhone 12 / Core ML figures' in res.stdout
    for runtime in ('fused', 'onnxruntime'):
        line = next(ln for ln in res.stdout.splitlines() if ln.strip().startswith(
            f'PROXY {runtime}'))
        assert 'median' in line and 'ms' in line and 'CPU' in line
    assert 'not directly comparable' in res.stdout  # backbone at 128x192 vs paper's 224 cls
    usage = _run_tool(repo_root, 'tools/coreml_latency.py', report['path'], '--reps', '10')
    assert usage.returncode == 2 and '--reps must be at least 500' in usage.stderr
