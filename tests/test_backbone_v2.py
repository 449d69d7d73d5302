"""EfficientFormerV2 backbone: parity with timm (all variants, every parameter and buffer
randomised), any input size (odd stride-16 grids included), resized bias tables, registry,
training-state arguments and errors."""
import functools

import pytest
import timm
import torch

from mmeff.models import EfficientFormerV2
from mmeff.models.layers import Attention4D, AttentionDownsample, strided_query_offset_index

from helpers import randomise_, rel_err

ARCHS = ['s0', 's1', 's2', 'l']


@torch.no_grad()
def randomise_v2_(model: torch.nn.Module, seed: int = 0, calib_input=None) -> torch.nn.Module:
    """Randomise every parameter and buffer (``helpers.randomise_``), give the bias tables unit
    scale (so that a wrong index or resize shows) and the layer scales 0.1-0.3 (trained V2
    scales are well below 1; at ~1 a random network amplifies fp32 rounding through its
    saturated softmaxes, which would blur fusion checks), then set the BN statistics from one
    batch of noise (``calib_input``'s shape; default a timm model's ``forward_features`` on
    1x3x224x224): random statistics on 20-40 residual blocks overflow fp32 in S2/L."""
    randomise_(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if name.endswith('attention_biases'):
            p.copy_(torch.randn(p.shape, generator=g))
        elif name.endswith('.gamma'):
            p.copy_(0.1 + 0.2 * torch.rand(p.shape, generator=g))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    model.eval()  # only BN in training mode: drop path (timm's S2/L default) stays off
    for m in bns:
        m.momentum = 1.
        m.train()
    if calib_input is None:
        model.forward_features(torch.randn(1, 3, 224, 224, generator=g))
    else:
        model(torch.randn(calib_input, generator=g))
    for m in bns:
        m.momentum = 0.1
    model.eval()
    for m in model.modules():  # timm's eval-time bias caches, filled by the forward above
        if getattr(m, 'attention_bias_cache', None):
            m.attention_bias_cache = {}
    return model


@functools.lru_cache(maxsize=None)
def _timm_v2(arch: str):
    """A randomised timm ``efficientformerv2_<arch>``, built once per session: read it, never
    modify it."""
    return randomise_v2_(timm.create_model(f'efficientformerv2_{arch}', pretrained=False))


@functools.lru_cache(maxsize=None)
def timm_reference(arch: str):
    """``(input, timm's four stage outputs, timm's eval logits)`` of the randomised timm model
    on one 224x224 image, computed once per session (tests/test_classification_v2.py uses the
    logits)."""
    ref = _timm_v2(arch)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        final, stages = ref.forward_intermediates(x)
        logits = ref.forward_head(final)
    return x, stages, logits


def backbone_state_dict(ref) -> dict:
    """timm's V2 state dict -> mmeff's backbone one: the documented key filter."""
    return {k: v for k, v in ref.state_dict().items() if k.startswith(('stem.', 'stages.'))}


def backbone_from_timm(arch: str, **kwargs):
    ref = _timm_v2(arch)
    model = EfficientFormerV2(arch, **kwargs).eval()
    model.load_state_dict(backbone_state_dict(ref), strict=True)
    return ref, model


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize('arch', ARCHS)
def test_parity_with_timm(arch):
    _, model = backbone_from_timm(arch)
    x, expected, _ = timm_reference(arch)
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == len(expected) == 4
    for o, e in zip(outs, expected):
        assert o.shape == e.shape
        assert e.abs().mean() > 1e-2  # randomised: nothing collapses to zero
        assert rel_err(o, e) <= 1e-5, (arch, rel_err(o, e))
    # The bias tables matter (so the parity above checks their index): zero them and the
    # attention stages change.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (Attention4D, AttentionDownsample)):
                m.attention_biases.zero_()
        assert rel_err(model(x)[2], expected[2]) > 1e-3


def test_state_dict_is_timm_keys_exactly():
    ref = _timm_v2('s0')
    model = EfficientFormerV2('s0')
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in backbone_state_dict(ref).items()}
    assert own == theirs
    for key in ('stem.conv1.conv.weight', 'stages.2.blocks.4.token_mixer.attention_biases',
                'stages.3.downsample.attn.q.local.weight', 'stages.0.blocks.0.ls2.gamma'):
        assert key in own
    # output norms are norm{i}, as in V1
    model = EfficientFormerV2('s0', out_norm_cfg=dict(type='GN', num_groups=1), out_indices=(1, 3))
    extra = set(model.state_dict()) - set(own)
    assert extra == {'norm1.weight', 'norm1.bias', 'norm3.weight', 'norm3.bias'}


