"""The built-in demo (tools/run_demo.py, README's first command): its configs agree with each
other and with the shipped recipes, and its pretraining step trains and evaluates."""
import os
import os.path as osp
import subprocess
import sys

from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(ROOT, 'configs', 'demo')


def load(name):
    return Config.fromfile(osp.join(DEMO, name))


def test_dense_demo_configs_start_from_the_demo_pretraining():
    cls = load('effformer_l1_in1k_synthetic.py')
    expected = f'work_dirs/demo/effformer_l1_in1k/epoch_{cls.train_cfg.max_epochs}.pth'
    for name in ('mask_rcnn_effformer_l1_synthetic.py', 'fpn_effformer_l1_synthetic.py'):
        cfg = load(name)
        init = cfg.model.backbone.init_cfg
        assert cfg.pretrained == expected, name
        assert init.type == 'Pretrained' and init.checkpoint == expected, name
        assert init.prefix == 'backbone.', name


def test_classification_demo_keeps_the_recipe_augmentations():
    demo = load('effformer_l1_in1k_synthetic.py')
    real = Config.fromfile(osp.join(ROOT, 'configs', 'classification', 'effformer_l1_in1k.py'))
    keys = ('auto_augment', 're_prob', 're_mode', 'interpolation', 'is_training')
    train_t = demo.train_dataloader.dataset.pipeline[1]
    real_t = real.train_dataloader.dataset.pipeline[1]
    assert {k: train_t[k] for k in keys} == {k: real_t[k] for k in keys}
    assert demo.model.mixup == real.model.mixup
    assert demo.model.label_smoothing == real.model.label_smoothing
    assert demo.model.distillation is None  # no teacher weights can be downloaded here
    assert demo.train_dataloader.sampler.type == 'RepeatAugSampler'


def test_classification_demo_step_trains_and_tests(tmp_path):
    from mmeff.datasets import make_imagefolder_dataset
    data = make_imagefolder_dataset(str(tmp_path / 'imagenet'), num_classes=5,
                                    per_class=(16, 4), size=64)
    cfg = osp.join(DEMO, 'effformer_l1_in1k_synthetic.py')
    work = str(tmp_path / 'work')
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='2')
    opts = ['--cfg-options', f"data_root={data['data_root']}/", 'train_cfg.max_epochs=1',
            'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1']
    proc = subprocess.run([sys.executable, 'tools/train.py', cfg, '--work-dir', work, *opts],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, 'tools/test.py', cfg, osp.join(work, 'epoch_1.pth'),
                           '--work-dir', str(tmp_path / 'test'), *opts[:2]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith('Metrics:')]
    assert line and "'accuracy/top1'" in line[0], proc.stdout[-2000:]

