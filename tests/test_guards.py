"""Nothing lost, nothing silently wrong: NaN/Inf in exports (ONNX, Core ML), --cfg-options on
top-level config variables that would change nothing, neck/head channels that do not fit the
backbone, and training that stops on a non-finite loss."""
import glob
import os
import os.path as osp
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import HOOKS, DefaultScope

from mmeff.datasets import make_imagefolder_dataset
from mmeff.deploy import export_coreml, export_onnx
from mmeff.deploy.export import _errors
from mmeff.engine import (CheckFiniteLossHook, NonFiniteLossError, check_model_channels,
                          prepare_config)
from mmeff.models import EfficientFormer

from helpers import load_tool

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', '*', '*.py')))
TINY_ARCH = dict(depths=[1, 1, 1, 1], widths=[8, 16, 24, 32], num_vit=1)
WIDTHS = {arch: EfficientFormer.arch_settings[arch]['widths'] for arch in ('l1', 'l3', 'l7')}


def config(*parts):
    return osp.join(ROOT, 'configs', *parts)


def tiny_backbone(nan=False):
    """A 4-stage EfficientFormer small enough to export in seconds; ``nan=True`` puts 3 NaN in
    an MB3D (attention block) MLP weight and 2 Inf in an MB4D one, as a diverged run would."""
    model = EfficientFormer(TINY_ARCH).eval()
    if nan:
        with torch.no_grad():
            model.stages[3].blocks[0].mlp.fc1.weight[0, :3] = float('nan')
            model.stages[2].blocks[0].mlp.fc1.weight[0, :2] = float('inf')
    return model


# ---------------------------------------------------------------------------- exports
def test_export_error_measure_keeps_nan():
    """Python's max() dropped NaN, so an all-NaN ONNX Runtime output measured error 0."""
    ref = (torch.ones(2, 3),)
    errs = _errors([np.full((2, 3), np.nan, np.float32)], ref)
    assert np.isnan(errs['rel_err']) and np.isnan(errs['max_abs_err'])
    assert _errors([np.ones((2, 3), np.float32)], ref) == dict(max_abs_err=0., rel_err=0.)


def test_onnx_export_refuses_nan_weights(tmp_path):
    with pytest.raises(ValueError) as info:
        export_onnx(tiny_backbone(nan=True), str(tmp_path / 'nan.onnx'), 64)
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'nan.onnx'}: 2 ONNX weight tensor(s) hold NaN or Inf")
    assert "initialiser 'model.stages.2.blocks.0.mlp.fc1.weight': 0 NaN, 2 Inf of 2304 values" \
        in msg
    assert ': 3 NaN, 0 Inf of 4096 values' in msg  # the MB3D linear (named by the exporter)
    assert ("because the model's own weights do (stages.2.blocks.0.mlp.fc1.weight: 0 NaN, 2 Inf "
            'of 2304 values; stages.3.blocks.0.mlp.fc1.weight: 3 NaN, 0 Inf of 4096 values)'
            in msg)
    assert 'the checkpoint is broken' in msg


def test_onnx_export_check_fails_on_nan_onnxruntime_outputs(tmp_path, monkeypatch):
    """A correct model whose ONNX Runtime session returns NaN (an exporter or runtime fault)."""
    import onnxruntime

    class NaNSession(onnxruntime.InferenceSession):
        def run(self, *args, **kwargs):
            return [np.full_like(o, np.nan) for o in super().run(*args, **kwargs)]

    path = str(tmp_path / 'ok.onnx')
    report = export_onnx(tiny_backbone(), path, 64)
    assert report['onnxruntime']['rel_err'] < 1e-4
    monkeypatch.setattr(onnxruntime, 'InferenceSession', NaNSession)
    with pytest.raises(RuntimeError) as info:
        export_onnx(tiny_backbone(), path, 64)
    assert str(info.value) == (
        f'ONNX Runtime outputs hold NaN or Inf where torch gives finite values on the same input '
        f"({path}): output 'stage0': 2048 NaN, 0 Inf of 2048 values; output 'stage1': 1024 "
        f"NaN, 0 Inf of 1024 values; output 'stage2': 384 NaN, 0 Inf of 384 values; output "
        f"'stage3': 128 NaN, 0 Inf of 128 values")


