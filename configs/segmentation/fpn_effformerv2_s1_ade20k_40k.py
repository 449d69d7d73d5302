# Semantic FPN with an EfficientFormerV2-S1 backbone on ADE20K (the paper reports no S1
# segmentation result); the recipe, data_root and pipelines are those of
# fpn_effformerv2_s0_ade20k_40k.py.
_base_ = './fpn_effformerv2_s0_ade20k_40k.py'

pretrained = 'pretrained/eformer_s1_450_mmeff.pth'
# All three variables of the S0 file are set again, so that the config's top-level values
# describe this model (tools/train.py refuses `--cfg-options arch=...`, naming the entries to set).
arch = 's1'
widths = [32, 48, 120, 224]
model = dict(
    backbone=dict(
        arch=arch,
        drop_path_rate=0.,  # the authors' dense S1
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=widths))
