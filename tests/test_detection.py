"""Detection: configs, tools (train / test / resume / distributed / demo / compare / analyze) and
bad input, on a COCO-format dataset generated here (real JPEGs and instances JSON).

The runs go through the real tools in subprocesses, on 128x96 images with a small derived config
(``tiny_config``) that inherits the real ``configs/detection/*.py`` and only shrinks the data,
the image scale and the number of sampled RoIs.
"""
import json
import os
import os.path as osp
import pickle
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mmeff.datasets.synthetic_coco import make_coco_dataset

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET = osp.join(ROOT, 'configs', 'detection')
CLASSES = ('rectangle', 'ellipse', 'triangle')
PAPER_WIDTHS = {'l1': [48, 96, 224, 448], 'l3': [64, 128, 320, 512], 'l7': [96, 192, 384, 768]}


# ---------------------------------------------------------------------------- helpers
def run_tool(args, env=None, timeout=600):
    """Run ``args`` (a tool and its arguments) from the repository root; fail with its output."""
    full_env = dict(os.environ, PYTHONWARNINGS='ignore', **(env or {}))
    res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=full_env,
                         timeout=timeout)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f'{" ".join(map(str, args))} failed:\n{out[-6000:]}'
    return out


def tiny_config(path, base, data_root, *extras):
    """A config inheriting ``base`` for 128x96 images of the generated dataset, followed by
    ``extras`` (config snippets)."""
    with_mask = 'retinanet' not in base
    text = textwrap.dedent(f"""
        _base_ = {osp.join(DET, base)!r}
        metainfo = dict(classes={CLASSES!r})
        img_scale = (128, 96)
        train_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True, with_mask={with_mask}),
            dict(type='Resize', scale=img_scale, keep_ratio=True),
            dict(type='RandomFlip', prob=0.5),
            dict(type='PackDetInputs'),
        ]
        test_pipeline = [
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=img_scale, keep_ratio=True),
            dict(type='LoadAnnotations', with_bbox=True, with_mask={with_mask}),
            dict(type='PackDetInputs',
                 meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
        ]
        train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                                dataset=dict(metainfo=metainfo, pipeline=train_pipeline))
        val_dataloader = dict(num_workers=0, persistent_workers=False,
                              dataset=dict(metainfo=metainfo, pipeline=test_pipeline))
        test_dataloader = val_dataloader
        randomness = dict(seed=0, deterministic=True)
        default_hooks = dict(logger=dict(interval=1))
        log_processor = dict(window_size=1)
        """) + ''.join(textwrap.dedent(e) for e in extras)
    with open(path, 'w') as f:
        f.write(text)
    return str(path)


MASK_RCNN_TINY = """
    model = dict(
        roi_head=dict(bbox_head=dict(num_classes=3), mask_head=dict(num_classes=3)),
        # fewer sampled anchors/RoIs and kept detections: the CPU cost, not the architecture
        train_cfg=dict(rpn=dict(sampler=dict(num=64)),
                       rpn_proposal=dict(nms_pre=200, max_per_img=100),
                       rcnn=dict(sampler=dict(num=64))),
        test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100), rcnn=dict(max_per_img=10)))
    train_cfg = dict(max_epochs={epochs}, val_interval=2)
    """


def evaluators(data_root, dump):
    return f"""
    val_evaluator = [
        dict(type='CocoMetric', metric=['bbox', 'segm'],
             ann_file={osp.join(data_root, 'annotations', 'instances_val2017.json')!r}),
        dict(type='DumpResults', out_file_path={dump!r}),
    ]
    test_evaluator = val_evaluator[0]
    """


def last_val_record(work_dir):
    runs = sorted(d for d in os.listdir(work_dir) if osp.isdir(osp.join(work_dir, d)))
    records = []
    for run in runs:
        scalars = osp.join(work_dir, run, 'vis_data', 'scalars.json')
        if osp.isfile(scalars):
            with open(scalars) as f:
                records += [json.loads(line) for line in f if 'coco/bbox_mAP' in line]
    assert records, f'no validation record in {work_dir}'
    return records[-1]


