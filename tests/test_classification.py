"""ImageNet classifier, data pipeline, metric and configs (configs/classification), on data the
tests generate: parity with timm, a real training run with the full recipe through
tools/train.py, evaluation through tools/test.py, the checkpoint in detection/segmentation
models, and the errors users meet."""
import copy
import json
import math
import os
import os.path as osp
import subprocess
import sys
import types

import pytest
import timm
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import BaseDataElement

import mmeff.models  # noqa: F401  (registers everything, compat fixes)
from mmeff.converters import convert_timm, load_checkpoint_file
from mmeff.datasets import (ImageFolderDataset, PackClsInputs, RepeatAugSampler, TimmTransform,
                            make_imagefolder_dataset)
from mmeff.engine.hooks_classification import ClassNumCheckHook
from mmeff.evaluation import Accuracy
from mmeff.models.classifiers import (EfficientFormerClassifier, TeacherRef, build_teacher,
                                      distillation_loss)

from helpers import load_tool, rel_err, timm_efficientformer

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {arch: osp.join(ROOT, 'configs', 'classification', f'effformer_{arch}_in1k.py')
           for arch in ('l1', 'l3', 'l7')}
NUM_CLASSES = 5
IMG = 32  # train crop / eval crop of the tiny runs (resize to 36 = 32 / 0.875 first)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def imagefolder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('imagenet'))
    return make_imagefolder_dataset(root, num_classes=NUM_CLASSES, per_class=(4, 2), size=40)


@pytest.fixture(scope='module')
def teacher_ckpt(tmp_path_factory):
    """A small timm teacher with random weights, saved like DeiT's (under 'model')."""
    torch.manual_seed(0)
    teacher = timm.create_model('regnety_002', pretrained=False, num_classes=NUM_CLASSES)
    path = str(tmp_path_factory.mktemp('teacher') / 'regnety_002.pth')
    torch.save({'model': teacher.state_dict()}, path)
    return path


def tiny_config(data_root, teacher_ckpt, work_dir):
    """The real l1 config with only size-related entries shrunk: the recipe stays on
    (mixup/cutmix, RandAugment, random erasing, repeated augmentation, EMA, distillation)."""
    cfg = Config.fromfile(CONFIGS['l1'])
    cfg.data_root = data_root
    for name in ('train_dataloader', 'val_dataloader'):
        loader = cfg[name]
        loader.dataset.data_root = data_root
        loader.batch_size = 4
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.pin_memory = False
        loader.dataset.pipeline[1].input_size = IMG
    cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    cfg.train_dataloader.sampler.selected_round = 0  # 20 images < DeiT's 256
    cfg.model.num_classes = NUM_CLASSES
    cfg.model.distillation.teacher = dict(model_name='regnety_002', checkpoint=teacher_ckpt)
    cfg.train_cfg.max_epochs = 2
    cfg.param_scheduler[0].end = 1  # 1 warm-up epoch, then cosine over the second
    cfg.param_scheduler[1].update(begin=1, end=2, T_max=1)
    cfg.default_hooks.logger.interval = 1
    cfg.env_cfg.cudnn_benchmark = False
    cfg.work_dir = work_dir
    return cfg


@pytest.fixture(scope='module')
def trained(imagefolder, teacher_ckpt, tmp_path_factory):
    """One real training run of the full recipe through tools/train.py (2 epochs x 5 iters)."""
    tmp = tmp_path_factory.mktemp('run')
    work_dir = str(tmp / 'work')
    cfg = tiny_config(imagefolder['data_root'], teacher_ckpt, work_dir)
    cfg_path = str(tmp / 'effformer_l1_tiny.py')
    cfg.dump(cfg_path)
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), cfg_path,
                           '--work-dir', work_dir], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted(d for d in os.listdir(work_dir) if osp.isdir(osp.join(work_dir, d)))
    with open(osp.join(work_dir, runs[-1], 'vis_data', 'scalars.json')) as f:
        scalars = [json.loads(line) for line in f]
    return dict(cfg_path=cfg_path, work_dir=work_dir, ckpt=osp.join(work_dir, 'epoch_2.pth'),
                scalars=scalars, stdout=proc.stdout)


