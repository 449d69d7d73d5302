"""The slimming supernet (mmeff/slimming/supernet.py): sandwich training step, sampling under
the single 4D->3D switch rule, temperature annealing, sliced weights vs the extracted
classifier, BN recalibration, importance after training, the space check of checkpoints, and
a tiny training run + resume through tools/train.py. All on a tiny space and 32 px images."""
import copy
import json
import os
import os.path as osp
import random
import subprocess
import sys
import types

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapperDict, build_optim_wrapper
from mmengine.structures import BaseDataElement

import mmeff.models  # noqa: F401  (registers everything, compat fixes)
from mmeff.datasets import make_imagefolder_dataset
from mmeff.models import EfficientFormer, EfficientFormerClassifier
from mmeff.slimming.hooks import GumbelTemperatureHook
from mmeff.slimming.space import SearchSpace, get_space
from mmeff.slimming.supernet import (SlimmingSupernet, SpaceMismatchError, extract_subnet,
                                     importance, load_supernet, recalibrate_bn)

from helpers import randomise_

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = dict(name='tiny', widths=[[16, 24], [24, 32], [32, 48], [48, 64]],
            max_depths=[2, 2, 3, 2])
NUM_CLASSES = 5


def tiny_space(**kw):
    return SearchSpace(**dict(copy.deepcopy(TINY), **kw))


def optim(model, arch_lr=0.05):
    return build_optim_wrapper(model, dict(
        constructor='SupernetOptimWrapperConstructor',
        weights=dict(optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.025)),
        arch=dict(optimizer=dict(type='Adam', lr=arch_lr, betas=(0.5, 0.999)))))


class Batches:
    """Class-coloured noisy 32 px images (learnable in a few steps)."""

    def __init__(self, seed=1):
        self.g = torch.Generator().manual_seed(seed)
        self.colours = torch.randn(NUM_CLASSES, 3, 1, 1, generator=self.g)

    def __call__(self, n=16):
        y = torch.randint(0, NUM_CLASSES, (n,), generator=self.g)
        x = self.colours[y] + 0.5 * torch.randn(n, 3, 32, 32, generator=self.g)
        return dict(inputs=x, data_samples=[BaseDataElement(gt_label=int(v)) for v in y])


# ---------------------------------------------------------------------------- training step
def test_sandwich_step_updates_weights_and_arch_params():
    torch.manual_seed(0)
    random.seed(0)
    model = SlimmingSupernet(tiny_space(), num_classes=NUM_CLASSES)
    wrappers = optim(model)
    assert isinstance(wrappers, OptimWrapperDict) and set(wrappers.keys()) == {'weights', 'arch'}
    arch_ids = {id(p) for p in model.arch_logits.parameters()}
    weight_ids = {id(p) for g in wrappers['weights'].optimizer.param_groups for p in g['params']}
    assert not arch_ids & weight_ids
    assert arch_ids == {id(p) for g in wrappers['arch'].optimizer.param_groups
                        for p in g['params']}
    assert len(weight_ids) == len(list(model.parameters())) - len(arch_ids)

    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    out = model.train_step(Batches()(), wrappers)
    assert set(out) == {'loss_max', 'loss_min', 'loss_random', 'loss', 'temperature'}
    assert torch.isclose(out['loss'], out['loss_max'] + out['loss_min'] + out['loss_random'])
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert {f'arch_logits.{s}' for s in range(4)} <= changed
    assert 'backbone.stem.conv1.weight' in changed and 'head.head.weight' in changed
    # no gradient is left behind for the next step
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())

    with pytest.raises(TypeError, match="two optimisers"):
        model.train_step(Batches()(), wrappers['weights'])
    batch = Batches()(4)
    losses = model(batch['inputs'], batch['data_samples'], mode='loss')
    assert set(losses) == {'loss_max', 'loss_min', 'loss_random'}
    with pytest.raises(ValueError, match="optim_wrapper.type must be one of"):
        build_optim_wrapper(model, dict(
            type='mmeff.AGCOptimWrapper', constructor='SupernetOptimWrapperConstructor',
            weights=dict(optimizer=dict(type='AdamW', lr=1e-3)),
            arch=dict(optimizer=dict(type='Adam', lr=1e-3))))
    with pytest.raises(ValueError, match="optim_wrapper.arch.type must be OptimWrapper"):
        build_optim_wrapper(model, dict(
            constructor='SupernetOptimWrapperConstructor',
            weights=dict(optimizer=dict(type='AdamW', lr=1e-3)),
            arch=dict(type='AmpOptimWrapper', optimizer=dict(type='Adam', lr=1e-3))))


