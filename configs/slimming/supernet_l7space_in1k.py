# Supernet training of latency-driven slimming (paper, section 4) on
# ImageNet-1K: the weight-sharing supernet of the default search space 'l7space' (L7's depths
# and widths as the maximum; L1, L3 and L7 are networks of it), MetaPaths sampled by
# Gumbel-softmax (architecture parameters with their own optimiser, temperature annealed),
# widths trained by the sandwich rule (largest, smallest, random each step). The recipe is the
# DeiT recipe the EfficientFormer classifiers were trained with (configs/classification):
# RandAugment, random erasing, repeated augmentation, label smoothing, mixup 0.8 / cutmix 1.0
# and hard distillation (alpha 0.5) from DeiT's RegNetY-16GF teacher, AdamW + cosine. The batch
# is mixed once and the teacher runs once per step; the three sandwich passes share both. Off:
# model EMA (an average over differently sampled networks and moving architecture logits means
# little). The paper gives no supernet schedule: 100 epochs is this project's choice.
#   bash tools/dist_train.sh configs/slimming/supernet_l7space_in1k.py 8 [--amp] [--resume]
#   GPUS=8 bash tools/slurm_train.sh PARTITION JOB configs/slimming/supernet_l7space_in1k.py WD
#   python tools/train.py configs/slimming/supernet_l7space_in1k.py   (one GPU)
# then mmeff.slimming.supernet.load_supernet('<work_dir>/epoch_N.pth', 'l7space').
# Processes: mmeff.SupernetDDP runs the sandwich step on each (the gradients of the three passes
# all-reduced once per step); every process samples the same networks (mmeff/slimming/wrapper.py).
# A run resumes with the number of processes it started with.
_base_ = '../classification/effformer_l1_in1k.py'

custom_imports = dict(
    imports=['mmeff.models', 'mmeff.datasets', 'mmeff.evaluation', 'mmeff.slimming.supernet',
             'mmeff.slimming.wrapper', 'mmeff.slimming.hooks', 'mmeff.engine.hooks_classification',
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
    temperature=5.0,
    # As the classifiers (configs/classification/effformer_l1_in1k.py): timm Mixup per batch,
    # hard distillation from DeiT's RegNetY-16GF (teacher_checkpoint, downloaded beforehand;
    # model.distillation=None trains without it).
    mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch'),
    distillation=dict(
        type='hard', alpha=0.5, tau=1.0,
        teacher=dict(model_name='regnety_160', checkpoint={{_base_.teacher_checkpoint}})))
# The sandwich step under DDP (tools/dist_train.sh, slurm_train.sh, slim.py --launcher pytorch).
model_wrapper_cfg = dict(type='SupernetDDP')

# Two optimisers: the weights (the classification recipe: AdamW, lr 1e-3 per 1024 images, here
# for 8 processes x 128; no decay on 1-D parameters) and the architecture logits (Adam, as
# DARTS/FBNet). auto_scale_lr is off: it would scale the architecture lr with the batch too.
# Another total batch (processes x batch_size): scale the weights' lr by hand, e.g. one GPU:
# --cfg-options optim_wrapper.weights.optimizer.lr=1.25e-4.
optim_wrapper = dict(
    _delete_=True,
    constructor='SupernetOptimWrapperConstructor',
    weights=dict(
        optimizer=dict(type='AdamW', lr=1e-3 * 8 * 128 / 1024, betas=(0.9, 0.999), eps=1e-8,
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
    # The random states (global and the architecture sampler's) and the number of processes in
    # every checkpoint: --resume continues bit-exactly, and only with as many processes.
    dict(type='mmeff.SupernetRunStateHook'),
    # Gumbel-softmax temperature, 5 -> 0.2 geometrically over the run (a function of the
    # iteration: resumes continue the schedule).
    dict(type='mmeff.GumbelTemperatureHook', start=5.0, end=0.2, schedule='exp'),
    dict(type='ClassNumCheckHook'),
    dict(type='mmeff.CheckFiniteLossHook'),
]
# Validation runs the largest network with the BN statistics shared by all widths: a training
# monitor only (recalibrate_bn before judging any subnet), so no 'best' checkpoint.
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=3, save_best=None))
