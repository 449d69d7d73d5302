# Semantic FPN with an EfficientFormer-L1 backbone on ADE20K, the authors' recipe
# (paper Table 3: 38.9 mIoU): FPN (4 levels, 256 ch) + FPNHead (128 ch, dropout 0.1), AdamW lr 2e-4,
# wd 1e-4, poly (power 0.9) over 40k iterations, 8 GPUs x 4 images, 512x512 crops, whole-image
# inference, mIoU every 4k iterations. l3/l7 inherit this file (data_root and the pipelines live
# here only). See configs/segmentation/README.md for commands and numbers.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py',
]
custom_imports = dict(imports=['mmeff.models', 'mmeff.engine'], allow_failed_imports=False)

# The one place to point at the data (mmseg's ADE20K layout: images/ and annotations/, each with
# training/ and validation/): edit it here, or pass `--cfg-options data_root=/path/` to
# tools/train.py and tools/test.py, which carry it into every dataset.
data_root = 'data/ade/ADEChallengeData2016'
# ImageNet-1K weights in mmeff's layout (`backbone.*` keys), made from the authors'
# efficientformer_l1_300d.pth with tools/convert_checkpoint.py (see the README); the tools
# carry `--cfg-options pretrained=/path.pth` into init_cfg the same way.
pretrained = 'pretrained/efficientformer_l1_300d_mmeff.pth'
arch = 'l1'
widths = [48, 96, 224, 448]  # EfficientFormer.arch_settings[arch]['widths']

crop_size = (512, 512)
# The authors used SyncBN in the decode head (mmseg 0.x fpn_r50). tools/train.py turns it into
# BN when there is no CUDA (SyncBN needs GPU tensors, even under CPU DDP).
norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='mmeff.EfficientFormer',
        arch=arch,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=widths, out_channels=256, num_outs=4),
    decode_head=dict(channels=128, dropout_ratio=0.1, num_classes=150, norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'))

# Data: mmseg's ADE20K pipelines are the recipe already (RandomResize (2048, 512) x 0.5-2.0,
# RandomCrop 512 with cat_max_ratio 0.75, flip 0.5, PhotoMetricDistortion; test: Resize
# (2048, 512) keep-ratio, labels with reduce_zero_label). Only the root changes here.
train_dataloader = dict(batch_size=4, num_workers=4, dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=1, num_workers=4, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=None)
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0., begin=0, end=40000, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40000, val_interval=4000)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4000, max_keep_ckpts=3,
                    save_best='mIoU', rule='greater'))
# Fail early and clearly on an empty or incomplete dataset, a num_classes that does not match the
# dataset, and label values outside [0, num_classes) other than ignore_index (255). Stop at once
# on a NaN or infinite loss, before a checkpoint of the spoiled weights is saved. Checkpoints hold
# the Python/NumPy/torch random states, so `--resume` continues exactly where an uninterrupted
# run would be (random crops, flips, photometric distortion, dropout); validation does not shift
# the training's random streams.
custom_hooks = [dict(type='mmeff.SegDataCheckHook'), dict(type='mmeff.CheckFiniteLossHook'),
                dict(type='mmeff.RNGStateHook')]
# A fixed seed: the sampler's shuffling and the data workers' seeds come from it, so a resumed
# run (which cannot restore them from the checkpoint) needs the same one; mmseg's default (None)
# draws a new one per run.
randomness = dict(seed=0)
# lr 2e-4 is for 8 GPUs x 4 images; `tools/train.py --auto-scale-lr` rescales it for other sizes.
auto_scale_lr = dict(enable=False, base_batch_size=32)