# ---------------------------------------------------------------------------- mixed precision
def _changed(model, before):
    return {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}


def _amp_wrappers(model, monkeypatch, init_scale=2. ** 10):
    """The --amp wrappers of a GPU run, on the CPU: mmengine's AmpOptimWrapper (its GPU check
    patched) with a CPU GradScaler and bf16 autocast (CPU autocast has no fp16 in mmengine)."""
    import mmengine.optim.optimizer.amp_optimizer_wrapper as amp_mod
    monkeypatch.setattr(amp_mod, 'is_cuda_available', lambda: True)
    wrappers = build_optim_wrapper(model, dict(
        constructor='SupernetOptimWrapperConstructor', type='AmpOptimWrapper',
        loss_scale='dynamic', dtype='bfloat16',
        weights=dict(optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.025)),
        arch=dict(optimizer=dict(type='Adam', lr=0.05, betas=(0.5, 0.999)))))
    wrappers['weights'].loss_scaler = torch.amp.GradScaler('cpu', init_scale=init_scale)
    return wrappers


def test_amp_step_changes_what_fp32_changes_and_stays_finite(monkeypatch):
    """bf16 autocast (--amp on a CPU) and fp16-style one-scaler AMP (--amp on a GPU, here
    with a CPU scaler): the same parameters change as in a fp32 step from the same state and
    the same samples, the losses are finite and close to fp32's."""
    from mmengine.optim import AmpOptimWrapper

    from mmeff.engine.optim_wrappers import BF16AutocastOptimWrapper
    torch.manual_seed(0)
    ref = SlimmingSupernet(tiny_space(), num_classes=NUM_CLASSES)
    batch = Batches()()
    before = {k: v.detach().clone() for k, v in ref.named_parameters()}
    models = {name: copy.deepcopy(ref) for name in ('bf16', 'scaled')}  # same sampler state
    out = {'fp32': ref.train_step(batch, optim(ref))}
    changed = _changed(ref, before)
    bf16 = build_optim_wrapper(models['bf16'], dict(
        constructor='SupernetOptimWrapperConstructor', type='mmeff.BF16AutocastOptimWrapper',
        weights=dict(optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.025)),
        arch=dict(optimizer=dict(type='Adam', lr=0.05, betas=(0.5, 0.999)))))
    assert type(bf16['weights']) is BF16AutocastOptimWrapper and \
        type(bf16['arch']).__name__ == 'OptimWrapper'
    out['bf16'] = models['bf16'].train_step(batch, bf16)
    scaled = _amp_wrappers(models['scaled'], monkeypatch)
    assert type(scaled['weights']) is AmpOptimWrapper and \
        type(scaled['arch']).__name__ == 'OptimWrapper'  # one scaler: the weights'
    out['scaled'] = models['scaled'].train_step(batch, scaled)
    assert scaled['weights'].loss_scaler.get_scale() == 2. ** 10  # updated once, no inf
    for name in ('bf16', 'scaled'):
        assert _changed(models[name], before) == changed, name
        assert all(torch.isfinite(v) for v in out[name].values()), name
        for key in ('loss_max', 'loss_min', 'loss_random'):
            assert out[name][key].item() == pytest.approx(out['fp32'][key].item(), rel=0.05)
        assert all(p.grad is None or not p.grad.any() for p in models[name].parameters())


