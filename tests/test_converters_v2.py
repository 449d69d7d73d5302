"""EfficientFormerV2 checkpoints: the authors', timm's and mmeff's layouts, and refusals."""
import re
import subprocess
import sys

import pytest
import timm
import torch

from mmeff.converters import (CheckpointError, arch_name, convert_authors, convert_authors_v2,
                              convert_state_dict, convert_timm, convert_timm_v2, detect_family,
                              detect_layout, infer_arch)

from helpers import load_tool, randomise_, rel_err

ARCHS = ('s0', 's1', 's2', 'l')
WIDTHS = {'s0': [32, 48, 96, 176], 's1': [32, 48, 120, 224], 's2': [32, 64, 144, 288],
          'l': [40, 80, 192, 384]}
DEPTHS = {'s0': [2, 2, 6, 4], 's1': [3, 3, 9, 6], 's2': [4, 4, 12, 8], 'l': [5, 5, 15, 10]}
NUM_VIT = {'s0': 2, 's1': 2, 's2': 4, 'l': 6}


@torch.no_grad()
def timm_v2(arch, seed=0, num_classes=1000):
    """timm's V2 with every parameter and buffer random; the BN statistics are then taken from
    one batch of noise, since random statistics on 20-40 residual blocks overflow fp32 (L)."""
    model = timm.create_model(f'efficientformerv2_{arch}', pretrained=False,
                              num_classes=num_classes)
    randomise_(model, seed)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.momentum = 1.
    model.train()
    model(torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(seed + 1)))
    for m in bns:
        m.momentum = 0.1
    model.eval()
    return model


_STEM = {'conv1.conv': '0', 'conv1.bn': '1', 'conv2.conv': '3', 'conv2.bn': '4'}
_MLP = {'fc1.conv': 'fc1', 'fc1.bn': 'norm1', 'mid.conv': 'mid', 'mid.bn': 'mid_norm',
        'fc2.conv': 'fc2', 'fc2.bn': 'norm2'}


def _authors_attention(rest):
    """timm Attention2d / Attention2dDownsample sub-key -> the authors' (nn.Sequential)."""
    m = re.match(r'^(q|k|v|v_local|stride_conv)\.(conv|bn)\.(.*)$', rest)
    if m:
        return f"{m.group(1)}.{'0' if m.group(2) == 'conv' else '1'}.{m.group(3)}"
    m = re.match(r'^proj\.(conv|bn)\.(.*)$', rest)  # authors: Sequential(act, conv, BN)
    if m:
        return f"proj.{'1' if m.group(1) == 'conv' else '2'}.{m.group(2)}"
    m = re.match(r'^q\.local\.(.*)$', rest)  # authors: Sequential(conv)
    if m:
        return f'q.local.0.{m.group(1)}'
    m = re.match(r'^q\.proj\.(conv|bn)\.(.*)$', rest)
    if m:
        return f"q.proj.{'0' if m.group(1) == 'conv' else '1'}.{m.group(2)}"
    return rest  # talking_head1/2, attention_biases


