"""The runtime layer (mmeff.runtime): one registry of backends, one ONNX writer, one Core ML
converter, one ONNX Runtime session opener, one timed runner; and a backend registered once
reaches every tool that offers backends. Tiny modules, tiny inputs."""
import os
import platform
import re

import numpy as np
import pytest
import torch
import torch.nn as nn

from mmeff import runtime
from mmeff.runtime import Backend, Runner, get_backend

from helpers import load_tool

BUILTIN = ('torch-cpu', 'torch-cuda', 'torch.compile', 'onnxruntime', 'onnxruntime-int8',
           'coreml')


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x).relu()


def _tiny():
    torch.manual_seed(0)
    return _Tiny().eval()


class _DummyBackend(Backend):
    """A backend as a user would add one: a format of its own (a TorchScript file), run in
    torch; its check fails a graph named in ``refuse``."""
    name = 'dummy-rt'
    format = 'dummyfmt'
    suffix = '.dummy'
    refuse = ()

    def write(self, module, example_input, path, **options):
        torch.jit.trace(module, example_input, check_trace=False).save(path)
        return dict(path=path, writer='torch.jit.trace')

    def check(self, path):
        graph = str(torch.jit.load(path).inlined_graph)
        return dict(file_size_bytes=os.path.getsize(path),
                    problems=[f'{op} in the graph' for op in self.refuse if op in graph])

    def runner(self, module, x, **unused):
        return Runner(lambda: module(x), backend=self.name)


@pytest.fixture
def dummy_backend():
    backend = runtime.register_backend(_DummyBackend())
    yield backend
    runtime.unregister_backend(backend.name)


# ----------------------------------------------------------------------------- registry
def test_registry_names_formats_and_errors():
    assert runtime.backend_names() == BUILTIN
    assert runtime.export_formats() == ('onnx', 'coreml')
    assert runtime.backend_for_format('onnx').name == 'onnxruntime'
    assert runtime.backend_for_format('coreml').name == 'coreml'
    assert get_backend('torch.compile').runtime_name == 'compile'
    with pytest.raises(ValueError, match=re.escape("unknown backend 'tflite'; choose one of "
                                                   + ', '.join(BUILTIN))):
        get_backend('tflite')
    with pytest.raises(ValueError, match="unknown export format 'tflite'; choose one of onnx, "
                                         "coreml"):
        runtime.backend_for_format('tflite')
    with pytest.raises(ValueError, match="a backend named 'onnxruntime' is registered already"):
        runtime.register_backend(runtime.OnnxRuntimeBackend())
    with pytest.raises(ValueError, match='runs modules in this process and writes no file'):
        get_backend('torch-cpu').write(_tiny(), torch.rand(1, 3, 8, 8), 'x.onnx')
    with pytest.raises(ValueError, match="compute_units must be one of .*'ALL'"):
        runtime.check_compute_units('NPU')


def test_one_compute_units_tuple():
    from mmeff.deploy import COMPUTE_UNITS as deploy_units
    from mmeff.slimming import lut
    assert deploy_units is runtime.COMPUTE_UNITS and lut.COMPUTE_UNITS is runtime.COMPUTE_UNITS


def test_a_registered_backend_is_offered_by_every_tool(dummy_backend, repo_root, tmp_path):
    """Registered in one place, a backend is at once a --format of tools/export.py (its
    format), a --runtimes of tools/benchmark_latency.py and a --backend of tools/slim.py; the
    latency table and the benchmark accept it; unregistered, all three refuse it."""
    from mmeff.benchmark.latency import RUNTIMES, backend_of_runtime
    from mmeff.slimming import lut
    export, bench, slim = (load_tool(repo_root, n)
                           for n in ('export', 'benchmark_latency', 'slim'))
    config = os.path.join(repo_root, 'configs', 'slimming', 'supernet_l7space_in1k.py')
    assert export.parse_args(['l1', '--format', 'dummyfmt']).format == 'dummyfmt'
    assert bench.parse_args(['--runtimes', 'fused', 'dummy-rt']).runtimes == ['fused',
                                                                               'dummy-rt']
    assert slim.parse_args([config, '--backend', 'dummy-rt', '--phase', 'build-lut']
                           ).backend == 'dummy-rt'
    assert 'dummy-rt' in RUNTIMES and backend_of_runtime('dummy-rt') is dummy_backend
    lut.check_backend('dummy-rt')
    runtime.unregister_backend('dummy-rt')
    try:
        for parse, argv in ((export.parse_args, ['l1', '--format', 'dummyfmt']),
                            (bench.parse_args, ['--runtimes', 'dummy-rt']),
                            (slim.parse_args, [config, '--backend', 'dummy-rt',
                                               '--phase', 'build-lut'])):
            with pytest.raises(SystemExit):
                parse(argv)
        with pytest.raises(ValueError, match="unknown latency backend 'dummy-rt'"):
            lut.check_backend('dummy-rt')
    finally:
        runtime.register_backend(dummy_backend)


