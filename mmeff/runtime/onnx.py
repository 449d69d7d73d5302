"""ONNX: the one writer (:func:`write_onnx`), the graph report (:func:`onnx_graph_report`), the
one ONNX Runtime session opener (:func:`ort_session`) and the ``onnxruntime`` /
``onnxruntime-int8`` backends."""
import os
import os.path as osp
import tempfile
import time
import warnings
from collections import Counter
from typing import Dict, List, Optional, Sequence

from .base import Backend, BackendUnavailableError, require
from .checks import file_size, nonfinite
from .timing import Runner

ONNX_METHODS = ('auto', 'dynamo', 'torchscript')
# The default opset. From opset 20 both exporters write GELU as the standard ``Gelu`` op, which
# ONNX Runtime runs as one CPU kernel; at 18 they decompose it into Erf and four elementwise
# ops that ONNX Runtime's optimiser does not fuse back (measured side by side, classifier at
# 224, one thread: ONNX Runtime vs timm S1 2.0x -> 2.8x, L1 1.9x -> 2.1x; outputs identical).
ONNX_OPSET = 20
OPTIMIZATION_LEVELS = ('disabled', 'basic', 'extended', 'all')
# Above this many bytes of weights the model goes to an external data file: protobuf cannot
# hold a message over 2 GB.
_EXTERNAL_DATA_BYTES = 1.8e9


def _as_args(example_inputs) -> tuple:
    import torch
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def write_onnx(module,
               example_inputs,
               path: str,
               input_names: Sequence[str] = ('image',),
               output_names: Optional[Sequence[str]] = None,
               opset: int = ONNX_OPSET,
               dynamic_axes: Optional[Dict[str, Dict[int, str]]] = None,
               method: str = 'auto',
               atomic: bool = True) -> dict:
    """Write ``module`` traced at ``example_inputs`` to the ONNX file ``path``.

    Args:
        module (nn.Module): In eval mode, as it is to run.
        example_inputs (Tensor | tuple): The input(s) it is traced with; their shapes are the
            graph's (apart from ``dynamic_axes``).
        path (str): Output ``.onnx`` file.
        input_names, output_names (Sequence[str] | None): Graph input/output names
            (``output_names`` None: the exporter's).
        opset (int): ONNX opset. Defaults to :data:`ONNX_OPSET` (20).
        dynamic_axes (dict | None): ``{input or output name: {axis: label}}`` (TorchScript's
            form), e.g. ``{'image': {0: 'batch'}}``; the ``torch.export``-based exporter gets
            the inputs' axes as ``torch.export.Dim(label)`` and derives the outputs'.
        method (str): ``'auto'`` (the ``torch.export``-based exporter, falling back to the
            TorchScript one for what it cannot trace), ``'dynamo'`` (no fallback) or
            ``'torchscript'`` (fast, and the one that exports torchvision's NMS).
        atomic (bool): Write beside ``path`` and rename over it once written (a killed or
            failed export leaves ``path`` as it was). Callers that stage and check the file
            themselves (:class:`mmeff.deploy.output.StagedOutput`) pass False.

    V1's fused MB4D mixers are written as two depthwise 1x1 convs each
    (:func:`mmeff.deploy.fuse.onnx_mixers`: the same values, in the form ONNX Runtime keeps in
    its fast blocked layout).

    Returns:
        dict: ``path``, ``exporter`` (which one wrote it; after a fallback, with the reason)
        and ``export_s``.
    """
    require('onnx')
    if method not in ONNX_METHODS:
        raise ValueError(f'method must be one of {ONNX_METHODS}, got {method!r}')
    if atomic:
        from mmeff.deploy.output import StagedOutput
        with StagedOutput(path) as staged:
            info = write_onnx(module, example_inputs, staged.path, input_names, output_names,
                              opset, dynamic_axes, method, atomic=False)
            info['path'] = staged.place()
        return info
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    # V1's MB4D mixers as ONNX Runtime keeps them in its blocked layout (same values).
    from mmeff.deploy.fuse import onnx_mixers
    with onnx_mixers(module):
        return _export(module, example_inputs, path, input_names, output_names, opset,
                       dynamic_axes, method)