def test_coreml_export_checks_nan_constants_and_outputs(tmp_path):
    report = export_coreml(tiny_backbone(nan=True), str(tmp_path / 'nan.mlpackage'), 64)
    assert report['nonfinite_constants'] == [
        "const 'p_model_stages_2_blocks_0_mlp_fc1_weight_to_fp16': 0 NaN, 2 Inf of 2304 values",
        "const 'p_model_stages_3_blocks_0_mlp_fc1_weight_to_fp16': 3 NaN, 0 Inf of 4096 values"]
    problems = report['problems']
    assert problems[0] == ('2 constant(s) hold NaN or Inf (broken weights, or values that '
                           'overflow FP16): ' + '; '.join(report['nonfinite_constants']))
    assert problems[1].startswith('the torch model itself gives NaN or Inf on the export input')
    assert "output 'stage3': 128 NaN, 0 Inf of 128 values" in problems[1]
    # The tool turns the problems into exit status 1 (tested with a finite model elsewhere).
    clean = export_coreml(tiny_backbone(), str(tmp_path / 'ok.mlpackage'), 64)
    assert clean['nonfinite_constants'] == [] and clean['torch_nonfinite_outputs'] == []
    assert clean['problems'] == []


# ---------------------------------------------------------------------------- --cfg-options
def cli_options(text):
    """What tools/train.py's ``--cfg-options`` makes of ``text`` (a suggestion in a message)."""
    import argparse
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options'] + text.split()).cfg_options


def test_top_level_variable_override_is_refused_with_the_entries_to_set():
    l3 = config('detection', 'mask_rcnn_effformer_l3.py')
    with pytest.raises(ValueError) as info:
        prepare_config(l3, cfg_options={'arch': 'l1'})
    msg = str(info.value)
    assert msg == (
        "--cfg-options arch=l1 would change only the top-level variable 'arch': the config was "
        "read before the override, and the entries that hold its old value 'l3' keep it "
        '(model.backbone.arch). Set the entries instead: --cfg-options model.backbone.arch=l1 '
        'model.neck.in_channels=[48,96,224,448]')
    # The suggestion, as typed, gives an L1 model that fits; with or without the variable.
    fix = cli_options(msg.split('--cfg-options ')[-1])
    for options in (fix, dict(fix, arch='l1')):
        cfg = prepare_config(l3, cfg_options=options)
        check_model_channels(cfg)
        assert cfg.model.backbone.arch == 'l1' and cfg.model.neck.in_channels == WIDTHS['l1']


def test_override_of_a_tuple_variable_names_every_entry_built_from_it():
    demo = config('demo', 'mask_rcnn_effformer_l1_synthetic.py')
    with pytest.raises(ValueError) as info:
        prepare_config(demo, cfg_options={'img_scale': (320, 256)})
    msg = str(info.value)
    entries = ['train_dataloader.dataset.pipeline.2.scale',
               'val_dataloader.dataset.pipeline.1.scale',
               'test_dataloader.dataset.pipeline.1.scale']
    assert f"its old value (160, 128) keep it ({', '.join(entries)})" in msg
    fix = cli_options(msg.split('--cfg-options ')[-1])
    assert fix == {e: (320, 256) for e in entries}
    cfg = prepare_config(demo, cfg_options=fix)
    assert cfg.train_dataloader.dataset.pipeline[2].scale == (320, 256)
    assert cfg.test_dataloader.dataset.pipeline[1].scale == (320, 256)


