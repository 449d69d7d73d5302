# Mask R-CNN + FPN with an EfficientFormerV2-S2 backbone on COCO 2017 (43.4 / 39.5 AP box / AP
# mask, from a secondary source, not yet checked against the paper). Recipe, data_root and
# pipelines: mask_rcnn_effformerv2_s0.py.
_base_ = './mask_rcnn_effformerv2_s0.py'

pretrained = 'pretrained/eformer_s2_450_mmeff.pth'
# All three variables of the S0 file are set again, so that the config's top-level values
# describe this model.
arch = 's2'
widths = [32, 64, 144, 288]
model = dict(
    backbone=dict(
        arch=arch,
        drop_path_rate=0.02,  # the authors' dense S2
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=widths))
