# Mask R-CNN + FPN with an EfficientFormer-L7 backbone on COCO 2017 (paper Table 3: 42.6 AP box /
# 39.0 AP mask). Recipe, data_root and pipelines: mask_rcnn_effformer_l1.py. The authors' dense
# L7 models used layer scales initialised at 1e-6 (only matters for blocks the ImageNet
# checkpoint does not cover).
_base_ = './mask_rcnn_effformer_l1.py'

pretrained = 'pretrained/efficientformer_l7_300d_mmeff.pth'
arch = 'l7'
widths = [96, 192, 384, 768]
model = dict(
    backbone=dict(
        arch=arch,
        layer_scale_init_value=1e-6,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=widths))
