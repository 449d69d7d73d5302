"""ONNX and Core ML export of EfficientFormer models, with checks of what was written.

* :func:`export_onnx`: ``torch.onnx.export`` (the ``torch.export``-based exporter, falling back
  to the TorchScript one), ``onnx.checker``, then ONNX Runtime (CPU) against torch on the same
  input.
* :func:`export_coreml`: ``torch.export`` + ``run_decompositions`` (falling back to
  ``torch.jit.trace``) -> coremltools ``mlprogram`` (``.mlpackage``), minimum deployment target
  iOS 16, FP16 compute precision, FP32 inputs/outputs (a cast at each end). Then
  :func:`inspect_coreml` reloads the spec from disk and :func:`coreml_problems` checks it: no
  ``gather`` (attention biases are precomputed for the export size), no bicubic resize, every
  float tensor FP16 except the I/O casts.

Bicubic resizing: EfficientFormerV2 resizes its ImageNet bias tables to other token grids with
bicubic interpolation. coremltools cannot convert ``upsample_bicubic2d`` (the authors' dense V2
models could not be exported for this reason), so every bias must be precomputed for the export
size (:func:`mmeff.deploy.cache_attention_bias`, done by :func:`prepare_for_export`). The
graph handed to the converters is checked for it (:func:`forbidden_torch_ops`), and the
written ONNX / Core ML graphs for bicubic resizes and gathers, each named in the error.

Compute units are not stored in a Core ML model: they are chosen when the model is loaded
(``ct.models.MLModel(path, compute_units=...)``, or by the app). ``ALL`` lets Core ML use CPU,
GPU and the Neural Engine, which is how the paper measured its iPhone 12 latencies;
``CPU_AND_NE`` excludes the GPU, ``CPU_ONLY`` runs on the CPU. The intended units are written
into the model's metadata (``mmeff.compute_units``) for ``tools/coreml_latency.py``.

The models are fused first (:func:`mmeff.deploy.fuse_model`) unless asked otherwise; every
export is specific to its input shape (the attention bias is cached for that token grid).
"""
import os
import os.path as osp
import time
import warnings
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .fuse import (attention_grids, cache_attention_bias, fuse_model, fusion_report,
                   parse_input_size)
from .output import StagedOutput, place_checked

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COMPUTE_UNITS = ('ALL', 'CPU_AND_NE', 'CPU_AND_GPU', 'CPU_ONLY')
_INSTALL = {
    'coremltools': 'pip install coremltools  (conversion runs on Linux and macOS; predictions '
                   'need macOS)',
    'onnx': 'pip install onnx onnxscript',
    'onnxruntime': 'pip install onnxruntime  (or onnxruntime-gpu)',
}


