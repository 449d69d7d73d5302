"""Compressed Core ML weights through coremltools' own optimisation API.

* :func:`compress_mlmodel`: ``coremltools.optimize.coreml.palettize_weights`` (k-means look-up
  tables of 16 or 256 entries per tensor: ``palettize4``, ``palettize8``) or
  ``linear_quantize_weights`` (``linear_symmetric`` INT8, one scale per output channel:
  ``int8``) on a converted mlprogram; weights of more than 2048 values are compressed
  (coremltools' ``weight_threshold``), the rest stay FP16. Reports the package's weight bytes
  against FP16.
* :func:`compressed_torch_error`: Core ML cannot predict on Linux, so the compressed model's
  error is measured on the PyTorch model carrying the same compressed weights: every weight
  of more than 2048 values goes through the same coremltools compression function (FP16 in,
  the same look-up table or scales out) and back to dense values, and the outputs are
  compared with the FP32 model's. Given the compressed package, the reproduction is checked
  tensor by tensor against the values the package stores (:func:`package_weights`).

Palettisation clusters with k-means: coremltools uses ``kmeans1d`` (when installed) for
tensors of 10000+ FP16 values and scikit-learn otherwise.
"""
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn as nn

from .export import require

COMPRESS_MODES = ('palettize4', 'palettize8', 'int8')
# coremltools' default: smaller tensors (biases, norms, small convolutions) stay FP16.
WEIGHT_THRESHOLD = 2048
_API = {'palettize4': 'palettize_weights', 'palettize8': 'palettize_weights',
        'int8': 'linear_quantize_weights'}


def _describe(mode: str) -> str:
    if mode == 'int8':
        return 'linear_quantize_weights (linear_symmetric int8, per output channel)'
    return f'palettize_weights (kmeans, {mode[len("palettize"):]}-bit look-up table per tensor)'


def _op_config(mode: str):
    """The ``OptimizationConfig`` of ``mode`` (raises what coremltools raises)."""
    import coremltools.optimize.coreml as cto
    if mode == 'int8':
        op = cto.OpLinearQuantizerConfig(mode='linear_symmetric', dtype='int8',
                                         granularity='per_channel',
                                         weight_threshold=WEIGHT_THRESHOLD)
    else:
        op = cto.OpPalettizerConfig(mode='kmeans', nbits=int(mode[len('palettize'):]),
                                    granularity='per_tensor', weight_threshold=WEIGHT_THRESHOLD)
    return cto.OptimizationConfig(global_config=op)


def check_compress_mode(mode: str) -> str:
    """Return ``mode`` if the installed coremltools can compress with it.

    Raises:
        ValueError: ``mode`` is not one of :data:`COMPRESS_MODES`, or the installed
            coremltools (named with its version) lacks the API or the mode.
        ImportError: coremltools is not installed, or a palettisation mode's k-means needs
            scikit-learn, which is not installed (the message says how to install them).
    """
    if mode not in COMPRESS_MODES:
        raise ValueError(f'compression mode must be one of {COMPRESS_MODES}, got {mode!r}')
    ct = require('coremltools')
    version = getattr(ct, '__version__', 'unknown')
    try:
        import coremltools.optimize.coreml as cto
        getattr(cto, _API[mode])
        _op_config(mode)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        raise ValueError(
            f'--compress {mode} needs coremltools.optimize.coreml.{_API[mode]} '
            f'({_describe(mode)}), which the installed coremltools {version} does not have '
            f'({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ""}): '
            f'pip install -U "coremltools>=7"') from exc
    if mode.startswith('palettize'):
        try:
            import sklearn.cluster  # noqa: F401  (coremltools' k-means)
        except ImportError as exc:
            raise ImportError(f'--compress {mode} clusters the weights with k-means, which '
                              f'coremltools {version} runs with scikit-learn: pip install '
                              f'scikit-learn') from exc
    return mode


# ----------------------------------------------------------------------------- Core ML side
def _mil_program(mlmodel):
    """The MIL program of an mlprogram ``MLModel`` (weights included), read from its spec."""
    from coremltools.converters.mil.frontend.milproto.load import load as load_mil
    spec = mlmodel.get_spec()
    return load_mil(spec, spec.specificationVersion, mlmodel.weights_dir)


def _ops(block):
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _ops(inner)


def _weight_bytes(mlmodel) -> int:
    """Bytes of the package's weight file(s) (``Data/com.apple.CoreML/weights``)."""
    from .export import file_size
    return file_size(mlmodel.weights_dir)


def package_weights(mlmodel) -> Dict[str, Tuple[str, np.ndarray]]:
    """The compressed weights of an mlprogram: name of the compressing op -> (op type, the
    dense values it produces), decompressed by the op itself (``materialized_val_inference``
    of ``constexpr_lut_to_dense``, ``constexpr_affine_dequantize``, ...)."""
    program = _mil_program(mlmodel)
    found = {}
    for func in program.functions.values():
        for op in _ops(func):
            if op.op_type.startswith('constexpr_'):
                found[op.name] = (op.op_type, np.asarray(op.materialized_val_inference()))
    return found


