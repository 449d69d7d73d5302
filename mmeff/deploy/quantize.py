"""INT8 ONNX models: ONNX Runtime's static quantisation, calibrated on an ImageFolder.

* :func:`check_calib_data`: the calibration folder (``DIR/<class>/<image>``, as
  :class:`mmeff.datasets.ImageFolderDataset` reads it) exists, holds images, and has as many
  class folders as the classifier has classes.
* :func:`calibration_inputs`: its images through the classifier's evaluation pipeline (the
  configs' ``test_pipeline``: ``LoadPILImage`` + ``TimmTransform(crop_pct=0.875, bicubic)``,
  i.e. resize, centre crop, ImageNet mean/std), batched like the model's input.
* :func:`quantize_onnx_file`: ``onnxruntime.quantization.quantize_static`` in the QDQ format
  (ONNX Runtime's recommended format for CPU), per-channel INT8 weights, UINT8 activations
  with MinMax ranges from the calibration inputs, after ``quant_pre_process`` (shape
  inference, graph optimisation). Only :data:`INT8_OP_TYPES` (and the data movement between
  them, :data:`PASS_THROUGH_OP_TYPES`) are quantised, apart from V1's mixer convs
  (:func:`mixer_convs`, :data:`MIXER_CONV_REASON`) and the operators on either side of each
  softmax (:func:`softmax_neighbours`); the report lists every operator left in FP32 and why
  (:data:`KEEP_FP32`, :func:`fp32_reason`), and what ONNX Runtime runs (:func:`runtime_ops`).
* :func:`export_onnx_int8`: the FP32 export of :func:`mmeff.deploy.export_onnx` (checked
  against torch), quantised, then compared with that FP32 graph on calibration images
  (:func:`compare_onnx`); written beside ``out`` and put in place only when its checks pass
  (:mod:`mmeff.deploy.output`).

ONNX Runtime runs QDQ models by fusing ``DequantizeLinear -> Conv/MatMul -> QuantizeLinear``
into integer kernels (``QLinearConv``, ``QLinearMatMul``, ``MatMulIntegerToFloat``); what stays
between two quantised operators in FP32 costs a ``DequantizeLinear``/``QuantizeLinear`` pair,
and an operator whose inputs and output are all quantised for its neighbours is fused too
(``QLinearAdd``, ``QLinearSoftmax``): the export fails if that happens to one of
:data:`MUST_STAY_FP32`.
"""
import os
import os.path as osp
import tempfile
import time
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch.nn as nn

from mmeff.runtime.onnx import ONNX_OPSET

from .export import IMAGENET_MEAN, IMAGENET_STD, parse_input_shape, require

# Operators whose integer kernels are the speed-up (convolutions, the MLPs' and attention's
# matrix products, the classifier head).
INT8_OP_TYPES = ('Conv', 'MatMul', 'Gemm')
# Operators that only move 8-bit data: quantised too, so that a Q/DQ pair is not broken up
# around a reshape or a transpose between two quantised operators.
PASS_THROUGH_OP_TYPES = ('Reshape', 'Transpose', 'Flatten', 'Squeeze', 'Unsqueeze', 'Slice',
                         'Split', 'MaxPool')
# Operators ONNX Runtime could quantise that are kept in FP32, and why. tools/benchmark_int8.py
# quantises each as well (benchmarks/int8_op_study_*): the error of a trained L1 rises by at
# most 4e-3 (relative), and two timing runs under load disagreed by more than the differences
# between the variants, so no speed-up is shown; what stays FP32 cannot lose accuracy.
KEEP_FP32 = {
    'Softmax': 'attention probabilities: 8-bit steps of 1/255 round the small ones to 0; '
               'kept FP32 with its input and output (the operators beside it too), one per '
               'attention block, no speed-up shown when quantised',
    'LayerNormalization': 'per-token statistics computed inside the operator (FP32 either '
                          'way); no speed-up shown when quantised',
    'Add': 'residual sums and attention biases (ranges differ per block); no speed-up shown '
           'when quantised. Where both inputs and the output are quantised for the '
           'convolutions beside it (V2\'s residuals), ONNX Runtime runs it as QLinearAdd: '
           'the same values as dequantise, add, quantise',
    'Mul': 'layer scales and GELU; no speed-up shown when quantised',
    'AveragePool': "V1's pooling token mixer; quantised together with Add, the INT8 L1 ran "
                   'slower (16.4 vs 14.6 ms in an interleaved run)',
}
# V1's MB4D mixers as exported (mmeff.deploy.fuse.onnx_mixers): two depthwise 1x1 convs
# each, ((1 - s) * x + s * pool(x)). They stay FP32 like the pooling beside them.
MIXER_CONV_REASON = ("V1's pooling token mixers, exported as two depthwise 1x1 convs each "
                     "((1 - s) * x + s * pool(x)): quantised, their integer kernels and "
                     "re-quantisation cost more than they save (L1 INT8 about 1.2x slower "
                     "in an interleaved run)")
# The operators that write a Softmax's input or read its output (the attention logits and
# probabilities): quantised, the logits would reach the softmax in 8 bits and the
# probabilities leave it in 8 bits (ONNX Runtime then even runs a QLinearSoftmax).
SOFTMAX_NEIGHBOUR_REASON = ("the attention's operators on either side of each Softmax (logits "
                            "and probabilities stay FP32; no slower in an interleaved run)")
# What the walk from a Softmax to those operators passes through: shape changes and the
# elementwise scale and bias of the logits.
_SOFTMAX_WALK = ('Reshape', 'Transpose', 'Flatten', 'Squeeze', 'Unsqueeze', 'Slice', 'Split',
                 'Concat', 'Add', 'Sub', 'Mul', 'Div')
