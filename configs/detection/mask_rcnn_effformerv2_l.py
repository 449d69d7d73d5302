# Mask R-CNN + FPN with an EfficientFormerV2-L backbone on COCO 2017 (44.7 / 40.4 AP box / AP
# mask, from a secondary source, not yet checked against the paper). Recipe, data_root and
# pipelines: mask_rcnn_effformerv2_s0.py.
_base_ = './mask_rcnn_effformerv2_s0.py'

pretrained = 'pretrained/eformer_l_450_mmeff.pth'
# All three variables of the S0 file are set again, so that the config's top-level values
# describe this model.
arch = 'l'
widths = [40, 80, 192, 384]
model = dict(
    backbone=dict(
        arch=arch,
        drop_path_rate=0.1,  # the authors' dense L
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=widths))
