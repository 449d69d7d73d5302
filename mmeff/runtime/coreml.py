"""Core ML: the one converter (:func:`convert_coreml`), the spec inspection and its checks
(:func:`inspect_coreml`, :func:`coreml_problems`) and the ``coreml`` backend.

Conversion: ``torch.export`` + ``run_decompositions`` (falling back to ``torch.jit.trace``)
-> coremltools ``mlprogram`` (``.mlpackage``), minimum deployment target iOS 16, FP16 compute
precision, FP32 inputs/outputs (a cast at each end). Conversion and inspection run on Linux
and macOS; predictions (loading the model) need macOS (:func:`coreml_runtime_status`).

Compute units (:data:`~mmeff.runtime.base.COMPUTE_UNITS`) are not stored in a Core ML model:
they are chosen when the model is loaded (``ct.models.MLModel(path, compute_units=...)``, or
by the app). ``ALL`` lets Core ML use CPU, GPU and the Neural Engine, which is how the paper
measured its iPhone 12 latencies.
"""
import os.path as osp
import platform
import time
import warnings
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .base import Backend, BackendUnavailableError, check_compute_units, require
from .checks import file_size, forbidden_error, forbidden_torch_ops, nonfinite, shown
from .timing import Runner

COREML_METHODS = ('auto', 'export', 'trace')
PRECISIONS = ('fp16', 'fp32')


def coreml_runtime_status() -> Tuple[bool, str]:
    """``(True, '')`` if Core ML predictions can run here, else ``(False, why)``."""
    system = platform.system()
    if system != 'Darwin':
        return False, (f'Core ML predictions need macOS (or iOS): this machine runs {system} '
                       f'({platform.platform()}). coremltools converts and inspects models here '
                       f'but cannot run them')
    try:
        import coremltools  # noqa: F401
    except ImportError:
        return False, 'coremltools is not installed: pip install coremltools'
    try:
        from coremltools import libcoremlpython  # noqa: F401  (the native Core ML bridge)
    except ImportError as exc:
        return False, (f'coremltools has no native Core ML runtime here ({exc}); install the '
                       f'macOS wheel of coremltools (pip install coremltools)')
    mac = platform.mac_ver()[0]
    try:
        major = int(mac.split('.')[0])
    except ValueError:
        major = 0
    if major < 13:
        return False, (f'the exported mlprogram targets iOS 16 / macOS 13; this is macOS '
                       f'{mac or "unknown"}')
    return True, ''


def without_aliases(ep):
    """``ep`` with its ``aten.alias`` nodes bypassed, in place. torch.export writes a slice
    that keeps the whole tensor (e.g. a crop to the size a tensor already has) as ``alias``,
    which coremltools cannot convert ("Unsupported fx node alias"); an alias is its input, so
    its users take the input instead."""
    graph = ep.graph_module.graph
    aliases = [n for n in graph.nodes
               if n.op == 'call_function' and n.target == torch.ops.aten.alias.default]
    for node in aliases:
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
    if aliases:
        graph.lint()
        ep.graph_module.recompile()
    return ep


def to_mlprogram_input(wrapper, x, method: str):
    """``(program, method_used, fallback_reason)``: an ExportedProgram or a traced module."""
    reason = None
    if method in ('auto', 'export'):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                ep = torch.export.export(wrapper, (x,)).run_decompositions({})
            return without_aliases(ep), 'torch.export', None
        except Exception as exc:
            if method == 'export':
                raise
            reason = f'{type(exc).__name__}: {str(exc)[:200]}'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        traced = torch.jit.trace(wrapper, x, check_trace=False)
    return traced, 'torch.jit.trace', reason