def test_amp_one_scaler_serves_both_optimisers(monkeypatch):
    """An inf in the architecture gradients: the arch step is skipped, the weights (finite
    gradients) step, and the one scale is halved once."""
    torch.manual_seed(0)
    model = SlimmingSupernet(tiny_space(), num_classes=NUM_CLASSES)
    wrappers = _amp_wrappers(model, monkeypatch)
    model.arch_logits[3].register_hook(lambda g: g * float('inf'))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    model.train_step(Batches()(), wrappers)
    changed = _changed(model, before)
    assert not any(k.startswith('arch_logits') for k in changed)
    assert 'backbone.stem.conv1.weight' in changed
    assert wrappers['weights'].loss_scaler.get_scale() == 2. ** 9
    two_scalers = OptimWrapperDict(weights=wrappers['weights'],
                                   arch=_amp_wrappers(model, monkeypatch)['weights'])
    with pytest.raises(TypeError, match="stepped through the weights' loss scaler"):
        model.train_step(Batches()(), two_scalers)


def test_amp_flag_of_the_tools(monkeypatch):
    """tools/train.py --amp on a supernet config: bf16 autocast on a CPU with bf16, a one-line
    error on a CPU without; AmpOptimWrapper (one scaler) on a GPU."""
    from mmeff.engine import launch
    from mmeff.engine import optim_wrappers as ow
    config = osp.join(ROOT, 'configs', 'slimming', 'supernet_tiny_synthetic.py')
    monkeypatch.setattr(launch, '_amp_device_available', lambda: False)
    monkeypatch.setattr(ow, 'cpu_bf16_supported', lambda: False)
    with pytest.raises(ValueError, match=r'--amp on a CPU needs bf16 support .* without --amp'):
        launch.prepare_config(config, amp=True)
    monkeypatch.setattr(ow, 'cpu_bf16_supported', lambda: True)
    cfg = launch.prepare_config(config, amp=True)
    assert cfg.optim_wrapper.type == 'mmeff.BF16AutocastOptimWrapper'
    assert not cfg.val_cfg.get('fp16')
    monkeypatch.setattr(launch, '_amp_device_available', lambda: True)
    cfg = launch.prepare_config(config, amp=True)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.loss_scale == \
        'dynamic'


def test_sandwich_widths_and_sampling_rule():
    torch.manual_seed(0)
    random.seed(0)
    space = tiny_space()
    model = SlimmingSupernet(space, num_classes=NUM_CLASSES)
    widths = model.sandwich_widths()
    assert widths['max'] == [1, 1, 1, 1] and widths['min'] == [0, 0, 0, 0]
    with torch.no_grad():  # push towards MB3D early in stage 3 and MB4D late: must be masked
        model.arch_logits[2][:, 1] = 3.
        model.arch_logits[3][:, 0] = 3.
    seen = set()
    for _ in range(200):
        blocks, gates = model.sample_blocks()
        space.validate(dict(blocks=blocks, width_idx=[0] * 4))  # one switch, no empty stage
        seen.add(json.dumps(blocks))
        for s, stage in enumerate(gates):
            for j, (gate, allowed) in enumerate(stage):
                names = space.positions(s)
                assert gate[names.index(blocks[s][j])].item() == pytest.approx(1.)
                assert all(gate[k] == 0 for k in range(len(names)) if not allowed[k])
    assert len(seen) > 10


def test_temperature_hook():
    hook = GumbelTemperatureHook(start=4., end=0.25, schedule='exp')
    assert hook.temperature(0.) == pytest.approx(4.)
    assert hook.temperature(0.5) == pytest.approx(1.)
    assert hook.temperature(1.) == pytest.approx(0.25)
    assert GumbelTemperatureHook(4., 1., 'linear').temperature(0.5) == pytest.approx(2.5)
    model = SlimmingSupernet(tiny_space(), num_classes=NUM_CLASSES)
    temps = []
    for it in range(5):
        runner = types.SimpleNamespace(model=model, iter=it, max_iters=5)
        hook.before_train_iter(runner, it)
        temps.append(model.temperature)
    assert temps[0] == pytest.approx(4.) and temps[-1] == pytest.approx(0.25)
    assert all(a > b for a, b in zip(temps, temps[1:]))
    with pytest.raises(ValueError, match='schedule must be one of'):
        GumbelTemperatureHook(schedule='step')
    with pytest.raises(TypeError, match='needs a model with a temperature'):
        hook.before_train(types.SimpleNamespace(model=torch.nn.Linear(1, 1), iter=0,
                                                max_iters=1))