# Operators of the modules a caller asked to keep FP32 (quantize_onnx_file's keep_fp32).
KEEP_FP32_ASKED_REASON = 'in a module kept FP32 as asked ({})'
# The modules an EfficientFormer's INT8 model keeps FP32 by default: the stem and the first
# stage (maps at 1/4 of the input, few channels). Their quantise/dequantise steps cost more
# than their integer convolutions save: with them FP32, INT8 L1 9.7 -> 8.4 ms, L3 21.4 ->
# 20.2 ms, V2-S1 11.1 -> 9.6 ms (224, 2 threads, two interleaved runs,
# benchmarks/int8_stage_study_cpu_2threads_intel*.md); keeping stage 1 too gained 2 % on L1,
# nothing on L3. Named relative to the backbone (``backbone.`` in front for a classifier).
DEFAULT_KEEP_FP32 = ('stem', 'stages.0')
KEEP_FP32_DEFAULT_REASON = ('the stem and the first stage, kept FP32 by default (maps at 1/4 of '
                            'the input, few channels: quantised they made INT8 L1, L3 and V2-S1 '
                            '6-15 % slower in interleaved runs); --keep-fp32 none quantises '
                            'them')
# Operators that must not run as ONNX Runtime integer kernels (the export fails otherwise).
MUST_STAY_FP32 = ('Softmax', 'LayerNormalization')
CALIB_MAX_IMAGES = 64


# ----------------------------------------------------------------------------- calibration
def check_calib_data(calib_data: str, num_classes: Optional[int] = None) -> List[str]:
    """The image paths of the calibration folder ``calib_data`` (``DIR/<class>/<image>``), in
    :class:`mmeff.datasets.ImageFolderDataset`'s order (sorted class folders, then files).

    Args:
        calib_data (str): An ImageFolder split folder, e.g. ``data/imagenet/val``.
        num_classes (int | None): The classifier's class count; the folder must have as many
            class folders (a folder of another dataset would calibrate on the wrong images).
            ``None`` (a backbone) checks no count.

    Raises:
        FileNotFoundError: ``calib_data`` does not exist or is not a folder.
        ValueError: it holds no class folder or no image, a class folder holds no image, or
            its class count differs from ``num_classes``.
    """
    from mmeff.datasets.imagenet import IMG_EXTENSIONS
    folder = osp.expanduser(str(calib_data))
    layout = ('an ImageFolder split folder DIR/<class>/<image> (e.g. data/imagenet/val, or '
              'the demo\'s work_dirs/demo/data/imagenet/val)')
    if not osp.exists(folder):
        raise FileNotFoundError(f'calibration folder {calib_data!r} does not exist: pass '
                                f'{layout} with --calib-data')
    if not osp.isdir(folder):
        raise FileNotFoundError(f'calibration data {calib_data!r} is a file, not a folder: '
                                f'pass {layout} with --calib-data')
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        loose = [e.name for e in os.scandir(folder)
                 if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS)]
        hint = (f' ({len(loose)} images lie directly in it: put them in class sub-folders)'
                if loose else '')
        raise ValueError(f'calibration folder {calib_data!r} is empty: it holds no class '
                         f'folder{hint}; pass {layout}')
    if num_classes is not None and len(classes) != int(num_classes):
        raise ValueError(f'calibration folder {calib_data!r} has {len(classes)} class folders '
                         f'but the classifier has {num_classes} classes: calibrate with images '
                         f'of the classes it was trained on (e.g. the val/ folder of its '
                         f'dataset, {num_classes} class folders)')
    paths = []
    for name in classes:
        files = sorted(osp.join(root, f) for root, _, fs in os.walk(osp.join(folder, name),
                                                                     followlinks=True)
                       for f in fs if f.lower().endswith(IMG_EXTENSIONS))
        if not files:
            raise ValueError(f'class folder {osp.join(folder, name)!r} of the calibration '
                             f'folder holds no image (extensions {IMG_EXTENSIONS}): add its '
                             f'images or remove it')
        paths.append(files)
    # Round-robin over the classes: the first N images cover every class.
    ordered = []
    for i in range(max(len(f) for f in paths)):
        ordered += [f[i] for f in paths if i < len(f)]
    return ordered


