# Mask R-CNN + FPN with an EfficientFormer-L3 backbone on COCO 2017 (paper Table 3: 41.4 AP box /
# 38.1 AP mask). Recipe, data_root and pipelines: mask_rcnn_effformer_l1.py.
_base_ = './mask_rcnn_effformer_l1.py'

pretrained = 'pretrained/efficientformer_l3_300d_mmeff.pth'
arch = 'l3'
widths = [64, 128, 320, 512]
model = dict(
    backbone=dict(
        arch=arch,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=widths))