def test_override_of_a_number_variable_warns_of_chance_matches():
    with pytest.raises(ValueError, match=re.escape(
            "variable 'num_classes': the config was read before the override, and the entries "
            'that hold its old value 1000 keep it (model.num_classes); some of them may equal '
            '1000 by chance. Set those that should change instead, e.g. --cfg-options '
            'model.num_classes=10')):
        prepare_config(config('classification', 'effformer_l1_in1k.py'),
                       cfg_options={'num_classes': 10})


def test_variables_the_runner_reads_stay_settable_and_unknown_ones_are_refused():
    l3 = config('detection', 'mask_rcnn_effformer_l3.py')
    cfg = prepare_config(l3, cfg_options={
        'load_from': 'x.pth', 'resume': True, 'default_scope': 'mmdet', 'log_level': 'DEBUG',
        'arch': 'l3', 'data_root': '/data/coco/', 'pretrained': '/w/l3.pth'})
    assert (cfg.load_from, cfg.resume, cfg.log_level) == ('x.pth', True, 'DEBUG')
    assert cfg.train_dataloader.dataset.data_root == '/data/coco/'  # still carried
    assert cfg.model.backbone.init_cfg.checkpoint == '/w/l3.pth'
    # A top-level key neither the config nor the Runner has would change nothing: a misspelling
    # (it used to be silently ignored), refused with the close match.
    with pytest.raises(ValueError, match=r"--cfg-options data_rot=\.\.\.: the config has no "
                                         r"top-level 'data_rot'.*did you mean 'data_root'"):
        prepare_config(l3, cfg_options={'data_rot': '/data/coco/'})
    with pytest.raises(ValueError, match=r"no top-level 'my_note'"):
        prepare_config(l3, cfg_options={'my_note': 3})


def test_override_of_a_variable_nothing_holds_is_allowed_with_a_warning(tmp_path, monkeypatch):
    import mmeff.engine.launch as launch
    logged = []
    monkeypatch.setattr(launch, 'print_log', lambda msg, **kwargs: logged.append(msg))
    path = tmp_path / 'noted.py'
    path.write_text(f"_base_ = {config('detection', 'mask_rcnn_effformer_l1.py')!r}\n"
                    "note = 'first run'\n")
    cfg = prepare_config(str(path), cfg_options={'note': 'second run'})
    assert cfg.note == 'second run'
    assert logged == ["--cfg-options note='second run' sets the top-level variable 'note', but no "
                      "entry of the config holds its old value 'first run': nothing else changes"]


# ---------------------------------------------------------------------------- channels
@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.basename(p))
def test_shipped_configs_have_fitting_channels(path):
    check_model_channels(Config.fromfile(path))


