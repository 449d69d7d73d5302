"""ONNX and Core ML export of EfficientFormer models, with checks of what was written.

The formats themselves are the runtime layer's (:mod:`mmeff.runtime`): this module prepares
the model (fused, biases cached for the export size, export-friendly norms, an
``image -> outputs`` wrapper) and checks the result against torch.

* :func:`export_onnx`: :func:`mmeff.runtime.write_onnx` (the ``torch.export``-based
  exporter, falling back to the TorchScript one), ``onnx.checker``, then ONNX Runtime (CPU)
  against torch on the same input.
* :func:`export_coreml`: :func:`mmeff.runtime.convert_coreml` (``torch.export`` +
  ``run_decompositions``, falling back to ``torch.jit.trace``, -> ``mlprogram``, iOS 16, FP16
  compute precision, FP32 inputs/outputs), optionally compressed
  (:func:`mmeff.deploy.compress.compress_mlmodel`). Then :func:`inspect_coreml` reloads the
  spec from disk and :func:`coreml_problems` checks it: no ``gather`` (attention biases are
  precomputed for the export size), no bicubic resize, every float tensor FP16 except the I/O
  casts.

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
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from mmeff.runtime import (convert_coreml, coreml_problems, inspect_coreml, nonfinite,
                           onnx_graph_report, onnx_problems, ort_session, require, write_onnx)
from mmeff.runtime.checks import shown as _shown
from mmeff.runtime.coreml import check_coreml_options
from mmeff.runtime.onnx import ONNX_METHODS, ONNX_OPSET
# Re-exported: this module has always offered them (mmeff.deploy, the task exporters, tests).
from mmeff.runtime import COMPUTE_UNITS, file_size, forbidden_torch_ops  # noqa: F401
from mmeff.runtime.checks import forbidden_error as _forbidden_error  # noqa: F401
from mmeff.runtime.coreml import to_mlprogram_input as _to_mlprogram_input  # noqa: F401
from mmeff.runtime.coreml import without_aliases as _without_aliases  # noqa: F401
from .fuse import (attention_grids, cache_attention_bias, fuse_model, fusion_report,
                   parse_input_size)
from .output import StagedOutput, place_checked

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    from mmeff.models.families import FAMILIES
    if (isinstance(model, tuple(f.cls for f in FAMILIES.values()))
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
                opset: int = ONNX_OPSET,
                dynamic_batch: bool = False,
                check: bool = True,
                rtol: float = 1e-4,
                method: str = 'auto') -> dict:
    """Export ``model`` to ONNX at ``input_shape`` and check it with ONNX Runtime.

    Args:
        model (nn.Module): An EfficientFormer, or a module containing one (classifier).
        path (str): Output ``.onnx`` file.
        input_shape: ``(B, C, H, W)``, ``(H, W)``, ``224`` or ``'800x1333'``.
        fuse (bool): Fold BN and layer scales first (:func:`fuse_model`). Defaults to True.
        opset (int): ONNX opset. Defaults to 20 (:data:`mmeff.runtime.onnx.ONNX_OPSET`: GELU
            as one ``Gelu`` op, which ONNX Runtime runs faster than opset 18's Erf form).
        dynamic_batch (bool): Make the batch dimension dynamic. Defaults to False.
        check (bool): Check that every ONNX weight (initialisers, ``Constant`` nodes) is finite,
            run torch and ONNX Runtime on a random input, check that both outputs are finite
            and compare them; raise, naming the tensors and how many NaN/Inf values they hold,
            or if the relative error exceeds ``rtol``: ``ValueError`` when the model given is
            at fault (its weights or outputs), ``RuntimeError`` when the export is. A graph
            with a gather or a bicubic ``Resize`` left (:func:`onnx_problems`) is a
            ``RuntimeError`` naming them. Defaults to True.
        rtol (float): Allowed relative error (L2 norm ratio). Defaults to 1e-4.
        method (str): The exporter (:func:`mmeff.runtime.write_onnx`): ``'auto'`` (the
            ``torch.export``-based one, falling back to TorchScript's), ``'dynamo'`` or
            ``'torchscript'`` (several times faster to write). Defaults to ``'auto'``.

    Returns:
        dict: ``path``, ``exporter``, ``op_histogram``, ``gather_ops``, ``bicubic_ops``,
        ``problems``, ``inputs``/``outputs`` (name, shape, dtype), ``file_size_bytes``,
        ``export_s`` and, when checked, ``onnxruntime`` (``max_abs_err``, ``rel_err``).

    The file is written and checked beside ``path`` and renamed over it only once the checks
    passed: after any error ``path`` keeps its previous content.
    """
    require('onnx')
    if method not in ONNX_METHODS:  # before the model is prepared
        raise ValueError(f'method must be one of {ONNX_METHODS}, got {method!r}')
    check_export_memory(model, input_shape)
    wrapper, x, out_names = prepare_for_export(model, input_shape, fuse=fuse)
    # Written and checked beside `path`, which is replaced only once every check passed.
    with StagedOutput(path) as staged:
        report = _export_onnx_checked(model, wrapper, x, out_names, staged.path, path, fuse,
                                      opset, dynamic_batch, check, rtol, method)
        report['path'] = staged.place()
    return report



def _export_onnx_checked(model, wrapper, x, out_names, tmp, path, fuse, opset, dynamic_batch,
                         check, rtol, method) -> dict:
    """:func:`export_onnx`'s export to ``tmp`` and its checks; messages name ``path``."""
    dynamic_axes = ({'image': {0: 'batch'}, **{n: {0: 'batch'} for n in out_names}}
                    if dynamic_batch else None)
    written = write_onnx(wrapper, x, tmp, input_names=['image'], output_names=out_names,
                         opset=opset, dynamic_axes=dynamic_axes, method=method, atomic=False)
    report = dict(path=os.path.abspath(path), exporter=written['exporter'], opset=opset,
                  export_s=written['export_s'], fused=fuse, fusion=fusion_report(wrapper))
    report.update(onnx_graph_report(tmp, weights=check))
    bad = report.pop('nonfinite_constants', [])
    report['problems'] = onnx_problems(report)  # gathers and bicubic resizes
    if check and report['problems']:
        raise RuntimeError(f'{path}: ' + '; '.join(report['problems']))
    if check:
        if bad:
            raise _nonfinite_weights_error(f'{path}: {len(bad)} ONNX weight tensor(s)', bad, model)
        with torch.no_grad():
            refs = _as_tuple(wrapper(x))
        bad = nonfinite((f'output {n!r}', r) for n, r in zip(out_names, refs))
        if bad:
            raise _nonfinite_torch_outputs_error(bad, path)
        outs = ort_session(tmp).run(None, {'image': x.numpy()})
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


# ----------------------------------------------------------------------------- Core ML
def export_coreml(model: nn.Module,
                  path: str,
                  input_shape=(1, 3, 224, 224),
                  fuse: bool = True,
                  precision: str = 'fp16',
                  compute_units: str = 'ALL',
                  image_input: bool = False,
                  method: str = 'auto',
                  metadata: Optional[Dict[str, str]] = None,
                  compress: Optional[str] = None) -> dict:
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
        compress (str | None): Compress the weights before the package is saved, one of
            :data:`mmeff.deploy.compress.COMPRESS_MODES` (``'palettize4'``, ``'palettize8'``,
            ``'int8'``; :func:`mmeff.deploy.compress.compress_mlmodel`, which records the mode
            in the metadata as ``mmeff.compress``); its figures are ``report['compression']``,
            with ``torch_error``, the output error of the package's compressed weights
            measured in PyTorch (:func:`mmeff.deploy.compress.compressed_torch_error`).
            Defaults to None (FP16 weights as converted).

    Returns:
        dict: the :func:`inspect_coreml` report plus ``method``, ``fallback_reason``,
        ``convert_s``, ``compression`` (with ``compress``) and ``problems``
        (:func:`coreml_problems`; empty when all checks pass).
        The package is saved and inspected beside ``path`` and replaces it only when the
        checks pass; otherwise ``path`` keeps its previous content, the package is kept at
        ``report['path']`` (:func:`mmeff.deploy.output.failed_path`) and ``report['rejected']``
        names ``path``.
    """
    require('coremltools')
    check_coreml_options(precision, compute_units, method)
    if not str(path).endswith('.mlpackage'):
        raise ValueError(f'a Core ML mlprogram is saved as a directory ending in .mlpackage, '
                         f'got {path!r}')
    if compress is not None:  # a mode this coremltools lacks fails before the conversion
        from .compress import check_compress_mode
        check_compress_mode(compress)
    check_export_memory(model, input_shape)
    wrapper, x, out_names = prepare_for_export(model, input_shape, fuse=fuse,
                                               normalize=image_input)
    if image_input and x.shape[1] != 3:
        raise ValueError(f'ImageType input needs 3 (RGB) channels, the model has {x.shape[1]}')
    # loading needs macOS; it is done by coreml_latency there
    mlmodel, info = convert_coreml(wrapper, x, outputs=out_names, image_input=image_input,
                                   precision=precision, compute_units=compute_units,
                                   method=method)
    compression = None
    if compress is not None:
        from .compress import compress_mlmodel, compressed_torch_error
        mlmodel, compression = compress_mlmodel(mlmodel, compress)
        # Core ML cannot predict here: the error of the compressed weights, measured in torch
        compression['torch_error'] = compressed_torch_error(model, compress, x, mlmodel=mlmodel,
                                                            fuse=fuse)
    meta = {'mmeff.input_shape': 'x'.join(str(s) for s in x.shape),
            'mmeff.precision': precision, 'mmeff.compute_units': compute_units,
            'mmeff.fused': str(bool(fuse)), 'mmeff.conversion': info['method'],
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
        report.update(info, fused=fuse, fusion=fusion_report(wrapper),
                      torch_nonfinite_outputs=nonfinite(
                          (f'output {n!r}', r) for n, r in zip(out_names, refs)))
        if compression is not None:
            report['compression'] = compression
        report['problems'] = coreml_problems(report, expect_fp16=precision == 'fp16')
        place_checked(staged, report)
    return report


def export_model(model: nn.Module, path: str, fmt: str = 'onnx', input_shape=(1, 3, 224, 224),
                 fuse: bool = True, **options) -> dict:
    """Export ``model`` to ``fmt``, any file format of the runtime layer
    (:func:`mmeff.runtime.export_formats`).

    ``'onnx'`` and ``'coreml'`` are :func:`export_onnx` and :func:`export_coreml` (``options``
    are theirs). Any other format is written by the backend registered for it
    (:func:`mmeff.runtime.backend_for_format`): the model is prepared as for those two
    (:func:`prepare_for_export`: fused, biases cached for ``input_shape``), written by
    ``backend.write(wrapper, example_input, path, **options)`` beside ``path``, checked by
    ``backend.check`` and put in place only when its report has no ``problems`` (else kept
    at :func:`mmeff.deploy.output.failed_path`).

    Raises:
        ValueError: no backend writes ``fmt`` (the formats are named).
    """
    if fmt == 'onnx':
        return export_onnx(model, path, input_shape, fuse=fuse, **options)
    if fmt == 'coreml':
        return export_coreml(model, path, input_shape, fuse=fuse, **options)
    from mmeff.runtime import backend_for_format
    backend = backend_for_format(fmt)
    check_export_memory(model, input_shape)
    wrapper, x, _ = prepare_for_export(model, input_shape, fuse=fuse)
    with StagedOutput(path) as staged:
        written = backend.write(wrapper, x, staged.path, **options)
        report = dict(written, **backend.check(staged.path))
        report.update(format=fmt, backend=backend.name, fused=fuse,
                      fusion=fusion_report(wrapper))
        report.setdefault('problems', [])
        place_checked(staged, report)
    return report


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
