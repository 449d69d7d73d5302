"""Round 2 of "nothing lost, nothing silently wrong", for the task configs and tools:
bit-exact resume of the classification and segmentation configs (detection's is in
tests/test_detection.py), ADE-format sets with unmatched or unreadable files in tools/test.py,
unreadable images in tools/demo.py, a checkpoint that does not fit found before the Runner
starts, stock mmseg's ``model.pretrained`` refused when the backbone is built, misspelt
``--cfg-options`` keys, the demo's console output, report and pictures, and the tools' help.

Runs are tiny (generated data, a few iterations) and go through the real tools.
"""
import glob
import os
import os.path as osp
import re
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

from helpers import load_tool

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHIPPED = sorted(glob.glob(osp.join(ROOT, 'configs', d, '*.py'))
                 for d in ('classification', 'detection', 'segmentation', 'demo'))
SHIPPED = sorted(p for group in SHIPPED for p in group)
SEG_DEMO = osp.join(ROOT, 'configs', 'demo', 'fpn_effformer_l1_synthetic.py')
DET_DEMO = osp.join(ROOT, 'configs', 'demo', 'mask_rcnn_effformer_l1_synthetic.py')
ENV = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='1')


def run(args, timeout=600):
    """Run a tool (``args``: script and arguments) from the repository root."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def ok(args, timeout=600):
    res = run(args, timeout)
    assert res.returncode == 0, f'{args} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}'
    return res


def weights(path, key='state_dict'):
    return torch.load(path, map_location='cpu', weights_only=False)[key]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f'{len(differ)} of {len(a)} tensors differ after resume, e.g. {differ[:3]}'


# ---------------------------------------------------------------------------- item 7: resume
@pytest.mark.parametrize('config', SHIPPED, ids=lambda p: osp.relpath(p, ROOT))
def test_every_shipped_config_keeps_what_an_exact_resume_needs(config):
    """Random states in the checkpoints (RNGStateHook), a fixed seed (the sampler's shuffling
    and the workers' seeds come from it), and, for epoch-based training with workers, workers
    re-created (re-seeded) each epoch: persistent ones carry states a resumed run never had."""
    cfg = Config.fromfile(config)
    hooks = [h.get('type') for h in cfg.get('custom_hooks') or []]
    assert 'mmeff.RNGStateHook' in hooks, f'{config}: custom_hooks {hooks}'
    assert cfg.get('randomness', {}).get('seed') is not None, config
    loader = cfg.train_dataloader
    if cfg.train_cfg.get('type') == 'EpochBasedTrainLoop' and loader.get('num_workers', 0) > 0:
        assert loader.get('persistent_workers') is False, config


@pytest.fixture(scope='module')
def imagefolder(tmp_path_factory):
    from mmeff.datasets import make_imagefolder_dataset
    return make_imagefolder_dataset(str(tmp_path_factory.mktemp('in1k')), num_classes=4,
                                    per_class=(4, 1), size=40)


def test_classification_resume_is_bit_exact(imagefolder, tmp_path):
    """The shipped L1 ImageNet config (mixup/cutmix, RandAugment, random erasing, repeated
    augmentation, EMA), shrunk, with one data worker as shipped (not persistent): 2 epochs in
    one go, and epoch 2 again resumed from epoch 1's checkpoint, end with the same weights,
    EMA and raw."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'classification', 'effformer_l1_in1k.py'))
    for name in ('train_dataloader', 'val_dataloader'):
        loader = cfg[name]
        loader.dataset.data_root = imagefolder['data_root']
        loader.batch_size = 4
        loader.num_workers = 1
        loader.pin_memory = False
        loader.dataset.pipeline[1].input_size = 32
    cfg.val_dataloader.persistent_workers = False
    cfg.test_dataloader = cfg.val_dataloader
    cfg.train_dataloader.sampler.selected_round = 0
    cfg.model.num_classes = 4
    cfg.model.distillation = None  # no teacher weights here; the RNG handling is the same
    cfg.train_cfg.max_epochs = 2
    cfg.param_scheduler[0].end = 1
    cfg.param_scheduler[1].update(begin=1, end=2, T_max=1)
    cfg.default_hooks.checkpoint.update(save_best=None, max_keep_ckpts=2)
    cfg.env_cfg.cudnn_benchmark = False
    cfg.env_cfg.mp_cfg.mp_start_method = 'fork'
    path = str(tmp_path / 'cls_tiny.py')
    cfg.dump(path)
    full, resumed = str(tmp_path / 'full'), str(tmp_path / 'resumed')
    ok(['tools/train.py', path, '--work-dir', full])
    out = ok(['tools/train.py', path, '--work-dir', resumed, '--resume',
              osp.join(full, 'epoch_1.pth')])
    assert 'resumed epoch: 1' in out.stdout + out.stderr
    for key in ('state_dict', 'ema_state_dict'):
        a, b = weights(osp.join(full, 'epoch_2.pth'), key), \
            weights(osp.join(resumed, 'epoch_2.pth'), key)
        assert_same_weights(a, b)
    first, last = weights(osp.join(full, 'epoch_1.pth')), weights(osp.join(full, 'epoch_2.pth'))
    assert sum(not torch.equal(first[k], last[k]) for k in last) > len(last) // 2  # it trained


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    from mmeff.datasets import make_ade_dataset
    root = str(tmp_path_factory.mktemp('ade') / 'ADEChallengeData2016')
    return make_ade_dataset(root, num_images=(4, 3), size=(64, 80))


def test_segmentation_resume_is_bit_exact(ade, tmp_path):
    """Semantic FPN (shipped config, shrunk): 4 iterations in one go, with validation at 2, and
    iterations 3-4 again resumed from iter_2.pth end with the same weights. mmengine advances
    the dataloader past the trained iterations on resume (random resizes, crops, flips and
    photometric distortion run again): the random states are restored after that."""
    sys.path.insert(0, osp.join(ROOT, 'tests'))
    from test_segmentation import fpn_config, tiny_config
    path = tiny_config(fpn_config('l1'), str(tmp_path / 'fpn_tiny.py'), ade['data_root'],
                       max_iters=4, val_interval=2)
    full, resumed = str(tmp_path / 'full'), str(tmp_path / 'resumed')
    ok(['tools/train.py', path, '--work-dir', full])
    out = ok(['tools/train.py', path, '--work-dir', resumed, '--resume',
              osp.join(full, 'iter_2.pth')])
    assert 'resumed epoch: 0, iter: 2' in out.stdout + out.stderr
    a, b = weights(osp.join(full, 'iter_4.pth')), weights(osp.join(resumed, 'iter_4.pth'))
    assert_same_weights(a, b)
    first = weights(osp.join(full, 'iter_2.pth'))
    assert sum(not torch.equal(first[k], a[k]) for k in a) > len(a) // 2


# ---------------------------------------------------------------------------- tools/test.py
def random_checkpoint(config, scope, path, arch=None):
    """The config's model with random weights, saved as tools/train.py would."""
    from mmengine.registry import MODELS, DefaultScope

    import mmeff.models  # noqa: F401
    cfg = Config.fromfile(config)
    if arch is not None:
        cfg.model.backbone.arch = arch
        cfg.model.neck.in_channels = {'l3': [64, 128, 320, 512]}[arch]
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(cfg.model)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


@pytest.fixture(scope='module')
def seg_ckpt(tmp_path_factory):
    return random_checkpoint(SEG_DEMO, 'mmseg',
                             str(tmp_path_factory.mktemp('seg_ckpt') / 'fpn_l1.pth'))


def copy_ade(ade, dst):
    import shutil
    shutil.copytree(ade['data_root'], dst)
    return dst


def test_test_tool_reports_unmatched_ade_files_and_counts_the_images(ade, seg_ckpt, tmp_path):
    """A validation image removed, its label map kept: a warning names it, and the metrics
    say they cover 2 images. An image without its label map: one line naming it."""
    root = copy_ade(ade, str(tmp_path / 'ade'))
    name = osp.basename(ade['validation_images'][0])
    os.remove(osp.join(root, 'images', 'validation', name))
    res = ok(['tools/test.py', SEG_DEMO, seg_ckpt, '--work-dir', str(tmp_path / 'w1'),
              '--cfg-options', f'data_root={root}'])
    out = res.stdout + res.stderr
    label = osp.join(root, 'annotations', 'validation', name.replace('.jpg', '.png'))
    assert re.search(rf"1 label map\(s\) of the test dataset have no image, e\.g\. "
                     rf"'{re.escape(label)}': they are not scored, the metrics cover the 2 "
                     rf"images", out), out[-3000:]
    assert 'Images scored: 2 (ADE20KDataset)' in res.stdout
    metrics_line = [ln for ln in res.stdout.splitlines() if ln.startswith('Metrics: ')]
    assert metrics_line and res.stdout.index('Images scored') < res.stdout.index('Metrics: ')

    os.remove(label)  # back to a matched set of 2; now one label map goes missing
    os.remove(osp.join(root, 'annotations', 'validation',
                       osp.basename(ade['validation_images'][1]).replace('.jpg', '.png')))
    res = run(['tools/test.py', SEG_DEMO, seg_ckpt, '--work-dir', str(tmp_path / 'w2'),
               '--cfg-options', f'data_root={root}'])
    assert res.returncode == 1
    (line,) = res.stderr.strip().splitlines()
    assert re.search(r"test\.py: error: 1 of the 2 images of the test dataset have no label "
                     r"map, e\.g\. '.*ADE_val_00000002\.png'", line), line


@pytest.mark.parametrize('damage', ['empty', 'truncated', 'garbage'])
def test_test_tool_names_an_unreadable_image(ade, seg_ckpt, tmp_path, damage):
    root = copy_ade(ade, str(tmp_path / 'ade'))
    bad = osp.join(root, 'images', 'validation', osp.basename(ade['validation_images'][1]))
    data = open(bad, 'rb').read()
    with open(bad, 'wb') as f:
        f.write({'empty': b'', 'truncated': data[:len(data) // 3],
                 'garbage': b'not an image at all' * 10}[damage])
    res = run(['tools/test.py', SEG_DEMO, seg_ckpt, '--work-dir', str(tmp_path / 'w'),
               '--cfg-options', f'data_root={root}'])
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    (line,) = res.stderr.strip().splitlines()
    problem = {'empty': r'is empty \(0 bytes\)', 'truncated': r'is a truncated JPEG',
               'garbage': r'cannot be decoded as an image'}[damage]
    assert re.search(rf"test\.py: error: Image '{re.escape(bad)}' of the test dataset "
                     rf"{problem}.*: replace it with a good copy, or remove it from the dataset",
                     line), line
    assert 'probably a bug' not in res.stderr


def test_image_problem():
    from mmeff.datasets.image_files import image_problem, unreadable_images
    tmp = os.environ.get('TMPDIR', '/tmp')
    folder = osp.join(tmp, f'mmeff_image_problem_{os.getpid()}')
    os.makedirs(folder, exist_ok=True)
    img = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    paths = {}
    for ext in ('jpg', 'png'):
        paths[ext] = osp.join(folder, f'good.{ext}')
        cv2.imwrite(paths[ext], img)
        data = open(paths[ext], 'rb').read()
        paths[f'cut_{ext}'] = osp.join(folder, f'cut.{ext}')
        with open(paths[f'cut_{ext}'], 'wb') as f:
            f.write(data[:len(data) // 2])
    paths['empty'] = osp.join(folder, 'empty.jpg')
    open(paths['empty'], 'wb').close()
    assert image_problem(paths['jpg']) is None and image_problem(paths['png']) is None
    assert image_problem(paths['cut_jpg']).startswith('is a truncated JPEG')
    assert image_problem(paths['cut_png']).startswith('is a truncated PNG')
    assert image_problem(paths['empty']) == 'is empty (0 bytes)'
    assert image_problem(osp.join(folder, 'nope.jpg')) == 'does not exist'
    assert [p for p, _ in unreadable_images(sorted(paths.values()))] == sorted(
        [paths['cut_jpg'], paths['cut_png'], paths['empty']])


def test_test_tool_checks_the_checkpoint_before_the_runner_starts(seg_ckpt, ade, tmp_path):
    """An L3 segmentor's checkpoint for the L1 config: one line, before the Runner logs its
    environment and config (about 480 lines)."""
    l3 = random_checkpoint(SEG_DEMO, 'mmseg', str(tmp_path / 'fpn_l3.pth'), arch='l3')
    res = run(['tools/test.py', SEG_DEMO, l3, '--work-dir', str(tmp_path / 'w'),
               '--cfg-options', f"data_root={ade['data_root']}"])
    assert res.returncode == 1
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith('test.py: error: ') and 'fpn_l3.pth' in line, line
    assert 'Environment' not in res.stdout and 'Config:' not in res.stdout
    assert len(res.stdout.splitlines()) < 20, res.stdout[-3000:]


def test_misspelt_cfg_options_key_is_refused(seg_ckpt):
    from mmeff.engine.cfg_checks import check_cfg_option_keys
    test_tool = load_tool(ROOT, 'test')
    with pytest.raises(ValueError, match=r"--cfg-options data_rot=\.\.\.: the config has no "
                                         r"top-level 'data_rot'.*did you mean 'data_root'"):
        test_tool.main([SEG_DEMO, seg_ckpt, '--cfg-options', 'data_rot=/data/ade/'])
    # Every tool through prepare_config: tools/train.py too, before anything is built.
    train_tool = load_tool(ROOT, 'train')
    with pytest.raises(ValueError, match=r"no top-level 'data_rot'.*did you mean 'data_root'"):
        train_tool.main([SEG_DEMO, '--work-dir', str(seg_ckpt) + '_w',
                         '--cfg-options', 'data_rot=/data/ade/'])
    demo = load_tool(ROOT, 'demo')
    with pytest.raises(ValueError, match=r"no top-level 'pretraind'.*did you mean 'pretrained'"):
        demo.run_demo(SEG_DEMO, seg_ckpt, [seg_ckpt], cfg_options={'pretraind': 'x.pth'})
    cfg = Config.fromfile(SEG_DEMO)
    # Existing keys, nested keys under them, and what the Runner reads are fine.
    check_cfg_option_keys(cfg, {'data_root': '/x', 'model.backbone.frozen_stages': 1,
                                'randomness.seed': 3, 'load_from': 'x.pth'})


# ---------------------------------------------------------------------------- tools/demo.py
def test_demo_draws_the_good_images_and_names_the_bad_ones(seg_ckpt, ade, tmp_path, capsys):
    good = ade['validation_images'][0]
    empty, cut = str(tmp_path / 'empty.jpg'), str(tmp_path / 'cut.png')
    open(empty, 'wb').close()
    data = cv2.imencode('.png', cv2.imread(good))[1].tobytes()
    with open(cut, 'wb') as f:
        f.write(data[:len(data) // 2])
    demo = load_tool(ROOT, 'demo')
    out_dir = tmp_path / 'out'
    status = demo.main([SEG_DEMO, seg_ckpt, good, empty, cut, '--out-dir', str(out_dir),
                        '--device', 'cpu', '--cfg-options', f"data_root={ade['data_root']}"])
    assert status == 1
    assert (out_dir / 'vis' / osp.basename(good)).is_file()
    assert sorted(os.listdir(out_dir / 'vis')) == [osp.basename(good)]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"demo.py: error: image {empty!r} is empty (0 bytes): not drawn (replace it "
                   f"with a good copy)",
                   f"demo.py: error: image {cut!r} is a truncated PNG ({len(data) // 2} bytes, "
                   f"no IEND chunk): not drawn (replace it with a good copy)"]
    with pytest.raises(ValueError, match=r"image '.*empty\.jpg' is empty \(0 bytes\) \(and the 1 "
                                         r"other images cannot be read either\): nothing to draw"):
        demo.run_demo(SEG_DEMO, seg_ckpt, [empty, cut], out_dir=str(tmp_path / 'none'),
                      device='cpu', cfg_options={'data_root': ade['data_root']})


# ---------------------------------------------------------------------------- item 12
def test_stock_mmseg_pretrained_is_refused_when_the_backbone_is_built(tmp_path):
    """mmseg's fpn_r50.py sets model.pretrained='open-mmlab://resnet50_v1c' and EncoderDecoder
    hands it to the swapped-in backbone: building it stops, with only the useful fix."""
    from mmengine.registry import MODELS, DefaultScope

    import mmeff.models  # noqa: F401
    config = tmp_path / 'fpn_effformer_stock.py'
    config.write_text(textwrap.dedent("""
        _base_ = ['mmseg::_base_/models/fpn_r50.py']
        custom_imports = dict(imports=['mmeff.models'], allow_failed_imports=False)
        model = dict(
            backbone=dict(_delete_=True, type='mmeff.EfficientFormer', arch='l1'),
            neck=dict(in_channels=[48, 96, 224, 448]))
        """))
    cfg = Config.fromfile(str(config))
    assert cfg.model.pretrained == 'open-mmlab://resnet50_v1c'
    with DefaultScope.overwrite_default_scope('mmseg'):
        with pytest.raises(ValueError) as info:
            MODELS.build(cfg.model)
        msg = str(info.value)
        assert ("EfficientFormer(pretrained='open-mmlab://resnet50_v1c'): that is another "
                "backbone's checkpoint") in msg
        assert 'set model.pretrained=None' in msg and 'download' not in msg.lower()
        cfg = Config.fromfile(str(config))  # EncoderDecoder wrote it into the backbone's dict
        cfg.model.pretrained = None
        MODELS.build(cfg.model).init_weights()  # random weights on purpose: fine
    from mmeff.models import EfficientFormerV2
    with pytest.raises(ValueError, match=r"EfficientFormerV2\(pretrained='torchvision://"
                                         r"resnet50'\): that is another backbone's"):
        EfficientFormerV2('s0', pretrained='torchvision://resnet50')


# ---------------------------------------------------------------------------- item 13
def test_readme_swap_table_lists_the_auxiliary_head_width_of_every_arch():
    """README's swap table gives, per family and arch, the neck's in_channels and
    auxiliary_head.in_channels (mmseg's auxiliary heads read in_index=2: stage 3)."""
    from mmeff.models import EfficientFormer, EfficientFormerV2
    text = open(osp.join(ROOT, 'README.md')).read()
    start = text.index('## Swapping the backbone into stock mmdet/mmseg configs')
    section = text[start:text.index('\n## ', start + 10)]
    rows = re.findall(r'^\s*\|\s*`?(mmeff\.EfficientFormer(?:V2)?)`?\s*\|\s*`?([a-z0-9]+)`?\s*\|'
                      r'\s*`?\[([\d, ]+)\]`?\s*\|\s*`?(\d+)`?\s*\|', section, re.MULTILINE)
    table = {(family, arch): ([int(c) for c in neck.split(',')], int(aux))
             for family, arch, neck, aux in rows}
    assert 'auxiliary_head.in_channels' in section
    for cls in (EfficientFormer, EfficientFormerV2):
        for arch in cls.arch_settings:
            model = cls(arch)
            assert (f'mmeff.{cls.__name__}', arch) in table, (cls.__name__, arch, sorted(table))
            neck, aux = table[(f'mmeff.{cls.__name__}', arch)]
            assert neck == list(model.out_channels), (cls.__name__, arch)
            assert aux == model.out_channels[2], (cls.__name__, arch)


# ---------------------------------------------------------------------------- item 19
def test_benchmark_help_shows_defaults_and_gpu_checks_help_names_v2():
    res = ok(['tools/benchmark_latency.py', '--help'])
    flat = ' '.join(res.stdout.split())
    for option, default in (('--warmup WARMUP', '10'), ('--reps REPS', '100'),
                            ('--device DEVICE', 'cpu'), ('--settle-ms SETTLE_MS', '10.0'),
                            ('--out-dir OUT_DIR', 'work_dirs/benchmark'),
                            ('--task {', 'classifier')):
        assert re.search(re.escape(option) + r'[^-]*\(default: ' + re.escape(default) + r'\)',
                         flat), (option, flat)
    assert '(default: None)' not in flat and '(default: False)' not in flat
    res = subprocess.run(['bash', 'tools/gpu_checks.sh', '--help'], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert 'EfficientFormerV2 s0/s1/s2/l' in ' '.join(res.stdout.split())


def test_two_runs_in_one_second_get_their_own_logger(tmp_path):
    """mmengine names a run's logger ``<config name>_<timestamp>`` to the second and hands an
    existing logger back: a second run started in the same second logged into the first run's
    file (seen on a fast host). build_runner waits for a name that is free."""
    import time
    from mmengine.logging import MMLogger
    from mmeff.engine.launch import _wait_for_a_new_logger_name
    cfg = Config(dict(experiment_name='twice'))
    for _ in range(3):  # a taken name for this second, then a wait into the next one
        now = time.strftime('%Y%m%d_%H%M%S')
        MMLogger.get_instance(f'twice_{now}', log_file=str(tmp_path / f'{now}.log'))
        t0 = time.monotonic()
        _wait_for_a_new_logger_name(cfg)
        assert not MMLogger.check_instance_created(f'twice_{time.strftime("%Y%m%d_%H%M%S")}')
        assert time.monotonic() - t0 < 1.5
    (tmp_path / 'my_cfg.py').write_text('a = 1\n')
    stem = Config.fromfile(str(tmp_path / 'my_cfg.py'))
    now = time.strftime('%Y%m%d_%H%M%S')
    MMLogger.get_instance(f'my_cfg_{now}')
    _wait_for_a_new_logger_name(stem)
    assert not MMLogger.check_instance_created(f'my_cfg_{time.strftime("%Y%m%d_%H%M%S")}')
