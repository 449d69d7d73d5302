# Mask R-CNN + FPN with an EfficientFormerV2-S1 backbone on COCO 2017 (the paper reports no S1
# detection result). Recipe, data_root and pipelines: mask_rcnn_effformerv2_s0.py.
_base_ = './mask_rcnn_effformerv2_s0.py'

pretrained = 'pretrained/eformer_s1_450_mmeff.pth'
# All three variables of the S0 file are set again, so that the config's top-level values
# describe this model.
arch = 's1'
widths = [32, 48, 120, 224]
model = dict(
    backbone=dict(
        arch=arch,
        drop_path_rate=0.,  # the authors' dense S1
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=widths))
