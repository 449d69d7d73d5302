"""The runtime layer: every format and runtime mmeff writes to or times, written once.

One registry of backends by name (:func:`get_backend`, :func:`register_backend`); each
:class:`Backend` writes or converts a module (where it has a file format), checks the written
graph (gathers, non-finite constants, FP16, bicubic resizes), opens a session and returns a
:class:`Runner` to time with :func:`time_interleaved` (the project's measurement discipline:
:mod:`mmeff.runtime.timing`). Exporters (:mod:`mmeff.deploy`), the latency benchmark
(:mod:`mmeff.benchmark.latency`) and the slimming latency table (:mod:`mmeff.slimming.lut`)
all go through it, so a backend registered here is at once offered by ``tools/export.py
--format``, ``tools/benchmark_latency.py --runtimes`` and ``tools/slim.py --backend``.

Registered: ``torch-cpu``, ``torch-cuda``, ``torch.compile``, ``onnxruntime``,
``onnxruntime-int8`` (needs :mod:`mmeff.deploy.quantize`) and ``coreml``.

Example::

    >>> from mmeff.runtime import get_backend, time_interleaved, summarize
    >>> ort = get_backend('onnxruntime')
    >>> run = ort.runner(model.eval(), torch.rand(1, 3, 224, 224), threads=1)
    >>> summarize(time_interleaved({'ort': run}, warmup=5, reps=50)['ort'], 1)['median_ms']
"""
from .base import (COMPUTE_UNITS, Backend, BackendUnavailableError, NameView, backend_for_format,
                   backend_names, backends, check_compute_units, export_formats, get_backend,
                   register_backend, require, unregister_backend)
from .checks import (file_size, forbidden_error, forbidden_torch_ops, nonfinite, rel_err,
                     short_error)
from .coreml import (CoreMLBackend, convert_coreml, coreml_problems, coreml_runtime_status,
                     inspect_coreml, save_mlmodel, to_mlprogram_input)
from .onnx import (OnnxRuntimeBackend, OnnxRuntimeInt8Backend, onnx_graph_report, onnx_io,
                   onnx_problems, ort_graph_ops, ort_providers, ort_session, write_onnx)
from .pytorch import TorchBackend, TorchCompileBackend
from .timing import Runner, pinned_threads, summarize, time_interleaved

for _backend in (TorchBackend('cpu'), TorchBackend('cuda'), TorchCompileBackend(),
                 OnnxRuntimeBackend(), OnnxRuntimeInt8Backend(), CoreMLBackend()):
    register_backend(_backend)
del _backend

__all__ = ['COMPUTE_UNITS', 'Backend', 'BackendUnavailableError', 'NameView', 'Runner',
           'backend_for_format', 'backend_names', 'backends', 'check_compute_units',
           'export_formats', 'get_backend', 'register_backend', 'unregister_backend',
           'require', 'file_size', 'forbidden_error', 'forbidden_torch_ops', 'nonfinite',
           'rel_err', 'short_error',
           'CoreMLBackend', 'convert_coreml', 'coreml_problems', 'coreml_runtime_status',
           'inspect_coreml', 'save_mlmodel', 'to_mlprogram_input', 'OnnxRuntimeBackend',
           'OnnxRuntimeInt8Backend', 'onnx_graph_report', 'onnx_io', 'onnx_problems',
           'ort_graph_ops', 'ort_providers', 'ort_session', 'write_onnx', 'TorchBackend',
           'TorchCompileBackend',
           'pinned_threads', 'summarize', 'time_interleaved']