def timm_v2_to_authors(sd):
    """Test-only inverse of ``convert_authors_v2`` written from the authors' model definition
    (snap-research/EfficientFormer ``models/efficientformer_v2.py``): ``patch_embed`` is
    Sequential(conv, BN, act, conv, BN, act); ``network`` alternates stages and Embeddings; the
    Embedding into stage 4 has ``conv``/``bn``/``attn``; layer scales are (C, 1, 1); the
    attention modules keep their ``attention_bias_idxs`` buffers in the checkpoint."""
    out = {}
    for k, v in sd.items():
        m = re.match(r'^stem\.(conv[12]\.(?:conv|bn))\.(.*)$', k)
        if m:
            out[f'patch_embed.{_STEM[m.group(1)]}.{m.group(2)}'] = v
            continue
        m = re.match(r'^stages\.(\d+)\.downsample\.conv\.(conv|bn)\.(.*)$', k)
        if m:
            s = int(m.group(1))
            name = {'conv': 'conv', 'bn': 'bn'} if s == 3 else {'conv': 'proj', 'bn': 'norm'}
            out[f'network.{2 * s - 1}.{name[m.group(2)]}.{m.group(3)}'] = v
            continue
        m = re.match(r'^stages\.(\d+)\.downsample\.attn\.(.*)$', k)
        if m:
            out[f'network.{2 * int(m.group(1)) - 1}.attn.{_authors_attention(m.group(2))}'] = v
            continue
        m = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.(.*)$', k)
        if m:
            rest = m.group(3)
            g = re.match(r'^ls([12])\.gamma$', rest)
            if g:
                rest, v = f'layer_scale_{g.group(1)}', v.reshape(-1, 1, 1)
            g = re.match(r'^mlp\.(\w+\.(?:conv|bn))\.(.*)$', rest)
            if g:
                rest = f'mlp.{_MLP[g.group(1)]}.{g.group(2)}'
            g = re.match(r'^token_mixer\.(.*)$', rest)
            if g:
                rest = 'token_mixer.' + _authors_attention(g.group(1))
            out[f'network.{2 * int(m.group(1))}.{m.group(2)}.{rest}'] = v
            continue
        out[k.replace('head_dist', 'dist_head')] = v
    for name, module in _attention_modules(sd):  # the authors' persistent index buffers
        out[name + '.attention_bias_idxs'] = torch.zeros(1, dtype=torch.long)
    return out


def _attention_modules(sd):
    """(authors' module name, None) of every attention module, from timm keys."""
    found = []
    for k in sd:
        m = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.token_mixer\.attention_biases$', k)
        if m:
            found.append((f'network.{2 * int(m.group(1))}.{m.group(2)}.token_mixer', None))
        m = re.match(r'^stages\.(\d+)\.downsample\.attn\.attention_biases$', k)
        if m:
            found.append((f'network.{2 * int(m.group(1)) - 1}.attn', None))
    return found


def _assert_same(a, b):
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _classifier(arch, num_classes=1000):
    from mmeff.models.classifiers import EfficientFormerClassifier
    return EfficientFormerClassifier(backbone=dict(type='mmeff.EfficientFormerV2', arch=arch),
                                     num_classes=num_classes)


@pytest.mark.parametrize('arch', ['s0'] + [pytest.param(a, marks=pytest.mark.slow)
                                          for a in ARCHS[1:]])
def test_authors_and_timm_layouts_convert_alike(arch):
    ref = timm_v2(arch)
    timm_sd = ref.state_dict()
    authors_sd = timm_v2_to_authors(timm_sd)
    assert not any(k.startswith(('stem.', 'stages.')) for k in authors_sd)
    assert (detect_layout(authors_sd), detect_family(authors_sd)) == ('authors', 'v2')
    assert (detect_layout(timm_sd), detect_family(timm_sd)) == ('timm', 'v2')
    from_timm, layout = convert_state_dict(timm_sd)
    assert layout == 'timm'
    from_authors, layout = convert_state_dict(authors_sd)
    assert layout == 'authors'
    _assert_same(from_authors, from_timm)
    # The family-aware V1 entry points take V2 files too.
    _assert_same(convert_timm(timm_sd), from_timm)
    _assert_same(convert_authors(authors_sd), from_timm)
    assert set(from_timm) == {'backbone.' + k for k in timm_sd if k.startswith(('stem', 'stages'))
                              } | {'head.norm.' + k[5:] for k in timm_sd if k.startswith('norm.')
                                   } | {'head.head.' + k[5:] for k in timm_sd
                                        if k.startswith('head.')
                                        } | {'head.dist_head.' + k[10:] for k in timm_sd
                                             if k.startswith('head_dist.')}
    got = infer_arch(from_timm)
    assert (got['depths'], got['widths'], got['num_vit']) == (DEPTHS[arch], WIDTHS[arch],
                                                               NUM_VIT[arch])
    ratios = timm.models.efficientformer_v2.EfficientFormer_expansion_ratios[arch.upper()]
    assert got['mlp_ratios'] == [[r] * d if isinstance(r, int) else list(r)
                                 for r, d in zip(ratios, DEPTHS[arch])]