# ---------------------------------------------------------------------------- parity
@pytest.mark.parametrize('arch', ['l1', 'l3', 'l7'])
def test_parity_with_timm(arch):
    ref = timm_efficientformer(arch, seed=0)
    model = EfficientFormerClassifier(backbone=dict(arch=arch), num_classes=1000)
    converted = convert_timm(ref.state_dict())
    assert set(converted) == set(model.state_dict())  # exactly the mmeff layout, both ways
    model.load_state_dict(converted, strict=True)
    model.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(x)  # timm eval: (head + head_dist) / 2
        logits = model(x)
        exported = model.as_inference_module()(x)
        samples = model.predict(x)
    assert expected.std() > 1e-2  # randomised weights: logits are not constant
    assert rel_err(logits, expected) < 1e-5, rel_err(logits, expected)
    assert rel_err(exported, expected) < 1e-5
    scores = torch.stack([s.pred_score for s in samples])
    torch.testing.assert_close(scores, expected.softmax(1), rtol=1e-5, atol=1e-6)
    assert [int(s.pred_label) for s in samples] == expected.argmax(1).tolist()


def test_convert_tool_output_loads_with_no_missing_keys(tmp_path):
    ref = timm_efficientformer('l1', seed=3)
    src, dst = str(tmp_path / 'timm_l1.pth'), str(tmp_path / 'l1_mmeff.pth')
    torch.save(ref.state_dict(), src)
    load_tool(ROOT, 'convert_checkpoint').main([src, dst])
    model = EfficientFormerClassifier(backbone=dict(arch='l1'))
    result = model.load_state_dict(load_checkpoint_file(dst), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert rel_err(model.eval()(x), ref(x)) < 1e-5


def test_inference_module_normalises_raw_pixels_and_traces():
    model = EfficientFormerClassifier(backbone=dict(arch='l1'), num_classes=10).eval()
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    raw = torch.rand(2, 3, 64, 64) * 255
    norm = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    module = model.as_inference_module(mean=mean, std=std)
    assert isinstance(module, torch.nn.Module) and not module.training
    assert not any('teacher' in k for k in module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(module(raw), model(norm), rtol=1e-5, atol=1e-5)
        traced = torch.jit.trace(module, raw, check_trace=False)
        torch.testing.assert_close(traced(raw), module(raw), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='both mean and std'):
        model.as_inference_module(mean=mean)


def test_paper_param_counts_from_configs():
    """The three configs build the paper's models (timm: 12.29M / 31.41M / 82.23M params)."""
    init_default_scope('mmeff')
    from mmeff.registry import MODELS
    expected = {'l1': 12.29, 'l3': 31.41, 'l7': 82.23}
    for arch, path in CONFIGS.items():
        cfg = Config.fromfile(path)
        model = MODELS.build(cfg.model)  # the teacher is only built when training starts
        setting = model.backbone.arch_settings[arch]
        assert all(model.backbone.arch[k] == setting[k] for k in ('depths', 'widths', 'num_vit'))
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(params - expected[arch]) < 0.01, (arch, params)
        del model


# ---------------------------------------------------------------------------- recipe pieces
def test_config_holds_the_authors_recipe():
    cfg = Config.fromfile(CONFIGS['l1'])
    assert cfg.train_cfg.max_epochs == 300
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-3, 0.025)
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=1024)
    warmup, cosine = cfg.param_scheduler
    assert (warmup.type, warmup.end) == ('LinearLR', 5)
    assert (cosine.type, cosine.begin, cosine.end, cosine.eta_min) == \
        ('CosineAnnealingLR', 5, 300, 1e-5)
    assert cfg.model.label_smoothing == 0.1
    assert (cfg.model.mixup.mixup_alpha, cfg.model.mixup.cutmix_alpha) == (0.8, 1.0)
    assert cfg.model.distillation.type == 'hard' and cfg.model.distillation.alpha == 0.5
    assert cfg.model.distillation.teacher.model_name == 'regnety_160'
    assert cfg.train_dataloader.sampler.type == 'RepeatAugSampler'
    train_tf = cfg.train_dataloader.dataset.pipeline[1]
    assert (train_tf.auto_augment, train_tf.re_prob) == ('rand-m9-mstd0.5-inc1', 0.25)
    ema = [h for h in cfg.custom_hooks if h.type == 'EMAHook'][0]
    assert math.isclose(1 - ema.momentum, 0.99996)


