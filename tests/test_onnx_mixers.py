"""V1's MB4D mixers in ONNX exports (mmeff.deploy.fuse.onnx_mixers, applied by every
write_onnx): ``(1 - s) * x + s * pool(x)`` as two depthwise 1x1 convs, the form ONNX Runtime
keeps in its blocked NCHWc layout. Same values as the fused model, the model unchanged after
the export, and no reorder into that layout left inside the network."""
import collections
import contextlib

import pytest
import torch
import torch.nn as nn

import mmeff.deploy.fuse as fuse
from mmeff.runtime import ort_graph_ops
from mmeff.deploy import fuse_model
from mmeff.deploy.export import export_onnx
from mmeff.models import EfficientFormer, EfficientFormerV2
from mmeff.models.layers import Meta4D

from helpers import randomise_, rel_err

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')


def l1(**kwargs):
    model = EfficientFormer('l1', out_indices=(0, 1, 2, 3), **kwargs)
    randomise_(model)  # layer scales and BN statistics away from their initial values
    return model.eval()


def test_mixers_as_convs_same_values_and_restored():
    fused = fuse_model(l1(), 64)
    blocks = [m for m in fused.modules() if isinstance(m, Meta4D)]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = fused(x)
        with fuse.onnx_mixers(fused) as n:
            assert n == len(blocks) == 14
            assert all(b.mixer_weight.shape == (b.ls1.gamma.numel(), 1, 1, 1) for b in blocks)
            during = fused(x)
        after = fused(x)
    for a, b, c in zip(before, during, after):
        assert rel_err(b, a) < 1e-6
        assert torch.equal(c, a)
    assert all(b.mixer_weight is None and b.mixer_keep is None for b in blocks)
    assert not any(k.startswith('mixer') for k in fused.state_dict())


def test_mixers_left_alone_where_they_do_not_apply():
    # V2 has no MB4D block; a training model, a DropPath kept, the eager lerp: untouched.
    with fuse.onnx_mixers(EfficientFormerV2('s0').eval()) as n:
        assert n == 0
    with fuse.onnx_mixers(l1().train()) as n:
        assert n == 0
    model = l1(drop_path_rate=0.1)
    with fuse.onnx_mixers(model) as n:  # block 0 has drop path 0 (nn.Identity), the rest not
        assert n == sum(isinstance(m, Meta4D) and isinstance(m.drop_path, nn.Identity)
                        for m in model.modules()) < 14
    with fuse.onnx_mixers(fuse_model(l1(), 64, channels_last=True)) as n:
        assert n == 0


def test_export_stays_in_ort_blocked_layout(tmp_path, monkeypatch):
    model = l1()
    path = str(tmp_path / 'l1.onnx')
    report = export_onnx(model, path, 64, method='torchscript')  # checks ORT vs torch (1e-4)
    graph = collections.Counter(n.op_type for n in onnx.load(path).graph.node)
    assert graph['Sub'] == 4  # the LayerNorms' only: no pool(x) - x left
    ran = ort_graph_ops(path)
    # Into the blocked layout once (the stem reads NCHW directly), out of it only for the four
    # stage outputs / the 4D -> 3D flatten: no block leaves it.
    assert ran['ReorderInput'] == 0 and ran['ReorderOutput'] <= 4, ran
    assert report['onnxruntime']['rel_err'] < 1e-5
    # The form it replaced left and re-entered the layout in every block (where ONNX Runtime
    # uses that layout on this CPU at all).
    monkeypatch.setattr(fuse, 'onnx_mixers', contextlib.contextmanager(lambda model: (yield 0)))
    old = str(tmp_path / 'old.onnx')
    export_onnx(model, old, 64, method='torchscript')
    ran_old = ort_graph_ops(old)
    if ran_old['ReorderOutput'] or ran_old['ReorderInput']:
        assert ran_old['ReorderInput'] >= 14, ran_old
