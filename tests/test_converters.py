import subprocess
import sys

import pytest
import torch

from mmeff.converters import (CheckpointError, convert_authors, convert_mmpretrain,
                              convert_state_dict, convert_timm, detect_layout, infer_arch,
                              load_checkpoint_file)
from mmeff.models import EfficientFormer
from mmeff.models.families import FAMILIES

from helpers import randomise_, timm_efficientformer, timm_to_authors

ARCH_CFG = {'l1': dict(depths=[3, 2, 6, 4], widths=[48, 96, 224, 448], num_vit=1),
            'l3': dict(depths=[4, 4, 12, 6], widths=[64, 128, 320, 512], num_vit=4),
            'l7': dict(depths=[6, 6, 18, 8], widths=[96, 192, 384, 768], num_vit=8)}


def _assert_same(a, b):
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize('arch', ['l1', 'l3', 'l7'])
def test_authors_layout_matches_timm(arch):
    timm_model = timm_efficientformer(arch)
    timm_sd = timm_model.state_dict()
    authors_sd = timm_to_authors(timm_sd)
    # timm's own authors->timm filter reads our fabricated authors checkpoint back exactly.
    from timm.models.efficientformer import checkpoint_filter_fn
    back = checkpoint_filter_fn(authors_sd, timm_model)
    assert set(back) == set(timm_sd)
    assert detect_layout(authors_sd) == 'authors'
    _assert_same(convert_authors(authors_sd), convert_timm(timm_sd))
    assert infer_arch(convert_timm(timm_sd)) == ARCH_CFG[arch]


@pytest.mark.parametrize('name', list(FAMILIES))
def test_converters_are_idempotent_and_pure(name):
    """Every family's timm state dict: the layout converters and each converter the family
    declares give an mmeff-layout dict back unchanged, and never modify their input."""
    import timm
    family = FAMILIES[name]
    sd = randomise_(timm.create_model(family.timm_name(family.default_arch))).state_dict()
    before = {k: v.clone() for k, v in sd.items()}
    once = convert_timm(sd)
    _assert_same(convert_timm(once), once)
    _assert_same(convert_authors(once), once)
    _assert_same(convert_mmpretrain(once), once)
    _assert_same(convert_state_dict(once)[0], once)
    for layout in family.converters:
        _assert_same(family.converter(layout)(once), once)
    assert list(sd) == list(before) and all(torch.equal(sd[k], before[k]) for k in sd)


def _mmpretrain_backbone(arch, **kwargs):
    from mmpretrain.models.backbones.efficientformer import EfficientFormer as MMPEff
    model = MMPEff(arch, **kwargs)
    randomise_(model, seed=3)
    model.eval()  # caches mmpretrain's bias from the randomised table (returns None)
    return model


@pytest.mark.parametrize('arch', ['l1', 'l3'])
def test_mmpretrain_dense_parity(arch):
    ref = _mmpretrain_backbone(arch, out_indices=(0, 1, 2, 3), reshape_last_feat=True)
    sd = {f'backbone.{k}': v for k, v in ref.state_dict().items()}
    assert detect_layout(sd) == 'mmpretrain'
    out, layout = convert_state_dict(sd)
    model = EfficientFormer(arch).eval()
    model.load_state_dict({k[9:]: v for k, v in out.items()}, strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for a, b in zip(model(x), ref(x)):
            assert ((a - b).norm() / b.norm()) < 1e-5


def test_mmpretrain_classifier_layout():
    from mmengine.registry import DefaultScope
    from mmpretrain.models.heads.efficientformer_head import EfficientFormerClsHead
    bb = _mmpretrain_backbone('l1', out_indices=(3,))
    # the head builds its loss from the current default scope, which other tests may have set
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        head = EfficientFormerClsHead(num_classes=10, in_channels=448)
    sd = {f'backbone.{k}': v for k, v in bb.state_dict().items()}
    sd.update({f'head.{k}': v for k, v in head.state_dict().items()})
    out = convert_mmpretrain(sd)
    timm_keys = convert_timm(timm_efficientformer('l1', num_classes=10).state_dict())
    assert set(out) == set(timm_keys)
    for k in out:
        assert out[k].shape == timm_keys[k].shape, k


def test_convert_tool_end_to_end(tmp_path, repo_root):
    timm_model = timm_efficientformer('l1')
    src = tmp_path / 'authors_l1.pth'
    torch.save({'model': timm_to_authors(timm_model.state_dict())}, src)
    dst = tmp_path / 'mmeff_l1.pth'
    res = subprocess.run([sys.executable, 'tools/convert_checkpoint.py', str(src), str(dst)],
                         cwd=repo_root, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert 'authors layout, arch l1' in res.stdout
    ckpt = torch.load(dst, weights_only=False)
    assert ckpt['meta']['arch'] == 'l1' and ckpt['meta']['has_head']
    # Loads into a dense backbone through init_cfg with the backbone prefix.
    model = EfficientFormer('l1', init_cfg=dict(type='Pretrained', checkpoint=str(dst),
                                                  prefix='backbone.'))
    model.init_weights()
    ref = convert_timm(timm_model.state_dict())
    for k, v in model.state_dict().items():
        if not k.startswith('norm'):
            assert torch.equal(v, ref['backbone.' + k]), k


def test_bad_checkpoint_files(tmp_path, repo_root):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_checkpoint_file(tmp_path / 'missing.pth')
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointError, match='is empty'):
        load_checkpoint_file(empty)
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'a': torch.zeros(1000)}}, good)
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(truncated)
    assert 'truncated.pth' in str(info.value) and 'corrupt or truncated' in str(info.value)
    with pytest.raises(CheckpointError, match='unknown checkpoint layout'):
        convert_state_dict({'conv.weight': torch.zeros(1)})
    res = subprocess.run([sys.executable, 'tools/convert_checkpoint.py', str(truncated),
                          str(tmp_path / 'out.pth')], cwd=repo_root, capture_output=True, text=True)
    assert res.returncode != 0 and 'corrupt or truncated' in res.stderr
    assert not (tmp_path / 'out.pth').exists()


def test_pretrained_init_errors(tmp_path):
    model = EfficientFormer('l1', init_cfg=dict(
        type='Pretrained', checkpoint=str(tmp_path / 'x.pth'), prefix='backbone.'))
    with pytest.raises(FileNotFoundError, match='convert_checkpoint.py'):
        model.init_weights()
    ckpt = tmp_path / 'raw_timm.pth'
    torch.save(timm_efficientformer('l1').state_dict(), ckpt)  # not converted
    model = EfficientFormer('l1', init_cfg=dict(type='Pretrained', checkpoint=str(ckpt),
                                                  prefix='backbone.'))
    with pytest.raises(KeyError, match='starts with prefix'):
        model.init_weights()
    l3 = tmp_path / 'l3.pth'
    torch.save({'state_dict': convert_timm(timm_efficientformer('l3').state_dict())}, l3)
    model = EfficientFormer('l1', init_cfg=dict(type='Pretrained', checkpoint=str(l3),
                                                  prefix='backbone.'))
    with pytest.raises(ValueError, match='does not fit this arch'):
        model.init_weights()
