"""EfficientFormerV2 fusion: every conv+BN folded, layer scales and the downsample's query pool
folded, the classifier head's BN folded, biases cached for the deployment size (odd stride-16
grids included), outputs equal to the unfused model."""
import pytest
import torch
import torch.nn as nn

from mmeff.deploy import cache_attention_bias, fuse_model, fusion_report
from mmeff.deploy.fuse import fold_pool_into_local_
from mmeff.models import EfficientFormerV2
from mmeff.models.classifiers import EfficientFormerClassifier
from mmeff.models.layers import LocalGlobalQuery

from helpers import rel_err
from test_backbone_v2 import randomise_v2_

# 224 (the paper's size), then sizes whose stride-16 grid is odd: 208x176 -> 13x11 (stage-4
# grid 7x6), 80x112 -> 5x7.
SIZES = [(224, 224), (208, 176), (80, 112)]
N_ATTN_S0 = 5  # 2 strided Attention4D in stage 3, the attention downsample, 2 in stage 4


@pytest.fixture(scope='module')
def s0():
    return randomise_v2_(EfficientFormerV2('s0'), calib_input=(1, 3, 224, 224))


def graph_ops(model: nn.Module, x: torch.Tensor):
    """Names of the ops in the ``torch.export`` graph of ``model`` at ``x``'s size."""
    program = torch.export.export(model, (x,))
    return [str(n.target) for n in program.graph.nodes if n.op == 'call_function']


def bias_ops(ops):
    return sorted({op for op in ops if 'bicubic' in op or 'gather' in op or 'index.Tensor' in op})