def require(module: str):
    """Import an optional dependency, or raise an ImportError that says how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f'{module} is needed for this step but is not installed: '
                          f'{_INSTALL.get(module, "pip install " + module)}') from exc


def parse_input_shape(shape) -> Tuple[int, int, int, int]:
    """``224`` / ``'800x1333'`` / ``(800, 1333)`` / ``(1, 3, 800, 1333)`` -> ``(B, C, H, W)``."""
    if isinstance(shape, str) and shape.lower().count('x') == 3:
        shape = tuple(int(s) for s in shape.lower().split('x'))
    if isinstance(shape, (tuple, list)) and len(shape) == 4:
        b, c, h, w = (int(s) for s in shape)
        if min(b, c, h, w) < 1:
            raise ValueError(f'input shape must be positive, got {tuple(shape)}')
        return b, c, h, w
    h, w = parse_input_size(shape)
    return 1, 3, h, w


class ExportWrapper(nn.Module):
    """What is exported: ``image -> outputs`` as a tensor or a tuple of tensors.

    With ``normalize=True`` the graph starts with ``(x - mean) / std`` (ImageNet statistics,
    ``x`` in [0, 1]): used with a Core ML ``ImageType`` input, whose ``scale=1/255`` maps 8-bit
    pixels to [0, 1] (its single scalar scale cannot express the per-channel std).
    """

    def __init__(self, model: nn.Module, normalize: bool = False):
        super().__init__()
        self.model = model
        self.normalize = normalize
        if normalize:
            self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer('inv_std', 1. / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor):
        if self.normalize:
            x = (x - self.mean) * self.inv_std
        out = self.model(x)
        return tuple(out) if isinstance(out, (list, tuple)) else out


class ExportGroupNorm(nn.Module):
    """``nn.GroupNorm`` on (B, C, H, W) with its statistics reduced in two short steps.

    Exporters lower GroupNorm to one reduction over ``C/G * H * W`` values (ONNX
    ``InstanceNormalization``, Core ML ``reduce_mean``). ONNX Runtime sums those in float32 in
    one pass: at stage 0 of an 800x1333 input (48 x 200 x 334 = 3.2M values per group) the
    output loses about 1e-3 relative accuracy. Reducing over ``H x W`` per channel first and
    then over the group's channels keeps fp32 exports as accurate as torch (~5e-7). Same
    parameters, same result in real arithmetic.
    """

    def __init__(self, gn: nn.GroupNorm):
        super().__init__()
        self.num_groups, self.eps = gn.num_groups, gn.eps
        self.weight, self.bias = gn.weight, gn.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f'ExportGroupNorm expects (B, C, H, W), got {tuple(x.shape)}')
        B, C, H, W = x.shape
        xg = x.reshape(B, self.num_groups, C // self.num_groups, H * W)
        # mean over H*W per channel, then over the group's channels (4D only: no expand/tile)
        centered = xg - xg.mean(-1, keepdim=True).mean(-2, keepdim=True)
        var = (centered * centered).mean(-1, keepdim=True).mean(-2, keepdim=True)
        y = (centered * torch.rsqrt(var + self.eps)).reshape(B, C, H, W)
        if self.weight is not None:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y


def export_friendly_norms_(model: nn.Module) -> nn.Module:
    """In place: replace every ``nn.GroupNorm`` by :class:`ExportGroupNorm`; returns model."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.GroupNorm):
            setattr(model, name, ExportGroupNorm(child))
        else:
            export_friendly_norms_(child)
    return model


def default_output_names(model: nn.Module, num_outputs: int) -> List[str]:
    """``stage{i}`` for a backbone's maps, ``logits`` for a single output, else ``output{i}``."""
    from mmeff.models import EfficientFormer, EfficientFormerV2
    if (isinstance(model, (EfficientFormer, EfficientFormerV2))
            and len(model.out_indices) == num_outputs):
        return [f'stage{i}' for i in model.out_indices]
    if num_outputs == 1:
        return ['logits']
    return [f'output{i}' for i in range(num_outputs)]


def _as_tuple(out) -> Tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (list, tuple)) else (out,)


def prepare_for_export(model: nn.Module, input_shape, fuse: bool = True,
                       normalize: bool = False) -> Tuple[nn.Module, torch.Tensor, List[str]]:
    """Fuse ``model`` for ``input_shape`` (or only cache its biases), make its GroupNorms
    export-friendly (:class:`ExportGroupNorm`), wrap it, and make the example input.
    Returns ``(wrapper, example_input, output_names)``; ``model`` is untouched."""
    b, c, h, w = parse_input_shape(input_shape)
    if fuse:
        model = fuse_model(model, (h, w))
    else:  # still cache the biases: an exported graph must not gather
        model = cache_attention_bias(model, (h, w))
    export_friendly_norms_(model)  # `model` is a copy here
    wrapper = ExportWrapper(model, normalize=normalize).eval()
    x = torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = _as_tuple(wrapper(x))
    return wrapper, x, default_output_names(model, len(outs))