def _export(module, example_inputs, path, input_names, output_names, opset, dynamic_axes,
            method) -> dict:
    import torch
    args = _as_args(example_inputs)
    common = dict(input_names=list(input_names), opset_version=opset,
                  output_names=list(output_names) if output_names is not None else None)
    dynamic_axes = dynamic_axes or {}
    t0 = time.perf_counter()
    exporter = 'torchscript'
    if method in ('auto', 'dynamo'):
        try:
            require('onnxscript')
            shapes = [{axis: torch.export.Dim(label) for axis, label in
                       dynamic_axes.get(name, {}).items()} or None for name in input_names]
            dyn = dict(dynamic_shapes=tuple(shapes)) if any(shapes) else {}
            n_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                torch.onnx.export(module, args, path, dynamo=True, verbose=False,
                                  external_data=n_bytes > _EXTERNAL_DATA_BYTES, **dyn, **common)
            return dict(path=osp.abspath(path), exporter='torch.export (dynamo)',
                        export_s=round(time.perf_counter() - t0, 2))
        except Exception as exc:  # the TorchScript exporter handles what dynamo cannot
            if method == 'dynamo':
                raise
            exporter = f'torchscript (dynamo failed: {type(exc).__name__}: {str(exc)[:200]})'
    dyn = dict(dynamic_axes=dynamic_axes) if dynamic_axes else {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(module, args, path, dynamo=False, **dyn, **common)
    return dict(path=osp.abspath(path), exporter=exporter,
                export_s=round(time.perf_counter() - t0, 2))


def onnx_io(values) -> List[dict]:
    """``[{name, shape, dtype}]`` of graph inputs or outputs (symbolic dims by name)."""
    import onnx
    dtype_name = onnx.TensorProto.DataType.Name
    return [dict(name=v.name, shape=[d.dim_param or d.dim_value
                                     for d in v.type.tensor_type.shape.dim],
                 dtype=dtype_name(v.type.tensor_type.elem_type)) for v in values]


def onnx_weights(proto) -> List[tuple]:
    """``(label, array)`` of every weight of a graph: initialisers and ``Constant`` nodes."""
    from onnx import numpy_helper
    weights = [(f'initialiser {init.name!r}', numpy_helper.to_array(init))
               for init in proto.graph.initializer]
    weights += [(f'Constant {node.output[0]!r}', numpy_helper.to_array(attr.t))
                for node in proto.graph.node if node.op_type == 'Constant'
                for attr in node.attribute if attr.name == 'value']
    return weights


def onnx_graph_report(path: str, weights: bool = True, proto=None) -> dict:
    """Load ``path``, run ``onnx.checker`` on it and summarise it.

    Args:
        path (str): The ``.onnx`` file.
        weights (bool): Also read every weight for NaN/Inf (``nonfinite_constants``).
        proto (onnx.ModelProto | None): The loaded model, when the caller has it.

    Returns:
        dict: ``format``, ``op_histogram``, ``gather_ops``, ``bicubic_ops`` (``Resize``
        with mode cubic), ``inputs``/``outputs`` (name, shape, dtype), ``file_size_bytes``
        (external data files included), with ``weights`` ``nonfinite_constants``, and
        ``problems`` (:func:`onnx_problems`).
    """
    onnx = require('onnx')
    proto = onnx.load(path) if proto is None else proto
    onnx.checker.check_model(proto)
    hist = Counter(node.op_type for node in proto.graph.node)
    external_files = {entry.value for init in proto.graph.initializer
                      for entry in init.external_data if entry.key == 'location'}
    report = dict(format='onnx',
                  op_histogram=dict(sorted(hist.items(), key=lambda kv: -kv[1])),
                  gather_ops=sum(n for op, n in hist.items() if 'gather' in op.lower()),
                  bicubic_ops=sum(node.op_type == 'Resize' and any(
                      a.name == 'mode' and a.s == b'cubic' for a in node.attribute)
                      for node in proto.graph.node),
                  inputs=onnx_io(proto.graph.input), outputs=onnx_io(proto.graph.output),
                  file_size_bytes=file_size(path) + sum(
                      file_size(osp.join(osp.dirname(path), f)) for f in external_files))
    if weights:
        report['nonfinite_constants'] = nonfinite(onnx_weights(proto))
    report['problems'] = onnx_problems(report)
    return report


def onnx_problems(report: dict) -> List[str]:
    """What is wrong with an ONNX graph report (empty list: all checks pass): gathers,
    bicubic resizes, and NaN/Inf weights where they were read."""
    problems = []
    if report['gather_ops']:
        gathers = {op: n for op, n in report['op_histogram'].items() if 'gather' in op.lower()}
        problems.append(f'gather op(s) remain ({gathers}): attention bias not cached for the '
                        f'export size')
    if report.get('bicubic_ops'):
        problems.append(f"{report['bicubic_ops']} bicubic Resize op(s) remain (mode cubic): "
                        f'attention bias resized in the graph instead of cached')
    if report.get('nonfinite_constants'):
        from .checks import shown
        bad = report['nonfinite_constants']
        problems.append(f'{len(bad)} weight tensor(s) hold NaN or Inf: {shown(bad)}')
    return problems


def ort_providers(device: str = 'cpu') -> List[str]:
    """ONNX Runtime execution providers for ``device``: CPU, or CUDA then CPU.

    Raises:
        BackendUnavailableError: ``device`` is CUDA and this onnxruntime has no CUDA provider.
    """
    if not str(device).startswith('cuda'):
        return ['CPUExecutionProvider']
    ort = require('onnxruntime')
    if 'CUDAExecutionProvider' not in ort.get_available_providers():
        raise BackendUnavailableError('onnxruntime has no CUDAExecutionProvider here '
                                      '(pip install onnxruntime-gpu)')
    return ['CUDAExecutionProvider', 'CPUExecutionProvider']


def ort_session(path: str, threads: Optional[int] = None,
                providers: Sequence[str] = ('CPUExecutionProvider',),
                optimization: str = 'all', profile_prefix: Optional[str] = None,
                optimized_model_path: Optional[str] = None):
    """An ONNX Runtime session whose worker threads spin during a call and stop when it returns.

    By default ONNX Runtime's intra-op workers keep spinning for a while after every
    ``session.run``, waiting for more work: on a machine with as many cores as threads they
    take the cores from whatever runs next. Timed interleaved with other runtimes, that made
    the runtime following ONNX Runtime about 2x slower (timm after onnxruntime, L1 224, 2
    threads: 104 ms instead of 67 ms). Turning spinning off altogether cured that but made
    every operator wait for its workers to wake up: graphs of many small operators lost most
    (an INT8 L1 classifier, 2 threads: 13.5 ms without spinning, 10.6 ms with it). So the
    workers spin between the operators of a call and ONNX Runtime stops them as the call
    returns (``session.force_spinning_stop``): the session is fast and the next runtime finds
    the cores idle (timm timed right after it: 39.5 ms either way;
    ``tests/test_slimming_lut.py`` checks the cores are idle after a call).

    Args:
        path (str): ``.onnx`` file.
        threads (int | None): Intra-op threads; None: ONNX Runtime's default (one per
            physical core).
        providers (Sequence[str]): Execution providers, in order of preference
            (:func:`ort_providers`).
        optimization (str): Graph optimisation level, one of ``OPTIMIZATION_LEVELS``.
            Defaults to ``'all'`` (ONNX Runtime's default).
        profile_prefix (str | None): Turn ONNX Runtime's profiler on, writing to a file with
            this prefix (``session.end_profiling()`` returns its path). Defaults to None.
        optimized_model_path (str | None): Also save the graph as ONNX Runtime runs it, after
            its optimisations, to this path. Defaults to None.
    """
    ort = require('onnxruntime')
    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f'optimization must be one of {OPTIMIZATION_LEVELS}, '
                         f'got {optimization!r}')
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    # Spin between the operators of a call, stop as it returns (see above).
    opts.add_session_config_entry('session.intra_op.allow_spinning', '1')
    opts.add_session_config_entry('session.force_spinning_stop', '1')
    opts.add_session_config_entry('session.inter_op.allow_spinning', '0')
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = dict(
        disabled=level.ORT_DISABLE_ALL, basic=level.ORT_ENABLE_BASIC,
        extended=level.ORT_ENABLE_EXTENDED, all=level.ORT_ENABLE_ALL)[optimization]
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    if optimized_model_path:
        opts.optimized_model_filepath = optimized_model_path
        opts.log_severity_level = 3  # not its warning that the file is for this CPU only
    return ort.InferenceSession(path, opts, providers=list(providers))