# ---------------------------------------------------------------------------- recipe
@pytest.fixture(scope='module')
def tiny_teacher(tmp_path_factory):
    """A tiny timm classifier with random weights, saved to disk as a teacher checkpoint."""
    import timm
    torch.manual_seed(0)
    teacher = timm.create_model('test_resnet', pretrained=False, num_classes=NUM_CLASSES)
    path = str(tmp_path_factory.mktemp('teacher') / 'test_resnet.pth')
    torch.save(teacher.state_dict(), path)
    return path


MIXUP = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch')


def test_distillation_and_mixup_one_teacher_pass_shared_by_the_sandwich(tiny_teacher):
    """Mixup/cutmix once per step, the teacher once per step on the mixed images, and every
    sandwich pass's loss = (1 - alpha) soft-target CE of head + alpha CE of dist_head against
    the teacher's argmax, on those images."""
    from timm.loss import SoftTargetCrossEntropy
    torch.manual_seed(0)
    model = SlimmingSupernet(tiny_space(), num_classes=NUM_CLASSES, label_smoothing=0.1,
                             mixup=MIXUP, distillation=dict(type='hard', alpha=0.5, teacher=dict(
                                 model_name='test_resnet', checkpoint=tiny_teacher)))
    model.init_weights()  # builds the teacher, as the Runner does
    teacher = model.teacher().module
    assert not any(k.startswith('_teacher') for k in model.state_dict())  # not a submodule
    assert not any(p is q for p in model.parameters() for q in teacher.parameters())
    seen = {'teacher': [], 'passes': []}
    teacher.register_forward_hook(lambda m, args, out: seen['teacher'].append((args[0], out)))
    model.backbone.register_forward_hook(lambda m, args, out: seen['passes'].append(args[0]))
    mixup = model.mixup

    def record_mixup(x, target):
        x, target = type(mixup).__call__(mixup, x, target)
        seen.setdefault('targets', []).append(target)
        return x, target

    model.mixup = record_mixup
    ref = copy.deepcopy(model)  # the same sampler state: the same networks and widths
    batch = Batches()(8)
    original = batch['inputs'].clone()  # timm's Mixup mixes in place
    out = model.train_step(batch, optim(model))
    assert len(seen['teacher']) == 1 and len(seen['passes']) == 3
    mixed, teacher_logits = seen['teacher'][0]
    assert not torch.equal(mixed, original)  # mixed or cut
    assert all(x is mixed for x in seen['passes'])  # the teacher's images, for every pass
    # The loss, recomputed from the same networks on the same images and mixed targets.
    targets = seen['targets'][0]
    labels = torch.tensor([int(d.gt_label) for d in batch['data_samples']])
    assert len(seen['targets']) == 1 and targets.shape == (8, NUM_CLASSES)
    assert not torch.equal(targets.argmax(1), labels) or targets.max() < 0.95  # mixed, smoothed
    teacher_labels = teacher_logits.argmax(dim=1)
    with torch.no_grad():
        for name, idx in ref.sandwich_widths().items():
            cls_logits, dist_logits = ref.forward_sampled(mixed, idx)
            want = 0.5 * SoftTargetCrossEntropy()(cls_logits, targets) + 0.5 * \
                torch.nn.functional.cross_entropy(dist_logits, teacher_labels)
            assert out[f'loss_{name}'].item() == pytest.approx(want.item(), rel=1e-4), name


def test_missing_teacher_and_bad_recipe_arguments(tmp_path):
    missing = str(tmp_path / 'regnety_160.pth')
    model = SlimmingSupernet(tiny_space(), num_classes=NUM_CLASSES, distillation=dict(
        teacher=dict(model_name='regnety_160', checkpoint=missing)))
    model.eval()(torch.randn(1, 3, 32, 32))  # inference needs no teacher
    with pytest.raises(FileNotFoundError, match=r'teacher checkpoint .*regnety_160\.pth.* does '
                                                r'not exist.*model\.distillation=None'):
        model.init_weights()
    with pytest.raises(ValueError, match='unknown mixup keys'):
        SlimmingSupernet(tiny_space(), num_classes=NUM_CLASSES, mixup=dict(alpha=1.))
    with pytest.raises(ValueError, match='distillation.alpha must be in'):
        SlimmingSupernet(tiny_space(), num_classes=NUM_CLASSES, distillation=dict(
            alpha=2., teacher=dict(model_name='x')))


