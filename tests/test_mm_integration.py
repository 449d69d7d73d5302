"""The backbone inside stock mmdet and mmseg models, built from their own installed configs."""
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmeff.models  # noqa: F401
from mmeff.models import EfficientFormer


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_builds_through_downstream_registries(scope):
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    model = MODELS.build(dict(type='mmeff.EfficientFormer', arch='l1', out_indices=(1, 2, 3)))
    assert isinstance(model, EfficientFormer)
    assert model.out_channels == [96, 224, 448]


def _swap_in(cfg_path, tmp_path, extra):
    text = textwrap.dedent(f"""
        _base_ = '{cfg_path}'
        custom_imports = dict(imports=['mmeff.models'], allow_failed_imports=False)
        """) + textwrap.dedent(extra)
    path = tmp_path / 'cfg.py'
    path.write_text(text)
    return Config.fromfile(str(path))


@pytest.mark.parametrize('base', ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
                                  'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'])
def test_stock_mmdet_config_forward(base, tmp_path):
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    cfg = _swap_in(base, tmp_path, """
        model = dict(
            backbone=dict(_delete_=True, type='mmeff.EfficientFormer', arch='l1',
                          out_indices=(1, 2, 3)),
            neck=dict(in_channels=[96, 224, 448], start_level=0))
        """)
    init_default_scope('mmdet')
    from mmengine.utils import import_modules_from_strings
    import_modules_from_strings(**cfg.custom_imports)
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert isinstance(model.backbone, EfficientFormer)
    packed = demo_mm_inputs(2, image_shapes=[(3, 128, 160), (3, 96, 128)], num_items=[2, 3],
                            num_classes=80)
    model.train()
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode='loss')
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(x.sum() for x in v)
                for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.stem.conv1.weight.grad is not None
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(packed, False), mode='predict')
    assert len(results) == 2 and hasattr(results[0], 'pred_instances')


def test_stock_mmseg_config_forward(tmp_path):
    from mmseg.registry import MODELS
    cfg = _swap_in('mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py', tmp_path, """
        model = dict(
            pretrained=None,  # the stock config points at an ImageNet ResNet here
            backbone=dict(_delete_=True, type='mmeff.EfficientFormer', arch='l1'),
            neck=dict(in_channels=[48, 96, 224, 448]))
        """)
    init_default_scope('mmseg')
    from mmengine.utils import import_modules_from_strings
    import_modules_from_strings(**cfg.custom_imports)
    cfg.model.data_preprocessor.size = None
    # non-multiple-of-32 inputs padded, then cropped back
    cfg.model.data_preprocessor.size_divisor = 32
    from mmeff.compat import sync_bn_to_bn
    sync_bn_to_bn(cfg.model)
    model = MODELS.build(cfg.model)
    model.init_weights()
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData
    samples = []
    for h, w in [(96, 130), (96, 130)]:
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, h, w)))
        s.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        samples.append(s)
    inputs = [torch.randint(0, 255, (3, 96, 130), dtype=torch.uint8) for _ in samples]
    model.train()
    data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), True)
    losses = model(**data, mode='loss')
    assert torch.isfinite(losses['decode.loss_ce'])
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), False)
        out = model(**data, mode='predict')
    assert out[0].pred_sem_seg.data.shape[-2:] == (96, 130)