def test_timm_transforms_are_deits(imagefolder):
    from PIL import Image
    from torchvision import transforms as T
    cfg = Config.fromfile(CONFIGS['l1'])
    train = TimmTransform(**{k: v for k, v in cfg.train_dataloader.dataset.pipeline[1].items()
                             if k != 'type'})
    names = [type(t).__name__ for t in train.transform.transforms]
    assert names[:3] == ['RandomResizedCropAndInterpolation', 'RandomHorizontalFlip',
                         'RandAugment']
    assert 'ColorJitter' not in names and names[-1] == 'RandomErasing'
    assert train.transform.transforms[-1].probability == 0.25
    test_kwargs = {k: v for k, v in cfg.val_dataloader.dataset.pipeline[1].items() if k != 'type'}
    test = TimmTransform(**test_kwargs)
    resize, crop = test.transform.transforms[:2]
    assert isinstance(resize, T.Resize) and resize.size == 256
    assert resize.interpolation == T.InterpolationMode.BICUBIC
    assert isinstance(crop, T.CenterCrop) and tuple(crop.size) == (224, 224)
    out = test(dict(img=Image.new('RGB', (400, 300))))
    assert out['img'].shape == (3, 224, 224)


def test_dataset_labels_and_packing(imagefolder):
    ds = ImageFolderDataset(
        data_root=imagefolder['data_root'], data_prefix=dict(img_path='val'),
        pipeline=[dict(type='LoadPILImage'),
                  dict(type='TimmTransform', input_size=IMG, crop_pct=0.875,
                       interpolation='bicubic'),
                  dict(type='PackClsInputs')])
    assert ds.metainfo['classes'] == tuple(imagefolder['classes'])
    assert len(ds) == 2 * NUM_CLASSES
    expected = {osp.abspath(p): label for p, label in imagefolder['val']}
    for i in range(len(ds)):
        item = ds[i]
        assert item['inputs'].shape == (3, IMG, IMG)
        sample = item['data_samples']
        assert int(sample.gt_label) == expected[osp.abspath(sample.img_path)]
    from PIL import Image
    with pytest.raises(TypeError, match='put TimmTransform before it'):
        PackClsInputs()(dict(img=Image.new('RGB', (8, 8)), gt_label=0))


def test_repeat_aug_sampler(imagefolder):
    ds = ImageFolderDataset(data_root=imagefolder['data_root'], data_prefix=dict(img_path='train'))
    sampler = RepeatAugSampler(ds, num_repeats=3, selected_round=0, seed=0)
    order = list(sampler)
    assert len(order) == len(sampler) == len(ds)  # an epoch still covers len(dataset) samples
    # Three consecutive copies of each image (each goes to a different GPU in DDP).
    assert all(order[i] == order[i + 1] == order[i + 2] for i in range(0, len(order) - 2, 3))
    sampler.set_epoch(1)
    assert list(sampler) != order
    assert list(RepeatAugSampler(ds, selected_round=0, seed=1)) != order
    with pytest.raises(ValueError, match='selected_round=0'):
        RepeatAugSampler(ds, selected_round=256)