# ---------------------------------------------------------------------------- slicing
def _stage3_mb3d_supported() -> bool:
    try:
        EfficientFormer._parse_arch(dict(depths=[1, 1, 2, 1], widths=[8, 8, 8, 8], num_vit=2))
        return True
    except ValueError:
        return False


CHOICES = {
    # MB3D in the last stage only (what the backbone builds today)
    'mixed_widths_mb3d_last': dict(blocks=[['mb4d', 'id'], ['id', 'mb4d'],
                                           ['mb4d', 'mb4d', 'id'], ['mb4d', 'mb3d']],
                                   width_idx=[0, 1, 0, 1]),
    'min_no_mb3d': dict(blocks=[['mb4d', 'id'], ['mb4d', 'id'], ['id', 'mb4d', 'id'],
                                ['id', 'mb4d']], width_idx=[0, 0, 0, 0]),
    'max_all_mb3d_last': dict(blocks=[['mb4d', 'mb4d'], ['mb4d', 'mb4d'],
                                      ['mb4d', 'mb4d', 'mb4d'], ['mb3d', 'mb3d']],
                              width_idx=[1, 1, 1, 1]),
    # MB3D spilling into stage 3: needs the backbone's num_vit > depths[3]
    'stage3_mb3d': pytest.param(
        dict(blocks=[['mb4d', 'id'], ['mb4d', 'mb4d'], ['mb4d', 'id', 'mb3d'],
                     ['mb3d', 'id']], width_idx=[1, 0, 1, 0]),
        marks=pytest.mark.skipif(not _stage3_mb3d_supported(),
                                 reason='the backbone has no MB3D blocks in stage 3 yet')),
}


@pytest.mark.parametrize('choices', list(CHOICES.values()), ids=list(CHOICES))
def test_extract_subnet_equals_fixed_supernet(choices):
    space = tiny_space()
    torch.manual_seed(0)
    model = SlimmingSupernet(space, num_classes=NUM_CLASSES)
    randomise_(model.backbone)
    randomise_(model.head)
    model.eval()
    sd = extract_subnet(model, choices)
    clf = EfficientFormerClassifier(backbone=dict(arch=space.to_arch(choices)),
                                    num_classes=NUM_CLASSES).eval()
    clf.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model.forward_choices(x, choices)
        assert torch.allclose(clf(x), ref, rtol=1e-4, atol=1e-5)
        model.set_eval_choices(choices)
        assert torch.equal(model(x), ref)
    # copies, not views of the supernet's weights
    assert sd['backbone.stem.conv1.weight'].data_ptr() != \
        model.backbone.stem.conv1.weight.data_ptr()


def test_bn_statistics_are_sliced_shared_and_recalibrated():
    torch.manual_seed(0)
    model = SlimmingSupernet(tiny_space(), num_classes=NUM_CLASSES)
    bn = model.backbone.stem.norm1  # 12 channels at the largest width, 8 at the smallest
    small = dict(blocks=[['mb4d', 'id'], ['mb4d', 'id'], ['mb4d', 'id', 'id'], ['mb4d', 'id']],
                 width_idx=[0, 0, 0, 0])
    model.train()
    model.forward_choices(torch.randn(4, 3, 32, 32), small)
    assert bn.running_mean[:8].abs().sum() > 0 and bn.running_mean[8:].abs().sum() == 0
    assert int(bn.num_batches_tracked) == 1

    x = torch.randn(8, 3, 32, 32)
    recalibrate_bn(model, [x[:4], dict(inputs=x[4:], data_samples=None)], small)
    assert not model.training
    conv = model.backbone.stem.conv1
    y = torch.nn.functional.conv2d(x, conv.weight[:8], conv.bias[:8], 2, 1)
    assert torch.allclose(bn.running_mean[:8], y.mean(dim=(0, 2, 3)), atol=1e-5)
    assert bn.running_mean[8:].abs().sum() == 0  # reset, and not used by this subnet
    assert bn.momentum == 0.1  # restored
    with pytest.raises(ValueError, match='no batches'):
        recalibrate_bn(model, [], small)


