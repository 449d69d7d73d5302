# Semantic FPN with an EfficientFormerV2-S2 backbone on ADE20K (42.4 mIoU, from a secondary
# source, not yet checked against the paper); the recipe, data_root and pipelines are those of
# fpn_effformerv2_s0_ade20k_40k.py.
_base_ = './fpn_effformerv2_s0_ade20k_40k.py'

pretrained = 'pretrained/eformer_s2_450_mmeff.pth'
# All three variables of the S0 file are set again, so that the config's top-level values
# describe this model (tools/train.py refuses `--cfg-options arch=...`, naming the entries to set).
arch = 's2'
widths = [32, 64, 144, 288]
model = dict(
    backbone=dict(
        arch=arch,
        drop_path_rate=0.02,  # the authors' dense S2
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=widths))