def test_accuracy_metric():
    metric = Accuracy(topk=(1, 5))
    # Sample i peaks at class i, and class 5 always scores lowest: samples 0..2 (labels 0..2)
    # are right at top-1, sample 3 (label 5) is wrong even at top-5.
    scores = torch.eye(6)[[0, 1, 2, 3]] * 10 + torch.arange(6).flip(0) * 0.1
    samples = [dict(pred_score=scores[i], gt_label=torch.tensor(i)) for i in range(3)]
    samples.append(dict(pred_score=scores[3], gt_label=torch.tensor(5)))
    metric.process(None, samples)
    res = metric.compute_metrics(metric.results)
    assert res == {'top1': 75.0, 'top5': 75.0}  # label 5 has the lowest score: not in top-5
    metric.results.clear()
    metric.process(None, [dict(pred_score=torch.tensor([0.1, 0.5, 0.4]), gt_label=torch.tensor(2))])
    assert metric.compute_metrics(metric.results) == {'top1': 0.0, 'top5': 100.0}
    with pytest.raises(KeyError, match='pred_score'):
        metric.process(None, [dict(gt_label=torch.tensor(0))])


def test_distillation_losses():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 7), torch.randn(4, 7)
    hard = distillation_loss(student, teacher, 'hard')
    torch.testing.assert_close(hard, torch.nn.functional.cross_entropy(student,
                                                                       teacher.argmax(1)))
    soft = distillation_loss(student, teacher, 'soft', tau=2.0)
    p_t = (teacher / 2).softmax(1)
    manual = (p_t * (p_t.log() - (student / 2).log_softmax(1))).sum() * 4 / student.numel()
    torch.testing.assert_close(soft, manual)


def test_teacher_is_outside_the_student(teacher_ckpt):
    model = EfficientFormerClassifier(
        backbone=dict(arch='l1'), num_classes=NUM_CLASSES,
        distillation=dict(teacher=dict(model_name='regnety_002', checkpoint=teacher_ckpt)))
    keys = set(model.state_dict())
    n_params = sum(p.numel() for p in model.parameters())
    model.init_weights()  # what the Runner calls before training: builds and loads it
    teacher = model.teacher()
    assert isinstance(teacher, TeacherRef) and not teacher.module.training
    assert set(model.state_dict()) == keys  # not in checkpoints
    assert sum(p.numel() for p in model.parameters()) == n_params  # not optimised, not in DDP
    assert all(not p.requires_grad for p in teacher.module.parameters())
    model.train()
    assert not teacher.module.training
    ema_copy = copy.deepcopy(model)  # what mmengine's EMA does: the teacher is shared
    assert ema_copy.teacher() is teacher
    ref = torch.load(teacher_ckpt, weights_only=False)['model']
    for k, v in teacher.module.state_dict().items():
        assert torch.equal(v, ref[k])


def test_loss_decreases_with_distillation(imagefolder, teacher_ckpt):
    """In-process: a few AdamW steps on a fixed batch lower both DeiT losses (a small arch
    keeps it fast; the real l1 trains in test_train_full_recipe_through_tools)."""
    ds = ImageFolderDataset(
        data_root=imagefolder['data_root'], data_prefix=dict(img_path='train'),
        pipeline=[dict(type='LoadPILImage'),
                  dict(type='TimmTransform', input_size=IMG, crop_pct=0.875,
                       interpolation='bicubic'),
                  dict(type='PackClsInputs')])
    items = [ds[i] for i in range(0, len(ds), 2)]  # 10 images, every class
    inputs = torch.stack([it['inputs'] for it in items])
    samples = [it['data_samples'] for it in items]
    torch.manual_seed(0)
    model = EfficientFormerClassifier(
        backbone=dict(arch=dict(depths=[1, 1, 2, 2], widths=[16, 32, 48, 64], num_vit=1)),
        num_classes=NUM_CLASSES, label_smoothing=0.1,
        distillation=dict(type='hard', alpha=0.5,
                          teacher=dict(model_name='regnety_002', checkpoint=teacher_ckpt)))
    model.init_weights()
    model.train()
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.025)
    history = []
    for _ in range(10):
        losses = model.loss(inputs.clone(), samples)
        assert set(losses) == {'loss_cls', 'loss_distill'}
        total = sum(losses.values())
        optim.zero_grad()
        total.backward()
        optim.step()
        history.append({k: v.item() for k, v in losses.items()})
    assert all(math.isfinite(v) for h in history for v in h.values())
    assert history[-1]['loss_cls'] < 0.7 * history[0]['loss_cls'], history
    assert history[-1]['loss_distill'] < 0.7 * history[0]['loss_distill'], history