def state_dict(path):
    return torch.load(path, map_location='cpu', weights_only=False)['state_dict']


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    """4 train and 3 val images, 128x96, with 1-3 shapes each."""
    return make_coco_dataset(str(tmp_path_factory.mktemp('coco')), num_images=(4, 3),
                             size=(96, 128), classes=CLASSES, seed=0)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    """An 'ImageNet' L1 checkpoint in mmeff's layout (random weights, no output norms)."""
    from mmeff.models import EfficientFormer
    torch.manual_seed(123)
    model = EfficientFormer('l1', out_norm_cfg=None)  # PyTorch's default init: random
    path = str(tmp_path_factory.mktemp('pretrained') / 'efficientformer_l1_mmeff.pth')
    torch.save({'state_dict': {'backbone.' + k: v for k, v in model.state_dict().items()},
                'meta': {}}, path)
    return path


@pytest.fixture(scope='module')
def trained(coco, pretrained, tmp_path_factory):
    """An uninterrupted 2-epoch Mask R-CNN L1 run (2 iterations per epoch) with validation."""
    tmp = tmp_path_factory.mktemp('run_a')
    cfg = tiny_config(tmp / 'mask_rcnn_tiny.py', 'mask_rcnn_effformer_l1.py', coco['data_root'],
                      MASK_RCNN_TINY.format(epochs=2),
                      evaluators(coco['data_root'], str(tmp / 'val_preds.pkl')))
    work_dir = str(tmp / 'work')
    out = run_tool([sys.executable, 'tools/train.py', cfg, '--work-dir', work_dir,
                    '--cfg-options', f"data_root={coco['data_root']}/",
                    f'pretrained={pretrained}'])
    return dict(cfg=cfg, work_dir=work_dir, out=out, val_preds=str(tmp / 'val_preds.pkl'),
                tmp=tmp)


# ---------------------------------------------------------------------------- data
def test_synthetic_coco_is_consistent(coco):
    """Ground truth fed to mmdet's CocoMetric as predictions scores AP 1.0 (bbox and segm):
    boxes, polygons and image sizes of the generated JSON agree."""
    from mmdet.evaluation import CocoMetric
    from PIL import Image
    from pycocotools.coco import COCO

    ann_file = coco['val2017_ann_file']
    api = COCO(ann_file)
    metric = CocoMetric(ann_file=ann_file, metric=['bbox', 'segm'])
    metric.dataset_meta = dict(classes=CLASSES)
    cat_ids = api.getCatIds(catNms=CLASSES)
    samples = []
    for img_id in api.getImgIds():
        info = api.loadImgs(img_id)[0]
        img = Image.open(osp.join(coco['data_root'], 'val2017', info['file_name']))
        assert img.size == (info['width'], info['height']) and img.mode == 'RGB'
        anns = api.loadAnns(api.getAnnIds(imgIds=img_id))
        assert anns, 'every image has objects'
        boxes = [[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2],
                  a['bbox'][1] + a['bbox'][3]] for a in anns]
        masks = np.stack([api.annToMask(a) for a in anns]).astype(bool)
        assert all(m.sum() > 0.8 * a['area'] for m, a in zip(masks, anns))
        samples.append(dict(img_id=img_id, ori_shape=(info['height'], info['width']),
                            pred_instances=dict(
                                bboxes=torch.tensor(boxes, dtype=torch.float32),
                                scores=torch.ones(len(anns)),
                                labels=torch.tensor([cat_ids.index(a['category_id'])
                                                     for a in anns]),
                                masks=torch.from_numpy(masks))))
    metric.process({}, samples)
    result = metric.evaluate(len(samples))
    assert result['coco/bbox_mAP'] == pytest.approx(1.0)
    assert result['coco/segm_mAP'] == pytest.approx(1.0)


def test_synthetic_coco_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='subset of'):
        make_coco_dataset(str(tmp_path), classes=('dog',))
    with pytest.raises(ValueError, match='too small'):
        make_coco_dataset(str(tmp_path), size=(16, 16))


