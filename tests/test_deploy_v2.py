"""EfficientFormerV2 deployment: build_model, ONNX (checked with ONNX Runtime) and Core ML."""
import os
import subprocess
import sys

import pytest
import torch

from mmeff.deploy import build_model, coreml_problems, export_coreml, export_onnx
from mmeff.deploy.export import ExportWrapper, forbidden_torch_ops, onnx_problems
from mmeff.models import EfficientFormer, EfficientFormerV2

from helpers import rel_err
from test_converters_v2 import timm_v2, timm_v2_to_authors


def test_build_model_v2_names_and_configs(repo_root):
    bb, meta = build_model('s0', task='backbone')
    assert isinstance(bb, EfficientFormerV2) and not bb.training
    assert (meta['arch'], meta['name']) == ('s0', 'v2_s0')
    clf, _ = build_model('S0', task='classifier', num_classes=10)
    with torch.no_grad():
        assert clf(torch.rand(1, 3, 64, 96)).shape == (1, 10)
    v1, meta = build_model('l1', task='backbone')  # V1 unchanged
    assert type(v1) is EfficientFormer and meta['name'] == 'l1'
    seg = os.path.join(repo_root, 'configs/segmentation/fpn_effformerv2_s1_ade20k_40k.py')
    bb, meta = build_model(seg, task='backbone', out_indices=(2, 3))
    assert isinstance(bb, EfficientFormerV2) and meta['arch'] == 's1'
    assert bb.out_indices == (2, 3)
    cls_cfg = os.path.join(repo_root, 'configs/classification/effformerv2_s0_in1k.py')
    net, meta = build_model(cls_cfg, task='classifier')
    assert meta['arch'] == 's0'
    with torch.no_grad():
        assert net(torch.rand(1, 3, 64, 64)).shape == (1, 1000)
    with pytest.raises(ValueError) as error:  # names every family's archs, then the config
        build_model('s3')
    from mmeff.models.families import FAMILIES
    for family in FAMILIES.values():
        assert f'an {family.label} arch: one of {sorted(family.archs)}' in str(error.value)
    assert str(error.value).endswith("or a config file path ending in .py, got 's3'")


def test_build_model_v2_loads_timm_and_authors_checkpoints(tmp_path):
    ref = timm_v2('s0', seed=3, num_classes=10)
    timm_file, authors_file = tmp_path / 'timm_s0.pth', tmp_path / 'eformer_s0_450.pth'
    torch.save(ref.state_dict(), timm_file)
    torch.save({'model': timm_v2_to_authors(ref.state_dict())}, authors_file)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        clf, meta = build_model('s0', task='classifier', checkpoint=str(timm_file),
                                num_classes=10)
        assert 'timm layout' in meta['weights']
        assert rel_err(clf(x), ref(x)) < 1e-5
        bb, meta = build_model('s0', task='backbone', checkpoint=str(authors_file))
        assert 'authors layout' in meta['weights']
        for a, b in zip(bb(x), ref.forward_intermediates(x, intermediates_only=True)):
            assert rel_err(a, b) < 1e-5
    with pytest.raises(Exception, match='does not fit this arch'):  # S0 weights, S1 model
        build_model('s1', task='backbone', checkpoint=str(timm_file))