def available_memory_bytes() -> Optional[int]:
    """Memory this machine can still give (``MemAvailable`` of ``/proc/meminfo``, else the free
    physical pages); None where neither can be read."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_AVPHYS_PAGES')
    except (OSError, ValueError, AttributeError):
        return None


def export_memory_bytes(model: nn.Module, input_shape) -> Tuple[int, dict]:
    """Estimated memory an export of ``model`` at ``input_shape`` needs, and what it comes from.

    What grows fastest with the input size is attention: every attention block's bias is
    cached for its token grid (``heads x queries x keys`` floats, so the fourth power of the
    image side), held by the fused model, the exported graph and the runtime that checks it;
    and at run time each block computes an attention matrix of that size per image. The sizes
    come from each block's own index computation on the ``meta`` device (no memory used).

    Returns:
        tuple[int, dict]: bytes, and ``attention_blocks``, ``largest`` (heads, queries, keys).
    """
    from mmeff.models.layers.attention import relative_offset_index
    b, _, h, w = parse_input_shape(input_shape)
    grids = attention_grids(model, (h, w))
    total, largest, shape = 0, 0, None
    for module in model.modules():
        if id(module) not in grids or not hasattr(module, 'attention_biases'):
            continue
        gh, gw = grids[id(module)]
        if hasattr(module, 'bias_index'):  # V2: queries and keys may differ (strided)
            idx = module.bias_index(gh, gw, device='meta')
        else:
            idx = relative_offset_index(gh, gw, device='meta')
        heads = int(module.attention_biases.shape[0])
        n = heads * idx.numel()
        total += n
        if n > largest:
            largest, shape = n, (heads,) + tuple(idx.shape)
    return 4 * (3 * total + 3 * b * largest), dict(attention_blocks=len(grids), largest=shape)


def check_export_memory(model: nn.Module, input_shape, available: Optional[int] = None) -> None:
    """Raise a ``ValueError`` naming the size, the memory it needs and the fix when exporting
    ``model`` at ``input_shape`` needs more memory than the machine has available (before
    anything is allocated: a 10000x10000 export would otherwise ask for hundreds of GB)."""
    need, what = export_memory_bytes(model, input_shape)
    available = available_memory_bytes() if available is None else available
    if available is None or need <= available:
        return
    from mmeff.engine.checkpointing import format_bytes
    b, c, h, w = parse_input_shape(input_shape)
    heads, nq, nk = what['largest']
    raise ValueError(
        f'exporting at {h}x{w} (batch {b}) needs about {format_bytes(need)} of memory, and this '
        f'machine has {format_bytes(available)} available: the attention biases are cached for '
        f'the export size ({what["attention_blocks"]} attention blocks, the largest {heads} x '
        f'{nq} x {nk} values; they grow with the 4th power of the image side). Export at the '
        f'size the model will be fed, e.g. --input-size 512x512 (or 800x1333 for detection)')


def _is_forbidden(op_name: str) -> bool:
    name = op_name.lower()
    return 'bicubic' in name or 'gather' in name


def forbidden_torch_ops(program) -> Dict[str, int]:
    """Ops no deployment graph may hold, with their counts: bicubic resizes (an uncached
    V2 bias resize; coremltools cannot convert them) and gathers (an uncached bias lookup), in
    an ``ExportedProgram`` or a traced ``ScriptModule``."""
    if isinstance(program, torch.export.ExportedProgram):
        names = [str(node.target) for node in program.graph.nodes
                 if node.op == 'call_function']
    else:
        names = [node.kind() for node in program.inlined_graph.nodes()]
    return dict(Counter(n for n in names if _is_forbidden(n)))


def _forbidden_error(where: str, found: Dict[str, int]) -> RuntimeError:
    ops = ', '.join(f'{op} x{n}' for op, n in sorted(found.items()))
    return RuntimeError(
        f'{where} holds {ops}: attention biases must be precomputed for the export size '
        f'(bicubic bias resizing and bias gathers cannot run in Core ML); export through '
        f'prepare_for_export/fuse_model, or call mmeff.deploy.cache_attention_bias(model, size)')


def file_size(path: str) -> int:
    """Bytes of a file, or of everything inside a directory (an ``.mlpackage``)."""
    if osp.isdir(path):
        return sum(osp.getsize(osp.join(root, f)) for root, _, files in os.walk(path)
                   for f in files)
    return osp.getsize(path)


def nonfinite(named_arrays) -> List[str]:
    """``'<name>: N NaN, M Inf of K values'`` for each floating array (numpy or torch) of the
    ``(name, array)`` pairs that holds NaN or Inf; an empty list when all are finite."""
    found = []
    for name, a in named_arrays:
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().float().numpy() if a.is_floating_point() else None
        a = np.asarray(a) if a is not None else None
        if a is None or not np.issubdtype(a.dtype, np.floating):
            continue
        n_nan = int(np.isnan(a).sum())
        n_inf = int(np.isinf(a).sum())
        if n_nan or n_inf:
            found.append(f'{name}: {n_nan} NaN, {n_inf} Inf of {a.size} values')
    return found


def _shown(items: List[str], limit: int = 5) -> str:
    more = f'; and {len(items) - limit} more' if len(items) > limit else ''
    return '; '.join(items[:limit]) + more


def _errors(outs: Sequence[np.ndarray], refs: Sequence[torch.Tensor]) -> Dict[str, float]:
    # numpy's max, not Python's: ``max(0., nan)`` is 0., which once let all-NaN outputs pass.
    abs_errs, rel_errs = [], []
    for o, r in zip(outs, refs):
        r = r.detach().double().numpy()
        o = np.asarray(o, dtype=np.float64)
        if o.shape != r.shape:
            raise RuntimeError(f'output shape {o.shape} differs from torch {r.shape}')
        abs_errs.append(np.abs(o - r).max())
        rel_errs.append(np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-12))
    return dict(max_abs_err=float(np.max(abs_errs)), rel_err=float(np.max(rel_errs)))


def _nonfinite_weights_error(what: str, bad: List[str], model: nn.Module) -> Exception:
    """The error for exported weights that hold NaN/Inf: the user's checkpoint when the model's
    own weights hold them too (``ValueError``), else the export's doing (``RuntimeError``)."""
    source = nonfinite(model.state_dict().items())
    if source:
        return ValueError(f'{what} hold NaN or Inf ({_shown(bad)}), because the model\'s own '
                          f'weights do ({_shown(source)}): the checkpoint is broken, e.g. saved '
                          f'after the training diverged; export a checkpoint from before that')
    return RuntimeError(f'{what} hold NaN or Inf ({_shown(bad)}) although the model\'s weights '
                        f'are finite: fusion or the converter produced them')