def compress_mlmodel(mlmodel, mode: str):
    """Compress the weights of a converted Core ML mlprogram with coremltools.

    Args:
        mlmodel (coremltools.models.MLModel): An mlprogram (FP16 weights as converted by
            :func:`mmeff.deploy.export_coreml`), not saved yet or loaded from a package.
        mode (str): One of :data:`COMPRESS_MODES`.

    Returns:
        tuple: the compressed ``MLModel`` (its metadata kept, plus ``mmeff.compress``) and
        ``info``: ``mode``, ``method``, ``coremltools``, ``weight_threshold``,
        ``weight_bytes``, ``fp16_weight_bytes``, ``ratio_vs_fp16`` and
        ``compressed_tensors`` (constexpr op type -> count).
    """
    check_compress_mode(mode)
    import coremltools as ct
    import coremltools.optimize.coreml as cto
    if mlmodel.get_spec().WhichOneof('Type') != 'mlProgram':
        raise ValueError('only an mlprogram (convert_to="mlprogram") can be compressed')
    before = _weight_bytes(mlmodel)
    metadata = dict(mlmodel.user_defined_metadata)
    compressed = getattr(cto, _API[mode])(mlmodel, config=_op_config(mode))
    metadata['mmeff.compress'] = mode
    compressed.user_defined_metadata.update(metadata)
    after = _weight_bytes(compressed)
    kinds = {}
    for op_type, _ in package_weights(compressed).values():
        kinds[op_type] = kinds.get(op_type, 0) + 1
    info = dict(mode=mode, method=f'coremltools.optimize.coreml.{_describe(mode)}',
                coremltools=ct.__version__, weight_threshold=WEIGHT_THRESHOLD,
                weight_bytes=after, fp16_weight_bytes=before,
                ratio_vs_fp16=round(after / before, 4) if before else None,
                compressed_tensors=kinds)
    return compressed, info


# ----------------------------------------------------------------------------- torch side
def compress_array(w: np.ndarray, mode: str) -> np.ndarray:
    """``w`` (any float array, rank >= 2, first axis the output channels) compressed as
    :func:`compress_mlmodel` compresses a weight, then decompressed: FP16 values of the look-up
    table (``palettize*``, per tensor) or of ``scale * q`` (``int8``, per output channel), by
    coremltools' own functions."""
    from coremltools.optimize.coreml._quantization_passes import (linear_quantize_weights,
                                                                  palettize_weights)
    w16 = np.asarray(w, dtype=np.float16)
    if mode == 'int8':
        from coremltools.converters.mil.mil import types
        blocks = [1] + [0] * (w16.ndim - 1)
        params = linear_quantize_weights.blockwise_compress_by_dtype(
            w16, types.int8, 'LINEAR_SYMMETRIC', blocks)
        dense = linear_quantize_weights.decompress(params)
    else:
        params = palettize_weights.blockwise_compress(
            w16, 'KMEANS', int(mode[len('palettize'):]), [0] * w16.ndim)
        dense = palettize_weights.decompress(params)
    return np.asarray(dense, dtype=np.float16).reshape(w16.shape)