# ---------------------------------------------------------------------------- importance
def test_importance_of_a_useless_block_ends_lowest():
    """One MB4D block (stage index 1, position 1) is made useless: frozen random weights whose
    dropout turns its branch into noise. After a short joint training its probability of
    being a real block is the lowest of all positions, by a margin."""
    torch.manual_seed(1)
    random.seed(1)
    model = SlimmingSupernet(tiny_space(), num_classes=NUM_CLASSES, temperature=1.)
    useless = model.backbone.stages[1].positions[1].mb4d
    with torch.no_grad():
        for p in useless.parameters():
            p.copy_(torch.randn_like(p) * 3)
            p.requires_grad_(False)
    useless.mlp.drop.p = 0.5
    start = importance(model)
    assert start['positions'][1] == [0.5, 0.5] and start['positions'][2][0] == \
        pytest.approx(2 / 3)
    wrappers, batches = optim(model, arch_lr=0.05), Batches()
    for _ in range(20):
        model.train_step(batches(), wrappers)
    imp = importance(model)
    flat = {(s, j): p for s, ps in enumerate(imp['positions']) for j, p in enumerate(ps)}
    score = flat.pop((1, 1))
    assert score < min(flat.values()) - 0.1, imp['positions']  # (>= 0.17 over seeds 1-4)
    assert imp['stages'] == pytest.approx([sum(p) for p in imp['positions']])
    assert all(sum(d.values()) == pytest.approx(1.) for st in imp['probs'] for d in st)
    assert set(imp['probs'][2][0]) == {'mb4d', 'mb3d', 'id'}


# ---------------------------------------------------------------------------- checkpoints
def test_load_supernet_checks_the_space(tmp_path):
    torch.manual_seed(0)
    space = tiny_space()
    model = SlimmingSupernet(space, num_classes=NUM_CLASSES)
    path = str(tmp_path / 'supernet.pth')
    torch.save(dict(meta=dict(epoch=1), state_dict=model.state_dict()), path)

    loaded = load_supernet(path, TINY)
    for k, v in model.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded.num_classes == NUM_CLASSES

    other = tiny_space(max_depths=[2, 2, 4, 2], name='other')
    with pytest.raises(SpaceMismatchError) as err:
        load_supernet(path, other)
    msg = str(err.value)
    assert 'another search space' in msg and "'tiny'" in msg and "'other'" in msg
    assert 'max_depths: [2, 2, 3, 2] vs [2, 2, 4, 2]' in msg and path in msg
    # same shapes, another space: refused when loading the state dict directly too
    same_shapes = SlimmingSupernet(tiny_space(name='renamed'), num_classes=NUM_CLASSES)
    with pytest.raises(SpaceMismatchError, match='another search space'):
        same_shapes.load_state_dict(model.state_dict())
    # not a supernet checkpoint at all
    clf = EfficientFormerClassifier(backbone=dict(arch='l1'), num_classes=NUM_CLASSES)
    with pytest.raises(SpaceMismatchError, match='not a SlimmingSupernet checkpoint'):
        load_supernet(dict(state_dict=clf.state_dict()), space)


def test_l7space_config():
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'slimming', 'supernet_l7space_in1k.py'))
    assert cfg.model.type == 'SlimmingSupernet' and cfg.model.space == 'l7space'
    assert cfg.model.num_classes == 1000 and cfg.model.label_smoothing == 0.1
    assert set(cfg.optim_wrapper) == {'constructor', 'weights', 'arch'}
    assert set(cfg.param_scheduler) == {'weights', 'arch'}
    assert not cfg.auto_scale_lr.enable  # it would scale the architecture lr too
    # DeiT's lr 1e-3 per 1024 images, for the 8-process command of README
    assert cfg.optim_wrapper.weights.optimizer.lr == pytest.approx(
        1e-3 * 8 * cfg.train_dataloader.batch_size / 1024)
    assert any(h.type == 'mmeff.GumbelTemperatureHook' for h in cfg.custom_hooks)
    assert any(h.type == 'mmeff.SupernetRunStateHook' for h in cfg.custom_hooks)
    assert cfg.model_wrapper_cfg.type == 'SupernetDDP'
    # the classifiers' recipe: mixup/cutmix and hard distillation from their teacher
    clf = Config.fromfile(osp.join(ROOT, 'configs', 'classification', 'effformer_l1_in1k.py'))
    assert cfg.model.mixup == clf.model.mixup and cfg.model.distillation == clf.model.distillation
    assert cfg.model.distillation.type == 'hard' and cfg.train_dataloader.drop_last
    tiny = Config.fromfile(osp.join(ROOT, 'configs', 'slimming', 'supernet_tiny_synthetic.py'))
    assert tiny.model.mixup is None and tiny.model.distillation is None
    assert cfg.train_dataloader.sampler.type == 'RepeatAugSampler'
    space = get_space(cfg.model.space)
    assert all(space.contains_arch(EfficientFormer.arch_settings[a]) for a in ('l1', 'l3', 'l7'))