@pytest.mark.parametrize('parts, options, expected', [
    (('detection', 'mask_rcnn_effformer_l3.py'), {'model.backbone.arch': 'l1'},
     "model.backbone (EfficientFormer arch='l1', out_indices=(0,1,2,3)) returns maps of "
     '[48, 96, 224, 448] channels, which the modules after it do not take: '
     'model.neck.in_channels is [64,128,320,512], the backbone needs [48,96,224,448]. Set '
     '--cfg-options model.neck.in_channels=[48,96,224,448] (or change the backbone back)'),
    (('detection', 'retinanet_effformer_l1.py'), {'model.backbone.out_indices': (1, 2, 3)},
     'model.neck.in_channels is [48,96,224,448], the backbone needs [96,224,448]'),
    (('segmentation', 'fpn_effformer_l1_ade20k_40k.py'), {'model.backbone.arch': 'l7'},
     '--cfg-options model.neck.in_channels=[96,192,384,768]'),
    (('segmentation', 'upernet_effformer_l1_ade20k_160k.py'), {'model.backbone.arch': 'l3'},
     'model.decode_head.in_channels is [48,96,224,448], the backbone needs [64,128,320,512]; '
     'model.auxiliary_head.in_channels is 224, the backbone needs 320. Set --cfg-options '
     'model.decode_head.in_channels=[64,128,320,512] model.auxiliary_head.in_channels=320'),
    (('segmentation', 'upernet_effformer_l1_ade20k_160k.py'), {'model.backbone.out_indices': 3},
     'model.decode_head.in_index is [0,1,2,3], past the 1 maps the backbone returns; '
     'model.auxiliary_head.in_index is 2, past the 1 maps the backbone returns. Set the '
     'in_index entries'),
])
def test_channels_that_do_not_fit_the_backbone_are_named(parts, options, expected):
    cfg = prepare_config(config(*parts), cfg_options=options)
    with pytest.raises(ValueError) as info:
        check_model_channels(cfg)
    assert expected in str(info.value)


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_tools_check_channels_before_data_and_checkpoint(tool, repo_root, tmp_path):
    """Neither data/coco/ nor the checkpoint exist: the channel error comes first."""
    args = [config('detection', 'mask_rcnn_effformer_l3.py')]
    args += [str(tmp_path / 'missing.pth')] if tool == 'test' else []
    args += ['--work-dir', str(tmp_path / 'work'), '--cfg-options', 'model.backbone.arch=l1']
    with pytest.raises(ValueError, match=re.escape(
            'Set --cfg-options model.neck.in_channels=[48,96,224,448]')):
        load_tool(repo_root, tool).main(args)


# ---------------------------------------------------------------------------- NaN loss
@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.basename(p))
def test_every_shipped_config_stops_on_a_non_finite_loss(path):
    cfg = Config.fromfile(path)  # imports its custom_imports
    hooks = [h for h in cfg.get('custom_hooks', []) if 'FiniteLoss' in h['type']]
    assert hooks == [dict(type='mmeff.CheckFiniteLossHook')], cfg.get('custom_hooks')
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmengine')):
        hook = HOOKS.build(hooks[0])
    assert isinstance(hook, CheckFiniteLossHook) and hook.interval == 1


def test_loss_hook_needs_no_mmdet(tmp_path):
    """Segmentation and classification users may not have mmdet: the hook resolves without it."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules['mmdet'] = None  # any 'import mmdet' now fails
        from mmengine.config import Config
        from mmengine.registry import HOOKS, DefaultScope
        cfg = Config.fromfile({config('segmentation', 'fpn_effformer_l1_ade20k_40k.py')!r})
        with DefaultScope.overwrite_default_scope('mmseg'):
            for entry in cfg.custom_hooks:  # the loss hook and the others (RNGStateHook...)
                hook = HOOKS.build(entry)
                print(type(hook).__module__, type(hook).__name__)
        """)
    res = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, PYTHONWARNINGS='ignore'))
    assert res.returncode == 0, res.stderr[-3000:]
    built = [tuple(line.split()) for line in res.stdout.strip().splitlines()]
    assert ('mmeff.engine.hooks_nan', 'CheckFiniteLossHook') in built, res.stdout
    assert ('mmeff.engine.hooks', 'RNGStateHook') in built, res.stdout


def test_hook_error_names_iteration_values_and_fixes():
    class Loop:  # an iteration-based loop: no epoch in the message
        pass

    runner = type('Runner', (), dict(iter=41, epoch=0, work_dir='work_dirs/x', train_loop=Loop()))
    hook = CheckFiniteLossHook()
    # Only loss terms count: mmseg's acc_seg is NaN for a crop of ignored pixels only.
    hook.after_train_iter(runner, 3, outputs=dict(loss=torch.tensor(1.5),
                                                  acc_seg=torch.tensor(float('nan'))))
    with pytest.raises(NonFiniteLossError) as info:
        hook.after_train_iter(runner, 3, outputs=dict(loss=torch.tensor(float('inf')),
                                                      loss_cls=torch.tensor(float('inf')),
                                                      loss_bbox=torch.tensor(0.25),
                                                      acc=torch.tensor(float('nan'))))
    msg = str(info.value)
    assert msg.startswith('Training stopped: the loss is inf at iteration 42; non-finite: loss, '
                          'loss_cls (all terms: loss=inf, loss_cls=inf, loss_bbox=0.25)')
    assert 'the checkpoints in work_dirs/x are from before this iteration' in msg
    assert 'lower optim_wrapper.optimizer.lr' in msg and 'clip_grad' in msg
    assert isinstance(info.value, ValueError)  # the tools report it in one line
    with pytest.raises(ValueError, match='interval must be a positive int, got 0'):
        CheckFiniteLossHook(interval=0)