def test_export_tool_onnx_v2_odd_grid(tmp_path, repo_root):
    """tools/export.py s0 --format onnx at 208x176 (stride-16 grid 13x11, both odd): ONNX
    Runtime agrees with torch, no gather and no bicubic resize in the graph."""
    out, report = tmp_path / 's0.onnx', tmp_path / 'report.json'
    res = subprocess.run([sys.executable, 'tools/export.py', 's0', '--format', 'onnx',
                          '--input-size', '208x176', '--out', str(out), '--report-json',
                          str(report)], cwd=repo_root, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    import json
    rep = json.loads(report.read_text())
    assert rep['gather_ops'] == 0 and rep['bicubic_ops'] == 0 and rep['problems'] == []
    assert rep['onnxruntime']['rel_err'] < 1e-4
    assert [o['shape'] for o in rep['outputs']] == [[1, 32, 52, 44], [1, 48, 26, 22],
                                                    [1, 96, 13, 11], [1, 176, 7, 6]]
    assert rep['model']['arch'] == 's0'
    assert not any('bicubic' in op.lower() or 'gather' in op.lower()
                   for op in rep['op_histogram'])


@pytest.mark.parametrize('size,grids', [
    ((128, 128), [(32, 32), (16, 16), (8, 8), (4, 4)]),
    ((144, 176), [(36, 44), (18, 22), (9, 11), (5, 6)])])
def test_coreml_export_v2_even_and_odd_grid(tmp_path, size, grids):
    """S0 backbone to Core ML (mlprogram, iOS 16, FP16) with an even stride-16 grid (8x8, as
    at 224) and an odd one (9x11, cropped after the strided attention's upsampling): every
    check passes, no gather or bicubic op is in the spec."""
    model, _ = build_model('s0', task='backbone')
    report = export_coreml(model, str(tmp_path / 's0.mlpackage'), (1, 3) + size,
                           metadata={'mmeff.arch': 's0', 'mmeff.task': 'backbone'})
    assert report['problems'] == [], report['problems']
    assert report['method'] == 'torch.export', report['fallback_reason']
    assert report['model_type'] == 'mlProgram' and report['spec_version'] >= 7
    assert report['gather_ops'] == 0 and report['bicubic_ops'] == 0
    assert not any('bicubic' in op or 'gather' in op for op in report['op_histogram'])
    assert report['float_dtypes'].get('FLOAT16') and not report['non_fp16_tensors']
    assert [o['shape'] for o in report['outputs']] == [
        [1, c, h, w] for c, (h, w) in zip([32, 48, 96, 176], grids)]


def test_uncached_bias_resize_is_caught_and_named():
    """Without the bias cache a V2 model off its 224 grids resizes its tables bicubically in
    the graph: the check finds it before conversion; the spec/ONNX checks name such ops."""
    model = EfficientFormerV2('s0', out_indices=(3,)).eval()
    with torch.no_grad():
        program = torch.export.export(ExportWrapper(model), (torch.rand(1, 3, 160, 160),))
    found = forbidden_torch_ops(program.run_decompositions({}))
    assert any('upsample_bicubic2d' in op for op in found), found
    report = dict(model_type='mlProgram', spec_version=7, gather_ops=2, bicubic_ops=1,
                  op_histogram={'conv': 10, 'gather': 2, 'upsample_bicubic': 1},
                  non_fp16_tensors=[], float_dtypes={'FLOAT16': 5})
    problems = coreml_problems(report)
    assert any("{'gather': 2}" in p for p in problems)
    assert any("{'upsample_bicubic': 1}" in p for p in problems)
    problems = onnx_problems(dict(gather_ops=1, bicubic_ops=1,
                                  op_histogram={'Conv': 3, 'GatherElements': 1, 'Resize': 1}))
    assert len(problems) == 2 and 'GatherElements' in problems[0] and 'cubic' in problems[1]


@pytest.mark.slow
@pytest.mark.parametrize('arch', ['s0', 's1', 's2', 'l'])
def test_export_all_variants(tmp_path, arch):
    """Every variant: the backbone at 512x683 (the authors' issue #50 size, stride-16 grid
    32x43) to ONNX checked with ONNX Runtime, and the classifier at 224 to Core ML."""
    bb, _ = build_model(arch, task='backbone')
    rep = export_onnx(bb, str(tmp_path / f'{arch}.onnx'), (1, 3, 512, 683))
    assert rep['problems'] == [] and rep['onnxruntime']['rel_err'] < 1e-4
    clf, _ = build_model(arch, task='classifier')
    rep = export_coreml(clf, str(tmp_path / f'{arch}.mlpackage'), (1, 3, 224, 224))
    assert rep['problems'] == [] and rep['bicubic_ops'] == 0 and rep['gather_ops'] == 0


def test_alias_nodes_are_bypassed_for_coremltools():
    """A crop to the size a tensor already has is an ``aten.alias`` in torch.export's graph,
    which coremltools refuses ("Unsupported fx node alias"); the bypass keeps the outputs."""
    from mmeff.deploy.export import _without_aliases

    class Crop(torch.nn.Module):
        def forward(self, x):
            return x[:, :, :8, :8] * 2

    x = torch.rand(1, 2, 8, 8)
    ep = torch.export.export(Crop(), (x,)).run_decompositions({})
    assert any('alias' in str(n.target) for n in ep.graph.nodes)
    ep = _without_aliases(ep)
    assert not any('alias' in str(n.target) for n in ep.graph.nodes)
    assert torch.equal(ep.module()(x), x * 2)
