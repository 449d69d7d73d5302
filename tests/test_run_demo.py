"""The built-in demo (tools/run_demo.py, README's first command): its configs agree with each
other and with the shipped recipes, and its pretraining step trains and evaluates."""
import os
import os.path as osp
import subprocess
import sys

from mmengine.config import Config

from helpers import load_tool

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



# ---------------------------------------------------------------------------- console, report
def test_in_process_step_output_goes_to_its_log(tmp_path):
    """The ONNX Runtime step runs in the demo's process: what it prints, Python's and C++
    libraries' alike (ONNX Runtime's warnings, mmseg's per-class table), goes to its log."""
    code = f"""
import os, sys, warnings
sys.path.insert(0, {osp.join(ROOT, 'tools')!r})
import run_demo
print('before', flush=True)
with run_demo.output_to({str(tmp_path / 'step.log')!r}):
    print('python stdout line')
    print('python stderr line', file=sys.stderr)
    os.write(2, b'native stderr warning\\n')
    os.write(1, b'native stdout table\\n')
    warnings.warn('a warning')
print('after', flush=True)
"""
    res = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ['before', 'after'] and res.stderr == ''
    log = (tmp_path / 'step.log').read_text()
    for line in ('python stdout line', 'python stderr line', 'native stderr warning',
                 'native stdout table', 'a warning'):
        assert line in log


def test_report_commands_and_pictures_are_the_real_ones():
    run_demo = load_tool(ROOT, 'run_demo')
    out = osp.join(ROOT, 'work_dirs', 'demo')
    ckpt = osp.join(out, 'fpn_l1', 'iter_60.pth')
    cmd = run_demo.shell_command(['tools/export.py', 'configs/demo/fpn_effformer_l1_synthetic.py',
                                  '--checkpoint', ckpt, '--cfg-options',
                                  f"data_root={osp.join(out, 'data', 'my ade')}"])
    python = (osp.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT + os.sep)
              else 'python')
    assert cmd == (f'{python} tools/export.py configs/demo/fpn_effformer_l1_synthetic.py '
                   f"--checkpoint work_dirs/demo/fpn_l1/iter_60.pth --cfg-options "
                   f"'data_root=work_dirs/demo/data/my ade'")
    assert run_demo.shell_command(['tools/run_demo.py', '--out', '/elsewhere/demo']).endswith(
        'tools/run_demo.py --out /elsewhere/demo')
    assert run_demo.picture_link(out, osp.join(out, 'pictures', 'vis', 'a.jpg'), 'Mask R-CNN') \
        == '![Mask R-CNN](pictures/vis/a.jpg)'
    section = run_demo.commands_section(
        [('Export the whole segmentor to ONNX',
          ['tools/export.py', 'configs/demo/fpn_effformer_l1_synthetic.py', '--checkpoint', ckpt])],
        [osp.join(out, 'fpn_l1', 'fpn_effformer_l1_synthetic.py')])
    assert section[0] == '## The same commands on these outputs'
    assert '`' + osp.join(out, 'fpn_l1', 'fpn_effformer_l1_synthetic.py') + '`' in section[2]
    assert section[-5:] == ['```shell', '# Export the whole segmentor to ONNX',
                            f'{python} tools/export.py configs/demo/fpn_effformer_l1_synthetic.py '
                            f'--checkpoint work_dirs/demo/fpn_l1/iter_60.pth', '```', '']