def eval_transform(height: int, width: int):
    """The classifier's evaluation pipeline (``LoadPILImage`` + ``TimmTransform(crop_pct=
    0.875, interpolation='bicubic')``, as the configs' ``test_pipeline``) for an input of
    ``height x width``: ``path -> (3, H, W)`` float32 array, ImageNet mean/std."""
    from mmeff.datasets.imagenet import LoadPILImage, TimmTransform
    load = LoadPILImage()
    transform = TimmTransform(input_size=(3, height, width), crop_pct=0.875,
                              interpolation='bicubic', mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def apply(path: str) -> np.ndarray:
        return transform(load(dict(img_path=path)))['img'].numpy().astype(np.float32)

    return apply


def calibration_inputs(calib_data: Union[str, Sequence[str]], input_shape,
                       max_images: Optional[int] = CALIB_MAX_IMAGES,
                       num_classes: Optional[int] = None) -> List[np.ndarray]:
    """Batches of preprocessed images for the model's input shape.

    Args:
        calib_data (str | Sequence[str]): A calibration folder (:func:`check_calib_data`) or
            image paths.
        input_shape: ``(B, C, H, W)`` (or anything :func:`parse_input_shape` takes).
        max_images (int | None): Use at most this many images (spread over the classes).
        num_classes (int | None): See :func:`check_calib_data`.

    Returns:
        list[np.ndarray]: ``(B, 3, H, W)`` float32 arrays; the last one is filled up with the
        first images when the count is not a multiple of ``B``.
    """
    b, c, h, w = parse_input_shape(input_shape)
    if c != 3:
        raise ValueError(f'calibration images are RGB: the model input needs 3 channels, '
                         f'got {c}')
    if isinstance(calib_data, (str, os.PathLike)):
        paths = check_calib_data(str(calib_data), num_classes)
    else:
        paths = list(calib_data)
    if max_images is not None:
        paths = paths[:max_images]
    if not paths:
        raise ValueError('no calibration image given')
    apply = eval_transform(h, w)
    images = [apply(p) for p in paths]
    while len(images) % b:
        images.append(images[len(images) % len(paths)])
    return [np.stack(images[i:i + b]) for i in range(0, len(images), b)]


class _InputReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over a list of input arrays."""

    def __init__(self, name: str, arrays: Sequence[np.ndarray]):
        self.name, self.arrays, self.pos = name, list(arrays), 0

    def get_next(self):
        if self.pos >= len(self.arrays):
            return None
        self.pos += 1
        return {self.name: self.arrays[self.pos - 1]}

    def __len__(self):
        return len(self.arrays)


# ----------------------------------------------------------------------------- graphs
def _input_shape_of(proto) -> List[Union[int, str]]:
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def qdq_op_summary(proto, op_types: Sequence[str]) -> Dict[str, Dict[str, int]]:
    """Which operators of a QDQ graph run on 8-bit data: ``{'int8': {op: n}, 'fp32': {op: n}}``.

    An operator is INT8 when it is of a quantised type (``op_types``) and reads
    ``DequantizeLinear`` outputs (ONNX Runtime then fuses it into an integer kernel): a
    ``Conv``, ``Gemm`` or ``MatMul`` both its operands (one left FP32 may still read one
    dequantised operand, e.g. ``attn @ v`` beside an FP32 softmax), any other its data input;
    every other operator computes in FP32, also when it reads a dequantised tensor (but see
    :func:`runtime_ops`). ``QuantizeLinear``/``DequantizeLinear`` themselves are not counted."""
    from_dq = {o for n in proto.graph.node if n.op_type == 'DequantizeLinear' for o in n.output}
    int8, fp32 = Counter(), Counter()
    for node in proto.graph.node:
        if node.op_type in ('QuantizeLinear', 'DequantizeLinear'):
            continue
        operands = node.input[:2] if node.op_type in ('Conv', 'Gemm', 'MatMul') else \
            node.input[:1]
        quantised = node.op_type in op_types and bool(operands) and all(
            i in from_dq for i in operands)
        (int8 if quantised else fp32)[node.op_type] += 1
    return dict(int8=dict(sorted(int8.items())), fp32=dict(sorted(fp32.items())))


def fp32_reason(op_type: str, op_types: Sequence[str] = ()) -> str:
    """Why an operator is left in FP32: :data:`KEEP_FP32`, no quantiser in ONNX Runtime, not
    asked for, or (an operator of ``op_types`` that only moves data) no quantised input."""
    if op_type in KEEP_FP32:
        return KEEP_FP32[op_type]
    if op_type in op_types:
        return 'moves data between FP32 operators there (no quantised input)'
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    if op_type not in QDQRegistry and op_type not in QLinearOpsRegistry:
        return 'ONNX Runtime has no INT8 quantiser for it'
    if op_type in ('Relu', 'Clip'):
        return 'folded into the quantisation of the convolution before it'
    return 'not among the quantised operator types'



def mixer_convs(proto) -> List[str]:
    """Names of the depthwise 1x1 ``Conv`` nodes of a graph (weight ``(C, 1, 1, 1)``, ``group``
    C): the MB4D mixers as :func:`mmeff.deploy.fuse.onnx_mixers` exports them."""
    weights = {t.name: list(t.dims) for t in proto.graph.initializer}
    names = []
    for node in proto.graph.node:
        if node.op_type != 'Conv' or len(node.input) < 2:
            continue
        dims = weights.get(node.input[1])
        group = next((a.i for a in node.attribute if a.name == 'group'), 1)
        if dims is not None and len(dims) == 4 and dims[1:] == [1, 1, 1] \
                and group == dims[0] > 1:
            names.append(node.name)
    return names


def softmax_neighbours(proto, op_types: Sequence[str] = INT8_OP_TYPES) -> List[str]:
    """Names of the nodes of ``op_types`` that write a ``Softmax``'s input or read its output,
    through shape changes and the logits' elementwise scale and bias (``_SOFTMAX_WALK``): V1's
    ``q @ k`` and ``attn @ v`` MatMuls, V2's talking-head convs. Left FP32, the softmax
    computes on FP32 logits and hands on FP32 probabilities."""
    consts = {t.name for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    readers = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    found, seen = [], set()

    def walk(tensors, nodes_of, next_tensors):  # from tensors, up or down the graph
        while tensors:
            for node in nodes_of(tensors.pop()):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                if node.op_type in op_types:
                    found.append(node.name)
                elif node.op_type in _SOFTMAX_WALK:
                    tensors.extend(next_tensors(node))

    for softmax in (n for n in proto.graph.node if n.op_type == 'Softmax'):
        walk([softmax.input[0]], lambda t: [producer[t]] if t in producer else [],
             lambda node: [i for i in node.input if i and i not in consts])
        walk([softmax.output[0]], lambda t: readers.get(t, []), lambda node: list(node.output))
    return found


def node_modules(proto) -> Dict[str, str]:
    """The module path (``'backbone.stages.0.blocks.1.mlp.fc1.conv'``) each node of an exported
    graph was traced from: the ``torch.export``-based exporter's ``pkg.torch.onnx.name_scopes``
    metadata (kept through ONNX Runtime's pre-processing), or the TorchScript exporter's node
    name (``/backbone/stages.0/blocks.1/mlp/fc1/Conv``). ``''`` where neither tells (the
    top-level module, or nodes an optimiser made)."""
    import ast
    found = {}
    for node in proto.graph.node:
        meta = {m.key: m.value for m in node.metadata_props}
        path = ''
        if 'pkg.torch.onnx.name_scopes' in meta:
            try:
                # ['', 'backbone', 'backbone.stages.0', ..., <module path>, <FX node name>]
                scopes = ast.literal_eval(meta['pkg.torch.onnx.name_scopes'])
                if isinstance(scopes, (list, tuple)) and len(scopes) >= 2:
                    path = str(scopes[-2])
            except (ValueError, SyntaxError):
                path = ''
        elif node.name.startswith('/'):
            path = '.'.join(node.name.strip('/').split('/')[:-1])
        found[node.name] = path
    return found


def _within(path: str, module: str) -> bool:
    """Whether module path ``path`` is ``module`` or inside it."""
    return path == module or path.startswith(module + '.')


def _match_modules(paths: Dict[str, str], modules: Sequence[str]):
    """``(found, missing, relative)``: the nodes (node name -> module path ``paths``) traced
    from ``modules``, the modules no node comes from, and every node's path relative to an
    export wrapper that every path starts with (``model.`` of mmeff.deploy.export's
    ExportWrapper: module names are the wrapped model's)."""
    parts = [p.split('.') for p in paths.values() if p]
    wrapper = ''
    while parts and len({p[0] for p in parts}) == 1 and any(len(p) > 1 for p in parts):
        wrapper += parts[0][0] + '.'
        parts = [p[1:] for p in parts if len(p) > 1]
    relative = {n: p[len(wrapper):] if wrapper and p.startswith(wrapper) else p
                for n, p in paths.items()}
    found, missing = {}, []
    for module in modules:
        prefix = module.strip('.')
        hits = [n for n in paths if _within(paths[n], prefix) or _within(relative[n], prefix)]
        if not hits:
            missing.append(module)
        found.update(dict.fromkeys(hits))
    return list(found), missing, relative


def module_nodes(proto, modules: Sequence[str],
                 paths: Optional[Dict[str, str]] = None) -> List[str]:
    """Names of the nodes traced from ``modules`` (module paths as ``named_modules()`` gives
    them, e.g. ``'backbone.stages.0'``; each with everything inside it: :func:`node_modules`;
    relative to an export wrapper that every path starts with, such as ``model.``).

    ``paths`` (node name -> module path) defaults to :func:`node_modules` of ``proto``.

    Raises:
        ValueError: A module no node comes from, naming the ones there are.
    """
    found, missing, relative = _match_modules(
        node_modules(proto) if paths is None else paths, modules)
    if missing:
        known = sorted({'.'.join(p.split('.')[:2]) for p in relative.values() if p})
        raise ValueError(f"no operator of the exported graph comes from module(s) {missing}: "
                         f"name modules as the model's named_modules() does, e.g. "
                         f"{', '.join(known[:8])}{' ...' if len(known) > 8 else ''}")
    return found


def default_keep_fp32(paths: Dict[str, str]) -> List[str]:
    """:data:`DEFAULT_KEEP_FP32` as named in a graph whose nodes come from ``paths`` (node
    name -> module path, :func:`node_modules`): ``['stem', 'stages.0']`` for a backbone,
    ``['backbone.stem', 'backbone.stages.0']`` for a classifier; ``[]`` for a graph with no
    such modules (a latency table's piece, another model)."""
    for prefix in ('', 'backbone.'):
        names = [prefix + m for m in DEFAULT_KEEP_FP32]
        if not _match_modules(paths, names)[1]:
            return names
    return []


def runtime_ops(path: str) -> Dict[str, Dict[str, int]]:
    """What ONNX Runtime runs for a QDQ model on this CPU (:func:`mmeff.runtime.ort_graph_ops`):
    ``{'int8': {op: n}, 'fp32': {op: n}}``. INT8 are its integer kernels (``QLinearConv``,
    ``QLinearAdd``, ``QGemm``, ``MatMulIntegerToFloat``, ...), into which it fuses a
    ``DequantizeLinear -> op -> QuantizeLinear`` group (also around an operator the QDQ file
    leaves FP32, when its neighbours quantise all its inputs and its output); FP32 is every
    other operator but the quantise/dequantise steps themselves."""
    from mmeff.runtime import ort_graph_ops
    int8, fp32 = {}, {}
    for op, n in sorted(ort_graph_ops(path).items()):
        if op in ('QuantizeLinear', 'DequantizeLinear'):
            continue
        integer = op.startswith(('QLinear', 'QGemm', 'QAttention')) or 'Integer' in op
        (int8 if integer else fp32)[op] = n
    return dict(int8=int8, fp32=fp32)


def _session(path: str):
    from mmeff.runtime import ort_session
    return ort_session(path)


# ----------------------------------------------------------------------------- quantisation
def quantize_onnx_file(fp32_path: str,
                       out_path: str,
                       calib: Union[str, Iterable[np.ndarray]],
                       *,
                       per_channel: bool = True,
                       input_name: Optional[str] = None,
                       op_types: Sequence[str] = INT8_OP_TYPES + PASS_THROUGH_OP_TYPES,
                       reduce_range: bool = False,
                       max_images: Optional[int] = CALIB_MAX_IMAGES,
                       num_classes: Optional[int] = None,
                       keep_fp32: Optional[Sequence[str]] = None) -> dict:
    """Statically quantise an FP32 ONNX model to INT8 (QDQ) with ONNX Runtime.

    Args:
        fp32_path (str): The FP32 ``.onnx`` file (a static input shape).
        out_path (str): Where the INT8 model goes; written atomically (a failure leaves
            ``out_path`` as it was).
        calib (str | Iterable[np.ndarray]): A calibration folder (``DIR/<class>/<image>``,
            preprocessed by :func:`calibration_inputs`) or the input arrays themselves.
        per_channel (bool): One scale per output channel of each weight. Defaults to True.
        input_name (str | None): The input to feed; defaults to the model's first input.
        op_types (Sequence[str]): Operator types to quantise; every other operator stays
            FP32. Defaults to :data:`INT8_OP_TYPES` + :data:`PASS_THROUGH_OP_TYPES`.
        reduce_range (bool): 7-bit weights (for CPUs whose 8-bit dot products saturate).
            Defaults to False.
        max_images (int | None): Calibration images used from a folder. Defaults to 64.
        num_classes (int | None): The classifier's class count, checked against the folder.
        keep_fp32 (Sequence[str] | None): Modules whose operators stay FP32 as well (mixed
            precision), by module path (:func:`module_nodes`), e.g. ``['stages.0']`` for a
            backbone, ``['backbone.stages.0']`` for a classifier; ``[]``: none. None (default):
            the stem and the first stage where the graph has them
            (:data:`DEFAULT_KEEP_FP32`, :func:`default_keep_fp32`).

    Returns:
        dict: ``path``, ``fp32_path``, ``file_size_bytes``, ``fp32_file_size_bytes``,
        ``calibration`` (``batches``, ``images``, ``source``), ``settings``, ``int8_ops`` and
        ``fp32_ops`` (op type -> count, :func:`qdq_op_summary`), ``kept_fp32_reasons``
        (op type -> why, for every operator left in FP32) and ``quantize_s``.
    """
    if isinstance(keep_fp32, str):
        keep_fp32 = [keep_fp32]
    onnx = require('onnx')
    require('onnxruntime')
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mmeff.engine.checkpointing import write_file_atomic
    from mmeff.runtime import file_size
    if not osp.isfile(fp32_path):
        raise FileNotFoundError(f'FP32 ONNX model {fp32_path!r} does not exist: export it first '
                                f'(mmeff.deploy.export_onnx or tools/export.py --format onnx)')
    proto = onnx.load(fp32_path, load_external_data=False)
    name = input_name or proto.graph.input[0].name
    if name not in [i.name for i in proto.graph.input]:
        raise ValueError(f'{fp32_path} has no input {name!r}; its inputs are '
                         f'{[i.name for i in proto.graph.input]}')
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in _input_shape_of(proto)]
    source = 'input arrays'
    if isinstance(calib, (str, os.PathLike)):
        source = f'{calib} (up to {max_images} images)'
        arrays = calibration_inputs(str(calib), tuple(shape), max_images, num_classes)
    else:
        arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in calib]
    if not arrays:
        raise ValueError('no calibration input given: pass a calibration folder or arrays')
    bad = [i for i, a in enumerate(arrays) if list(a.shape[1:]) != shape[1:]]
    if bad:
        raise ValueError(f'calibration input {bad[0]} has shape {list(arrays[bad[0]].shape)}, '
                         f'the model {fp32_path} takes {shape}')
    out_path = osp.abspath(osp.expanduser(str(out_path)))
    os.makedirs(osp.dirname(out_path), exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='mmeff_int8_') as tmp:
        prepared = osp.join(tmp, 'prepared.onnx')
        # ONNX shape inference and ORT's graph optimisation; the symbolic shape inference is
        # for dynamic (transformer) shapes: these graphs are static, and it stops at the
        # TorchScript exporter's computed Reshape shapes in V2.
        quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
        prepared_proto = onnx.load(prepared, load_external_data=False)
        kept_convs = mixer_convs(prepared_proto)
        beside_softmax = [n for n in softmax_neighbours(prepared_proto) if n not in kept_convs]
        excluded = dict.fromkeys(kept_convs, MIXER_CONV_REASON)
        excluded.update(dict.fromkeys(beside_softmax, SOFTMAX_NEIGHBOUR_REASON))
        node_type = {n.name: n.op_type for n in prepared_proto.graph.node}
        if keep_fp32 is None or keep_fp32:  # [] (every module INT8) needs no module paths
            # ONNX Runtime's pre-processing keeps node names but may drop the exporter's
            # metadata: module paths as exported, for the nodes still there
            paths = node_modules(prepared_proto)
            paths.update({n: p for n, p in node_modules(proto).items() if n in paths and p})
        if keep_fp32 is None:
            keep_fp32, reason = default_keep_fp32(paths), KEEP_FP32_DEFAULT_REASON
        else:
            keep_fp32 = list(keep_fp32)
            reason = KEEP_FP32_ASKED_REASON.format(', '.join(keep_fp32))
        if keep_fp32:
            asked = module_nodes(prepared_proto, keep_fp32, paths)
            excluded.update(dict.fromkeys(
                [n for n in asked if node_type[n] in op_types and n not in excluded], reason))

        def write(target):
            quantize_static(prepared, target, _InputReader(name, arrays),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types),
                            nodes_to_exclude=list(excluded),
                            per_channel=per_channel, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax)

        write_file_atomic(out_path, write)
    quantize_s = time.perf_counter() - t0
    ops = qdq_op_summary(onnx.load(out_path), op_types)
    why_excluded = {}  # op type -> the reasons its excluded nodes stay FP32
    for node, why in excluded.items():
        why_excluded.setdefault(node_type[node], {})[why] = None
    return dict(path=out_path, fp32_path=osp.abspath(fp32_path), format='onnx',
                file_size_bytes=file_size(out_path), fp32_file_size_bytes=file_size(fp32_path),
                calibration=dict(batches=len(arrays), images=len(arrays) * shape[0],
                                 source=source),
                settings=dict(format='QDQ', per_channel=per_channel, reduce_range=reduce_range,
                              activations='uint8 (MinMax)', weights='int8',
                              op_types=list(op_types), fp32_mixer_convs=len(kept_convs),
                              fp32_softmax_neighbours=len(beside_softmax),
                              keep_fp32=list(keep_fp32)),
                int8_ops=ops['int8'], fp32_ops=ops['fp32'],
                kept_fp32_reasons={op: '; '.join(why_excluded[op]) if op in why_excluded
                                   else fp32_reason(op, op_types) for op in ops['fp32']},
                quantize_s=round(quantize_s, 2))