# ---------------------------------------------------------------------------- configs
@pytest.mark.parametrize('arch', ['l1', 'l3', 'l7'])
def test_mask_rcnn_configs_follow_the_recipe(arch):
    from mmengine.config import Config
    from mmengine.registry import MODELS

    from mmeff.models import EfficientFormer
    path = osp.join(DET, f'mask_rcnn_effformer_{arch}.py')
    with open(path) as f:
        text = f.read()
    assert re.search(r"^_base_ = '(mmdet::|\./mask_rcnn_effformer_l1\.py)", text, re.M)
    assert '../' not in text
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmdet' and cfg.model.type == 'MaskRCNN'
    bb = cfg.model.backbone
    assert bb.type == 'mmeff.EfficientFormer' and bb.arch == arch
    assert bb.init_cfg == dict(type='Pretrained', checkpoint=cfg.pretrained, prefix='backbone.')
    assert cfg.pretrained == f'pretrained/efficientformer_{arch}_300d_mmeff.pth'
    backbone = MODELS.build(bb)
    assert isinstance(backbone, EfficientFormer)
    assert backbone.out_channels == PAPER_WIDTHS[arch] == cfg.model.neck.in_channels
    assert (cfg.model.neck.out_channels, cfg.model.neck.num_outs) == (256, 5)
    # AdamW 2e-4 / 1e-4, 12 epochs, steps 8 and 11, 500-iteration linear warm-up
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999),
                                               weight_decay=1e-4)
    assert cfg.train_cfg.max_epochs == 12
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.end, warmup.by_epoch) == ('LinearLR', 500, False)
    assert (steps.type, steps.milestones) == ('MultiStepLR', [8, 11])
    assert cfg.auto_scale_lr.base_batch_size == 16 and cfg.train_dataloader.batch_size == 2
    resize, flip = cfg.train_dataloader.dataset.pipeline[2:4]
    assert (resize.scale, resize.keep_ratio, flip.prob) == ((1333, 800), True, 0.5)
    assert cfg.test_dataloader.dataset.pipeline[1].scale == (1333, 800)
    assert cfg.val_evaluator.type == 'CocoMetric' and cfg.val_evaluator.metric == ['bbox', 'segm']
    assert cfg.data_root == 'data/coco/'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == cfg.data_root
    assert cfg.val_evaluator.ann_file == 'data/coco/annotations/instances_val2017.json'


def test_cfg_options_data_root_and_pretrained_reach_every_use():
    from mmeff.engine import prepare_config
    cfg = prepare_config(
        osp.join(DET, 'mask_rcnn_effformer_l3.py'),
        cfg_options={'data_root': '/datasets/coco', 'pretrained': '/w/l3.pth',
                     'test_dataloader.dataset.data_root': '/elsewhere/'})
    assert cfg.data_root == '/datasets/coco/'  # the trailing slash mmdet's joins expect
    assert cfg.train_dataloader.dataset.data_root == '/datasets/coco/'
    assert cfg.val_dataloader.dataset.data_root == '/datasets/coco/'
    assert cfg.test_dataloader.dataset.data_root == '/elsewhere/'  # explicit wins
    assert cfg.val_evaluator.ann_file == '/datasets/coco/annotations/instances_val2017.json'
    assert cfg.test_evaluator.ann_file == '/datasets/coco/annotations/instances_val2017.json'
    assert cfg.model.backbone.init_cfg.checkpoint == '/w/l3.pth'


def test_amp_option(monkeypatch):
    import mmeff.engine.launch as launch
    config = osp.join(DET, 'mask_rcnn_effformer_l1.py')
    monkeypatch.setattr(launch, '_amp_device_available', lambda: False)
    with pytest.raises(ValueError, match=r"--amp needs a GPU: mmengine's AmpOptimWrapper runs on "
                                         r'CUDA, NPU, MLU or MUSA devices only'):
        launch.prepare_config(config, amp=True)
    monkeypatch.setattr(launch, '_amp_device_available', lambda: True)
    cfg = launch.prepare_config(config, amp=True)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert cfg.val_cfg.fp16 and cfg.test_cfg.fp16