def test_mixup_gives_soft_targets_and_needs_even_batches():
    model = EfficientFormerClassifier(backbone=dict(arch='l1'), num_classes=NUM_CLASSES,
                                      label_smoothing=0.1,
                                      mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0))
    assert model.mixup.num_classes == NUM_CLASSES and model.mixup.label_smoothing == 0.1
    samples = [BaseDataElement(gt_label=torch.tensor(i % NUM_CLASSES)) for i in range(4)]
    loss = model.loss(torch.randn(4, 3, IMG, IMG), samples)
    assert set(loss) == {'loss_cls'} and torch.isfinite(loss['loss_cls'])
    with pytest.raises(ValueError, match='even batch size'):
        model.loss(torch.randn(3, 3, IMG, IMG), samples[:3])
    with pytest.raises(ValueError, match='unknown mixup keys'):
        EfficientFormerClassifier(num_classes=3, mixup=dict(mixup_alpha=0.8, smoothing=0.1))


# ---------------------------------------------------------------------------- the real run
def test_train_full_recipe_through_tools(trained):
    log = trained['scalars']
    train_rows = [r for r in log if 'loss' in r]
    assert len(train_rows) == 10  # 2 epochs x 5 iterations (20 images, batch 4)
    for row in train_rows:
        for key in ('loss', 'loss_cls', 'loss_distill'):
            assert math.isfinite(row[key]), row
    # lr: 1e-3 scaled to the real batch (4 / 1024), reached at the end of the warm-up epoch
    warmup_lrs = [r['lr'] for r in train_rows[:5]]
    assert warmup_lrs == sorted(warmup_lrs) and warmup_lrs[0] < 0.2 * warmup_lrs[-1]
    assert math.isclose(warmup_lrs[-1], 1e-3 * 4 / 1024, rel_tol=1e-3)
    val_rows = [r for r in log if 'accuracy/top1' in r]
    assert len(val_rows) == 2
    assert all(0 <= r['accuracy/top1'] <= 100 and r['accuracy/top5'] == 100 for r in val_rows)
    ckpt = torch.load(trained['ckpt'], map_location='cpu', weights_only=False)
    model = EfficientFormerClassifier(backbone=dict(arch='l1'), num_classes=NUM_CLASSES)
    assert set(ckpt['state_dict']) == set(model.state_dict())  # no teacher, mmeff layout
    assert 'ema_state_dict' in ckpt  # EMAHook: state_dict = EMA weights, raw ones here
    assert ckpt['meta']['dataset_meta']['classes'] == tuple(
        f'n{i:08d}' for i in range(NUM_CLASSES))


def test_tools_test_evaluates_the_checkpoint(trained):
    metrics = load_tool(ROOT, 'test').main([trained['cfg_path'], trained['ckpt'], '--work-dir',
                              osp.join(trained['work_dir'], 'test')])
    assert set(metrics) == {'accuracy/top1', 'accuracy/top5'}
    assert 0 <= metrics['accuracy/top1'] <= 100