def _nonfinite_torch_outputs_error(bad: List[str], path: str) -> ValueError:
    return ValueError(f'the torch model itself gives NaN or Inf on the export check\'s input '
                      f'(uniform random values in [0, 1)), so the export cannot be checked '
                      f'({path}): {_shown(bad)}. Check the checkpoint (weights that overflow?) '
                      f'or the model before exporting it')


# ----------------------------------------------------------------------------- ONNX
def export_onnx(model: nn.Module,
                path: str,
                input_shape=(1, 3, 224, 224),
                fuse: bool = True,
                opset: int = 18,
                dynamic_batch: bool = False,
                check: bool = True,
                rtol: float = 1e-4) -> dict:
    """Export ``model`` to ONNX at ``input_shape`` and check it with ONNX Runtime.

    Args:
        model (nn.Module): An EfficientFormer, or a module containing one (classifier).
        path (str): Output ``.onnx`` file.
        input_shape: ``(B, C, H, W)``, ``(H, W)``, ``224`` or ``'800x1333'``.
        fuse (bool): Fold BN and layer scales first (:func:`fuse_model`). Defaults to True.
        opset (int): ONNX opset. Defaults to 18.
        dynamic_batch (bool): Make the batch dimension dynamic. Defaults to False.
        check (bool): Check that every ONNX weight (initialisers, ``Constant`` nodes) is finite,
            run torch and ONNX Runtime on a random input, check that both outputs are finite
            and compare them; raise, naming the tensors and how many NaN/Inf values they hold,
            or if the relative error exceeds ``rtol``: ``ValueError`` when the model given is
            at fault (its weights or outputs), ``RuntimeError`` when the export is. A graph
            with a gather or a bicubic ``Resize`` left (:func:`onnx_problems`) is a
            ``RuntimeError`` naming them. Defaults to True.
        rtol (float): Allowed relative error (L2 norm ratio). Defaults to 1e-4.

    Returns:
        dict: ``path``, ``exporter``, ``op_histogram``, ``gather_ops``, ``bicubic_ops``,
        ``problems``, ``inputs``/``outputs`` (name and shape), ``file_size_bytes``,
        ``export_s`` and, when checked, ``onnxruntime`` (``max_abs_err``, ``rel_err``).

    The file is written and checked beside ``path`` and renamed over it only once the checks
    passed: after any error ``path`` keeps its previous content.
    """
    require('onnx')
    check_export_memory(model, input_shape)
    wrapper, x, out_names = prepare_for_export(model, input_shape, fuse=fuse)
    # Written and checked beside `path`, which is replaced only once every check passed.
    with StagedOutput(path) as staged:
        report = _export_onnx_checked(model, wrapper, x, out_names, staged.path, path, fuse,
                                      opset, dynamic_batch, check, rtol)
        report['path'] = staged.place()
    return report


