# Supernet training of latency-driven slimming (paper, section 4; issue 9, part 2) on
# ImageNet-1K: the weight-sharing supernet of the default search space 'l7space' (L7's depths
# and widths as the maximum; L1, L3 and L7 are networks of it), MetaPaths sampled by
# Gumbel-softmax (architecture parameters with their own optimiser, temperature annealed),
# widths trained by the sandwich rule (largest, smallest, random each step). The data pipeline
# and weight optimiser are the DeiT recipe of configs/classification (RandAugment, random
# erasing, repeated augmentation, label smoothing, AdamW + cosine). Off: model EMA (an
# average over differently sampled networks and moving architecture logits means little), and,
# not implemented in the supernet's loss, mixup/cutmix and hard distillation (a teacher pass
# for each of the three sandwich passes).
# The paper gives no supernet schedule: 100 epochs is this project's choice.
#   python tools/train.py configs/slimming/supernet_l7space_in1k.py [--resume]
# then mmeff.slimming.supernet.load_supernet('<work_dir>/epoch_N.pth', 'l7space').
# One process only: multi-process DDP and --amp are not supported for the supernet yet.
_base_ = '../classification/effformer_l1_in1k.py'

custom_imports = dict(
    imports=['mmeff.models', 'mmeff.datasets', 'mmeff.evaluation', 'mmeff.slimming.supernet',
             'mmeff.slimming.hooks', 'mmeff.engine.hooks_classification',
             'mmeff.engine.hooks_nan'],
    allow_failed_imports=False)

space = 'l7space'  # or dict(widths=..., max_depths=..., mb3d_stages=..., name=...)
max_epochs = 100

model = dict(
    _delete_=True,
    type='SlimmingSupernet',
    space=space,
    num_classes={{_base_.num_classes}},
    label_smoothing=0.1,
    temperature=5.0)

# Two optimisers: the weights (the classification recipe: AdamW, lr 1e-3 per 1024 images,
# here for the one process's batch of 128: 1.25e-4; no decay on 1-D parameters) and the
# architecture logits (Adam, as DARTS/FBNet). auto_scale_lr is off: it would scale the
# architecture lr with the batch too. Another batch size: scale the weights' lr by hand.
optim_wrapper = dict(
    _delete_=True,
    constructor='SupernetOptimWrapperConstructor',
    weights=dict(
        optimizer=dict(type='AdamW', lr=1e-3 * 128 / 1024, betas=(0.9, 0.999), eps=1e-8,
                       weight_decay=0.025),
        paramwise_cfg=dict(flat_decay_mult=0.)),
    arch=dict(optimizer=dict(type='Adam', lr=3e-4, betas=(0.5, 0.999), weight_decay=0.)))
auto_scale_lr = dict(enable=False)
# Warm-up + cosine for the weights; the architecture lr stays constant.
param_scheduler = dict(
    _delete_=True,
    weights=[
        dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=5,
             convert_to_iter_based=True),
        dict(type='CosineAnnealingLR', T_max=max_epochs - 5, eta_min=1e-5, by_epoch=True,
             begin=5, end=max_epochs, convert_to_iter_based=True),
    ],
    arch=[])
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=5)

custom_hooks = [
    # Gumbel-softmax temperature, 5 -> 0.2 geometrically over the run (a function of the
    # iteration: resumes continue the schedule).
    dict(type='mmeff.GumbelTemperatureHook', start=5.0, end=0.2, schedule='exp'),
    dict(type='ClassNumCheckHook'),
    dict(type='mmeff.CheckFiniteLossHook'),
]
# Validation runs the largest network with the BN statistics shared by all widths: a training
# monitor only (recalibrate_bn before judging any subnet), so no 'best' checkpoint.
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=3, save_best=None))