def test_training_stops_at_the_first_nan_loss_and_saves_nothing_after(tmp_path):
    """The demo classification config, with the lr multiplied by 1e30 from epoch 2: epoch 1 (2
    iterations) trains and is saved; the huge step at iteration 3 makes the loss of iteration 4
    NaN; training must stop there, non-zero, without epoch_2.pth."""
    data = make_imagefolder_dataset(str(tmp_path / 'data'), num_classes=5, per_class=(2, 1),
                                    size=40)
    cfg = tmp_path / 'nan_lr.py'
    cfg.write_text(textwrap.dedent(f"""
        _base_ = {config('demo', 'effformer_l1_in1k_synthetic.py')!r}
        data_root = {data['data_root']!r}
        train_dataloader = dict(batch_size=4, dataset=dict(data_root=data_root))
        val_dataloader = dict(dataset=dict(data_root=data_root))
        test_dataloader = val_dataloader
        param_scheduler = [dict(type='MultiStepLR', by_epoch=True, milestones=[1], gamma=1e30)]
        train_cfg = dict(max_epochs=3)
        default_hooks = dict(logger=dict(interval=1),
                             checkpoint=dict(interval=1, max_keep_ckpts=3, save_best=None))
        """))
    work_dir = tmp_path / 'work'
    res = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'train.py'), str(cfg),
                          '--work-dir', str(work_dir)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, PYTHONWARNINGS='ignore'))
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert re.search(r'train\.py: error: Training stopped: the loss is (nan|inf) at iteration 4 '
                     r'\(epoch 2, batch 2\); non-finite: loss, loss_cls', out), out[-3000:]
    assert f'the checkpoints in {work_dir} are from before this iteration' in out
    assert sorted(f for f in os.listdir(work_dir) if f.endswith('.pth')) == ['epoch_1.pth']


# ---------------------------------------------------------------------------- V2 in the guards
def test_v2_backbone_override_is_checked_against_the_neck():
    s0 = config('detection', 'mask_rcnn_effformerv2_s0.py')
    cfg = prepare_config(s0, cfg_options={'model.backbone.arch': 's2'})
    with pytest.raises(ValueError) as info:
        check_model_channels(cfg)
    msg = str(info.value)
    assert msg.startswith("model.backbone (EfficientFormerV2 arch='s2', out_indices=(0,1,2,3)) "
                          'returns maps of [32, 64, 144, 288] channels'), msg
    assert 'model.neck.in_channels=[32,64,144,288]' in msg
    # The top-level variable: the suggestion names the neck's channels too.
    with pytest.raises(ValueError) as info:
        prepare_config(s0, cfg_options={'arch': 's2'})
    fix = cli_options(str(info.value).split('--cfg-options ')[-1])
    assert fix['model.neck.in_channels'] == [32, 64, 144, 288]
    check_model_channels(prepare_config(s0, cfg_options=fix))


@pytest.mark.skipif(torch.cuda.is_available(), reason='the CPU-only path')
def test_sync_bn_is_dropped_without_cuda(tmp_path):
    cfg = prepare_config(config('classification', 'effformerv2_s0_in1k.py'),
                         work_dir=str(tmp_path))
    assert cfg.get('sync_bn') is None
