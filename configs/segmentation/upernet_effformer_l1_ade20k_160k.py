# EfficientFormer-L1 dropped into mmseg's stock UPerNet (UPerHead + auxiliary FCNHead) on ADE20K.
# The paper reports no UPerNet number: the schedule is mmseg's Swin/ConvNeXt UPerNet recipe
# (AdamW lr 6e-5, wd 0.01, 1.5k linear warm-up, poly power 1.0, 160k iterations, 8 GPUs x 2
# images) and is untuned for this backbone. The heads are those of mmseg's
# _base_/models/upernet_r50.py; backbone, data and hooks come from the FPN config.
_base_ = './fpn_effformer_l1_ade20k_40k.py'
widths = [48, 96, 224, 448]  # EfficientFormer.arch_settings['l1']['widths']
norm_cfg = dict(type='SyncBN', requires_grad=True)  # BN on CUDA-less machines (tools/train.py)
model = dict(
    # The FPN config's neck would otherwise be inherited: UPerHead has its own pyramid.
    neck=None,
    decode_head=dict(
        _delete_=True,
        type='UPerHead',
        in_channels=widths,
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=widths[2],
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)))

train_dataloader = dict(batch_size=2)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0., power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
default_hooks = dict(checkpoint=dict(interval=16000))
auto_scale_lr = dict(enable=False, base_batch_size=16)