# Time the INT8 and FP32 graphs take together in the export's speed check (the repetitions are
# set from one call of each, between SPEED_REPS).
SPEED_BUDGET_S = 3.0
SPEED_REPS = (3, 20)


def int8_speed(int8_path: str, fp32_path: str, x: np.ndarray,
               budget_s: float = SPEED_BUDGET_S, threads: Optional[int] = None) -> dict:
    """Median latency of the INT8 and the FP32 graph on this CPU with ONNX Runtime, timed
    interleaved (:func:`mmeff.runtime.time_interleaved`) on ``x``.

    The repetitions fit ``budget_s`` (one untimed call of each first sets them, between
    :data:`SPEED_REPS`). Returns ``int8_ms``, ``fp32_ms``, ``speedup`` (FP32 / INT8: above 1
    where INT8 is faster), ``reps``, ``threads`` (None: ONNX Runtime's default, one per
    physical core) and ``input_shape``.
    """
    from mmeff.runtime import ort_session, summarize, time_interleaved
    sessions = {'int8': ort_session(int8_path, threads), 'fp32': ort_session(fp32_path, threads)}
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    calls = {k: (lambda s=s, f=feeds[k]: s.run(None, f)) for k, s in sessions.items()}
    t0 = time.perf_counter()
    for call in calls.values():
        call()
    once = max(time.perf_counter() - t0, 1e-6)
    reps = int(min(max(budget_s // once, SPEED_REPS[0]), SPEED_REPS[1]))
    times = time_interleaved(calls, warmup=1, reps=reps)
    ms = {k: summarize(v, x.shape[0])['median_ms'] for k, v in times.items()}
    return dict(int8_ms=ms['int8'], fp32_ms=ms['fp32'],
                speedup=round(ms['fp32'] / ms['int8'], 2), reps=reps, threads=threads,
                input_shape=list(x.shape))


def run_onnx(path_or_session, inputs: Sequence[np.ndarray]) -> List[List[np.ndarray]]:
    """The outputs of an ONNX model (a path or an open session) for each input array."""
    sess = _session(path_or_session) if isinstance(path_or_session, str) else path_or_session
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: x}) for x in inputs]