def test_tools_test_on_converted_timm_weights_matches_timm(imagefolder, teacher_ckpt, tmp_path):
    """Published weights path: timm checkpoint -> tools/convert_checkpoint.py -> tools/test.py
    (eval transform, EMA hook, metric) gives timm's own per-image scores."""
    import pickle
    from PIL import Image
    ref = timm_efficientformer('l1', seed=5, num_classes=NUM_CLASSES)
    src, dst = str(tmp_path / 'timm.pth'), str(tmp_path / 'mmeff.pth')
    torch.save({'model': ref.state_dict()}, src)
    load_tool(ROOT, 'convert_checkpoint').main([src, dst])
    cfg = tiny_config(imagefolder['data_root'], teacher_ckpt, str(tmp_path / 'work'))
    cfg.test_dataloader.dataset.pipeline[1].input_size = 224  # timm's model needs 224
    cfg_path = str(tmp_path / 'cfg.py')
    cfg.dump(cfg_path)
    out = str(tmp_path / 'preds.pkl')
    metrics = load_tool(ROOT, 'test').main([cfg_path, dst, '--work-dir', str(tmp_path / 'work'),
                                      '--out', out])
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 2 * NUM_CLASSES
    tf = TimmTransform(input_size=224, crop_pct=0.875, interpolation='bicubic')
    images = torch.stack([tf(dict(img=Image.open(p['img_path']).convert('RGB')))['img']
                          for p in preds])
    with torch.no_grad():
        expected = ref(images).softmax(1)
    got = torch.stack([torch.as_tensor(p['pred_score']) for p in preds])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    top1 = 100. * sum(int(e.argmax()) == int(p['gt_label']) for e, p in zip(expected, preds))
    assert metrics['accuracy/top1'] == pytest.approx(top1 / len(preds))


def test_checkpoint_initialises_detection_and_segmentation(trained, tmp_path):
    from mmeff.compat import sync_bn_to_bn
    sd = load_checkpoint_file(trained['ckpt'])
    expected = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}

    def check(backbone):
        own = backbone.state_dict()
        missing = [k for k in own if k not in expected and not k.startswith('norm')]
        assert not missing, missing  # only the dense output norms are new
        for k, v in expected.items():
            assert torch.equal(own[k], v), k

    # Detection: stock mmdet Mask R-CNN with the backbone as configs/detection use it.
    det_cfg = tmp_path / 'det.py'
    det_cfg.write_text(
        "_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'\n"
        "custom_imports = dict(imports=['mmeff.models'], allow_failed_imports=False)\n"
        "model = dict(backbone=dict(_delete_=True, type='mmeff.EfficientFormer', arch='l1', "
        f"init_cfg=dict(type='Pretrained', checkpoint={trained['ckpt']!r}, "
        "prefix='backbone.')), neck=dict(in_channels=[48, 96, 224, 448]))\n")
    cfg = Config.fromfile(str(det_cfg))
    init_default_scope('mmdet')
    from mmdet.registry import MODELS as DET_MODELS
    det = DET_MODELS.build(cfg.model)
    det.init_weights()
    check(det.backbone)

    # Segmentation: the project's Semantic FPN config, pointed at the checkpoint.
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'segmentation',
                                   'fpn_effformer_l1_ade20k_40k.py'))
    cfg.model.backbone.init_cfg.checkpoint = trained['ckpt']
    sync_bn_to_bn(cfg.model)
    init_default_scope('mmseg')
    from mmseg.registry import MODELS as SEG_MODELS
    seg = SEG_MODELS.build(cfg.model)
    seg.init_weights()
    check(seg.backbone)


# ---------------------------------------------------------------------------- bad input
def test_class_count_mismatch_is_a_clear_error(trained):
    from mmengine.runner import load_checkpoint
    model = EfficientFormerClassifier(backbone=dict(arch='l1'), num_classes=7)
    with pytest.raises(ValueError, match=r'Class-count mismatch.*5 classes.*num_classes=7'
                                         r'.*model.num_classes=5'):
        load_checkpoint(model, trained['ckpt'])  # what load_from / tools/test.py use
    # Through tools/test.py with a config whose num_classes disagrees.
    with pytest.raises(ValueError, match='Class-count mismatch'):
        load_tool(ROOT, 'test').main([trained['cfg_path'], trained['ckpt'], '--work-dir',
                        osp.join(trained['work_dir'], 'test_bad'),
                        '--cfg-options', 'model.num_classes=7'])
    # Another arch: also an error instead of mmengine's warning + random weights.
    l3 = EfficientFormerClassifier(backbone=dict(arch='l3'), num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=r"checkpoint arch: 'l1'.*model.backbone.arch"):
        load_checkpoint(l3, trained['ckpt'])


