# Semantic FPN with an EfficientFormerV2-S0 backbone on ADE20K, the authors' V2 recipe (their
# fpn_efficientformerv2_*_ade20k_40k.py; the paper reports no S0 segmentation result): FPN
# (4 levels, 256 ch) + FPNHead (128 ch, dropout 0.1), AdamW lr 2e-4, wd 1e-4, poly (power 0.9)
# down to lr 1e-6 over 40k iterations, 8 GPUs x 4 images, 512x512 crops, whole-image inference,
# mIoU every 4k iterations. data_root, the pipelines and the data checks are those of
# fpn_effformer_l1_ade20k_40k.py (inherited); s1/s2/l inherit this file. See
# configs/segmentation/README.md for commands and numbers.
#
# Test-time sizes: mmseg's stock ADE20K test pipeline (keep-ratio Resize to (2048, 512)) gives
# images such as 512x683 whose sides are not multiples of 32 (the stride-16 grid 32x43 is odd).
# The authors needed a custom resize (their align_resize.py rounds to a multiple of 32) because
# their backbone failed on such grids; mmeff.EfficientFormerV2 takes any size of at least 32 px,
# so the stock pipeline is used as it is.
_base_ = './fpn_effformer_l1_ade20k_40k.py'

# ImageNet-1K weights in mmeff's layout (`backbone.*` keys), made from the authors' 450-epoch
# eformer_s0_450.pth (the file their segmentation configs load) with tools/convert_checkpoint.py
# (see the README); the tools carry `--cfg-options pretrained=/path.pth` into init_cfg.
pretrained = 'pretrained/eformer_s0_450_mmeff.pth'
arch = 's0'
widths = [32, 48, 96, 176]  # EfficientFormerV2.arch_settings[arch]['widths']

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmeff.EfficientFormerV2',
        arch=arch,
        out_indices=(0, 1, 2, 3),  # strides 4, 8, 16, 32, without output norm (the authors')
        drop_path_rate=0.,  # the authors' dense S0/S1: 0.0, S2: 0.02, L: 0.1
        # The authors' dense backbones were turned into SyncBN after loading the ImageNet
        # weights, which also undid their BN freeze: the published runs trained BN, with
        # statistics over the 32 images of the 8 GPUs. tools/train.py uses BN without CUDA.
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=widths))

# Poly decay (power 0.9) to lr 1e-6 (the authors' min_lr; V1's configs decay to 0).
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=1e-6, begin=0, end=40000, by_epoch=False)
]
