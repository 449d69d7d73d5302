# The segmentation step of README.md's demo: Semantic FPN + EfficientFormer-L1 (the real
# configs/segmentation/fpn_effformer_l1_ade20k_40k.py: model, mmseg's ADE20K pipelines with
# reduce_zero_label, IoUMetric, data checks) on the small ADE20K-format dataset that
# tools/run_demo.py generates (coloured rectangles, 150-class ADE convention, 8 classes in use,
# 96x128 images). Only the sizes and the schedule differ: 96-px crops from a (384, 96) scale
# instead of 512 from (2048, 512), batch 4, 60 iterations with the same poly decay, lr 1e-3.
# The backbone starts from the demo's classification checkpoint (tools/run_demo.py passes
# `--cfg-options pretrained=...`).
_base_ = '../segmentation/fpn_effformer_l1_ade20k_40k.py'

data_root = 'work_dirs/demo/data/ade/ADEChallengeData2016'
pretrained = 'work_dirs/demo/effformer_l1_in1k/epoch_6.pth'
crop_size = (96, 96)
scale = (384, 96)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [dict(type='PolyLR', power=0.9, eta_min=0., begin=0, end=60, by_epoch=False)]
train_cfg = dict(max_iters=60, val_interval=60)
default_hooks = dict(logger=dict(interval=10),
                     checkpoint=dict(interval=60, max_keep_ckpts=1, save_best=None))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0, deterministic=True)
