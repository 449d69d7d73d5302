"""EfficientFormer (V1) backbone; the first section checks the contract every registered
family shares (``EfficientFormerBase``: arguments, input checks, freezing, autocast), for each
family of ``mmeff.models.families``; V2's own checks are in tests/test_backbone_v2.py."""
import copy

import pytest
import torch

from mmeff.converters import convert_timm
from mmeff.models import EfficientFormer
from mmeff.models.backbones import load_backbone_state_dict
from mmeff.models.families import FAMILIES

from helpers import rel_err, timm_efficientformer

ARCHS = ['l1', 'l3', 'l7']


@pytest.fixture(params=list(FAMILIES))
def family(request):
    return FAMILIES[request.param]


# ------------------------------------------------------------ the contract of every family
@pytest.mark.parametrize('kwargs,exc,msg', [
    (dict(arch=dict(depths=[1, 1, 1], widths=[8, 8, 8, 8], num_vit=0)), ValueError,
     "arch['depths'] must be 4"),
    (dict(arch=dict(depths=[1, 1, 1, 1], widths=[8, 8, 8, 8])), ValueError, "missing ['num_vit']"),
    (dict(arch=3), TypeError, 'arch must be a str or a dict'),
    (dict(out_indices=(0, 4)), ValueError, 'allowed stage indices are 0..3'),
    (dict(out_indices=()), TypeError, 'non-empty sequence'),
    (dict(out_indices=(1, 1)), ValueError, 'duplicates'),
    (dict(out_indices=('a',)), TypeError, 'must contain ints'),
    (dict(frozen_stages=5), ValueError, 'frozen_stages must be an int in [-1, 4]'),
    (dict(frozen_stages=-2), ValueError, 'frozen_stages'),
    (dict(in_channels=0), ValueError, 'in_channels must be a positive int'),
    (dict(drop_path_rate=1.5), ValueError, 'drop_path_rate'),
    (dict(bias_interpolation='area'), ValueError, 'bias_interpolation must be one of'),
])
def test_bad_arguments_every_family(family, kwargs, exc, msg):
    with pytest.raises(exc) as info:
        family.cls(**kwargs)
    assert msg in str(info.value)


@pytest.mark.parametrize('shape,msg', [
    ((1, 4, 64, 64), 'Input has 4 channels but the backbone was built with in_channels=3'),
    ((3, 64, 64), 'expects a 4D (B, C, H, W) input'),
    ((1, 3, 31, 64), 'too small: EfficientFormer needs at least 32 pixels per side'),
    ((1, 3, 64, 16), 'too small: EfficientFormer needs at least 32 pixels per side'),
])
def test_bad_inputs(family, shape, msg):
    model = family.cls(family.default_arch).eval()
    with pytest.raises(ValueError) as info:
        model(torch.randn(*shape))
    assert msg in str(info.value)


def test_in_channels(family):
    model = family.cls(family.default_arch, in_channels=1).eval()
    assert model(torch.randn(1, 1, 64, 64))[0].shape[1] == model.arch['widths'][0]
    if family.name == 'EfficientFormer':
        assert model.arch['widths'][0] == 48


def test_frozen_stages_and_norm_eval(family):
    model = family.cls(family.default_arch, frozen_stages=2, norm_eval=True)
    model.train()
    assert all(not p.requires_grad for p in model.stem.parameters())
    assert all(not p.requires_grad for p in model.stages[1].parameters())
    assert all(p.requires_grad for p in model.stages[2].parameters())
    assert not model.stem.training and not model.stages[1].training
    assert model.stages[2].training
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    # frozen weights really do not change during a step
    before = copy.deepcopy(model.stages[0].state_dict())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(o.sum() for o in model(torch.randn(2, 3, 64, 64))).backward()
    opt.step()
    for k, v in model.stages[0].state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize('size', [(96, 160), (48, 80)])  # (48, 80): stride-16 grid 3x5
def test_autocast_bf16(family, size):
    model = family.cls(family.default_arch).eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(torch.randn(1, 3, *size))
    assert [tuple(o.shape[1:]) for o in outs] == model.output_shape(*size)
    assert all(torch.isfinite(o.float()).all() for o in outs)


# ------------------------------------------------------------ V1


def backbone_from_timm(arch, seed=0, **kwargs):
    ref = timm_efficientformer(arch, seed)
    sd = convert_timm(ref.state_dict())
    model = EfficientFormer(arch, out_norm_cfg=None, **kwargs).eval()
    bb = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}
    model.load_state_dict(bb, strict=True)
    return ref, model


@pytest.mark.parametrize('arch', ARCHS)
def test_parity_with_timm_forward_intermediates(arch):
    ref, model = backbone_from_timm(arch)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref.forward_intermediates(x, intermediates_only=True)
        outs = model(x)
    assert len(outs) == len(expected) == 4
    for o, e in zip(outs, expected):
        assert o.shape == e.shape
        assert e.abs().mean() > 1e-3  # randomised: nothing collapses to zero
        assert rel_err(o, e) < 1e-5, (arch, rel_err(o, e))


