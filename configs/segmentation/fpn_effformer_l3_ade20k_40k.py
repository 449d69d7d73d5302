# Semantic FPN with an EfficientFormer-L3 backbone on ADE20K (paper Table 3: 43.5 mIoU); the
# recipe, data_root and pipelines are those of fpn_effformer_l1_ade20k_40k.py.
_base_ = './fpn_effformer_l1_ade20k_40k.py'

pretrained = 'pretrained/efficientformer_l3_300d_mmeff.pth'
# Both variables of the L1 file are set again, so that the config's top-level values describe
# this model (tools/train.py refuses `--cfg-options arch=...`, naming the entries to set).
arch = 'l3'
widths = [64, 128, 320, 512]
model = dict(
    backbone=dict(
        arch=arch,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=widths))
