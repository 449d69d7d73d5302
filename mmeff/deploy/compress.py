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
from typing import Dict, List, Optional, Tuple

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
    dense values it produces), decompressed by the op itself (``constexpr_lut_to_dense``,
    ``constexpr_affine_dequantize``, ...)."""
    program = _mil_program(mlmodel)
    found = {}
    for func in program.functions.values():
        for op in _ops(func):
            if op.op_type.startswith('constexpr_'):
                found[op.name] = (op.op_type, np.asarray(op.outputs[0].val))
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


def _match(package: Dict[str, Tuple[str, np.ndarray]], reproduced: Dict[str, np.ndarray]):
    """Which package weights the torch-side reproduction gives exactly (same values, the
    torch tensor's shape or the package's); returns (matched names, unmatched names)."""
    by_size: Dict[int, List[Tuple[str, np.ndarray]]] = {}
    for name, arr in reproduced.items():
        by_size.setdefault(arr.size, []).append((name, arr))
    matched, unmatched = {}, []
    for op_name, (_, dense) in package.items():
        dense = dense.astype(np.float16)
        hit = None
        for name, arr in by_size.get(dense.size, []):
            if name not in matched.values() and (
                    np.array_equal(arr.reshape(dense.shape), dense)
                    or (arr.ndim == 2 and arr.T.shape == dense.shape
                        and np.array_equal(arr.T, dense))):
                hit = name
                break
        if hit is None:
            unmatched.append(op_name)
        else:
            matched[op_name] = hit
    return matched, unmatched


@torch.no_grad()
def compressed_torch_error(model: nn.Module, mode: str, x: torch.Tensor,
                           mlmodel=None, fuse: bool = True) -> dict:
    """The output error of Core ML's compressed weights, measured with PyTorch.

    ``model`` is prepared as :func:`mmeff.deploy.export_coreml` prepares it for ``x``'s shape
    (fused, attention biases cached), then every weight Core ML would compress (more than
    2048 values) is replaced by its compressed and decompressed values (:func:`compress_array`);
    the outputs on ``x`` are compared with the FP32 model's. The computation stays FP32: what
    is measured is the weights' compression (FP16 weights alone are reported beside it).

    Args:
        model (nn.Module): The model as given to the export (backbone or classifier).
        mode (str): One of :data:`COMPRESS_MODES`.
        x (torch.Tensor): Input batch (B, 3, H, W), normalised.
        mlmodel (MLModel | None): The compressed package (:func:`compress_mlmodel`): each of
            its compressed weights is then compared with the reproduction.
        fuse (bool): Prepare the model fused, as the export does. Defaults to True.

    Returns:
        dict: ``mode``, ``rel_err``, ``max_abs_err``, ``rel_err_per_output``,
        ``top1_agreement`` (logits), ``fp16_weights`` (the same errors with FP16 weights
        only), ``compressed_tensors`` and, with ``mlmodel``, ``package_check``:
        ``package_tensors``, ``matched`` (equal to the reproduction, value for value) and
        ``unmatched`` (op names).
    """
    check_compress_mode(mode)
    from .export import _as_tuple, prepare_for_export
    wrapper, _, _ = prepare_for_export(model, tuple(x.shape), fuse=fuse)
    refs = _as_tuple(wrapper(x))
    tensors = _compressible(wrapper)
    originals = {n: t.detach().clone() for n, t in tensors}
    # FP16 weights only (every float tensor, as Core ML stores them), then compressed.
    for t in list(wrapper.parameters()) + list(wrapper.buffers()):  # cached biases too
        if t.is_floating_point():
            t.copy_(t.half().float())
    fp16 = _errors(_as_tuple(wrapper(x)), refs)
    reproduced = {}
    for name, t in tensors:
        arr = compress_array(originals[name].cpu().numpy(), mode)
        reproduced[name] = arr
        t.copy_(torch.from_numpy(arr.astype(np.float32)).to(t.device))
    report = dict(mode=mode, **_errors(_as_tuple(wrapper(x)), refs), fp16_weights=fp16,
                  compressed_tensors=len(tensors))
    if mlmodel is not None:
        package = package_weights(mlmodel)
        matched, unmatched = _match(package, reproduced)
        report['package_check'] = dict(package_tensors=len(package), matched=len(matched),
                                       unmatched=unmatched)
    return report


__all__ = ['COMPRESS_MODES', 'WEIGHT_THRESHOLD', 'check_compress_mode', 'compress_mlmodel',
           'compress_array', 'package_weights', 'compressed_torch_error']