@pytest.mark.parametrize('size', SIZES)
def test_fused_equals_unfused(s0, size):
    fused = fuse_model(s0, size)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, outs = s0(x), fused(x)
    for o, e in zip(outs, expected):
        assert e.abs().mean() > 1e-2
        assert rel_err(o, e) <= 1e-5, (size, rel_err(o, e))
    stride16 = ((size[0] + 15) // 16, (size[1] + 15) // 16)
    stride32 = ((size[0] + 31) // 32, (size[1] + 31) // 32)
    assert fusion_report(fused) == dict(batchnorms=0, layer_scales=0, mb4d_ls1=0,
                                        attention=N_ATTN_S0,
                                        cached_bias_grids=sorted({stride16, stride32}))
    assert not any(isinstance(m, nn.AvgPool2d) for m in fused.modules())  # query pool folded
    # the argument is not modified
    assert fusion_report(s0)['batchnorms'] > 0 and fusion_report(s0)['cached_bias_grids'] == []


def test_exported_graph_has_no_bias_gather_or_resize(s0):
    from mmeff.models.layers import AttentionDownsample
    # What the check looks for: an uncached bias is a resize and a gather in the graph.
    attn = AttentionDownsample(16, 24, key_dim=8, num_heads=2, resolution=14).eval()
    assert bias_ops(graph_ops(attn, torch.randn(1, 16, 13, 11)))
    x = torch.randn(1, 3, 208, 176)  # odd stride-16 grid, every table resized
    assert bias_ops(graph_ops(fuse_model(s0, (208, 176)), x)) == []
    cached = cache_attention_bias(s0, (208, 176))  # caching alone, BN kept
    assert fusion_report(cached)['batchnorms'] == fusion_report(s0)['batchnorms']
    assert fusion_report(cached)['cached_bias_grids'] == [(7, 6), (13, 11)]
    with torch.no_grad():
        for o, e in zip(cached(x), s0(x)):
            assert rel_err(o, e) <= 1e-6


def test_fused_model_still_runs_at_other_sizes(s0):
    fused = fuse_model(s0, 224)
    x = torch.randn(1, 3, 100, 164)  # not the cached size: computed on the fly
    with torch.no_grad():
        for o, e in zip(fused(x), s0(x)):
            assert rel_err(o, e) <= 1e-5
    dynamic = fuse_model(s0)  # no input size: nothing cached
    assert fusion_report(dynamic)['cached_bias_grids'] == []


def test_fused_classifier_logits():
    model = EfficientFormerClassifier(backbone=dict(type='mmeff.EfficientFormerV2', arch='s0'),
                                      num_classes=10)
    randomise_v2_(model, seed=3, calib_input=(2, 3, 224, 224))  # head BN on real features
    inference = model.as_inference_module()
    fused = fuse_model(inference, (160, 224))  # stride-16 grid 10x14, stride 32 5x7
    x = torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = inference(x)
        assert rel_err(fused(x), expected) <= 1e-5
        assert rel_err(model(x), expected) <= 1e-6
    report = fusion_report(fused)
    assert report['batchnorms'] == 0 and report['layer_scales'] == 0  # head BN folded too
    assert isinstance(fused.head.norm, nn.Identity)


def test_fold_pool_into_local_is_exact():
    q = randomise_v2_(LocalGlobalQuery(8, 16), calib_input=(2, 8, 9, 7))
    x = torch.randn(2, 8, 9, 7)  # odd: the pool and the conv both give 5x4
    with torch.no_grad():
        expected = q(x)
        assert fold_pool_into_local_(q) and q.pool is None
        assert rel_err(q(x), expected) <= 1e-6
        assert not fold_pool_into_local_(q)  # already folded: nothing to do


def coreml_ops(module: nn.Module, x: torch.Tensor):
    """Op types of ``module`` traced at ``x`` and converted by coremltools (mlprogram, iOS 16,
    FP16), as mmeff's detector export does."""
    ct = pytest.importorskip('coremltools')
    traced = torch.jit.trace(module.eval(), x, check_trace=False)
    mlmodel = ct.convert(traced, inputs=[ct.TensorType(name='x', shape=tuple(x.shape))],
                         convert_to='mlprogram', minimum_deployment_target=ct.target.iOS16,
                         compute_precision=ct.precision.FLOAT16)
    return {op.type for fn in mlmodel.get_spec().mlProgram.functions.values()
            for block in fn.block_specializations.values() for op in block.operations}


def test_attentions_convert_to_coreml_at_odd_grid():
    """Every V2 attention, traced at an odd grid with its bias cached, converts (no size
    arithmetic coremltools cannot fold) with no gather and no bicubic resize."""
    from mmeff.models.layers import Attention4D, AttentionDownsample
    x = torch.randn(1, 16, 13, 11)
    for attn in (Attention4D(16, key_dim=8, num_heads=2, resolution=7, stride=2),
                 AttentionDownsample(16, 24, key_dim=8, num_heads=2, resolution=14),
                 Attention4D(16, key_dim=8, num_heads=2, resolution=7)):
        attn.eval().fix_bias(13, 11)
        ops = coreml_ops(attn, x)
        assert 'matmul' in ops and not any('gather' in op or 'bicubic' in op for op in ops)


@pytest.mark.slow
def test_fused_backbone_converts_to_coreml_at_odd_grid(s0):
    ops = coreml_ops(fuse_model(s0, (208, 176)), torch.randn(1, 3, 208, 176))
    assert 'upsample_bilinear' in ops and 'slice_by_index' in ops  # stage 3's x2 + crop
    assert not any('gather' in op or 'bicubic' in op for op in ops)


@pytest.mark.parametrize('arch,size', [('s0', (208, 176)), ('l1', (96, 128))])
def test_channels_last_fused_equals_unfused(s0, arch, size):
    """``channels_last=True`` (eager inference): same values as the unfused model, 4D weights
    channels-last inside, NCHW-contiguous outputs (mmcv's CPU RoIAlign reads raw NCHW), every
    conv and pool fed channels-last maps, hooks not stacked by a second call."""
    from mmeff.deploy.fuse import PointwiseLinear, fusion_report, to_channels_last_
    from mmeff.models import EfficientFormer
    from mmeff.models.layers import Meta4D
    from helpers import randomise_
    model = s0 if arch == 's0' else randomise_(EfficientFormer('l1', out_norm_cfg=None)).eval()
    fused = fuse_model(model, size, channels_last=True)
    not_cl = []

    def record(module, args):
        if args[0].dim() == 4 and args[0].shape[1] > 8 and args[0].shape[2] * args[0].shape[3] > 1 \
                and not args[0].is_contiguous(memory_format=torch.channels_last):
            not_cl.append(tuple(args[0].shape))
    for m in fused.modules():  # (talking heads mix 8 heads of attention maps: not counted)
        if isinstance(m, (nn.Conv2d, nn.AvgPool2d, PointwiseLinear)):
            m.register_forward_pre_hook(record)
    # the eager rewrites: every 1x1 conv of an MLP / conv unit a GEMM, every MB4D mixer a lerp
    linears = [m for m in fused.modules() if isinstance(m, PointwiseLinear)]
    assert linears and not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
                               and m.in_channels > 8 for m in fused.modules())
    blocks = [m for m in fused.modules() if isinstance(m, Meta4D)]
    assert all(b.mixer_scale is not None and isinstance(b.ls1, nn.Identity) for b in blocks)
    assert (arch == 'l1') == bool(blocks)
    assert fusion_report(fused)['mb4d_ls1'] == len(blocks)
    assert not any(k.endswith('mixer_scale') for k in fused.state_dict())  # not persistent
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, outs = model(x), fused(x)
    for o, e in zip(outs, expected):
        assert rel_err(o, e) <= 1e-5, (arch, rel_err(o, e))
        assert o.is_contiguous()
    assert not_cl == []
    assert all(p.is_contiguous(memory_format=torch.channels_last)
               for p in fused.parameters() if p.dim() == 4)
    backbone = fused
    hooks = (len(backbone._forward_pre_hooks), len(backbone._forward_hooks))
    to_channels_last_(backbone)
    assert (len(backbone._forward_pre_hooks), len(backbone._forward_hooks)) == hooks == (1, 1)
    # the default leaves the layout alone (what exporters fuse)
    assert all(p.is_contiguous() for p in fuse_model(model, size).parameters())
