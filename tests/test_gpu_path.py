"""CPU-side checks of what the first GPU run of the main job found (benchmarks/gpu_path_h200.md):
the determinism request of the shipped configs on CUDA and the RNG state of a checkpoint
resumed onto the GPU. The GPU runs themselves: tools/gpu_train_checks.py, tests/test_cuda.py."""
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from mmeff.engine import determinism
from mmeff.engine.hooks import get_rng_state, set_rng_state


@pytest.fixture
def restore_determinism(monkeypatch):
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    monkeypatch.delenv('CUBLAS_WORKSPACE_CONFIG', raising=False)
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_deterministic_config_on_cuda_is_warn_only(monkeypatch, restore_determinism):
    """What mmengine sets for deterministic=True (use_deterministic_algorithms(True)) stopped
    every GPU training step at the bicubic backward; on CUDA it becomes warn-only, and cuBLAS
    gets its deterministic workspace before CUDA starts."""
    MMLogger.get_instance('test_gpu_path')  # the Runner's logger, where the note goes
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = Config(dict(randomness=dict(seed=0, deterministic=True)))
    assert determinism.prepare_cuda_determinism(cfg)
    assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'
    torch.use_deterministic_algorithms(True)  # what Runner.set_randomness does
    assert determinism.relax_cuda_determinism(cfg)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()


@pytest.mark.parametrize('randomness,cuda', [(dict(seed=0, deterministic=True), False),
                                              (dict(seed=0), True), (None, True)])
def test_determinism_unchanged_elsewhere(monkeypatch, restore_determinism, randomness, cuda):
    """CPU runs keep mmengine's strict setting; configs without the request are untouched."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    cfg = Config(dict(randomness=randomness) if randomness is not None else {})
    torch.use_deterministic_algorithms(bool(randomness and randomness.get('deterministic')))
    assert not determinism.prepare_cuda_determinism(cfg)
    assert not determinism.relax_cuda_determinism(cfg)
    assert 'CUBLAS_WORKSPACE_CONFIG' not in os.environ
    assert not torch.is_deterministic_algorithms_warn_only_enabled()


class _OnDevice:
    """A saved generator state as it comes back from a checkpoint loaded onto a GPU: torch
    refuses it until ``.cpu()`` is called (CUDA tensors cannot be made on this machine)."""

    def __init__(self, t):
        self._t = t

    def cpu(self):
        return self._t


def test_rng_state_restored_from_a_gpu_loaded_checkpoint():
    state = get_rng_state()
    expected = torch.rand(3)
    torch.rand(10)  # move the generator on
    state['torch'] = _OnDevice(state['torch'])
    set_rng_state(state)
    assert torch.equal(torch.rand(3), expected)


def test_benchmark_latency_cuda_without_a_gpu_is_one_line(capsys):
    """`tools/benchmark_latency.py --device cuda` on a machine without a GPU: one line with the
    fix, not a RuntimeError traceback shown as a bug."""
    if torch.cuda.is_available():
        pytest.skip('this machine has a GPU: the message is for machines without one')
    from helpers import load_tool
    from mmeff.cli import run
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tool = load_tool(root, 'benchmark_latency')
    status = run(tool.main, ['--device', 'cuda', '--archs', 'l1', '--runtimes', 'eager',
                             '--input-sizes', '64', '--reps', '1', '--warmup', '0'],
                 prog='benchmark_latency.py')
    err = capsys.readouterr().err.strip().splitlines()
    assert status != 0
    assert len(err) == 1 and err[0].startswith('benchmark_latency.py: error: '), err
    assert "no usable CUDA device" in err[-1] and 'use --device cpu' in err[-1], err
    assert not any('Traceback' in line for line in err), err


def test_build_runner_applies_the_cuda_determinism(monkeypatch, restore_determinism, tmp_path):
    """The wiring: tools build their Runner through build_runner, which relaxes what the
    Runner's set_randomness set (stand-in Runner: no data or model is built)."""
    from mmengine.runner import Runner

    from mmeff.engine.launch import build_runner
    MMLogger.get_instance('test_gpu_path_build')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(Runner, 'from_cfg',
                        classmethod(lambda cls, cfg: torch.use_deterministic_algorithms(True)))
    cfg = Config(dict(randomness=dict(seed=0, deterministic=True), work_dir=str(tmp_path)))
    build_runner(cfg)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ['CUBLAS_WORKSPACE_CONFIG'] == ':4096:8'
