"""mmeff.deploy.fastest: the fused model, compiled where torch.compile works and matches the
unfused model, else eager; the record says what was chosen and why; bad arguments are refused
in one line. Tiny models (one block per stage) at small sizes."""
import pytest
import torch

from mmeff.deploy.fastest import Fastest, fastest
from mmeff.models import EfficientFormer, EfficientFormerV2

from helpers import randomise_, rel_err

TINY_V1 = dict(depths=[1, 1, 1, 1], widths=[16, 24, 32, 48], num_vit=1, mlp_ratios=2)
TINY_V2 = dict(depths=[1, 1, 1, 1], widths=[16, 24, 32, 48], num_vit=1, mlp_ratios=2)


@pytest.fixture(scope='module')
def tiny_v1():
    return randomise_(EfficientFormer(TINY_V1, out_norm_cfg=None)).eval()


def unfused(model, x):
    with torch.no_grad():
        return model(x)


def test_compile_that_fails_falls_back_to_the_fused_model(tiny_v1, monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError('InvalidCxxCompiler: No working C++ compiler found\nmore')
    monkeypatch.setattr(torch, 'compile', no_compiler)
    run = fastest(tiny_v1, (64, 96))
    record = run.record
    assert record['chosen'] == 'fused' and isinstance(run, Fastest)
    assert record['candidates']['compile']['status'] == (
        'error: RuntimeError: InvalidCxxCompiler: No working C++ compiler found')
    assert 'torch.compile not used (error: RuntimeError' in record['reason']
    assert record['candidates']['fused']['rel_err'] <= 1e-5
    assert record['input_size'] == [64, 96] and record['device'] == 'cpu'
    x = torch.randn(2, 3, 64, 96)
    for o, e in zip(run(x), unfused(tiny_v1, x)):
        assert rel_err(o, e) <= 1e-5
        assert o.is_contiguous()  # NCHW out, whatever the layout inside
    # the argument is not modified: BN still there, NCHW weights
    assert isinstance(tiny_v1.stem.norm1, torch.nn.BatchNorm2d)
    assert tiny_v1.stem.conv2.weight.is_contiguous()


def test_compile_that_does_not_match_is_not_chosen(tiny_v1, monkeypatch):
    def wrong(module, **kwargs):  # a miscompiled model: every output off by 1%
        return lambda x: tuple(o * 1.01 for o in module(x))
    monkeypatch.setattr(torch, 'compile', wrong)
    record = fastest(tiny_v1, 64).record
    assert record['chosen'] == 'fused'
    status = record['candidates']['compile']['status']
    assert status.startswith('mismatch: rel. err 1.00e-02 > rtol 0.0001'), status


def test_measure_keeps_the_faster(tiny_v1, monkeypatch):
    """With ``measure`` both candidates are timed, interleaved, and the faster kept: here a
    'compiled' model that matches but sleeps 150 ms per call loses to the fused one (30 ms
    was once not enough beside a full test run on the 2 cores)."""
    import time

    def slow_compile(module, **kwargs):
        def run(x):
            time.sleep(0.15)
            return module(x)
        return run
    monkeypatch.setattr(torch, 'compile', slow_compile)
    record = fastest(tiny_v1, 64, measure=3).record
    assert record['candidates']['compile']['status'] == 'ok'
    assert record['chosen'] == 'fused'
    compiled_ms, fused_ms = (record['candidates'][k]['median_ms'] for k in ('compile', 'fused'))
    assert compiled_ms >= 150 and fused_ms < compiled_ms
    assert record['reason'].startswith('fused was the faster over 3 interleaved repetitions')


@pytest.mark.slow
def test_dynamo_compiled_model_is_chosen():
    """A real torch.compile (dynamo with the 'eager' backend: no C++ build), checked against
    the unfused V2 model (about a minute on 2 busy cores)."""
    model = randomise_(EfficientFormerV2(TINY_V2), seed=1).eval()
    run = fastest(model, (64, 64), compile=dict(backend='eager'))
    assert run.record['chosen'] == 'compile', run.record
    assert run.record['candidates']['compile']['rel_err'] <= 1e-5
    x = torch.randn(1, 3, 64, 64)
    for o, e in zip(run(x), unfused(model, x)):
        assert rel_err(o, e) <= 1e-5


def test_compile_false_is_the_fused_model(tiny_v1):
    run = fastest(tiny_v1, 64, compile=False)
    assert run.record['chosen'] == 'fused'
    assert run.record['candidates']['compile'] == dict(status='not tried: compile=False')
    assert 'compile=False' in repr(run)


@pytest.mark.parametrize('kwargs,message', [
    (dict(device='tpu'), "device 'tpu' is not a torch device; use 'cpu', 'cuda' or 'cuda:N'"),
    (dict(batch_size=0), 'batch_size must be an int >= 1, got 0'),
    (dict(measure=-1), 'measure must be an int >= 0, got -1'),
    (dict(rtol=0), 'rtol must be a positive number, got 0'),
    (dict(input_size='big'), "input size 'big' is not 'N' or 'HxW'"),
])
def test_bad_arguments_are_refused(tiny_v1, kwargs, message):
    kwargs = dict(dict(input_size=64), **kwargs)
    with pytest.raises(ValueError) as info:
        fastest(tiny_v1, **kwargs)
    assert message in str(info.value)


def test_cuda_without_a_gpu_is_refused(tiny_v1, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda': this machine has no usable CUDA "
                                         r"device .* use device='cpu'"):
        fastest(tiny_v1, 64, device='cuda')


def test_tf32_decides_the_cuda_tolerance_and_is_off_inside_full_fp32():
    """PyTorch runs CUDA convolutions in TF32 by default: the compiled model is then held to
    TF32_RTOL, while the fusion's exactness is checked in full FP32, with the flags restored
    afterwards (also after an error). Flags only: no GPU needed."""
    from mmeff.deploy.fastest import TF32_RTOL, full_fp32, tf32_on
    cuda, cpu = torch.device('cuda'), torch.device('cpu')
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False
    try:
        _check_tf32_flags(cuda, cpu, full_fp32, tf32_on, TF32_RTOL)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _check_tf32_flags(cuda, cpu, full_fp32, tf32_on, TF32_RTOL):
    assert tf32_on(cuda) and not tf32_on(cpu) and TF32_RTOL > 1e-4
    with full_fp32(cuda):
        assert not tf32_on(cuda)
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    with pytest.raises(KeyError):
        with full_fp32(cuda):
            raise KeyError('x')
    assert torch.backends.cudnn.allow_tf32
    with full_fp32(cpu):  # nothing to change on a CPU
        assert torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    assert not tf32_on(cuda)


def test_with_tf32_on_the_fusion_is_checked_in_full_fp32_and_compile_within_tf32_rtol(
        tiny_v1, monkeypatch):
    """The CUDA logic without a GPU: stand-in TF32 flags that ``full_fp32`` turns off. The
    reference runs once as the user runs it (TF32 on) and once in full FP32; the fused model
    is compared in full FP32 with the latter; the compiled one, 5e-4 off (as TF32 leaves it),
    is accepted within TF32_RTOL."""
    import contextlib

    import mmeff.deploy.fastest as fastest_mod
    flags = dict(tf32=True)
    calls = []

    @contextlib.contextmanager
    def fake_full_fp32(device):
        flags['tf32'] = False
        try:
            yield
        finally:
            flags['tf32'] = True
    monkeypatch.setattr(fastest_mod, 'tf32_on', lambda device: flags['tf32'])
    monkeypatch.setattr(fastest_mod, 'full_fp32', fake_full_fp32)
    monkeypatch.setattr(torch, 'compile', lambda module, **kw: (
        lambda x: tuple(o * (1 + 5e-4) for o in module(x))))
    def count(module, inputs, output):  # the fused copy carries the hook too: not counted
        if module is tiny_v1:
            calls.append(flags['tf32'])
    handle = tiny_v1.register_forward_hook(count)
    try:
        record = fastest(tiny_v1, 64).record
    finally:
        handle.remove()
    assert calls == [True, False]  # the unfused reference: as run, then in full FP32
    assert record['compile_rtol'] == fastest_mod.TF32_RTOL and record['rtol'] == 1e-4
    assert record['chosen'] == 'compile' and record['reason'].endswith(', TF32 on)')
    assert record['candidates']['fused']['rel_err'] <= 1e-5


def test_model_without_an_efficientformer_is_refused():
    with pytest.raises(ValueError, match='contains no mmeff EfficientFormer backbone'):
        fastest(torch.nn.Conv2d(3, 3, 1), 64)


@pytest.mark.slow
def test_inductor_compile_matches(tiny_v1):
    """Inductor (the default backend: a C++ build, minutes on 2 busy cores)."""
    run = fastest(tiny_v1, 64)
    assert run.record['chosen'] == 'compile', run.record
    x = torch.randn(1, 3, 64, 64)
    for o, e in zip(run(x), unfused(tiny_v1, x)):
        assert rel_err(o, e) <= 1e-5