def compare_onnx(path: str, reference: str, inputs: Sequence[np.ndarray],
                 output_names: Optional[Sequence[str]] = None, task: str = 'backbone') -> dict:
    """Errors of the model ``path`` against ``reference`` (both ONNX) on ``inputs``.

    Returns:
        dict: ``images``; ``rel_err`` (largest, over the outputs, of ``||o - r|| / ||r||``
        over all inputs), ``max_abs_err`` and ``rel_err_per_output`` (output name -> relative
        error: the stage maps of a backbone); for ``task='classifier'`` also
        ``top1_agreement`` (share of images whose top-1 class is the reference's).
    """
    outs, refs = run_onnx(path, inputs), run_onnx(reference, inputs)
    n_out = len(refs[0])
    names = list(output_names or [f'output{i}' for i in range(n_out)])
    per_output = {}
    max_abs = 0.
    for k in range(n_out):
        o = np.concatenate([np.asarray(out[k], np.float64).ravel() for out in outs])
        r = np.concatenate([np.asarray(ref[k], np.float64).ravel() for ref in refs])
        per_output[names[k]] = float(np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-12))
        max_abs = max(max_abs, float(np.max(np.abs(o - r))))
    report = dict(images=int(sum(x.shape[0] for x in inputs)),
                  rel_err=float(np.max(list(per_output.values()))), max_abs_err=max_abs,
                  rel_err_per_output=per_output)
    if task == 'classifier':
        top_o = np.concatenate([out[0].argmax(-1) for out in outs])
        top_r = np.concatenate([ref[0].argmax(-1) for ref in refs])
        report['top1_agreement'] = float((top_o == top_r).mean())
    return report


