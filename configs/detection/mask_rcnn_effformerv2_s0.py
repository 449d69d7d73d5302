# Mask R-CNN + FPN with an EfficientFormerV2-S0 backbone on COCO 2017, the authors' V2 1x recipe
# (their mask_rcnn_efficientformerv2_*_fpn_1x_coco.py; the paper reports no S0 detection
# result): AdamW lr 2e-4 weight decay 0.05, 12 epochs with lr steps at epochs 8 and 11,
# 500-iteration linear warm-up from lr x 1e-6, 8 GPUs x 2 images, (1333, 800) keep-ratio resize,
# flip 0.5, padding to a multiple of 32, COCO bbox + segm metrics. data_root and the pipelines
# are those of mask_rcnn_effformer_l1.py (inherited); s1/s2/l inherit this file. Commands,
# params/FLOPs and the paper's numbers: configs/detection/README.md.
_base_ = './mask_rcnn_effformer_l1.py'

# ImageNet-1K weights in mmeff's layout (`backbone.*` keys), made from the authors' 450-epoch
# eformer_s0_450.pth (the file their detection configs load) with tools/convert_checkpoint.py
# (see the README). A missing file stops training with an error naming it; set
# model.backbone.init_cfg=None to train from random weights on purpose. Change it here or with
# `--cfg-options pretrained=/path/to/weights.pth`.
pretrained = 'pretrained/eformer_s0_450_mmeff.pth'
arch = 's0'
widths = [32, 48, 96, 176]  # EfficientFormerV2.arch_settings[arch]['widths']: FPN inputs

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmeff.EfficientFormerV2',
        arch=arch,
        out_indices=(0, 1, 2, 3),  # strides 4, 8, 16, 32, without output norm (the authors')
        drop_path_rate=0.,  # the authors' dense S0/S1: 0.0, S2: 0.02, L: 0.1
        # The authors' dense backbones were turned into SyncBN after loading the ImageNet
        # weights, which also undid their BN freeze: the published runs trained BN, with
        # statistics over the 16 images of the 8 GPUs. tools/train.py uses BN without CUDA.
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        norm_eval=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(type='FPN', in_channels=widths, out_channels=256, num_outs=5))

# Schedule: 12 epochs, linear warm-up over the first 500 iterations from lr x 1e-6 (the authors'
# warmup_ratio), lr x 0.1 at epochs 8 and 11.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
# AdamW lr 2e-4 (for 8 GPUs x 2 images), weight decay 0.05, no gradient clipping.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    clip_grad=None)