def _export_onnx_checked(model, wrapper, x, out_names, tmp, path, fuse, opset, dynamic_batch,
                         check, rtol) -> dict:
    """:func:`export_onnx`'s export to ``tmp`` and its checks; messages name ``path``."""
    import onnx
    n_bytes = sum(p.numel() * p.element_size() for p in wrapper.parameters())
    common = dict(input_names=['image'], output_names=out_names, opset_version=opset)
    t0 = time.perf_counter()
    exporter = 'torch.export (dynamo)'
    try:
        require('onnxscript')
        dyn = dict(dynamic_shapes=({0: torch.export.Dim('batch')},)) if dynamic_batch else {}
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(wrapper, (x,), tmp, dynamo=True, verbose=False,
                              external_data=n_bytes > 1.8e9, **dyn, **common)
    except Exception as exc:  # the TorchScript exporter handles what dynamo cannot
        exporter = f'torchscript (dynamo failed: {type(exc).__name__}: {str(exc)[:200]})'
        dyn = dict(dynamic_axes={'image': {0: 'batch'}, **{n: {0: 'batch'} for n in out_names}}
                   ) if dynamic_batch else {}
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(wrapper, (x,), tmp, dynamo=False, **dyn, **common)
    export_s = time.perf_counter() - t0
    proto = onnx.load(tmp)
    onnx.checker.check_model(proto)
    hist = Counter(node.op_type for node in proto.graph.node)
    external_files = {entry.value for init in proto.graph.initializer
                      for entry in init.external_data if entry.key == 'location'}

    def io(values):
        return [dict(name=v.name, shape=[d.dim_param or d.dim_value
                                         for d in v.type.tensor_type.shape.dim]) for v in values]

    report = dict(path=osp.abspath(path), format='onnx', exporter=exporter, opset=opset,
                  op_histogram=dict(sorted(hist.items(), key=lambda kv: -kv[1])),
                  gather_ops=sum(n for op, n in hist.items() if 'gather' in op.lower()),
                  inputs=io(proto.graph.input), outputs=io(proto.graph.output),
                  file_size_bytes=file_size(tmp) + sum(
                      file_size(osp.join(osp.dirname(tmp), f)) for f in external_files),
                  export_s=round(export_s, 2), fused=fuse, fusion=fusion_report(wrapper))
    report['bicubic_ops'] = sum(
        node.op_type == 'Resize' and any(a.name == 'mode' and a.s == b'cubic'
                                         for a in node.attribute) for node in proto.graph.node)
    report['problems'] = onnx_problems(report)
    if check and report['problems']:
        raise RuntimeError(f'{path}: ' + '; '.join(report['problems']))
    if check:
        from onnx import numpy_helper
        weights = [(f'initialiser {init.name!r}', numpy_helper.to_array(init))
                   for init in proto.graph.initializer]
        weights += [(f'Constant {node.output[0]!r}', numpy_helper.to_array(attr.t))
                    for node in proto.graph.node if node.op_type == 'Constant'
                    for attr in node.attribute if attr.name == 'value']
        bad = nonfinite(weights)
        if bad:
            raise _nonfinite_weights_error(f'{path}: {len(bad)} ONNX weight tensor(s)', bad, model)
        with torch.no_grad():
            refs = _as_tuple(wrapper(x))
        bad = nonfinite((f'output {n!r}', r) for n, r in zip(out_names, refs))
        if bad:
            raise _nonfinite_torch_outputs_error(bad, path)
        ort = require('onnxruntime')
        sess = ort.InferenceSession(tmp, providers=['CPUExecutionProvider'])
        outs = sess.run(None, {'image': x.numpy()})
        bad = nonfinite((f'output {n!r}', o) for n, o in zip(out_names, outs))
        if bad:
            raise RuntimeError(f'ONNX Runtime outputs hold NaN or Inf where torch gives finite '
                               f'values on the same input ({path}): {_shown(bad)}')
        errs = _errors(outs, refs)
        report['onnxruntime'] = errs
        if not errs['rel_err'] <= rtol:  # also catches a NaN error
            raise RuntimeError(f'ONNX Runtime output differs from torch: relative error '
                               f'{errs["rel_err"]:.2e} > {rtol:.0e} ({path})')
    return report