def test_arch_settings_are_timms():
    from timm.models import efficientformer_v2 as tv2
    for arch in ARCHS:
        setting = EfficientFormerV2.arch_settings[arch]
        parsed = EfficientFormerV2._parse_arch(arch)
        key = arch.upper()
        assert tuple(setting['widths']) == tv2.EfficientFormer_width[key]
        assert tuple(setting['depths']) == tv2.EfficientFormer_depth[key]
        ratios = [tuple(r) if len(r) > 1 and len(set(r)) > 1 else r[0]
                  for r in parsed['mlp_ratios']]
        assert tuple(ratios) == tv2.EfficientFormer_expansion_ratios[key]


# ----------------------------------------------------------------------------- any size
# (H, W): multiples of 32, not, odd stride-16 grids (250x333 -> 16x21; 33x47 -> 3x3;
# 208x176 -> 13x11), the 32x32 minimum, non-square.
SIZES = [(32, 32), (33, 47), (64, 96), (208, 176), (250, 333)]


@pytest.mark.parametrize('size', SIZES)
def test_any_input_size(size):
    model = EfficientFormerV2('s0').eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        outs = model(x)
    assert [tuple(o.shape[1:]) for o in outs] == model.output_shape(*size)
    for o, c, s in zip(outs, model.out_channels, model.out_strides):
        assert o.shape[1] == c
        assert o.shape[2] == -(-size[0] // s) and o.shape[3] == -(-size[1] // s)
        assert torch.isfinite(o).all()


def _copy_weights(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    dst.load_state_dict(src.state_dict(), strict=True)


def test_strided_attention_at_odd_grid_equals_timm_cropped():
    """timm's strided Attention2d built for a 13x11 grid runs its x2 upsample to 14x12 (its
    block then fails on the residual); mmeff's crops back to 13x11, which must be exactly
    timm's map cropped (proj and act are per pixel)."""
    from timm.models.efficientformer_v2 import Attention2d
    ref = randomise_v2_(Attention2d(16, key_dim=8, num_heads=2, resolution=(13, 11), stride=2),
                        calib_input=(2, 16, 13, 11))
    ours = Attention4D(16, key_dim=8, num_heads=2, resolution=(7, 6), stride=2).eval()
    _copy_weights(ref, ours)
    x = torch.randn(2, 16, 13, 11)
    with torch.no_grad():
        expected = ref(x)
        assert expected.shape[-2:] == (14, 12)
        out = ours(x)
    assert out.shape == x.shape
    assert rel_err(out, expected[:, :, :13, :11]) <= 1e-6


@pytest.mark.parametrize('grid', [(13, 11), (14, 14), (3, 5)])
def test_attention_downsample_at_odd_grid_equals_timm(grid):
    """timm's Attention2dDownsample built for a grid (queries on its stride-2 positions) is the
    reference for the query grid, v_local and the bias index at odd and even grids."""
    from timm.models.efficientformer_v2 import Attention2dDownsample
    ref = randomise_v2_(Attention2dDownsample(16, key_dim=8, num_heads=2, resolution=grid,
                                              out_dim=24), calib_input=(2, 16, *grid))
    ours = AttentionDownsample(16, 24, key_dim=8, num_heads=2, resolution=grid).eval()
    _copy_weights(ref, ours)
    assert torch.equal(ours.attention_bias_idxs, ref.attention_bias_idxs)
    assert torch.equal(strided_query_offset_index(*grid), ref.attention_bias_idxs)
    x = torch.randn(2, 16, *grid)
    with torch.no_grad():
        out = ours(x)
        assert out.shape == (2, 24, (grid[0] + 1) // 2, (grid[1] + 1) // 2)
        assert rel_err(out, ref(x)) <= 1e-6


def test_non_224_size_equals_timm_built_for_it_with_resized_tables():
    """timm built for 256x320 (its own bias index for those grids), given mmeff's tables
    resized from the 224 ones, gives mmeff's outputs: the any-size path indexes as timm does."""
    size = (256, 320)
    ref224, model = backbone_from_timm('s0')
    ref = timm.create_model('efficientformerv2_s0', pretrained=False, img_size=size).eval()
    sd = ref224.state_dict()
    sizes = dict(model.attention_input_sizes(*size))
    for name, module in model.named_modules():
        if module in sizes:
            sd[name + '.attention_biases'] = module.table_for_grid(*sizes[module]).detach()
    ref.load_state_dict(sd, strict=True)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref.forward_intermediates(x, intermediates_only=True)
        outs = model(x)
    for o, e in zip(outs, expected):
        assert o.shape == e.shape
        assert rel_err(o, e) <= 1e-5


def test_bias_tables_are_resized_not_discarded():
    _, model = backbone_from_timm('s0')
    attn = model.stages[3].blocks[-1].token_mixer
    table = attn.attention_biases.detach()
    # At 448 the last stage is 14x14: the 7x7 table interpolated (align_corners=True).
    big = attn.table_for_grid(14, 14).reshape(8, 14, 14)
    expected = torch.nn.functional.interpolate(table.reshape(1, 8, 7, 7), size=(14, 14),
                                               mode='bicubic', align_corners=True)[0]
    torch.testing.assert_close(big, expected)
    torch.testing.assert_close(big[:, 0, 0], table[:, 0])  # offset 0 keeps its value
    torch.testing.assert_close(big[:, -1, -1], table[:, -1])  # so does the largest offset
    bias = attn.get_bias(14, 14)  # (heads, 196, 196)
    torch.testing.assert_close(bias[:, 0, 14 * 3 + 5], big[:, 3, 5])  # query (0,0), key (3,5)
    # At 224 the table is used as trained, the downsample's included.
    down = model.stages[3].downsample.attn
    assert torch.equal(down.get_bias(14, 14), down.attention_biases[:, down.attention_bias_idxs])
    # The downsample at a 448 input (28x28 keys): query (1, 2) sits at key (2, 4).
    dtab = down.table_for_grid(28, 28).reshape(8, 28, 28)
    torch.testing.assert_close(down.get_bias(28, 28)[:, 1 * 14 + 2, 28 * 9 + 1],
                               dtab[:, 7, 3])


def test_output_attributes_and_out_indices():
    model = EfficientFormerV2('s1', out_indices=(1, 3)).eval()
    assert model.out_channels == [48, 224]
    assert model.out_strides == [8, 32]
    assert model.feature_info == [dict(num_chs=48, reduction=8, module='stages.1'),
                                  dict(num_chs=224, reduction=32, module='stages.3')]
    outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape[1:]) for o in outs] == model.output_shape(64, 96) == [
        (48, 8, 12), (224, 2, 3)]
    assert isinstance(model.norm1, torch.nn.Identity)  # no output norm by default
    assert EfficientFormerV2('s0', out_indices=-1).out_indices == (3,)
    model = EfficientFormerV2('s0', out_norm_cfg=dict(type='BN'), out_indices=(2,))
    assert isinstance(model.norm2, torch.nn.BatchNorm2d)


def test_arch_dict():
    arch = dict(depths=[1, 1, 2, 2], widths=[16, 24, 32, 48], num_vit=1,
                mlp_ratios=[2, 2, [2, 3], 4])
    model = EfficientFormerV2(arch).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [16, 24, 32, 48]
    assert model.stages[2].blocks[1].mlp.fc1.conv.out_channels == 96
    assert model.stages[2].blocks[0].token_mixer is None
    assert isinstance(model.stages[2].blocks[1].token_mixer, Attention4D)
    assert arch == dict(depths=[1, 1, 2, 2], widths=[16, 24, 32, 48], num_vit=1,
                        mlp_ratios=[2, 2, [2, 3], 4])  # not mutated


def test_registry_builds_from_mmdet_and_mmseg():
    import mmeff.models  # noqa: F401  (registers the mmeff scope)
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    from mmeff.registry import MODELS
    for registry in (DET_MODELS, SEG_MODELS, MODELS):
        model = registry.build(dict(type='mmeff.EfficientFormerV2', arch='s0', out_indices=(3,)))
        assert isinstance(model, EfficientFormerV2) and model.out_channels == [176]


@pytest.mark.parametrize('kwargs,exc,msg', [  # V2's own; the shared ones: test_backbone.py
    (dict(arch='s3'), ValueError, "choose one of ['l', 's0', 's1', 's2']"),
    (dict(arch='l1'), ValueError, 'Unknown EfficientFormerV2 arch'),
    (dict(arch=dict(depths=[1, 1, 3, 2], widths=[8, 8, 8, 8], num_vit=3)), ValueError,
     'min(depths[2], depths[3]) = 2'),
    (dict(arch=dict(depths=[1, 1, 2, 2], widths=[8, 8, 8, 8], num_vit=1,
                    mlp_ratios=[4, 4, [4], 4])), ValueError, "arch['mlp_ratios'][2]"),
    (dict(arch=dict(depths=[1, 1, 1, 1], widths=[9, 8, 8, 8], num_vit=0)), ValueError,
     'must be even'),
])
def test_bad_arguments(kwargs, exc, msg):
    with pytest.raises(exc) as info:
        EfficientFormerV2(**kwargs)
    assert msg in str(info.value)


def test_with_cp_and_drop_path_train_step():
    torch.manual_seed(0)
    ref = EfficientFormerV2('s0')
    cp_model = EfficientFormerV2('s0', with_cp=True)
    cp_model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 64)
    ref.train(), cp_model.train()
    la = sum(o.square().mean() for o in ref(x))
    lb = sum(o.square().mean() for o in cp_model(x))
    la.backward(), lb.backward()
    torch.testing.assert_close(la, lb)
    for name in ('stages.3.blocks.3.token_mixer.attention_biases',
                 'stages.2.blocks.5.token_mixer.q.conv.weight',
                 'stages.3.downsample.attn.attention_biases'):
        ga = ref.get_parameter(name).grad
        gb = cp_model.get_parameter(name).grad
        assert ga is not None and ga.abs().sum() > 0, name  # resized tables get gradients
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)
    dp = EfficientFormerV2('s0', drop_path_rate=0.2).train()
    rates = [b.drop_path.drop_prob for s in dp.stages for b in s.blocks
             if not isinstance(b.drop_path, torch.nn.Identity)]
    assert rates == pytest.approx(torch.linspace(0, 0.2, 14)[1:].tolist())
    torch.manual_seed(1)
    a = dp(x)[-1]
    torch.manual_seed(2)
    assert not torch.equal(a, dp(x)[-1])  # stochastic in training
    dp.eval()
    torch.testing.assert_close(dp(x)[-1], dp(x)[-1])