def test_dataset_class_count_check_hook(imagefolder, tmp_path):
    def loader(root, split):
        return types.SimpleNamespace(dataset=ImageFolderDataset(
            data_root=root, data_prefix=dict(img_path=split)))

    model = EfficientFormerClassifier(backbone=dict(arch='l1'), num_classes=1000)
    runner = types.SimpleNamespace(model=model, train_dataloader=loader(imagefolder['data_root'],
                                                                        'train'),
                                   val_loop=None)
    with pytest.raises(ValueError, match=r'has 5 class folders but the model has '
                                         r'num_classes=1000.*model.num_classes=5'):
        ClassNumCheckHook().before_train(runner)
    # val/ with other class folders than train/: labels would silently shift.
    other = make_imagefolder_dataset(str(tmp_path / 'other'), num_classes=6, per_class=1,
                                     size=32)
    model.num_classes = NUM_CLASSES
    runner.val_dataloader = loader(other['data_root'], 'val')
    runner.val_loop = object()
    with pytest.raises(ValueError, match='train and val class folders differ'):
        ClassNumCheckHook().before_train(runner)


def test_empty_class_folder_is_a_clear_error(tmp_path):
    info = make_imagefolder_dataset(str(tmp_path), num_classes=3, per_class=1, size=32)
    empty = tmp_path / 'train' / 'n99999999'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"n99999999'? has no image.*remove the folder"):
        ImageFolderDataset(data_root=info['data_root'], data_prefix=dict(img_path='train'))
    with pytest.raises(FileNotFoundError, match=r'does not exist.*data_root'):
        ImageFolderDataset(data_root=info['data_root'], data_prefix=dict(img_path='nope'))


def test_missing_teacher_is_a_clear_error(tmp_path, teacher_ckpt, imagefolder):
    missing = str(tmp_path / 'regnety_160.pth')
    # Through tools/train.py: the run stops before its first iteration.
    cfg = tiny_config(imagefolder['data_root'], missing, str(tmp_path / 'work'))
    cfg.model.distillation.teacher.model_name = 'regnety_160'
    cfg_path = str(tmp_path / 'cfg.py')
    cfg.dump(cfg_path)
    with pytest.raises(FileNotFoundError, match=r'teacher checkpoint .*regnety_160\.pth.* does '
                                                r'not exist.*model\.distillation=None'):
        load_tool(ROOT, 'train').main([cfg_path])
    assert not any(f.endswith('.pth') for f in os.listdir(tmp_path / 'work'))
    model = EfficientFormerClassifier(
        num_classes=NUM_CLASSES,
        distillation=dict(teacher=dict(model_name='regnety_160', checkpoint=missing)))
    # Building (and testing) needs no teacher; training starts with init_weights().
    with pytest.raises(FileNotFoundError, match=r'regnety_160\.pth.*does not exist.*'
                                                r'model\.distillation\.teacher\.checkpoint.*'
                                                r'model\.distillation=None'):
        model.init_weights()
    # A teacher checkpoint for other classes / another model.
    with pytest.raises(ValueError, match=r'does not fit timm .regnety_002. with num_classes=7'):
        build_teacher('regnety_002', teacher_ckpt, num_classes=7)
    with pytest.raises(ValueError, match='distillation.type must be one of'):
        EfficientFormerClassifier(distillation=dict(type='kd', teacher=dict(model_name='x')))


def test_bad_backbone_and_class_arguments():
    with pytest.raises(ValueError, match='leave backbone.out_indices unset'):
        EfficientFormerClassifier(backbone=dict(arch='l1', out_indices=(0, 1, 2, 3)))
    with pytest.raises(ValueError, match='num_classes must be a positive int'):
        EfficientFormerClassifier(num_classes=0)
    with pytest.raises(ValueError, match="Unknown EfficientFormer arch 'l5'"):
        EfficientFormerClassifier(backbone=dict(arch='l5'))
