"""mmeff.AGCOptimWrapper: timm's adaptive gradient clipping inside mmengine's optimiser wrapper."""
import copy
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from timm.utils import adaptive_clip_grad

import mmeff.engine  # noqa: F401  (registers the wrappers)
from mmeff.engine.optim_wrappers import AGCOptimWrapper, parse_agc

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(4))


def _loss(net):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 6, 6) * 50  # large inputs: large gradients, so AGC clips
    return net(x).pow(2).sum()


def test_agc_step_equals_timm_agc_then_adamw():
    ref, net = _net(), _net()
    _loss(ref), _loss(net)  # materialise the lazy layer
    net.load_state_dict(ref.state_dict())
    wrapper = build_optim_wrapper(net, dict(
        type='mmeff.AGCOptimWrapper', optimizer=dict(type='AdamW', lr=0.1),
        clip_grad=dict(type='agc', clip_factor=0.01)))
    assert isinstance(wrapper, AGCOptimWrapper)
    opt = torch.optim.AdamW(ref.parameters(), lr=0.1)

    wrapper.update_params(_loss(net))
    _loss(ref).backward()
    raw = [p.grad.clone() for p in ref.parameters()]
    adaptive_clip_grad(ref.parameters(), clip_factor=0.01, eps=1e-3)
    clipped = [p.grad for p in ref.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(raw, clipped)), 'AGC clipped nothing'
    opt.step()
    for (name, a), b in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_v2_classification_configs_clip_with_agc():
    from mmeff.registry import MODELS
    from mmengine.registry import DefaultScope
    for arch in ('s0', 'l'):
        cfg = Config.fromfile(osp.join(ROOT, f'configs/classification/effformerv2_{arch}_in1k.py'))
        assert cfg.optim_wrapper.clip_grad == dict(type='agc', clip_factor=0.01, eps=1e-3)
    with DefaultScope.overwrite_default_scope('mmeff'):
        model = MODELS.build(dict(type='mmeff.EfficientFormerV2', arch='s0'))
        wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    assert type(wrapper).__name__ == 'AGCOptimWrapper'
    assert wrapper.clip_grad_kwargs == dict(clip_factor=0.01, eps=1e-3)


@pytest.mark.parametrize('clip_grad,needle', [
    (None, "clip_grad=dict(type='agc'"),
    (dict(max_norm=1.), "type='OptimWrapper'"),
    (dict(type='agc'), 'clip_factor must be a positive number'),
    (dict(type='agc', clip_factor=-1), 'got -1'),
    (dict(type='agc', clip_factor=0.01, max_norm=2), "unknown ['max_norm']"),
])
def test_bad_agc_arguments_are_named(clip_grad, needle):
    with pytest.raises(ValueError) as e:
        parse_agc(clip_grad)
    assert needle in str(e.value)


def test_amp_switches_to_the_amp_agc_wrapper(monkeypatch, tmp_path):
    from mmeff.engine import launch
    monkeypatch.setattr(launch, '_amp_device_available', lambda: True)
    cfg = launch.prepare_config(osp.join(ROOT, 'configs/classification/effformerv2_s0_in1k.py'),
                                work_dir=str(tmp_path), amp=True)
    assert cfg.optim_wrapper.type == 'mmeff.AmpAGCOptimWrapper'
    assert cfg.optim_wrapper.clip_grad.type == 'agc'
    cfg = launch.prepare_config(osp.join(ROOT, 'configs/classification/effformer_l1_in1k.py'),
                                work_dir=str(tmp_path), amp=True)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'


def test_readme_cfg_options_give_v1_the_authors_agc(tmp_path):
    """configs/classification/README.md's --cfg-options, as typed, make the V1 recipe clip with
    AGC at 0.01."""
    import argparse
    import re
    import shlex

    from mmengine.config import DictAction

    from mmeff.engine import launch
    with open(osp.join(ROOT, 'configs/classification/README.md')) as f:
        (line,) = [ln for ln in f if 'optim_wrapper.type=mmeff.AGCOptimWrapper' in ln]
    options = shlex.split(re.search(r'`--cfg-options ([^`]+)`', line).group(1))
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    cfg_options = parser.parse_args(['--cfg-options'] + options).cfg_options
    cfg = launch.prepare_config(osp.join(ROOT, 'configs/classification/effformer_l1_in1k.py'),
                                work_dir=str(tmp_path), cfg_options=cfg_options)
    assert cfg.optim_wrapper.type == 'mmeff.AGCOptimWrapper'
    assert parse_agc(cfg.optim_wrapper.clip_grad) == dict(clip_factor=0.01, eps=1e-3)