# ---------------------------------------------------------------------------- tools/train.py
def test_train_tool_kill_and_resume_is_bit_exact(tmp_path, tiny_teacher):
    """The tiny config with the full recipe (mixup/cutmix, a distillation teacher) through
    tools/train.py: killed (SIGKILL) after its first checkpoint and resumed, it ends with the
    weights, BN statistics and architecture logits of an uninterrupted run, bit for bit (global
    random states and the architecture sampler restored: SupernetRunStateHook)."""
    import signal
    import time
    data = make_imagefolder_dataset(str(tmp_path / 'data') + '/', num_classes=NUM_CLASSES,
                                    per_class=(4, 2), size=40)
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'slimming', 'supernet_tiny_synthetic.py'))
    for name in ('train_dataloader', 'val_dataloader'):
        cfg[name].dataset.data_root = data['data_root']
        cfg[name].batch_size = 10
        cfg[name].dataset.pipeline[1].input_size = 32
    cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    cfg.data_root = data['data_root']
    cfg.train_cfg.max_epochs = 3
    cfg.train_cfg.val_interval = 1
    cfg.model.mixup = MIXUP
    cfg.model.distillation = dict(type='hard', alpha=0.5, teacher=dict(
        model_name='test_resnet', checkpoint=tiny_teacher))
    cfg_path = str(tmp_path / 'supernet_tiny.py')
    cfg.dump(cfg_path)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')

    def command(work_dir, *extra):
        return [sys.executable, osp.join(ROOT, 'tools', 'train.py'), cfg_path, '--work-dir',
                work_dir, *extra]

    def train(work_dir, *extra):
        proc = subprocess.run(command(work_dir, *extra), cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    full, cut = str(tmp_path / 'full'), str(tmp_path / 'cut')
    train(full)
    proc = subprocess.Popen(command(cut), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    # last_checkpoint is written after the checkpoint: --resume starts from what it names
    pointer = osp.join(cut, 'last_checkpoint')
    while not (osp.isfile(pointer) and osp.getsize(pointer)) and proc.poll() is None:
        assert time.time() < deadline, 'the run to kill wrote no checkpoint in 10 minutes'
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log = train(cut, '--resume')
    assert 'resumed epoch: ' in log
    want = torch.load(osp.join(full, 'epoch_3.pth'), map_location='cpu', weights_only=False)
    got = torch.load(osp.join(cut, 'epoch_3.pth'), map_location='cpu', weights_only=False)
    differ = [k for k, v in want['state_dict'].items()
              if not torch.equal(v, got['state_dict'][k])]
    assert not differ, f'{len(differ)} of {len(want["state_dict"])} tensors differ: {differ[:5]}'
    assert set(got['optimizer']) >= {'weights', 'arch'} and got['supernet']['world_size'] == 1
    first = load_supernet(osp.join(full, 'epoch_2.pth'), TINY)  # max_keep_ckpts=2
    last = load_supernet(got, TINY)
    assert not torch.equal(first.arch_logits[2], last.arch_logits[2])  # trained on
    runs = sorted(d for d in os.listdir(cut) if osp.isdir(osp.join(cut, d)))
    with open(osp.join(cut, runs[-1], 'vis_data', 'scalars.json')) as f:
        scalars = [json.loads(line) for line in f]
    temps = [s['temperature'] for s in scalars if 'temperature' in s]
    assert temps and temps[-1] == pytest.approx(0.2)  # the end of the annealing
    with pytest.raises(SpaceMismatchError):
        load_supernet(got, 'l7space')


def test_train_tool_refuses_a_missing_teacher_and_another_space(tmp_path, capsys):
    """One line on stderr, exit status 1, nothing written over."""
    from mmeff.cli import run as run_tool

    from helpers import load_tool
    data = make_imagefolder_dataset(str(tmp_path / 'data') + '/', num_classes=NUM_CLASSES,
                                    per_class=(4, 1), size=40)
    config = osp.join(ROOT, 'configs', 'slimming', 'supernet_tiny_synthetic.py')
    work = tmp_path / 'work'
    missing = str(tmp_path / 'teacher.pth')
    cfg = Config.fromfile(config)
    cfg.merge_from_dict({'train_dataloader.dataset.data_root': data['data_root'],
                         'val_dataloader.dataset.data_root': data['data_root'],
                         'test_dataloader.dataset.data_root': data['data_root']})
    cfg.model.distillation = dict(type='hard', alpha=0.5, teacher=dict(
        model_name='test_resnet', checkpoint=missing))
    cfg.dump(str(tmp_path / 'with_teacher.py'))
    status = run_tool(load_tool(ROOT, 'train').main, [
        str(tmp_path / 'with_teacher.py'), '--work-dir', str(work)], prog='train.py')
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and err[-1].startswith('train.py: error: Distillation teacher checkpoint')
    assert missing in err[-1] and 'model.distillation=None' in err[-1]
    assert not list(work.glob('*.pth'))
    # a checkpoint of another space given to --resume
    other = SlimmingSupernet(tiny_space(max_depths=[2, 2, 4, 2], name='other'),
                             num_classes=NUM_CLASSES)
    ckpt = str(tmp_path / 'other.pth')
    torch.save(dict(meta=dict(epoch=1), state_dict=other.state_dict()), ckpt)
    before = open(ckpt, 'rb').read()
    status = run_tool(load_tool(ROOT, 'train').main, [
        config, '--work-dir', str(work), '--resume', ckpt, '--cfg-options',
        f'data_root={data["data_root"]}'], prog='train.py')
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and 'is a supernet of another search space' in err[-1], err[-3:]
    assert "'other'" in err[-1] and open(ckpt, 'rb').read() == before
    assert not list(work.glob('*.pth'))


@pytest.mark.slow
def test_benchmark_supernet_tool(tmp_path):
    """tools/benchmark_supernet.py at a tiny setting: both timings, settings and machine in
    the JSON, the table in the Markdown; --amp on a CPU without bf16 is one line."""
    from mmeff.engine.optim_wrappers import cpu_bf16_supported
    tool = osp.join(ROOT, 'tools', 'benchmark_supernet.py')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    out = tmp_path / 'bench'
    proc = subprocess.run([sys.executable, tool, '--device', 'cpu', '--input-size', '32',
                           '--batch-size', '2', '--warmup', '0', '--reps', '1',
                           '--calib-batches', '1', '--eval-batches', '1', '--threads', '1',
                           '--out-dir', str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / 'supernet_cpu_32px_b2.json').read_text())
    assert result['settings']['space'] == 'l7space' and result['settings']['params'] > 1e8
    assert set(result['results']) == {'train_step_fp32', 'estimate_fp32'}
    step = result['results']['train_step_fp32']
    assert step['median_ms'] > 0 and step['extrapolated_100_epochs_device_hours'] > 0
    assert result['settings']['recipe']['teacher'] == 'regnety_160'
    assert 'train_step | fp32' in (out / 'supernet_cpu_32px_b2.md').read_text()
    tiny = ['--device', 'cpu', '--input-size', '32', '--batch-size', '2', '--warmup', '0',
            '--reps', '1', '--calib-batches', '1', '--eval-batches', '1', '--threads', '1',
            '--no-recipe', '--out-dir', str(out)]
    proc = subprocess.run([sys.executable, tool, '--amp', 'both', *tiny], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if cpu_bf16_supported():
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads((out / 'supernet_cpu_32px_b2_amp-both.json').read_text())
        assert {'train_step_fp32', 'train_step_amp'} <= set(result['results'])
        assert result['settings']['amp'] == 'bf16 autocast'
    else:
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1].startswith(
            'benchmark_supernet.py: error: --amp on a CPU needs bf16 support')