def onnx_problems(report: dict) -> List[str]:
    """What is wrong with an :func:`export_onnx` report (empty list: all checks pass)."""
    problems = []
    if report['gather_ops']:
        gathers = {op: n for op, n in report['op_histogram'].items() if 'gather' in op.lower()}
        problems.append(f'gather op(s) remain ({gathers}): attention bias not cached for the '
                        f'export size')
    if report.get('bicubic_ops'):
        problems.append(f"{report['bicubic_ops']} bicubic Resize op(s) remain (mode cubic): "
                        f'attention bias resized in the graph instead of cached')
    return problems


# ----------------------------------------------------------------------------- Core ML
def _without_aliases(ep):
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


def _to_mlprogram_input(wrapper, x, method: str):
    """``(program, method_used, fallback_reason)``: an ExportedProgram or a traced module."""
    reason = None
    if method in ('auto', 'export'):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                ep = torch.export.export(wrapper, (x,)).run_decompositions({})
            return _without_aliases(ep), 'torch.export', None
        except Exception as exc:
            if method == 'export':
                raise
            reason = f'{type(exc).__name__}: {str(exc)[:200]}'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        traced = torch.jit.trace(wrapper, x, check_trace=False)
    return traced, 'torch.jit.trace', reason


def export_coreml(model: nn.Module,
                  path: str,
                  input_shape=(1, 3, 224, 224),
                  fuse: bool = True,
                  precision: str = 'fp16',
                  compute_units: str = 'ALL',
                  image_input: bool = False,
                  method: str = 'auto',
                  metadata: Optional[Dict[str, str]] = None) -> dict:
    """Convert ``model`` to a Core ML ``.mlpackage`` (mlprogram, iOS 16+) and inspect it.

    Args:
        model (nn.Module): An EfficientFormer, or a module containing one (classifier).
        path (str): Output directory, ending in ``.mlpackage``.
        input_shape: ``(B, C, H, W)``, ``(H, W)``, ``224`` or ``'800x1333'``.
        fuse (bool): Fold BN and layer scales first. Core ML folds conv+BN itself, but not
            layer scales into linears. Defaults to True.
        precision (str): ``'fp16'`` (as on device; the paper's setting) or ``'fp32'``.
            Defaults to ``'fp16'``.
        compute_units (str): One of ``COMPUTE_UNITS``; recorded in the metadata (Core ML picks
            units at load time, see the module docstring). Defaults to ``'ALL'``.
        image_input (bool): Use an ``ImageType`` input (RGB, 8-bit pixels scaled by 1/255, then
            ImageNet mean/std in the graph) instead of a float tensor. Defaults to False.
        method (str): ``'auto'`` (``torch.export`` + ``run_decompositions``, falling back to
            ``torch.jit.trace``), ``'export'`` or ``'trace'``. Defaults to ``'auto'``.
        metadata (dict | None): Extra ``user_defined_metadata`` entries.

    Returns:
        dict: the :func:`inspect_coreml` report plus ``method``, ``fallback_reason``,
        ``convert_s`` and ``problems`` (:func:`coreml_problems`; empty when all checks pass).
        The package is saved and inspected beside ``path`` and replaces it only when the
        checks pass; otherwise ``path`` keeps its previous content, the package is kept at
        ``report['path']`` (:func:`mmeff.deploy.output.failed_path`) and ``report['rejected']``
        names ``path``.
    """
    ct = require('coremltools')
    if precision not in ('fp16', 'fp32'):
        raise ValueError(f"precision must be 'fp16' or 'fp32', got {precision!r}")
    if compute_units not in COMPUTE_UNITS:
        raise ValueError(f'compute_units must be one of {COMPUTE_UNITS}, got {compute_units!r}')
    if method not in ('auto', 'export', 'trace'):
        raise ValueError(f"method must be 'auto', 'export' or 'trace', got {method!r}")
    if not str(path).endswith('.mlpackage'):
        raise ValueError(f'a Core ML mlprogram is saved as a directory ending in .mlpackage, '
                         f'got {path!r}')
    check_export_memory(model, input_shape)
    wrapper, x, out_names = prepare_for_export(model, input_shape, fuse=fuse,
                                               normalize=image_input)
    if image_input and x.shape[1] != 3:
        raise ValueError(f'ImageType input needs 3 (RGB) channels, the model has {x.shape[1]}')
    t0 = time.perf_counter()
    program, used, reason = _to_mlprogram_input(wrapper, x, method)
    found = forbidden_torch_ops(program)
    if found:  # coremltools would stop at a bicubic resize with a less telling error
        raise _forbidden_error(f'the graph to convert ({used})', found)
    if image_input:
        inp = ct.ImageType(name='image', shape=tuple(x.shape), scale=1 / 255.,
                           color_layout=ct.colorlayout.RGB)
    else:
        inp = ct.TensorType(name='image', shape=tuple(x.shape), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        mlmodel = ct.convert(
            program,
            inputs=[inp],
            outputs=[ct.TensorType(name=n, dtype=np.float32) for n in out_names],
            convert_to='mlprogram',
            minimum_deployment_target=ct.target.iOS16,
            compute_precision=(ct.precision.FLOAT16 if precision == 'fp16'
                               else ct.precision.FLOAT32),
            compute_units=getattr(ct.ComputeUnit, compute_units),
            skip_model_load=True)  # loading needs macOS; it is done by coreml_latency there
    convert_s = time.perf_counter() - t0
    meta = {'mmeff.input_shape': 'x'.join(str(s) for s in x.shape),
            'mmeff.precision': precision, 'mmeff.compute_units': compute_units,
            'mmeff.fused': str(bool(fuse)), 'mmeff.conversion': used,
            'mmeff.image_input': str(bool(image_input))}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    mlmodel.user_defined_metadata.update(meta)
    mlmodel.short_description = ('EfficientFormer (mmeff), input ' + meta['mmeff.input_shape']
                                 + ', outputs ' + ', '.join(out_names))
    with StagedOutput(path) as staged:  # saved and inspected beside `path`, then placed
        mlmodel.save(staged.path)
        report = inspect_coreml(staged.path)
        with torch.no_grad():  # Core ML cannot run here (Linux); torch's outputs can be checked
            refs = _as_tuple(wrapper(x))
        report.update(method=used, fallback_reason=reason, convert_s=round(convert_s, 2),
                      fused=fuse, fusion=fusion_report(wrapper),
                      torch_nonfinite_outputs=nonfinite(
                          (f'output {n!r}', r) for n, r in zip(out_names, refs)))
        report['problems'] = coreml_problems(report, expect_fp16=precision == 'fp16')
        place_checked(staged, report)
    return report


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
                        f'that overflow FP16): {_shown(bad)}')
    bad = report.get('torch_nonfinite_outputs')
    if bad:
        problems.append(f'the torch model itself gives NaN or Inf on the export input (uniform '
                        f'random values in [0, 1)): {_shown(bad)}')
    if expect_fp16:
        if report['non_fp16_tensors']:
            problems.append(f"{len(report['non_fp16_tensors'])} float tensors are not FP16, "
                            f"e.g. {report['non_fp16_tensors'][:3]}")
        if not report['float_dtypes'].get('FLOAT16'):
            problems.append('no FP16 tensor at all: not converted with FP16 precision')
    return problems


