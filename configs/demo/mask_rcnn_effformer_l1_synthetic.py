# The detection step of README.md's demo: Mask R-CNN + EfficientFormer-L1 (the real detection
# config) on the small COCO-format dataset that tools/run_demo.py generates (shapes drawn on
# noise, 160x128 images). Only the data, image scale, schedule and number of sampled RoIs differ
# from configs/detection/mask_rcnn_effformer_l1.py. The backbone starts from the demo's
# classification checkpoint (tools/run_demo.py passes `--cfg-options pretrained=...`); no
# ImageNet checkpoint can be downloaded here.
_base_ = '../detection/mask_rcnn_effformer_l1.py'

data_root = 'work_dirs/demo/data/coco/'
classes = ('rectangle', 'ellipse', 'triangle')
metainfo = dict(classes=classes)
img_scale = (160, 128)
pretrained = 'work_dirs/demo/effformer_l1_in1k/epoch_6.pth'

model = dict(
    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    roi_head=dict(bbox_head=dict(num_classes=len(classes)),
                  mask_head=dict(num_classes=len(classes))),
    train_cfg=dict(rpn=dict(sampler=dict(num=64)),
                   rpn_proposal=dict(nms_pre=200, max_per_img=100),
                   rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100), rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

train_cfg = dict(max_epochs=6, val_interval=3)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='MultiStepLR', begin=0, end=6, by_epoch=True, milestones=[5], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=4e-4))
randomness = dict(seed=0, deterministic=True)
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=3, max_keep_ckpts=2))