def test_a_registered_format_is_exported_and_checked(dummy_backend, tmp_path):
    """deploy.export_model writes any registered format through its backend: prepared as for
    ONNX / Core ML (fused), written beside the target, checked, placed only without problems."""
    from mmeff.deploy.export import export_model
    from mmeff.models import EfficientFormer
    model = EfficientFormer(dict(depths=[1, 1, 1, 1], widths=[16, 32, 48, 64], num_vit=1),
                            out_norm_cfg=None).eval()
    out = str(tmp_path / 'm.dummy')
    report = export_model(model, out, 'dummyfmt', (1, 3, 64, 64))
    assert report['path'] == out and report['backend'] == 'dummy-rt'
    assert report['problems'] == [] and report['fusion']['batchnorms'] == 0
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for got, want in zip(torch.jit.load(out)(x), model(x)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    dummy_backend.refuse = ('convolution',)
    report = export_model(model, out, 'dummyfmt', (1, 3, 64, 64))
    assert report['problems'] == ['convolution in the graph']
    assert report['path'] == str(tmp_path / 'm.failed.dummy') and report['rejected'] == out
    assert sorted(os.listdir(tmp_path)) == ['m.dummy', 'm.failed.dummy']


def test_name_view_is_live(dummy_backend):
    from mmeff.slimming import lut
    assert 'dummy-rt' in lut.BACKENDS and lut.BACKENDS[-1] == 'dummy-rt'
    assert tuple(lut.BACKENDS) == BUILTIN + ('dummy-rt',) and len(lut.BACKENDS) == 7
    assert lut.BACKENDS == BUILTIN + ('dummy-rt',)
    assert repr(lut.BACKENDS) == repr(BUILTIN + ('dummy-rt',))


# ----------------------------------------------------------------------------- ONNX
def test_write_onnx_dynamic_batch_and_report(tmp_path):
    """The TorchScript path (quick); the torch.export one is export_onnx's default, tested
    with a dynamic batch in test_deploy.py."""
    model, x = _tiny(), torch.rand(1, 3, 8, 8)
    path = str(tmp_path / 'm.onnx')
    info = runtime.write_onnx(model, x, path, output_names=['out'], opset=18,
                              method='torchscript',
                              dynamic_axes={'image': {0: 'batch'}, 'out': {0: 'batch'}})
    assert info['path'] == path and os.listdir(tmp_path) == ['m.onnx']  # staged, then placed
    assert info['exporter'] == 'torchscript'
    report = runtime.onnx_graph_report(path)
    assert report['inputs'] == [dict(name='image', shape=['batch', 3, 8, 8], dtype='FLOAT')]
    assert report['outputs'][0]['name'] == 'out' and report['outputs'][0]['shape'][0] == 'batch'
    assert report['problems'] == [] and report['nonfinite_constants'] == []
    x2 = torch.rand(2, 3, 8, 8)
    (out,) = runtime.ort_session(path, threads=1).run(None, {'image': x2.numpy()})
    np.testing.assert_allclose(out, model(x2).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_write_onnx_is_deterministic_and_refuses_a_bad_method(tmp_path):
    """The same module written twice gives the same bytes (what deploy, the benchmark and the
    latency table write is reproducible)."""
    model, x = _tiny(), torch.rand(1, 3, 8, 8)
    a, b = str(tmp_path / 'a.onnx'), str(tmp_path / 'b.onnx')
    for path in (a, b):
        runtime.write_onnx(model, x, path, method='torchscript')
    with open(a, 'rb') as fa, open(b, 'rb') as fb:
        assert fa.read() == fb.read()
    with pytest.raises(ValueError, match="method must be one of .*'torchscript'.*got 'jit'"):
        runtime.write_onnx(model, x, a, method='jit')


def test_onnx_graph_report_names_gathers_and_nonfinite_weights(tmp_path):
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.tensor([[1., float('inf')], [0., 1.]]))

        def forward(self, x):  # a bias table looked up per call, by an index from the input
            return self.table[x.long().clamp(0, 1)]

    path = str(tmp_path / 'bad.onnx')
    runtime.write_onnx(Bad().eval(), torch.ones(1, 2), path, method='torchscript')
    report = runtime.onnx_graph_report(path)
    assert report['gather_ops'] >= 1
    assert any(p.startswith('gather op(s) remain') for p in report['problems'])
    assert re.search(r'1 weight tensor\(s\) hold NaN or Inf: .*0 NaN, 1 Inf of 4 values',
                     '; '.join(report['problems']))
    assert 'nonfinite_constants' not in runtime.onnx_graph_report(path, weights=False)


def test_ort_session_options(tmp_path):
    path = str(tmp_path / 'm.onnx')
    runtime.write_onnx(_tiny(), torch.rand(1, 3, 8, 8), path, method='torchscript')
    sess = runtime.ort_session(path, threads=1, optimization='basic')
    opts = sess.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry('session.intra_op.allow_spinning') == '1'
    assert opts.get_session_config_entry('session.force_spinning_stop') == '1'
    assert str(opts.graph_optimization_level).endswith('ORT_ENABLE_BASIC')
    with pytest.raises(ValueError, match="optimization must be one of .*got 'max'"):
        runtime.ort_session(path, optimization='max')


# ----------------------------------------------------------------------------- runners
@pytest.mark.parametrize('name', ['torch-cpu', 'onnxruntime'])
def test_runners_agree_with_torch(tmp_path, name):
    model, x = _tiny(), torch.rand(1, 3, 8, 8)
    run = get_backend(name).runner(model, x, threads=1, work_dir=str(tmp_path),
                                   quick_export=True)
    assert isinstance(run, Runner) and run.backend == name and run.sync is None
    out = run()
    out = out[0] if isinstance(out, list) else out
    np.testing.assert_allclose(np.asarray(out), model(x).detach().numpy(), rtol=1e-5,
                               atol=1e-6)


def test_int8_runner_runs_a_quantised_graph(tmp_path):
    """onnxruntime-int8: the module written to ONNX, quantised (QDQ, mmeff.deploy.quantize),
    then timed like onnxruntime; its output stays close to the FP32 model's."""
    import onnx
    model, x = _tiny(), torch.rand(1, 3, 8, 8)
    run = get_backend('onnxruntime-int8').runner(model, x, threads=1, work_dir=str(tmp_path),
                                                 tag='piece', quick_export=True)
    ops = {n.op_type for n in onnx.load(str(tmp_path / 'piece.onnx')).graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear'} <= ops
    (out,) = run()
    ref = model(x).detach().numpy()
    # INT8 weights and activations of a toy calibrated on one input: close, not exact
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.25


def test_time_interleaved_calls_the_runners_sync():
    calls = []
    runners = {'a': Runner(lambda: calls.append('a'), sync=lambda: calls.append('sync')),
               'b': lambda: calls.append('b')}
    runtime.time_interleaved(runners, warmup=0, reps=1)
    assert calls == ['sync', 'sync', 'a', 'sync', 'sync', 'b', 'sync']


def test_pinned_threads_restores_the_callers_setting():
    before = torch.get_num_threads()
    with runtime.pinned_threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the error without CUDA')
def test_cuda_backends_without_a_gpu_say_why():
    with pytest.raises(runtime.BackendUnavailableError, match="'torch-cuda' needs a CUDA device"):
        get_backend('torch-cuda').check_available()
    with pytest.raises(runtime.BackendUnavailableError,
                       match="'torch.compile' needs a CUDA device"):
        get_backend('torch.compile').runner(_tiny(), torch.rand(1, 3, 8, 8), device='cuda')


@pytest.mark.skipif(platform.system() == 'Darwin', reason='checks the error off macOS')
def test_coreml_runner_off_macos_says_why():
    with pytest.raises(runtime.BackendUnavailableError, match="'coreml' .*need macOS"):
        get_backend('coreml').runner(_tiny(), torch.rand(1, 3, 8, 8))