def check_coreml_options(precision: str = 'fp16', compute_units: str = 'ALL',
                         method: str = 'auto') -> None:
    """Raise a ValueError naming the valid values when one of these is not (checked before
    any model is prepared: a conversion takes a while)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'fp16' or 'fp32', got {precision!r}")
    check_compute_units(compute_units)
    if method not in COREML_METHODS:
        raise ValueError(f"method must be 'auto', 'export' or 'trace', got {method!r}")


def convert_coreml(module,
                   example_input,
                   *,
                   outputs: Sequence[Union[str, Tuple[str, type]]] = (),
                   input_name: str = 'image',
                   image_input: bool = False,
                   image_scale: float = 1 / 255.,
                   color_layout: str = 'RGB',
                   precision: str = 'fp16',
                   compute_units: str = 'ALL',
                   method: str = 'auto',
                   refuse_ops: bool = True,
                   metadata: Optional[Dict[str, str]] = None,
                   load: bool = False):
    """Convert ``module`` traced at ``example_input`` to a Core ML mlprogram (iOS 16+).

    Args:
        module (nn.Module): In eval mode, as it is to run.
        example_input (Tensor): The input; its shape is the model's.
        outputs (Sequence): Output names, or ``(name, numpy dtype)`` pairs (a name alone is
            float32). Empty: coremltools' names.
        input_name (str): The input's name. Defaults to ``'image'``.
        image_input (bool): An ``ImageType`` input (8-bit pixels times ``image_scale``, in
            ``color_layout`` ``'RGB'`` or ``'BGR'``) instead of a float32 tensor.
        precision (str): ``'fp16'`` (as on device) or ``'fp32'``.
        compute_units (str): One of ``COMPUTE_UNITS``, used when ``load`` is True (Core ML
            picks units at load time).
        method (str): ``'auto'`` (``torch.export`` + ``run_decompositions``, falling back to
            ``torch.jit.trace``), ``'export'`` or ``'trace'``.
        refuse_ops (bool): Raise before converting when the graph holds a gather or a bicubic
            resize (:func:`~mmeff.runtime.checks.forbidden_torch_ops`); coremltools would stop
            at a bicubic resize with a less telling error. Models whose post-processing
            gathers (detectors) pass False.
        metadata (dict | None): ``user_defined_metadata`` entries.
        load (bool): Load the model (macOS only) so that it can predict.

    Returns:
        tuple: ``(mlmodel, info)``, ``info`` with ``method`` (the one used),
        ``fallback_reason`` and ``convert_s``.
    """
    ct = require('coremltools')
    check_coreml_options(precision, compute_units, method)
    if color_layout not in ('RGB', 'BGR'):
        raise ValueError(f"color_layout must be 'RGB' or 'BGR', got {color_layout!r}")
    t0 = time.perf_counter()
    program, used, reason = to_mlprogram_input(module, example_input, method)
    if refuse_ops:
        found = forbidden_torch_ops(program)
        if found:
            raise forbidden_error(f'the graph to convert ({used})', found)
    shape = tuple(example_input.shape)
    if image_input:
        inp = ct.ImageType(name=input_name, shape=shape, scale=image_scale,
                           color_layout=getattr(ct.colorlayout, color_layout))
    else:
        inp = ct.TensorType(name=input_name, shape=shape, dtype=np.float32)
    outs = [ct.TensorType(name=o, dtype=np.float32) if isinstance(o, str)
            else ct.TensorType(name=o[0], dtype=o[1]) for o in outputs]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        mlmodel = ct.convert(
            program,
            inputs=[inp],
            outputs=outs or None,
            convert_to='mlprogram',
            minimum_deployment_target=ct.target.iOS16,
            compute_precision=(ct.precision.FLOAT16 if precision == 'fp16'
                               else ct.precision.FLOAT32),
            compute_units=getattr(ct.ComputeUnit, compute_units),
            skip_model_load=not load)  # loading needs macOS
    if metadata:
        mlmodel.user_defined_metadata.update({k: str(v) for k, v in metadata.items()})
    return mlmodel, dict(method=used, fallback_reason=reason,
                         convert_s=round(time.perf_counter() - t0, 2))


_PREPROCESSING_OPS = ('mul', 'add', 'sub', 'real_div')
_FP32_PARAMS = ('scale_factor_height', 'scale_factor_width')


def _blocks(block):
    """``block`` and every block nested in its ops (control flow), depth first."""
    yield block
    for op in block.operations:
        for inner in op.blocks:
            yield from _blocks(inner)


def inspect_coreml(path: str) -> dict:
    """Reload a saved Core ML model's spec (works on Linux) and summarise it.

    Returns:
        dict: ``path``, ``format``, ``spec_version`` (7 = iOS 16), ``model_type``,
        ``op_histogram``, ``gather_ops``, ``inputs``/``outputs`` (name, kind, shape, dtype),
        ``float_dtypes`` (dtype -> count over all float tensors produced by ops),
        ``non_fp16_tensors`` (float tensors that are not FP16 and not at the I/O ends),
        ``io_tensors`` (the float tensors of the I/O ends: input preprocessing such as an
        ImageType's scale, the input cast to FP16 and the output casts to FP32),
        ``nonfinite_constants`` (``const`` tensors holding NaN or Inf, with the counts: read
        from the MIL program, weight file included), ``metadata`` and ``file_size_bytes``.
    """
    ct = require('coremltools')
    if not osp.exists(path):
        raise FileNotFoundError(f'Core ML model {path!r} does not exist')
    spec = ct.utils.load_spec(path)
    mil = ct.proto.MIL_pb2
    feat = ct.proto.FeatureTypes_pb2

    def describe(f):
        kind = f.type.WhichOneof('Type')
        if kind == 'multiArrayType':
            return dict(name=f.name, kind='tensor', shape=list(f.type.multiArrayType.shape),
                        dtype=feat.ArrayFeatureType.ArrayDataType.Name(
                            f.type.multiArrayType.dataType))
        if kind == 'imageType':
            it = f.type.imageType
            return dict(name=f.name, kind='image', shape=[1, 3, it.height, it.width],
                        dtype=feat.ImageFeatureType.ColorSpace.Name(it.colorSpace))
        return dict(name=f.name, kind=kind, shape=None, dtype=None)

    report = dict(path=osp.abspath(path), format='coreml',
                  spec_version=spec.specificationVersion, model_type=spec.WhichOneof('Type'),
                  inputs=[describe(f) for f in spec.description.input],
                  outputs=[describe(f) for f in spec.description.output],
                  metadata=dict(spec.description.metadata.userDefined),
                  file_size_bytes=file_size(path))
    if report['model_type'] != 'mlProgram':
        report.update(op_histogram={}, gather_ops=0, bicubic_ops=0, float_dtypes={},
                      non_fp16_tensors=[], io_tensors=[], nonfinite_constants=[])
        return report
    func = spec.mlProgram.functions['main']
    main = func.block_specializations[func.opset]
    input_names = {i.name for i in func.inputs}
    output_names = set(main.outputs)
    float_types = {mil.FLOAT16, mil.FLOAT32, mil.FLOAT64, mil.BFLOAT16}

    def args_of(op):
        return {a.name for arg in op.inputs.values() for a in arg.arguments if a.name}

    def float_outputs(op):
        return [(o.name, o.type.tensorType.dataType) for o in op.outputs
                if o.type.WhichOneof('type') == 'tensorType'
                and o.type.tensorType.dataType in float_types]

    # The I/O ends of the graph may stay FP32: the input's elementwise preprocessing (an
    # ImageType's scale/bias) up to the cast to FP16, the consts only it uses, and the casts
    # that produce the outputs. A chain that never reaches a cast is not an I/O end.
    ops = [op for block in _blocks(main) for op in block.operations]
    consumers = Counter(name for op in ops for name in args_of(op))
    # Scalars that parameterise an op rather than flow through the network (the scale
    # factors of upsample_bilinear, e.g. V2's strided attention) keep the FP32 type the MIL
    # op declares for them; they are not FP16 computations left in FP32.
    as_param = Counter(a.name for op in ops for param, arg in op.inputs.items()
                       if param in _FP32_PARAMS for a in arg.arguments if a.name)
    input_side, chain, io_tensors = set(input_names), set(), set()
    for op in ops:
        args = args_of(op)
        outs = {name for name, _ in float_outputs(op)}
        if op.type in _PREPROCESSING_OPS and args & input_side:
            input_side |= outs
            chain |= outs
        elif op.type == 'cast' and args & input_side:
            io_tensors |= chain | outs
        elif op.type == 'cast' and {o.name for o in op.outputs} & output_names:
            io_tensors |= outs
    io_consumed = Counter(name for op in ops if op.type != 'const'
                          and {o.name for o in op.outputs} & io_tensors for name in args_of(op))
    hist, dtypes, non_fp16, io_tensors_found = Counter(), Counter(), [], []
    for op in ops:
        hist[op.type] += 1
        for name, dt in float_outputs(op):
            dtypes[mil.DataType.Name(dt)] += 1
            is_io = name in io_tensors or (op.type == 'const' and consumers[name]
                                           and io_consumed[name] == consumers[name])
            if is_io:
                io_tensors_found.append(f'{op.type} -> {name}: {mil.DataType.Name(dt)}')
            elif dt != mil.FLOAT16 and not (op.type == 'const' and consumers[name]
                                            and as_param[name] == consumers[name]):
                non_fp16.append(f'{op.type} -> {name}: {mil.DataType.Name(dt)}')
    report.update(op_histogram=dict(sorted(hist.items(), key=lambda kv: -kv[1])),
                  gather_ops=sum(n for op, n in hist.items() if 'gather' in op),
                  bicubic_ops=sum(n for op, n in hist.items() if 'bicubic' in op),
                  float_dtypes=dict(dtypes), non_fp16_tensors=non_fp16, io_tensors=io_tensors_found,
                  opset=func.opset, nonfinite_constants=_coreml_nonfinite_constants(path, spec))
    return report


def _coreml_nonfinite_constants(path: str, spec) -> List[str]:
    """The :func:`nonfinite` entries of an mlprogram's ``const`` ops. The spec keeps large
    constants in the package's weight file; coremltools' MIL loader reads them back."""
    ct = require('coremltools')
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil
    weights_dir = ct.models.MLModel(path, skip_model_load=True).weights_dir
    program = load_mil(spec, spec.specificationVersion, weights_dir)

    def ops(block):
        for op in block.operations:
            yield op
            for inner in op.blocks:
                yield from ops(inner)

    consts = [(f'const {out.name!r}', out.val) for func in program.functions.values()
              for op in ops(func) if op.op_type == 'const' for out in op.outputs]
    return nonfinite((name, np.asarray(val)) for name, val in consts if val is not None)


def coreml_problems(report: dict, expect_fp16: bool = True) -> List[str]:
    """What is wrong with an :func:`inspect_coreml` report (empty list: all checks pass)."""
    problems = []
    if report['model_type'] != 'mlProgram':
        problems.append(f"model type is {report['model_type']}, not mlProgram")
    if report['spec_version'] < 7:
        problems.append(f"spec version {report['spec_version']} is below iOS 16's (7)")
    if report['gather_ops']:
        gathers = {op: n for op, n in report['op_histogram'].items() if 'gather' in op}
        problems.append(f"{report['gather_ops']} gather op(s) remain ({gathers}; attention "
                        f'bias not cached for the export size?)')
    bicubic = {op: n for op, n in report['op_histogram'].items() if 'bicubic' in op}
    if bicubic:
        problems.append(f'bicubic resize op(s) remain ({bicubic}): attention bias resized in '
                        f'the graph instead of cached')
    bad = report.get('nonfinite_constants')
    if bad:
        problems.append(f'{len(bad)} constant(s) hold NaN or Inf (broken weights, or values '
                        f'that overflow FP16): {shown(bad)}')
    bad = report.get('torch_nonfinite_outputs')
    if bad:
        problems.append(f'the torch model itself gives NaN or Inf on the export input (uniform '
                        f'random values in [0, 1)): {shown(bad)}')
    if expect_fp16:
        if report['non_fp16_tensors']:
            problems.append(f"{len(report['non_fp16_tensors'])} float tensors are not FP16, "
                            f"e.g. {report['non_fp16_tensors'][:3]}")
        if not report['float_dtypes'].get('FLOAT16'):
            problems.append('no FP16 tensor at all: not converted with FP16 precision')
    return problems




def save_mlmodel(mlmodel, path: str) -> str:
    """Save ``mlmodel`` to the ``.mlpackage`` directory ``path`` atomically (beside it, then
    renamed over it); returns the absolute path."""
    from mmeff.deploy.output import StagedOutput
    with StagedOutput(path) as staged:
        mlmodel.save(staged.path)
        return staged.place()


class CoreMLBackend(Backend):
    """Core ML mlprograms (:func:`convert_coreml`), predicting with coremltools (macOS 13+)
    on the compute units chosen at load time."""
    name = 'coreml'
    format = 'coreml'
    suffix = '.mlpackage'
    description = 'Core ML mlprogram (conversion anywhere, predictions on macOS)'

    def check_available(self, device: str = 'cpu') -> None:
        if platform.system() != 'Darwin':
            raise BackendUnavailableError(
                f"backend 'coreml' runs Core ML predictions, which need macOS (this is "
                f"{platform.system()}); measure on a Mac, or use 'onnxruntime' / "
                f"'torch-cpu' here")
        ok, why = coreml_runtime_status()
        if not ok:
            raise BackendUnavailableError(f"backend 'coreml': {why}")

    def write(self, module, example_input, path: str, **options) -> dict:
        """:func:`convert_coreml` (its keywords), saved atomically to ``path``
        (``.mlpackage``) and inspected (:meth:`check`)."""
        if not str(path).endswith('.mlpackage'):
            raise ValueError(f'a Core ML mlprogram is saved as a directory ending in '
                             f'.mlpackage, got {path!r}')
        mlmodel, info = convert_coreml(module, example_input, **options)
        save_mlmodel(mlmodel, path)
        report = self.check(path, expect_fp16=options.get('precision', 'fp16') == 'fp16')
        report.update(info)
        return report

    def check(self, path: str, expect_fp16: bool = True) -> dict:
        report = inspect_coreml(path)
        report['problems'] = coreml_problems(report, expect_fp16=expect_fp16)
        return report

    def open(self, path: str, threads: Optional[int] = None, device: str = 'cpu',
             compute_units: str = 'ALL'):
        self.check_available(device)
        ct = require('coremltools')
        check_compute_units(compute_units)
        return ct.models.MLModel(path, compute_units=getattr(ct.ComputeUnit, compute_units))

    def runner(self, module, x, *, threads: Optional[int] = None, device: Optional[str] = None,
               work_dir: Optional[str] = None, tag: str = 'model', quick_export: bool = False,
               compute_units: str = 'ALL', **unused) -> Runner:
        """Convert ``module`` (``quick_export``: traced, not ``torch.export``-ed), load it on
        ``compute_units`` and predict on ``x`` (input ``'x'``). Options of other backends are
        ignored."""
        self.check_available(device or 'cpu')
        t0 = time.perf_counter()
        with torch.no_grad():
            mlmodel, _ = convert_coreml(module.cpu(), x.cpu(), input_name='x',
                                        compute_units=compute_units, refuse_ops=False,
                                        method='trace' if quick_export else 'auto', load=True)
        feed = {'x': x.detach().cpu().numpy()}
        return Runner(lambda: mlmodel.predict(feed), backend=self.name,
                      setup_s=time.perf_counter() - t0)