def onnx_top1(path: str, data_dir: str, max_images: Optional[int] = None) -> dict:
    """Top-1 accuracy of an ONNX classifier on an ImageFolder split (``DIR/<class>/<image>``,
    labels from the sorted class folders), images through :func:`eval_transform`.

    Returns:
        dict: ``top1``, ``images`` and ``predictions`` (one class index per image, in
        :func:`check_calib_data`'s order).
    """
    onnx = require('onnx')
    shape = _input_shape_of(onnx.load(path, load_external_data=False))
    b = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 1
    paths = check_calib_data(data_dir)[:max_images]
    classes = sorted(e.name for e in os.scandir(data_dir) if e.is_dir())
    labels = np.array([classes.index(osp.relpath(p, data_dir).split(os.sep)[0]) for p in paths])
    inputs = calibration_inputs(paths, (b, 3, shape[2], shape[3]), max_images=None)
    preds = np.concatenate([out[0].argmax(-1) for out in run_onnx(path, inputs)])[:len(paths)]
    return dict(top1=float((preds == labels).mean()), images=len(paths),
                predictions=preds.tolist())


def _num_classes_of(model: nn.Module) -> Optional[int]:
    head = getattr(model, 'head', None)
    n = getattr(head, 'num_classes', None)
    if n is None and isinstance(getattr(head, 'head', None), nn.Linear):
        n = head.head.out_features
    return int(n) if n is not None else None