def _compressible(model: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """The float parameters and buffers Core ML stores as compressible weights: more than
    :data:`WEIGHT_THRESHOLD` values, rank >= 2 (coremltools leaves 1-D tensors alone)."""
    named = list(model.named_parameters()) + list(model.named_buffers())
    return [(n, t) for n, t in named if t.is_floating_point() and t.dim() >= 2
            and t.numel() > WEIGHT_THRESHOLD]


def _errors(outs, refs) -> dict:
    rel, max_abs = [], 0.
    for o, r in zip(outs, refs):
        o, r = o.double(), r.double()
        rel.append(float((o - r).norm() / r.norm().clamp_min(1e-12)))
        max_abs = max(max_abs, float((o - r).abs().max()))
    report = dict(rel_err=max(rel), max_abs_err=max_abs, rel_err_per_output=rel)
    if len(refs) == 1 and refs[0].dim() == 2:  # logits
        report['top1_agreement'] = float((outs[0].argmax(-1) == refs[0].argmax(-1))
                                         .double().mean())
    return report


def _package_to_torch(package: Dict[str, Tuple[str, np.ndarray]],
                      tensors: Dict[str, torch.Tensor]) -> Tuple[Dict[str, str], List[str]]:
    """Which torch tensor each compressed package weight is: the converter names a weight's
    const after the tensor's path (``model.backbone.x.weight`` ->
    ``p_model_backbone_x_weight_to_fp16``, the compression adds ``_palettized`` or
    ``_quantized``), with the same number of values. Returns (op name -> torch name, op names
    without a torch tensor)."""
    keys = sorted(((n.replace('.', '_'), n) for n in tensors), key=lambda kv: -len(kv[0]))
    mapped, unmapped = {}, []
    for op_name, (_, dense) in package.items():
        hit = next((n for key, n in keys if key in op_name and n not in mapped.values()
                    and tensors[n].numel() == dense.size), None)
        if hit is None:
            unmapped.append(op_name)
        else:
            mapped[op_name] = hit
    return mapped, unmapped


def _as_torch_layout(dense: np.ndarray, shape: torch.Size) -> np.ndarray:
    """Package values in the torch tensor's layout (the same order, or a transposed matrix)."""
    if dense.ndim == 2 and len(shape) == 2 and dense.shape == tuple(shape)[::-1] \
            and dense.shape != tuple(shape):
        return dense.T
    return dense.reshape(tuple(shape))


@torch.no_grad()
def compressed_torch_error(model: nn.Module, mode: str, x: torch.Tensor,
                           mlmodel=None, fuse: bool = True) -> dict:
    """The output error of Core ML's compressed weights, measured with PyTorch.

    ``model`` is prepared as :func:`mmeff.deploy.export_coreml` prepares it for ``x``'s shape
    (fused, attention biases cached); every float tensor is rounded to FP16 (as the package
    stores it), and the weights Core ML compresses are replaced by their compressed values:

    * with ``mlmodel`` (the compressed package), the package's own values, decompressed by its
      ops; one of them (the smallest) is also reproduced from the torch tensor with
      :func:`compress_array` and compared value for value;
    * without, every weight of more than :data:`WEIGHT_THRESHOLD` values goes through
      :func:`compress_array` (what the package would hold).

    The outputs on ``x`` are compared with the FP32 model's. The computation stays FP32: what
    is measured is the weights' compression (FP16 weights alone are reported beside it).

    Args:
        model (nn.Module): The model as given to the export (backbone or classifier).
        mode (str): One of :data:`COMPRESS_MODES`.
        x (torch.Tensor): Input batch (B, 3, H, W), normalised.
        mlmodel (MLModel | None): The compressed package (:func:`compress_mlmodel`).
        fuse (bool): Prepare the model fused, as the export does. Defaults to True.

    Returns:
        dict: ``mode``, ``weights`` (``'package'`` or ``'reproduced'``), ``rel_err``,
        ``max_abs_err``, ``rel_err_per_output``, ``top1_agreement`` (logits),
        ``fp16_weights`` (the same errors with FP16 weights only), ``compressed_tensors`` and,
        with ``mlmodel``, ``package_check``: ``package_tensors``, ``mapped`` (package weights
        found in the torch model), ``unmapped`` (op names: not in the torch model, so the
        error leaves them out), ``reproduced`` (the torch tensor compressed here) and
        ``reproduction_equal`` (whether it equals the package's values exactly).
    """
    check_compress_mode(mode)
    from .export import _as_tuple, prepare_for_export
    wrapper, _, _ = prepare_for_export(model, tuple(x.shape), fuse=fuse)
    refs = _as_tuple(wrapper(x))
    named = dict(list(wrapper.named_parameters()) + list(wrapper.named_buffers()))
    for t in named.values():  # Core ML stores every float tensor in FP16
        if t is not None and t.is_floating_point():
            t.copy_(t.half().float())
    fp16 = _errors(_as_tuple(wrapper(x)), refs)
    report = dict(mode=mode, fp16_weights=fp16)
    if mlmodel is None:
        tensors = _compressible(wrapper)
        for _, t in tensors:
            t.copy_(torch.from_numpy(compress_array(t.cpu().numpy(), mode).astype(np.float32)))
        report.update(weights='reproduced', compressed_tensors=len(tensors))
    else:
        package = package_weights(mlmodel)
        mapped, unmapped = _package_to_torch(package, named)
        check = dict(package_tensors=len(package), mapped=len(mapped), unmapped=unmapped,
                     reproduced=None, reproduction_equal=None)
        if mapped:  # the cheapest one: palettisation runs k-means
            op_name = min(mapped, key=lambda n: package[n][1].size)
            t = named[mapped[op_name]]
            dense = _as_torch_layout(package[op_name][1], t.shape)
            check.update(reproduced=mapped[op_name], reproduction_equal=bool(np.array_equal(
                compress_array(t.cpu().numpy(), mode), dense.astype(np.float16))))
        for op_name, name in mapped.items():
            dense = _as_torch_layout(package[op_name][1], named[name].shape)
            named[name].copy_(torch.from_numpy(dense.astype(np.float32)))
        report.update(weights='package', compressed_tensors=len(mapped), package_check=check)
    report.update(_errors(_as_tuple(wrapper(x)), refs))
    return report


__all__ = ['COMPRESS_MODES', 'WEIGHT_THRESHOLD', 'check_compress_mode', 'compress_mlmodel',
           'compress_array', 'package_weights', 'compressed_torch_error']