def ort_graph_ops(path: str) -> Counter:
    """Operator counts of the graph ONNX Runtime runs for ``path`` (CPU provider, all its
    optimisations, this CPU): e.g. its NCHWc ``ReorderInput``/``ReorderOutput`` nodes, or the
    integer kernels (``QLinearConv``, ``QLinearAdd``, ...) it fuses a QDQ model into."""
    onnx = require('onnx')
    with tempfile.TemporaryDirectory(prefix='mmeff_ort_graph_') as tmp:
        optimized = osp.join(tmp, 'optimized.onnx')
        ort_session(path, optimized_model_path=optimized)
        return Counter(n.op_type for n in onnx.load(optimized).graph.node)


class OnnxRuntimeBackend(Backend):
    """ONNX files (:func:`write_onnx`) run by ONNX Runtime (:func:`ort_session`): CPU, or the
    CUDA execution provider for a CUDA device (the timings then include the host<->device
    copies of ``session.run``)."""
    name = 'onnxruntime'
    format = 'onnx'
    suffix = '.onnx'
    description = 'ONNX Runtime (CPU, or CUDA with onnxruntime-gpu)'

    def check_available(self, device: str = 'cpu') -> None:
        try:
            require('onnxruntime')
        except ImportError as exc:
            raise BackendUnavailableError(f'backend {self.name!r}: {exc}') from None
        ort_providers(device)

    def write(self, module, example_input, path: str, **options) -> dict:
        """:func:`write_onnx` (its keywords: ``input_names``, ``output_names``, ``opset``,
        ``dynamic_axes``, ``method``, ``atomic``)."""
        return write_onnx(module, example_input, path, **options)

    def check(self, path: str) -> dict:
        return dict(onnx_graph_report(path), path=osp.abspath(path))

    def open(self, path: str, threads: Optional[int] = None, device: str = 'cpu',
             optimization: str = 'all'):
        return ort_session(path, threads, ort_providers(device), optimization)

    def _written(self, module, x, path: str, method: str, opset: int, calib=None,
                 keep_fp32=None) -> dict:
        import torch
        with torch.no_grad():
            return self.write(module.cpu(), x.cpu(), path, method=method, opset=opset,
                              atomic=False)

    def runner(self, module, x, *, threads: Optional[int] = None, device: Optional[str] = None,
               work_dir: Optional[str] = None, tag: str = 'model', quick_export: bool = False,
               opset: int = ONNX_OPSET, optimization: str = 'all', calib=None,
               keep_fp32=None, **unused) -> Runner:
        """Write ``module`` to ``<work_dir>/<tag>.onnx`` (``quick_export``: with the TorchScript
        exporter, ~10x faster to write, for many small pieces; else :func:`write_onnx`'s
        ``'auto'``), open it (:meth:`open`) and run it on ``x``; returns ONNX Runtime's
        outputs (numpy arrays). Options of other backends (``compute_units``) are ignored."""
        device = device or 'cpu'
        self.check_available(device)
        t0 = time.perf_counter()
        own_dir = None
        if work_dir is None:
            own_dir = work_dir = tempfile.mkdtemp(prefix='mmeff_ort_')
        try:
            path = osp.join(work_dir, f'{tag}{self.suffix}')
            self._written(module, x, path, 'torchscript' if quick_export else 'auto', opset,
                          calib, keep_fp32)
            sess = self.open(path, threads, device, optimization)
        finally:
            if own_dir is not None:  # the session holds the model: the file can go
                import shutil
                shutil.rmtree(own_dir, ignore_errors=True)
        feed = {sess.get_inputs()[0].name: x.detach().cpu().numpy()}
        return Runner(lambda: sess.run(None, feed), backend=self.name,
                      setup_s=time.perf_counter() - t0)