def export_onnx_int8(model: nn.Module,
                     out: str,
                     shape,
                     calib_data: str,
                     *,
                     task: str,
                     fuse: bool = True,
                     opset: int = ONNX_OPSET,
                     num_classes: Optional[int] = None,
                     max_images: Optional[int] = CALIB_MAX_IMAGES,
                     method: str = 'auto',
                     speed: bool = True,
                     keep_fp32: Optional[Sequence[str]] = None,
                     **quantize_options) -> dict:
    """Export ``model`` to an INT8 ONNX model calibrated on ``calib_data``, and measure it.

    The calibration folder is checked before anything is exported. The FP32 model is exported
    with :func:`mmeff.deploy.export_onnx` (checked against torch), quantised by
    :func:`quantize_onnx_file`, checked (:func:`mmeff.runtime.onnx_graph_report`: gathers,
    bicubic resizes, NaN/Inf weights; finite outputs) and compared with the FP32 graph on the
    calibration images.

    Args:
        model (nn.Module): An EfficientFormer (V1 or V2) backbone or a classifier's inference
            module.
        out (str): Output ``.onnx`` file.
        shape: Input shape, as :func:`mmeff.deploy.parse_input_shape` takes it.
        calib_data (str): Calibration folder ``DIR/<class>/<image>``.
        task (str): ``'classifier'`` (logits: top-1 agreement is measured and the class count
            checked) or ``'backbone'`` (stage maps: the error of each).
        fuse (bool): Fuse the model before export. Defaults to True.
        opset (int): ONNX opset. Defaults to :data:`mmeff.runtime.onnx.ONNX_OPSET` (20: GELU
            is one ``Gelu`` operator, which ONNX Runtime runs as one kernel; at opset 18 it is
            five, and the INT8 L1 was 1.11x slower in one interleaved run).
        num_classes (int | None): The classifier's class count; read from the model's head
            when not given.
        max_images (int | None): Calibration images used. Defaults to 64.
        method (str): The FP32 ONNX exporter (:func:`mmeff.runtime.write_onnx`): ``'auto'``
            (``torch.export``-based, falling back to TorchScript), ``'dynamo'`` or
            ``'torchscript'``. Defaults to ``'auto'``.
        speed (bool): Time the INT8 and the FP32 graph on this CPU (:func:`int8_speed`, about
            :data:`SPEED_BUDGET_S` seconds): whether INT8 is faster depends on the model and
            the CPU (V2-S1 at 224 on a 2-core Xeon: a little slower,
            ``benchmarks/int8_stage_study_cpu_2threads_intel*.md``). Defaults to True.
        keep_fp32 (Sequence[str] | None): Modules of ``model`` (``named_modules()`` paths,
            e.g. ``'stages.0'``; a classifier's also as its backbone's: ``'stages.0'`` for
            ``'backbone.stages.0'``) whose operators stay FP32 as well
            (:func:`quantize_onnx_file`), checked against the model before anything is
            exported; ``[]``: none. None (default): the stem and the first stage
            (:data:`DEFAULT_KEEP_FP32`).
        **quantize_options: ``per_channel``, ``op_types``, ``reduce_range`` of
            :func:`quantize_onnx_file`.

    Returns:
        dict: the :func:`quantize_onnx_file` report plus ``task``, ``input_shape``,
        ``op_histogram``, ``gather_ops``, ``bicubic_ops``, ``inputs``/``outputs``,
        ``fp32_export`` (the FP32 export's ``exporter``, ``onnxruntime`` error vs torch),
        ``onnxruntime_ops`` (what ONNX Runtime runs, :func:`runtime_ops`), ``int8_vs_fp32``
        (:func:`compare_onnx`), ``speed`` (:func:`int8_speed`, with ``speed``) and
        ``problems``. ``path`` is ``out`` when
        ``problems`` is empty; otherwise ``out`` keeps its previous content, the model is kept
        at :func:`mmeff.deploy.output.failed_path` and ``rejected`` names ``out``.
    """
    from mmeff.runtime import nonfinite, onnx_graph_report

    from .export import export_onnx
    from .output import StagedOutput, place_checked
    if task not in ('classifier', 'backbone'):
        raise ValueError(f"task must be 'classifier' or 'backbone', got {task!r}")
    if not str(out).endswith('.onnx'):
        raise ValueError(f'an ONNX model is saved as a file ending in .onnx, got {out!r}')
    if task == 'classifier' and num_classes is None:
        num_classes = _num_classes_of(model)
    if isinstance(keep_fp32, str):
        keep_fp32 = [keep_fp32]
    names = [n for n, _ in model.named_modules() if n]

    def known(m):
        return any(_within(n, m) for n in names)

    if keep_fp32 is not None:  # a classifier's modules may be named as its backbone's
        keep_fp32 = [m if known(m) or not known(f'backbone.{m}') else f'backbone.{m}'
                     for m in keep_fp32]
    unknown = [m for m in keep_fp32 or () if not known(m)]
    if unknown:
        tops = sorted({'.'.join(n.split('.')[:2]) for n in names})
        raise ValueError(f"--keep-fp32 {' '.join(unknown)}: the model has no such module; "
                         f"name modules as its named_modules() does, e.g. "
                         f"{', '.join(tops[:8])}{' ...' if len(tops) > 8 else ''}")
    paths = check_calib_data(calib_data, num_classes if task == 'classifier' else None)
    input_shape = parse_input_shape(shape)
    inputs = calibration_inputs(paths[:max_images] if max_images else paths, input_shape,
                                max_images=None)
    with tempfile.TemporaryDirectory(prefix='mmeff_int8_') as tmp:
        fp32 = osp.join(tmp, 'fp32.onnx')
        fp32_report = export_onnx(model, fp32, input_shape, fuse=fuse, opset=opset,
                                  method=method)
        with StagedOutput(out) as staged:
            report = quantize_onnx_file(fp32, staged.path, inputs, keep_fp32=keep_fp32,
                                        **quantize_options)
            graph = onnx_graph_report(staged.path, weights=True)
            report.update({k: v for k, v in graph.items() if k not in ('format', 'path')})
            report['onnxruntime_ops'] = runtime_ops(staged.path)
            report.update(task=task, input_shape=list(input_shape), opset=opset, fused=fuse,
                          inputs=fp32_report['inputs'], outputs=fp32_report['outputs'],
                          fp32_export=dict(exporter=fp32_report['exporter'],
                                           onnxruntime=fp32_report.get('onnxruntime')),
                          calibration=dict(report['calibration'], source=str(calib_data)))
            names = [o['name'] for o in fp32_report['outputs']]
            report['int8_vs_fp32'] = compare_onnx(staged.path, fp32, inputs, names, task)
            if speed:
                report['speed'] = int8_speed(staged.path, fp32, inputs[0])
            problems = list(graph['problems'])  # gathers, bicubic resizes, NaN/Inf weights
            bad = nonfinite((f'output {n!r}', o) for n, o in
                            zip(names, run_onnx(staged.path, inputs[:1])[0]))
            if bad:
                problems.append(f'the INT8 model gives NaN or Inf on a calibration image: '
                                f'{"; ".join(bad[:3])}')
            quantised = [op for op in MUST_STAY_FP32
                         if f'QLinear{op}' in report['onnxruntime_ops']['int8']]
            if quantised:
                problems.append(f'ONNX Runtime runs {", ".join(quantised)} as INT8 kernels '
                                f'(QLinear{quantised[0]}): keep the operators beside it FP32')
            report['problems'] = problems
            place_checked(staged, report)
    report.pop('fp32_path', None)  # a temporary file, gone now
    return report


