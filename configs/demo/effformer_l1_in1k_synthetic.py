# The classification step of README.md's demo: the real ImageNet recipe of
# configs/classification/effformer_l1_in1k.py (mixup/cutmix, RandAugment, random erasing,
# repeated augmentation, label smoothing, EMA) on the small ImageFolder dataset that
# tools/run_demo.py generates (5 classes of striped 64x64 images). What differs, and why:
# - no distillation: DeiT's RegNetY-16GF teacher weights cannot be downloaded here;
# - 6 epochs of 5 iterations, lr 2e-3 without auto-scaling (the recipe's 1e-3 per 1024 images
#   would give 2e-5 at batch 16), 1 warm-up epoch;
# - EMA momentum 0.1 instead of 4e-5 per iteration: over 30 iterations the recipe's EMA would
#   still be the random initial weights.
_base_ = '../classification/effformer_l1_in1k.py'

data_root = 'work_dirs/demo/data/imagenet/'
num_classes = 5
img_size = 64

model = dict(num_classes=num_classes, distillation=None)
train_pipeline = [
    dict(type='LoadPILImage'),
    dict(type='TimmTransform', input_size=img_size, is_training=True, color_jitter=0.4,
         auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic',
         re_prob=0.25, re_mode='pixel', re_count=1),
    dict(type='PackClsInputs'),
]
test_pipeline = [
    dict(type='LoadPILImage'),
    dict(type='TimmTransform', input_size=img_size, crop_pct=0.875, interpolation='bicubic'),
    dict(type='PackClsInputs'),
]
train_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False, pin_memory=False,
    sampler=dict(selected_round=0),  # DeiT's 256-sample rounding needs >= 256 images
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False, pin_memory=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=2e-3))
auto_scale_lr = dict(enable=False)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=5, eta_min=1e-5, by_epoch=True, begin=1, end=6,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=6, val_interval=6)
custom_hooks = [
    dict(type='EMAHook', momentum=0.1, update_buffers=True, priority='ABOVE_NORMAL'),
    dict(type='ClassNumCheckHook'),
    dict(type='mmeff.CheckFiniteLossHook'),
    dict(type='mmeff.RNGStateHook'),
]
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=6, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0, deterministic=True)
