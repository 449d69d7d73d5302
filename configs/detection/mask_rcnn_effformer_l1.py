# Mask R-CNN + FPN with an EfficientFormer-L1 backbone on COCO 2017, the authors' 1x recipe
# (paper Table 3: 37.9 AP box / 35.4 AP mask): AdamW lr 2e-4 wd 1e-4, 12 epochs with lr steps
# at epochs 8 and 11, 500-iteration linear warm-up, 8 GPUs x 2 images, (1333, 800) keep-ratio
# resize, flip 0.5, COCO bbox + segm metrics. l3/l7 inherit this file. Commands, params/FLOPs and
# the paper's numbers: configs/detection/README.md.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmeff.models', 'mmeff.engine'], allow_failed_imports=False)

# The dataset: COCO 2017 in mmdet's layout (annotations/instances_{train,val}2017.json,
# train2017/, val2017/). Change it here or with `--cfg-options data_root=/path/to/coco/`
# (tools/train.py and tools/test.py carry the new value into the datasets and the evaluators).
data_root = 'data/coco/'
# ImageNet-1K weights in mmeff's layout (`backbone.*` keys), made from the authors'
# efficientformer_l1_300d.pth with tools/convert_checkpoint.py (see the README). A missing file
# stops training with an error naming it; set model.backbone.init_cfg=None to train from random
# weights on purpose. Change it here or with `--cfg-options pretrained=/path/to/weights.pth`.
pretrained = 'pretrained/efficientformer_l1_300d_mmeff.pth'
arch = 'l1'
widths = [48, 96, 224, 448]  # EfficientFormer.arch_settings[arch]['widths']: FPN inputs

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmeff.EfficientFormer',
        arch=arch,
        out_indices=(0, 1, 2, 3),  # strides 4, 8, 16, 32, each through GroupNorm(1 group)
        drop_path_rate=0.,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(type='FPN', in_channels=widths, out_channels=256, num_outs=5))

# Data: mmdet's COCO instance pipelines are the recipe; stated here so the recipe reads in one
# place. num_workers=2 per GPU as in mmdet.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2,  # per GPU; the recipe is 8 GPUs x 2 = 16
    num_workers=2,
    # Workers re-created each epoch (mmdet's base keeps them): they are re-seeded from
    # randomness.seed, so a resumed run's augmentations are the uninterrupted run's.
    persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_train2017.json',
                 data_prefix=dict(img='train2017/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_val2017.json',
                 data_prefix=dict(img='val2017/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='CocoMetric', metric=['bbox', 'segm'],
                     ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# Schedule: 12 epochs, linear warm-up over the first 500 iterations from lr x 0.001, lr x 0.1 at
# epochs 8 and 11.
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=12, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    clip_grad=None)
# lr 2e-4 is for 8 GPUs x 2 images; `tools/train.py --auto-scale-lr` rescales it linearly for
# another total batch size.
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Checkpoints hold the Python/NumPy/torch random states, so `--resume` continues exactly where an
# uninterrupted run would be, data augmentation included (the fixed seed below and workers that
# are not persistent); validation does not shift the training's random streams. A NaN or infinite
# loss stops training at once, with the iteration and the usual fixes, before a checkpoint of the
# spoiled weights is saved.
custom_hooks = [dict(type='mmeff.RNGStateHook'), dict(type='mmeff.CheckFiniteLossHook')]
# A fixed seed: the sampler's shuffling and the data workers' seeds come from it, so a resumed
# run (which cannot restore them from the checkpoint) needs the same one; mmdet's default
# (None) draws a new one per run.
randomness = dict(seed=0)