@pytest.mark.parametrize('size', [(32, 32), (64, 96), (250, 333), (512, 512), (97, 161)])
def test_any_input_size(size):
    model = EfficientFormer('l1').eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        outs = model(x)
    assert [tuple(o.shape[1:]) for o in outs] == model.output_shape(*size)
    for o, c, s in zip(outs, model.out_channels, model.out_strides):
        assert o.shape[1] == c
        assert o.shape[2] == -(-size[0] // s) and o.shape[3] == -(-size[1] // s)
        assert torch.isfinite(o).all()


def test_native_grid_uses_table_exactly():
    _, model = backbone_from_timm('l1')
    attn = model.stages[3].blocks[-1].token_mixer
    table = attn.attention_biases
    bias = attn.get_bias(7, 7)
    idx = attn.attention_bias_idxs
    assert torch.equal(bias, table[:, idx])
    # The resized table keeps offset 0 and the largest offset exactly (align_corners=True).
    big = attn.table_for_grid(16, 16).reshape(attn.num_heads, 16, 16)
    small = table.reshape(attn.num_heads, 7, 7)
    torch.testing.assert_close(big[:, 0, 0], small[:, 0, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(big[:, -1, -1], small[:, -1, -1], rtol=1e-5, atol=1e-5)
    bias_big = attn.get_bias(16, 20)
    assert bias_big.shape == (8, 320, 320)


def test_out_indices_and_attributes():
    model = EfficientFormer('l3', out_indices=(1, 3)).eval()
    assert model.out_channels == [128, 512]
    assert model.out_strides == [8, 32]
    assert [f['num_chs'] for f in model.feature_info] == [128, 512]
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [128, 512]
    assert isinstance(model.norm1, torch.nn.GroupNorm)
    model = EfficientFormer('l1', out_indices=-1)
    assert model.out_indices == (3,)


def test_arch_dict():
    arch = dict(depths=[1, 1, 2, 2], widths=[16, 32, 48, 64], num_vit=1)
    model = EfficientFormer(arch).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [16, 32, 48, 64]
    assert arch == dict(depths=[1, 1, 2, 2], widths=[16, 32, 48, 64], num_vit=1)  # not mutated


@pytest.mark.parametrize('kwargs,exc,msg', [
    (dict(arch='l2'), ValueError, "choose one of ['l1', 'l3', 'l7']"),
    (dict(arch=dict(depths=[1, 1, 1, 1], widths=[8, 8, 8, 8], num_vit=3)), ValueError, 'num_vit'),
])
def test_bad_arguments(kwargs, exc, msg):
    with pytest.raises(exc) as info:
        EfficientFormer(**kwargs)
    assert msg in str(info.value)


def test_with_cp_and_drop_path_train_step():
    torch.manual_seed(0)
    ref = EfficientFormer('l1', drop_path_rate=0.)
    cp_model = EfficientFormer('l1', with_cp=True)
    cp_model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    ref.train(), cp_model.train()
    la = sum(o.square().mean() for o in ref(x))
    lb = sum(o.square().mean() for o in cp_model(x))
    la.backward(), lb.backward()
    torch.testing.assert_close(la, lb)
    ga = ref.stages[3].blocks[-1].token_mixer.qkv.weight.grad
    gb = cp_model.stages[3].blocks[-1].token_mixer.qkv.weight.grad
    torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
    dp = EfficientFormer('l1', drop_path_rate=0.2).train()
    sum(o.sum() for o in dp(x)).backward()


def test_attention_bias_gets_gradient_at_other_grid():
    model = EfficientFormer('l1', out_indices=(3,)).train()
    model(torch.randn(2, 3, 320, 256))[0].square().mean().backward()
    grad = model.stages[3].blocks[-1].token_mixer.attention_biases.grad
    assert grad is not None and grad.abs().sum() > 0


def test_fix_bias_follows_device_and_dtype():
    model = EfficientFormer('l1').eval()
    attn = model.stages[3].blocks[-1].token_mixer
    attn.fix_bias(4, 4)
    assert 'cached_bias' not in model.state_dict()
    model.to(torch.float64)
    assert attn.cached_bias.dtype == torch.float64
    model.train()
    assert attn.cached_bias is None


def test_jit_trace_and_export():
    model = EfficientFormer('l1').eval()
    x = torch.randn(1, 3, 96, 128)
    traced = torch.jit.trace(model, x, check_trace=False)
    for a, b in zip(traced(x), model(x)):
        torch.testing.assert_close(a, b)
    ep = torch.export.export(model, (x,))
    for a, b in zip(ep.module()(x), model(x)):
        torch.testing.assert_close(a, b)


def test_load_backbone_state_dict_reports(tmp_path):
    model = EfficientFormer('l1')
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith('norm')}
    msg = load_backbone_state_dict(model, sd)
    assert 'output norms not in checkpoint' in msg
    with pytest.raises(KeyError, match='matches only 0'):
        load_backbone_state_dict(model, {'foo.weight': torch.zeros(1)})
    other = EfficientFormer('l3').state_dict()
    with pytest.raises(ValueError, match='shape mismatches'):
        load_backbone_state_dict(model, other)


@pytest.mark.slow
def test_torch_compile():
    model = EfficientFormer('l1').eval()
    x = torch.randn(1, 3, 96, 128)
    compiled = torch.compile(model)
    with torch.no_grad():
        for a, b in zip(compiled(x), model(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