def test_fix_bias_follows_device_and_dtype_and_is_not_saved():
    model = EfficientFormerV2('s0').eval()
    for attn, grid in model.attention_input_sizes(64, 96):
        attn.fix_bias(*grid)
    keys = model.state_dict()
    assert not any('cached_bias' in k or 'attention_bias_idxs' in k for k in keys)
    attn = model.stages[3].downsample.attn
    model.to(torch.float64)
    assert attn.cached_bias.dtype == torch.float64
    model.train()
    assert attn.cached_bias is None


@pytest.mark.slow  # torch.export at odd grids runs in the default suite (tests/test_fuse_v2.py)
def test_jit_trace_at_odd_grid():
    model = EfficientFormerV2('s0').eval()
    x = torch.randn(1, 3, 80, 112)  # stride-16 grid 5x7
    with torch.no_grad():
        expected = model(x)
        traced = torch.jit.trace(model, x, check_trace=False)
        for a, b in zip(traced(x), expected):
            torch.testing.assert_close(a, b)


def test_pretrained_init_cfg_loads_timm_weights(tmp_path):
    ref = _timm_v2('s0')
    path = tmp_path / 's0.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in backbone_state_dict(ref).items()}},
               path)
    model = EfficientFormerV2('s0', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    for k, v in backbone_state_dict(ref).items():
        assert torch.equal(model.state_dict()[k], v), k
    with pytest.raises(FileNotFoundError, match='does not exist'):
        EfficientFormerV2('s0', init_cfg=dict(type='Pretrained',
                                              checkpoint=str(tmp_path / 'x.pth'))).init_weights()
