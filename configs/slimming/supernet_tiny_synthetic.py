# A tiny supernet on the small generated ImageFolder (5 classes of 64x64 striped images), to
# check supernet training, saving and --resume in minutes on a CPU. The data is what
# tools/run_demo.py writes; to make it alone:
#   .venv/bin/python -c "from mmeff.datasets import make_imagefolder_dataset as m; \
#       m('work_dirs/demo/data/imagenet/', num_classes=5, per_class=(16, 4), size=64)"
#   .venv/bin/python tools/train.py configs/slimming/supernet_tiny_synthetic.py
# What differs from supernet_l7space_in1k.py: the space (2 widths per stage, 2-3 positions),
# 64 px images (eval: resize 73, centre crop 64), 2 epochs, lr 2e-3 for the batch of 16, a
# higher architecture lr (the logits move within the few steps), no repeated-augmentation
# rounding (DeiT's 256-sample rounding needs >= 256 images), no mixup/cutmix and no
# distillation (no teacher to download). Two processes on CPU:
#   bash tools/dist_train.sh configs/slimming/supernet_tiny_synthetic.py 2
_base_ = './supernet_l7space_in1k.py'

data_root = 'work_dirs/demo/data/imagenet/'
num_classes = 5
img_size = 64
max_epochs = 2
space = dict(_delete_=True, name='tiny', widths=[[16, 24], [24, 32], [32, 48], [48, 64]],
             max_depths=[2, 2, 3, 2])

model = dict(space=space, num_classes=num_classes, mixup=None, distillation=None)
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
    sampler=dict(selected_round=0),
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False, pin_memory=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

# lr for one process's batch of 16 (the tiny run's lr is not scaled with the processes).
optim_wrapper = dict(weights=dict(optimizer=dict(lr=2e-3)), arch=dict(optimizer=dict(lr=1e-2)))
param_scheduler = dict(
    _delete_=True,
    weights=[dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, by_epoch=True,
                  begin=0, end=max_epochs, convert_to_iter_based=True)],
    arch=[])
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=2))
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0, deterministic=True)