def format_report(report: dict) -> str:
    """Human-readable summary of an export report (ONNX or Core ML)."""
    lines = [f"{report['format']} model: {report['path']}",
             f"  file size: {report['file_size_bytes'] / 2**20:.1f} MiB"]
    for kind in ('inputs', 'outputs'):
        for io in report[kind]:
            extra = f" {io['dtype']}" if io.get('dtype') else ''
            lines.append(f"  {kind[:-1]:6s} {io['name']}: {io['shape']}{extra}")
    if 'fusion' in report:
        f = report['fusion']
        lines.append(f"  {'fused' if report['fused'] else 'not fused'}: {f['batchnorms']} "
                     f"BatchNorm and {f['layer_scales']} layer scales left (MB4D ls1 kept: "
                     f"{f['mb4d_ls1']}); attention bias cached for grid(s) "
                     f"{f['cached_bias_grids']}")
    ops = ', '.join(f'{k} {v}' for k, v in report['op_histogram'].items())
    lines.append(f'  ops: {ops}')
    lines.append(f"  gather ops: {report['gather_ops']}, bicubic resize ops: "
                 f"{report.get('bicubic_ops', 0)}")
    if report['format'] == 'coreml':
        lines.append(f"  conversion: {report['method']}"
                     + (f" (fallback: {report['fallback_reason']})"
                        if report.get('fallback_reason') else '')
                     + f", {report['convert_s']} s; spec version {report['spec_version']}"
                     f" (iOS 16 = 7), opset {report.get('opset')}")
        lines.append(f"  float tensors by dtype: {report['float_dtypes']}; "
                     f"at the I/O ends (casts, input scaling): {len(report['io_tensors'])}; "
                     f"non-FP16 inside the graph: {len(report['non_fp16_tensors'])}")
        lines.append(f"  compute units (at load time): "
                     f"{report['metadata'].get('mmeff.compute_units', 'ALL')}")
        problems = report.get('problems', [])
        lines.append('  checks: ' + ('all passed' if not problems else
                                     'FAILED: ' + '; '.join(problems)))
    else:
        lines.append(f"  exporter: {report['exporter']}, opset {report['opset']}, "
                     f"{report['export_s']} s")
        if 'onnxruntime' in report:
            e = report['onnxruntime']
            lines.append(f"  onnxruntime vs torch: max abs err {e['max_abs_err']:.2e}, "
                         f"relative err {e['rel_err']:.2e}")
    return '\n'.join(lines)