def format_int8_report(report: dict) -> str:
    """Human-readable summary of an :func:`export_onnx_int8` report."""
    lines = [f"onnx INT8 model: {report['path']}",
             f"  file size: {report['file_size_bytes'] / 2**20:.2f} MiB "
             f"(FP32 {report['fp32_file_size_bytes'] / 2**20:.2f} MiB)"]
    for kind in ('inputs', 'outputs'):
        for io in report.get(kind, []):
            lines.append(f"  {kind[:-1]:6s} {io['name']}: {io['shape']}")
    s = report['settings']
    lines.append(f"  quantisation: static {s['format']}, weights {s['weights']}"
                 f"{' per channel' if s['per_channel'] else ''}, activations "
                 f"{s['activations']}; calibration {report['calibration']['images']} images "
                 f"from {report['calibration']['source']}")
    lines.append('  INT8 operators: ' + ', '.join(f'{k} {v}' for k, v in
                                                  report['int8_ops'].items()))
    lines.append('  kept FP32: ' + ', '.join(f'{k} {v}' for k, v in report['fp32_ops'].items()))
    for op, why in report.get('kept_fp32_reasons', {}).items():
        lines.append(f'    {op}: {why}')
    ran = report.get('onnxruntime_ops')
    if ran:
        lines.append('  ONNX Runtime runs (this CPU): integer kernels ' + ', '.join(
            f'{k} {v}' for k, v in ran['int8'].items()) + '; FP32 ' + ', '.join(
            f'{k} {v}' for k, v in ran['fp32'].items()))
    e = report.get('int8_vs_fp32')
    if e:
        line = (f"  INT8 vs FP32 on {e['images']} calibration images: relative error "
                f"{e['rel_err']:.2e} (largest over the outputs), max abs {e['max_abs_err']:.2e}")
        if 'top1_agreement' in e:
            line += f", top-1 agreement {e['top1_agreement']:.1%}"
        lines.append(line)
    sp = report.get('speed')
    if sp:
        shape = 'x'.join(map(str, sp['input_shape']))
        lines.append(f"  speed on this CPU (ONNX Runtime, {shape}, median of {sp['reps']} "
                     f"interleaved calls): INT8 {sp['int8_ms']:.2f} ms, FP32 {sp['fp32_ms']:.2f} "
                     f"ms ({sp['speedup']:.2f}x)")
        if sp['speedup'] < 1:
            smaller = report['fp32_file_size_bytes'] / max(report['file_size_bytes'], 1)
            fp32_run = sorted(((n, op) for op, n in (ran or {}).get('fp32', {}).items()
                               if not op.startswith('Reorder')), reverse=True)[:3]
            most = f" (most: {', '.join(f'{op} {n}' for n, op in fp32_run)})" if fp32_run else ''
            lines.append(f"    INT8 is not faster than FP32 here: usually the quantise/dequantise "
                         f"steps around the operators ONNX Runtime runs in FP32{most} cost more "
                         f"than the integer kernels save on this model and CPU; the file is "
                         f"{smaller:.1f}x smaller. More stages FP32 may help (--keep-fp32 stem "
                         f"stages.0 stages.1 stages.2); time it on the target device "
                         f"(tools/benchmark_latency.py --runtimes onnxruntime onnxruntime-int8)")
    problems = report.get('problems', [])
    lines.append('  checks: ' + ('all passed' if not problems else
                                 'FAILED: ' + '; '.join(problems)))
    return '\n'.join(lines)


__all__ = ['INT8_OP_TYPES', 'PASS_THROUGH_OP_TYPES', 'KEEP_FP32', 'MIXER_CONV_REASON',
           'SOFTMAX_NEIGHBOUR_REASON', 'KEEP_FP32_ASKED_REASON', 'DEFAULT_KEEP_FP32',
           'KEEP_FP32_DEFAULT_REASON', 'MUST_STAY_FP32', 'mixer_convs', 'softmax_neighbours',
           'node_modules', 'module_nodes', 'default_keep_fp32',
           'runtime_ops', 'check_calib_data',
           'eval_transform', 'calibration_inputs', 'qdq_op_summary', 'fp32_reason',
           'quantize_onnx_file',
           'SPEED_BUDGET_S', 'int8_speed', 'run_onnx', 'compare_onnx', 'onnx_top1',
           'export_onnx_int8', 'format_int8_report']