def test_v2_converters_are_pure_and_idempotent():
    """What the test of every family (tests/test_converters.py) does not cover: V2's
    converters by name, the family found, and the authors' converter leaving its input."""
    sd = timm_v2('s0').state_dict()
    once = convert_timm_v2(sd)
    _assert_same(convert_timm_v2(once), once)
    _assert_same(convert_authors_v2(once), once)
    assert detect_layout(once) == 'mmeff' and detect_family(once) == 'v2'
    authors = timm_v2_to_authors(sd)
    authors_before = {k: v.clone() for k, v in authors.items()}
    convert_authors_v2(authors)
    assert all(torch.equal(authors[k], authors_before[k]) for k in authors)


@pytest.mark.parametrize('arch', ['s0'] + [pytest.param(a, marks=pytest.mark.slow)
                                          for a in ARCHS[1:]])
def test_converted_authors_file_gives_timm_outputs(arch):
    """Authors' layout -> mmeff, strict load into the V2 classifier: timm's logits and stage
    maps at 224 with every parameter and buffer randomised."""
    ref = timm_v2(arch, seed=1)
    sd, _ = convert_state_dict(timm_v2_to_authors(ref.state_dict()))
    model = _classifier(arch)
    model.load_state_dict(sd, strict=True)
    model.eval()
    assert arch_name(sd) == arch
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref(x)
        assert torch.isfinite(want).all() and want.std() > 1e-3
        got = model.as_inference_module()(x)
        assert rel_err(got, want) < 1e-5
        from mmeff.models import EfficientFormerV2
        bb = EfficientFormerV2(arch, out_indices=(0, 1, 2, 3), out_norm_cfg=None).eval()
        bb.load_state_dict({k[9:]: v for k, v in sd.items() if k.startswith('backbone.')},
                           strict=True)
        for a, b in zip(bb(x), ref.forward_intermediates(x, intermediates_only=True)):
            assert rel_err(a, b) < 1e-5


def _timm_sd(arch='s0'):
    return timm_v2(arch).state_dict()


