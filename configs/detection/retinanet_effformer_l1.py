# RetinaNet + FPN with an EfficientFormer-L1 backbone on COCO 2017, 1x schedule: the backbone in
# a stock one-stage mmdet detector. Not in the paper (no reference numbers); the optimizer is the
# AdamW setting mmdet uses for transformer backbones in RetinaNet (configs/pvt: lr 1e-4).
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmeff.models', 'mmeff.engine'], allow_failed_imports=False)

data_root = 'data/coco/'  # as in mask_rcnn_effformer_l1.py; --cfg-options data_root=... works
pretrained = 'pretrained/efficientformer_l1_300d_mmeff.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='mmeff.EfficientFormer',
        arch='l1',
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    # RetinaNet's FPN starts at stride 8 (start_level=1) and adds P6/P7 on the stride-32 input.
    neck=dict(in_channels=[48, 96, 224, 448], start_level=1, add_extra_convs='on_input',
              num_outs=5))

train_dataloader = dict(persistent_workers=False, dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

optim_wrapper = dict(
    _delete_=True, type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4), clip_grad=None)
auto_scale_lr = dict(enable=False, base_batch_size=16)
# Exact --resume (see mask_rcnn_effformer_l1.py): random states in checkpoints, a fixed seed,
# workers re-created (re-seeded) each epoch.
custom_hooks = [dict(type='mmeff.RNGStateHook'), dict(type='mmeff.CheckFiniteLossHook')]
randomness = dict(seed=0)