# ---------------------------------------------------------------------------- train / test
def test_train_evaluates_saves_and_test_reproduces(trained, coco, pretrained):
    out, work_dir = trained['out'], trained['work_dir']
    # mmdet's CocoMetric ran and printed both AP summaries
    assert 'bbox_mAP_copypaste' in out and 'segm_mAP_copypaste' in out
    assert f'Loaded pretrained backbone from {pretrained}' in out
    for epoch in (1, 2):
        assert osp.isfile(osp.join(work_dir, f'epoch_{epoch}.pth'))
    val = last_val_record(work_dir)
    assert val['step'] == 2  # validated once, after epoch 2 (val_interval=2)
    keys = [f'coco/{t}_mAP{s}' for t in ('bbox', 'segm') for s in ('', '_50', '_75')]
    for key in keys:
        assert 0. <= val[key] <= 1.
    # The backbone started from the checkpoint (AdamW moved it by ~lr per step, lr <= 1e-6)
    # and was trained.
    ckpt = state_dict(osp.join(work_dir, 'epoch_2.pth'))
    init = state_dict(pretrained)
    stem = 'backbone.stem.conv1.weight'
    assert torch.allclose(ckpt[stem], init[stem], atol=1e-4)
    assert not torch.equal(ckpt[stem], init[stem])

    # tools/test.py from the checkpoint: the same metrics and the same predictions
    test_dir = str(trained['tmp'] / 'test')
    test_preds = str(trained['tmp'] / 'test_preds.pkl')
    test_out = run_tool([sys.executable, 'tools/test.py', trained['cfg'],
                         osp.join(work_dir, 'epoch_2.pth'), '--work-dir', test_dir,
                         '--out', test_preds, '--cfg-options', f"data_root={coco['data_root']}/"])
    assert 'bbox_mAP_copypaste' in test_out and 'segm_mAP_copypaste' in test_out
    stamp = sorted(d for d in os.listdir(test_dir) if osp.isdir(osp.join(test_dir, d)))[-1]
    with open(osp.join(test_dir, stamp, f'{stamp}.json')) as f:
        test_metrics = json.load(f)
    for key in keys:
        assert test_metrics[key] == pytest.approx(val[key], abs=1e-6), key
    with open(trained['val_preds'], 'rb') as f:
        val_preds = pickle.load(f)
    with open(test_preds, 'rb') as f:
        test_preds = pickle.load(f)
    assert len(val_preds) == len(test_preds) == 3
    total = 0
    for a, b in zip(val_preds, test_preds):
        assert a['img_id'] == b['img_id']
        pa, pb = a['pred_instances'], b['pred_instances']
        total += len(pa['scores'])
        assert torch.allclose(pa['bboxes'], pb['bboxes'], atol=1e-4)
        assert torch.allclose(pa['scores'], pb['scores'], atol=1e-5)
        assert torch.equal(pa['labels'], pb['labels'])
        assert pa['masks'].shape[1:] == (96, 128)
        assert (pa['masks'] != pb['masks']).float().mean() < 1e-3
    assert total > 0, 'the model predicted nothing: the comparison would be empty'

    # compare_results reads both runs and prints them beside the paper's L1 numbers
    for wd, ref in ((work_dir, val), (test_dir, test_metrics)):
        res = subprocess.run([sys.executable, 'tools/compare_results.py', wd], cwd=ROOT,
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
        assert 'EfficientFormer-L1 detection' in res.stdout
        ap = 100 * ref['coco/bbox_mAP']
        assert re.search(rf'bbox_mAP\s+{ap:.2f}\s+37\.9\s', res.stdout), res.stdout
        assert re.search(r'segm_mAP\s+\S+\s+35\.4\s', res.stdout), res.stdout


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(trained, coco, pretrained):
    tmp = trained['tmp']
    stopped = tiny_config(tmp / 'mask_rcnn_tiny_1ep.py', 'mask_rcnn_effformer_l1.py',
                          coco['data_root'], MASK_RCNN_TINY.format(epochs=1),
                          evaluators(coco['data_root'], str(tmp / 'unused.pkl')))
    work_dir = str(tmp / 'resumed')
    opts = ['--cfg-options', f"data_root={coco['data_root']}/", f'pretrained={pretrained}']
    run_tool([sys.executable, 'tools/train.py', stopped, '--work-dir', work_dir] + opts)
    assert not osp.exists(osp.join(work_dir, 'epoch_2.pth'))
    # the uninterrupted run's config (2 epochs), dumping its predictions elsewhere
    full_cfg = tiny_config(tmp / 'mask_rcnn_tiny_resume.py', 'mask_rcnn_effformer_l1.py',
                           coco['data_root'], MASK_RCNN_TINY.format(epochs=2),
                           evaluators(coco['data_root'], str(tmp / 'resumed_preds.pkl')))
    out = run_tool([sys.executable, 'tools/train.py', full_cfg, '--work-dir', work_dir,
                    '--resume'] + opts)
    assert 'resumed epoch: 1, iter: 2' in out
    full = state_dict(osp.join(trained['work_dir'], 'epoch_2.pth'))
    resumed = state_dict(osp.join(work_dir, 'epoch_2.pth'))
    first = state_dict(osp.join(work_dir, 'epoch_1.pth'))
    assert full.keys() == resumed.keys()
    differ = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert not differ, f'{len(differ)} tensors differ after resume, e.g. {differ[:3]}'
    assert sum(not torch.equal(first[k], resumed[k]) for k in first) > len(first) // 2


def test_distributed_two_cpu_processes(coco, pretrained, tmp_path):
    cfg = tiny_config(tmp_path / 'ddp.py', 'mask_rcnn_effformer_l1.py', coco['data_root'],
                      MASK_RCNN_TINY.format(epochs=2), """
                      val_dataloader = None
                      val_evaluator = None
                      val_cfg = None
                      """)
    work_dir = str(tmp_path / 'work')
    out = run_tool(['bash', 'tools/dist_train.sh', cfg, '2', '--work-dir', work_dir,
                    '--cfg-options', f"data_root={coco['data_root']}/", f'pretrained={pretrained}'],
                   env=dict(PYTHON=sys.executable, OMP_NUM_THREADS='1',
                            PORT=str(29500 + os.getpid() % 1000)))
    log = out
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    assert 'MMDistributedDataParallel' in log
    # 4 images, 2 processes x 2 images: one iteration per epoch
    assert 'Epoch(train) [2][1/1]' in log
    assert 'Epoch(train) [1][2/' not in log
    ckpt = state_dict(osp.join(work_dir, 'epoch_2.pth'))
    assert not any(k.startswith('module.') for k in ckpt)
    assert all(torch.isfinite(v).all() for v in ckpt.values() if v.is_floating_point())


@pytest.mark.parametrize('config', ['retinanet_effformer_l1.py',
                                    'cascade_mask_rcnn_effformer_l1.py'])
def test_backbone_in_other_mmdet_detectors(config, coco, pretrained, tmp_path):
    fewer_proposals = '' if 'retinanet' in config else """
        model = dict(train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100)))
        """
    cfg = tiny_config(tmp_path / 'other.py', config, coco['data_root'], """
        train_dataloader['dataset']['indices'] = 2  # one iteration
        train_cfg = dict(max_epochs=1)
        val_dataloader = None
        val_evaluator = None
        val_cfg = None
        """, fewer_proposals)
    work_dir = str(tmp_path / 'work')
    out = run_tool([sys.executable, 'tools/train.py', cfg, '--work-dir', work_dir,
                    '--cfg-options', f"data_root={coco['data_root']}/", f'pretrained={pretrained}'])
    assert f'Loaded pretrained backbone from {pretrained}' in out
    line = [ln for ln in out.splitlines() if 'Epoch(train) [1][1/1]' in ln]
    assert line, out[-3000:]
    loss = float(re.search(r' loss: ([0-9.]+)', line[0]).group(1))
    assert np.isfinite(loss) and loss > 0
    ckpt = state_dict(osp.join(work_dir, 'epoch_1.pth'))
    init = state_dict(pretrained)
    assert ckpt['backbone.stages.3.blocks.0.mlp.fc1.weight'].shape == \
        init['backbone.stages.3.blocks.0.mlp.fc1.weight'].shape
    assert not torch.equal(ckpt['backbone.stem.conv1.weight'], init['backbone.stem.conv1.weight'])
    head = 'bbox_head' if 'retinanet' in config else 'roi_head'
    assert any(k.startswith(head) for k in ckpt)


# ---------------------------------------------------------------------------- demo / analyze
def test_demo_draws_boxes_and_masks(trained, coco, tmp_path):
    from PIL import Image

    from mmeff.visualization import upscale_factor
    images = coco['val2017_images'][:2]
    out_dir = str(tmp_path / 'demo')
    out = run_tool([sys.executable, 'tools/demo.py', trained['cfg'],
                    osp.join(trained['work_dir'], 'epoch_2.pth'), *images,
                    '--out-dir', out_dir, '--score-thr', '0.0', '--device', 'cpu'])
    for img in images:
        name = osp.basename(img)
        vis = osp.join(out_dir, 'vis', name)
        assert f'Wrote {vis}' in out
        drawn = np.asarray(Image.open(vis).convert('RGB'), dtype=np.int16)
        orig = np.asarray(Image.open(img).convert('RGB'), dtype=np.int16)
        k = upscale_factor(*orig.shape[:2])  # small pictures are drawn larger
        orig = orig.repeat(k, 0).repeat(k, 1)
        assert k == 5 and drawn.shape == orig.shape
        assert (np.abs(drawn - orig).max(-1) > 30).mean() > 0.01  # boxes/masks were drawn
        with open(osp.join(out_dir, 'preds', osp.splitext(name)[0] + '.json')) as f:
            pred = json.load(f)
        assert len(pred['bboxes']) == len(pred['scores']) == len(pred['masks']) > 0
        assert set(pred['labels']) <= {0, 1, 2}


def test_analyze_dense_counts_the_whole_detector():
    from mmeff.benchmark.dense import analyze
    from mmeff.benchmark import count_macs, count_params
    from mmeff.models import EfficientFormer
    row = analyze(osp.join(DET, 'mask_rcnn_effformer_l1.py'), shape=(128, 160))
    backbone = EfficientFormer('l1')
    assert row['backbone_params'] == count_params(backbone)
    assert row['backbone_macs'] == count_macs(backbone.eval(), torch.zeros(1, 3, 128, 160))
    # Mask R-CNN adds FPN, RPN and RoI heads (the box head's fc layers alone are ~14M)
    assert row['params'] > row['backbone_params'] + 14e6
    assert row['macs'] > row['neck_macs'] > row['backbone_macs'] > 0
    assert row['num_proposals'] > 0


@pytest.mark.slow
def test_readme_table_is_what_analyze_dense_computes():
    """The params/GMACs of configs/detection/README.md, recomputed at 800x1333 (~3 CPU-min)."""
    from mmeff.benchmark.dense import analyze
    with open(osp.join(DET, 'README.md')) as f:
        readme = f.read()
    for arch in ('l1', 'l3', 'l7'):
        row = re.search(rf'\| \[mask_rcnn_effformer_{arch}\.py\].*\| ([0-9.]+) M \| ([0-9.]+) \| '
                        rf'([0-9.]+) M / ([0-9.]+) \|', readme)
        assert row, arch
        got = analyze(osp.join(DET, f'mask_rcnn_effformer_{arch}.py'), shape=(800, 1333))
        assert got['num_proposals'] == 1000
        assert f"{got['params'] / 1e6:.1f}" == row.group(1)
        assert f"{got['macs'] / 1e9:.1f}" == row.group(2)
        assert f"{got['backbone_params'] / 1e6:.1f}" == row.group(3)
        assert f"{got['backbone_macs'] / 1e9:.1f}" == row.group(4)


# ---------------------------------------------------------------------------- bad input
def _train_main():
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    try:
        import train
    finally:
        sys.path.pop(0)
    return train.main


def test_missing_data_root_is_a_clear_error(tmp_path):
    main = _train_main()
    with pytest.raises(FileNotFoundError) as err:
        main([osp.join(DET, 'mask_rcnn_effformer_l1.py'), '--work-dir', str(tmp_path),
              '--cfg-options', f'data_root={tmp_path}/no_coco/'])
    msg = str(err.value)
    assert f"data_root '{tmp_path}/no_coco/' does not exist" in msg
    assert '--cfg-options data_root=' in msg


def test_missing_annotation_file_is_a_clear_error(coco, tmp_path):
    main = _train_main()
    with pytest.raises(FileNotFoundError, match=r"annotation file '.*instances_minival\.json' "
                                                r'does not exist'):
        main([osp.join(DET, 'mask_rcnn_effformer_l1.py'), '--work-dir', str(tmp_path),
              '--cfg-options', f"data_root={coco['data_root']}/",
              'train_dataloader.dataset.ann_file=annotations/instances_minival.json'])


def test_missing_pretrained_checkpoint_is_a_clear_error(coco, tmp_path):
    cfg = tiny_config(tmp_path / 'cfg.py', 'mask_rcnn_effformer_l1.py', coco['data_root'],
                      MASK_RCNN_TINY.format(epochs=1))
    main = _train_main()
    with pytest.raises(FileNotFoundError) as err:
        main([cfg, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
              f"data_root={coco['data_root']}/"])
    msg = str(err.value)
    # reported by tools/train.py before the datasets are loaded
    assert "model.backbone.init_cfg: Pretrained checkpoint 'pretrained/efficientformer_l1_300d_" \
           "mmeff.pth' does not exist" in msg
    assert 'tools/convert_checkpoint.py' in msg and '--cfg-options pretrained=/path.pth' in msg
    assert 'model.backbone.init_cfg=None' in msg
    assert not osp.exists(osp.join(tmp_path, 'work'))
    # and by the backbone itself when a model is initialised outside the tool
    from mmengine.config import Config
    from mmengine.registry import MODELS
    backbone = MODELS.build(Config.fromfile(cfg).model.backbone)
    with pytest.raises(FileNotFoundError, match=r"Pretrained backbone checkpoint 'pretrained/"
                                                r"efficientformer_l1_300d_mmeff.pth' does not "
                                                r'exist.*init_cfg=None'):
        backbone.init_weights()


def test_classes_missing_from_the_annotations_are_a_clear_error(coco, tmp_path):
    """mmdet filters out every image when metainfo.classes names no category of the JSON; the
    tool says so instead of numpy's 'need at least one array to concatenate'."""
    cfg = tiny_config(tmp_path / 'cfg.py', 'mask_rcnn_effformer_l1.py', coco['data_root'],
                      MASK_RCNN_TINY.format(epochs=1),
                      "train_dataloader['dataset']['metainfo'] = dict(classes=('dog', 'cat'))\n")
    main = _train_main()
    with pytest.raises(ValueError, match=r"CocoDataset is empty after loading and filtering "
                                         r"\(ann_file='.*instances_train2017.json'\): no image "
                                         r"kept an object of the classes the dataset looks for "
                                         r"\(dog, cat\)\. Check that metainfo.classes"):
        main([cfg, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
              f"data_root={coco['data_root']}/", 'model.backbone.init_cfg=None'])


def test_config_typos_are_clear_errors(coco, tmp_path):
    main = _train_main()
    with pytest.raises(FileNotFoundError, match="Config file .*mask_rcnn_effformer_l2.py' does "
                                                'not exist'):
        main([osp.join(DET, 'mask_rcnn_effformer_l2.py')])
    base = [osp.join(DET, 'mask_rcnn_effformer_l1.py'), '--work-dir', str(tmp_path),
            '--cfg-options', f"data_root={coco['data_root']}/", 'model.backbone.init_cfg=None']
    with pytest.raises(ValueError, match=r"Unknown EfficientFormer arch 'l5'; choose one of "
                                         r"\['l1', 'l3', 'l7'\]"):
        main(base + ['model.backbone.arch=l5'])
    with pytest.raises(KeyError, match='mmeff.EfficientFormr is not in the mmdet::model registry. '
                                       'Please check whether the value of `mmeff.EfficientFormr` '
                                       'is correct'):
        main(base + ['model.backbone.type=mmeff.EfficientFormr'])
    with pytest.raises(TypeError, match="unexpected keyword argument 'out_indice'"):
        main(base + ['model.backbone.out_indice=(0,1,2,3)'])


def test_too_small_input_is_a_clear_error():
    """Without padding to a multiple of 32 (the config pads), a 24x20 image cannot pass the
    stride-32 stage; the error names the size and the fix."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample

    cfg = Config.fromfile(osp.join(DET, 'mask_rcnn_effformer_l1.py'))
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model).eval()
    image = torch.randint(0, 255, (3, 24, 20), dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(img_shape=(24, 20), ori_shape=(24, 20),
                                         scale_factor=(1., 1.)))
    with torch.no_grad():
        padded = model.test_step(dict(inputs=[image], data_samples=[sample]))  # pads to 32
        assert padded[0].pred_instances.bboxes.shape[1] == 4
        model.data_preprocessor.pad_size_divisor = 1
        with pytest.raises(ValueError, match=r'Input of 24x20 pixels is too small: '
                                             r'EfficientFormer needs at least 32 pixels'):
            model.test_step(dict(inputs=[image], data_samples=[sample]))


def test_tools_report_missing_inputs(tmp_path, trained):
    res = subprocess.run([sys.executable, 'tools/compare_results.py', str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode != 0
    assert 'cannot tell the task' in res.stderr and '--task detection|segmentation' in res.stderr
    res = subprocess.run([sys.executable, 'tools/compare_results.py', str(tmp_path),
                          '--task', 'detection', '--arch', 'l3'], cwd=ROOT,
                         capture_output=True, text=True)
    assert 'no detection metrics (coco/bbox_mAP, coco/segm_mAP) found' in res.stderr
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    try:
        from demo import run_demo
    finally:
        sys.path.pop(0)
    with pytest.raises(FileNotFoundError, match="input image '.*nope.jpg' does not exist"):
        run_demo(trained['cfg'], osp.join(trained['work_dir'], 'epoch_2.pth'),
                 [str(tmp_path / 'nope.jpg')], out_dir=str(tmp_path / 'demo'))