def _quantizer():
    """``mmeff.deploy.quantize.quantize_onnx_file``, imported when first needed."""
    try:
        from mmeff.deploy.quantize import quantize_onnx_file
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend 'onnxruntime-int8' quantises with mmeff.deploy.quantize."
            f"quantize_onnx_file, which cannot be imported here ({exc}); use 'onnxruntime' "
            f"(FP32)") from None
    return quantize_onnx_file


class OnnxRuntimeInt8Backend(OnnxRuntimeBackend):
    """ONNX files quantised to INT8 (ONNX Runtime static quantisation, QDQ, per-channel
    weights: :func:`mmeff.deploy.quantize.quantize_onnx_file`) run by ONNX Runtime.

    For timing (:meth:`runner`) the graph is calibrated on its example input: latency does not
    depend on the calibration values. For accuracy, calibrate on real images
    (``calib=`` an ImageFolder directory, or an iterable of input arrays)."""
    name = 'onnxruntime-int8'
    description = 'ONNX Runtime, INT8 (static QDQ quantisation)'

    def check_available(self, device: str = 'cpu') -> None:
        super().check_available(device)
        _quantizer()

    def write(self, module, example_input, path: str, calib=None, per_channel: bool = True,
              keep_fp32=None, **options) -> dict:
        """FP32 :func:`write_onnx` (its keywords) to a temporary file, then quantised to
        ``path``. ``calib``: calibration inputs (default: ``example_input`` alone);
        ``keep_fp32``: modules left FP32 (default: the stem and the first stage where the
        module has them, as the INT8 export; ``[]``: none)."""
        quantize = _quantizer()
        options.pop('atomic', None)  # the quantiser writes `path` atomically
        input_name = list(options.get('input_names', ('image',)))[0]
        if calib is None:
            calib = [example_input.detach().cpu().numpy()]
        with tempfile.TemporaryDirectory(prefix='mmeff_int8_') as tmp:
            fp32 = osp.join(tmp, 'fp32.onnx')
            info = write_onnx(module, example_input, fp32, atomic=False, **options)
            report = quantize(fp32, path, calib, per_channel=per_channel, input_name=input_name,
                              keep_fp32=keep_fp32)
        info.update(path=osp.abspath(path), quantization=report)
        return info

    def _written(self, module, x, path: str, method: str, opset: int, calib=None,
                 keep_fp32=None) -> dict:
        import torch
        with torch.no_grad():
            return self.write(module.cpu(), x.cpu(), path, calib=calib, method=method,
                              opset=opset, keep_fp32=keep_fp32)
