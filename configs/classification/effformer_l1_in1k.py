# EfficientFormer-L1 on ImageNet-1K with the authors' DeiT recipe (paper Table 1: 79.2 top-1):
# 300 epochs, AdamW wd 0.025, lr 1e-3 per 1024 images (scaled to the real batch), cosine with 5
# warm-up epochs down to 1e-5, RandAugment rand-m9-mstd0.5-inc1, mixup 0.8 / cutmix 1.0, label
# smoothing 0.1, random erasing 0.25, repeated augmentation, model EMA, hard distillation
# (alpha 0.5) from a RegNetY-16GF teacher. l3/l7 inherit this file. Commands and notes:
# configs/classification/README.md.
default_scope = 'mmeff'
custom_imports = dict(
    imports=['mmeff.models', 'mmeff.datasets', 'mmeff.evaluation', 'mmeff.engine.hooks',
             'mmeff.engine.hooks_classification', 'mmeff.engine.hooks_nan'],
    allow_failed_imports=False)

# The dataset: an ImageFolder tree data_root/{train,val}/<class>/<image> (ImageNet-1K: 1000
# class folders each). Change it here or with `--cfg-options data_root=/path/to/imagenet/`.
data_root = 'data/imagenet/'
num_classes = 1000
# DeiT's RegNetY-16GF teacher (timm 'regnety_160', 82.6 top-1), downloaded beforehand from
# https://dl.fbaipublicfiles.com/deit/regnety_160-a5fe301d.pth. A missing file stops training
# with an error naming it; --cfg-options model.distillation.teacher.checkpoint=/path/x.pth
# points elsewhere, model.distillation=None trains without a teacher.
teacher_checkpoint = 'checkpoints/regnety_160-a5fe301d.pth'

model = dict(
    type='EfficientFormerClassifier',
    backbone=dict(arch='l1', drop_path_rate=0.),  # the authors' main.py sets no drop path
    num_classes=num_classes,
    label_smoothing=0.1,
    # timm Mixup, per batch: mixup (alpha 0.8) or, half of the time, cutmix (alpha 1.0).
    mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch'),
    distillation=dict(
        type='hard', alpha=0.5, tau=1.0,
        teacher=dict(model_name='regnety_160', checkpoint=teacher_checkpoint)))

# Data: timm's create_transform, as DeiT. Training: RandomResizedCrop 224 (bicubic), flip,
# RandAugment (colour jitter is off when RandAugment is on), normalisation, random erasing
# 0.25 (per-pixel random values). Evaluation: resize 256 (bicubic), centre crop 224.
train_pipeline = [
    dict(type='LoadPILImage'),
    dict(type='TimmTransform', input_size=224, is_training=True, color_jitter=0.4,
         auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic',
         re_prob=0.25, re_mode='pixel', re_count=1),
    dict(type='PackClsInputs'),
]
test_pipeline = [
    dict(type='LoadPILImage'),
    dict(type='TimmTransform', input_size=224, crop_pct=0.875, interpolation='bicubic'),
    dict(type='PackClsInputs'),
]
train_dataloader = dict(
    batch_size=128,  # per GPU; 8 GPUs x 128 = 1024, the batch the base lr refers to
    num_workers=8,
    # Workers re-created each epoch, re-seeded from randomness.seed: a resumed run's
    # augmentations are then the uninterrupted run's (persistent workers would carry their
    # random states over from epochs a resumed run never ran).
    persistent_workers=False,
    pin_memory=True,
    drop_last=True,  # mixup needs even batches
    # DeiT's repeated augmentation: 3 differently augmented copies of each image per epoch,
    # on different GPUs; an epoch still has len(dataset) samples in total.
    sampler=dict(type='RepeatAugSampler', num_repeats=3, shuffle=True, selected_round=256),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ImageFolderDataset', data_root=data_root,
                 data_prefix=dict(img_path='train'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=128,
    num_workers=8,
    persistent_workers=True,
    pin_memory=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type='ImageFolderDataset', data_root=data_root,
                 data_prefix=dict(img_path='val'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_evaluator = val_evaluator

# Optimisation: AdamW, lr 1e-3 for a total batch of 1024, scaled linearly to the real total
# batch (auto_scale_lr: GPUs x batch_size / 1024). No weight decay on 1-D parameters (biases,
# norms, layer scales), as timm's create_optimizer in the authors' main.py.
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.025),
    paramwise_cfg=dict(flat_decay_mult=0.))
auto_scale_lr = dict(enable=True, base_batch_size=1024)
# 5 warm-up epochs from lr x 1e-3 (DeiT's warmup_lr 1e-6), then cosine down to 1e-5, updated
# every iteration.
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=295, eta_min=1e-5, by_epoch=True, begin=5, end=300,
         convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=300, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

custom_hooks = [
    # Model EMA, decay 0.99996 per iteration (DeiT/the authors'; momentum = 1 - decay), over
    # parameters and BN statistics like timm's ModelEma. Validation, testing and the saved
    # `state_dict` use the EMA weights; the raw weights are saved as `ema_state_dict`.
    dict(type='EMAHook', momentum=4e-5, update_buffers=True, priority='ABOVE_NORMAL'),
    # Dataset classes vs model.num_classes, and train/ vs val/ class folders.
    dict(type='ClassNumCheckHook'),
    # Stop at once on a NaN or infinite loss (DeiT's main.py exits too), before a checkpoint of
    # the spoiled weights is saved.
    dict(type='mmeff.CheckFiniteLossHook'),
    # Checkpoints hold the Python/NumPy/torch random states (mixup/cutmix draws, RandAugment and
    # random erasing in the main process, drop path), so `--resume` continues exactly where an
    # uninterrupted run would be; validation does not shift the training's random streams.
    dict(type='mmeff.RNGStateHook'),
]
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3,
                    save_best='accuracy/top1', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
)
env_cfg = dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
log_processor = dict(by_epoch=True)
log_level = 'INFO'
randomness = dict(seed=0, diff_rank_seed=True)  # DeiT: seed + rank
load_from = None
resume = False