def test_refusals_name_what_was_found():
    sd = _timm_sd()
    # V2 stem, V1 blocks: neither family.
    mixed = {k: v for k, v in sd.items() if '.mlp.mid.' not in k}
    with pytest.raises(CheckpointError, match=r'looks like a timm-layout EfficientFormerV2 '
                                              r'checkpoint but has a V2 stem'):
        convert_state_dict(mixed)
    # V1 stem (timm's efficientformer_l1) with V2 blocks.
    v1 = timm.create_model('efficientformer_l1').state_dict()
    mixed = {k: v for k, v in v1.items() if k.startswith('stem.')}
    mixed.update({k: v for k, v in sd.items() if not k.startswith('stem.')})
    with pytest.raises(CheckpointError, match=r'V2 FFN blocks \(mlp\.mid\.\*\) but a V1 stem'):
        convert_state_dict(mixed)
    # A truncated V2 file: stage 3 missing. Before, such files were written with width 0.
    cut = {k: v for k, v in sd.items() if not k.startswith('stages.3.')}
    with pytest.raises(CheckpointError, match=r'looks like a timm-layout EfficientFormerV2 '
                                              r'checkpoint but stage\(s\) \[3\]'):
        convert_state_dict(cut)
    cut = {k: v for k, v in timm_v2_to_authors(sd).items() if not k.startswith('network.4.')}
    with pytest.raises(CheckpointError, match=r"authors-layout EfficientFormerV2 checkpoint but "
                                              r"stage\(s\) \[2\]"):
        convert_state_dict(cut)
    # An authors' key the converter does not know is named, not dropped.
    odd = dict(timm_v2_to_authors(sd), **{'network.0.0.mlp.extra.weight': torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"network\.0\.0\.mlp\.extra\.weight"):
        convert_state_dict(odd)
    # mmpretrain has no V2; the authors' dense models are not ImageNet files.
    fake = {'backbone.patch_embed.0.conv.weight': torch.zeros(1),
            'backbone.network.0.0.mlp.mid.weight': torch.zeros(1)}
    with pytest.raises(CheckpointError, match='mmpretrain has no V2'):
        convert_state_dict(fake)
    dense = {'backbone.patch_embed.0.weight': torch.zeros(1),
             'backbone.network.0.0.mlp.mid.weight': torch.zeros(1),
             'neck.lateral_convs.0.conv.weight': torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"looks like the authors' dense .* with neck"):
        convert_state_dict(dense)
    # V1 timm files still convert (and are not taken for V2); truncated ones are refused too.
    out, layout = convert_state_dict(v1)
    assert layout == 'timm' and detect_family(out) == 'v1' and arch_name(out) == 'l1'
    with pytest.raises(CheckpointError, match=r'looks like a timm-layout EfficientFormer '
                                              r'checkpoint but stage\(s\) \[1\]'):
        convert_state_dict({k: v for k, v in v1.items() if not k.startswith('stages.1.')})


def _run_tool(args, repo_root):
    return subprocess.run([sys.executable, 'tools/convert_checkpoint.py', *args], cwd=repo_root,
                          capture_output=True, text=True, timeout=300)


def test_convert_tool_v2(tmp_path, repo_root, capsys):
    main = load_tool(repo_root, 'convert_checkpoint').main
    ref = timm_v2('s0', seed=2)
    src = tmp_path / 'eformer_s0_450.pth'
    torch.save({'model': timm_v2_to_authors(ref.state_dict())}, src)
    dst = tmp_path / 'effformerv2_s0_mmeff.pth'
    main([str(src), str(dst)])
    assert 'authors layout, arch s0, EfficientFormerV2' in capsys.readouterr().out
    ckpt = torch.load(dst, weights_only=False)
    assert ckpt['meta']['arch'] == 's0' and ckpt['meta']['family'] == 'EfficientFormerV2'
    _assert_same(ckpt['state_dict'], convert_timm_v2(ref.state_dict()))
    # timm's published V2 weights through --timm with a local file (offline).
    weights = tmp_path / 'model.pth'
    torch.save(ref.state_dict(), weights)
    dst2 = tmp_path / 'from_timm.pth'
    main(['--timm', 'efficientformerv2_s0.snap_dist_in1k', str(dst2), '--timm-file',
          str(weights)])
    assert 'timm layout, arch s0, EfficientFormerV2' in capsys.readouterr().out
    _assert_same(torch.load(dst2, weights_only=False)['state_dict'], ckpt['state_dict'])
    # A truncated timm V2 file, through mmeff.cli as a user runs it: one line naming what it
    # looks like, no traceback, no output file.
    bad = tmp_path / 'cut.pth'
    torch.save({k: v for k, v in ref.state_dict().items() if not k.startswith('stages.2.')},
               bad)
    res = _run_tool([str(bad), str(tmp_path / 'out.pth')], repo_root)
    assert res.returncode == 1 and 'Traceback' not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and 'looks like a timm-layout EfficientFormerV2' in lines[0], lines
    assert not (tmp_path / 'out.pth').exists()


def test_bare_mmeff_v2_backbone_state_dict_converts():
    """``EfficientFormerV2(...).state_dict()`` saved as it is (timm's keys plus the output
    norms ``norm{i}``) converts to the ``backbone.`` layout and loads back strictly."""
    from mmeff.models import EfficientFormerV2
    model = EfficientFormerV2('s0', out_norm_cfg=dict(type='BN'))
    out, layout = convert_state_dict(model.state_dict())
    assert layout == 'timm' and arch_name(out) == 's0'
    assert 'backbone.norm3.running_var' in out
    fresh = EfficientFormerV2('s0', out_norm_cfg=dict(type='BN'))
    fresh.load_state_dict({k[9:]: v for k, v in out.items()}, strict=True)
