"""Export a whole mmseg segmentor (Semantic FPN, UPerNet) with an mmeff backbone to ONNX or Core ML.

What is exported, for one input size ``(H, W)``::

    image (B, 3, H, W) -> [(x - mean) / std] -> fused EfficientFormer -> neck -> decode head
          -> bilinear resize to (H, W) -> labels (B, H, W) int32 = argmax over classes
                                          or logits (B, num_classes, H, W) float32

* The segmentor is built from an mmseg config whose ``model.backbone`` is an mmeff
  EfficientFormer, and its checkpoint is loaded through mmeff's fit check
  (:func:`mmeff.checkpoint.check_model_fit`): a file that does not fit is an error naming the
  missing and unexpected keys, never random weights.
* The backbone is fused for the export size (:func:`mmeff.deploy.fuse_model`: BN and layer
  scales folded, every attention bias cached, so no ``gather``); SyncBN becomes BN (it needs
  CUDA); the auxiliary head is left out (training only); the neck's and head's GroupNorms, if
  any, become :class:`~mmeff.deploy.export.ExportGroupNorm`.
* The resize to the input size uses the decode head's ``align_corners``, as mmseg's
  ``predict_by_feat`` does, and the argmax is mmseg's ``postprocess_result``'s (a one-channel
  head gives ``sigmoid > threshold`` instead).
* With ``normalize=True`` (the default) the model takes pixel values 0-255 in the channel
  order of the config's ``data_preprocessor`` (RGB with ``bgr_to_rgb=True``), and the graph
  starts with its mean/std. A Core ML ``ImageType`` input (``image_input=True``) always works
  this way: an ImageType's single scalar scale cannot express a per-channel std.

Images of another size than the export size: :mod:`mmeff.deploy.preprocess`.

Checks: ONNX with ``onnx.checker`` and ONNX Runtime against the torch model (logits: relative
error; labels: the share of pixels with the same label), both on a random image; the fused
torch model against the unfused one; Core ML with :func:`~mmeff.runtime.inspect_coreml`
and :func:`~mmeff.runtime.coreml_problems` (mlprogram, iOS 16, no gather, FP16), plus the
output's shape and dtype. Core ML predictions need macOS.
"""
import copy
import json
import os.path as osp
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mmeff.runtime import (COMPUTE_UNITS, coreml_problems, inspect_coreml, nonfinite,
                           ort_session, require)

from .export import check_export_memory, export_friendly_norms_, format_report
from .output import StagedOutput, place_checked
from .fuse import cache_attention_bias, fuse_model, fusion_report, parse_input_size

OUTPUTS = ('labels', 'logits')
FORMATS = ('onnx', 'coreml')
# One token in the stride-32 stage: below it the last stage has nothing to attend over.
MIN_INPUT_SIDE = 32
# The share of pixels on which the exported labels must equal torch's on the check image.
MIN_LABEL_AGREEMENT = 0.999


def supported_backbone_types() -> Tuple[str, ...]:
    """The backbone types the segmentor export takes: the scoped type of every registered
    model family (``mmeff.EfficientFormer``, ``mmeff.EfficientFormerV2``;
    :mod:`mmeff.models.families`)."""
    import mmeff.models  # noqa: F401  (the backbone modules register the families)
    from mmeff.models.families import iter_families
    return tuple(f.type for f in iter_families())


def _backbone_classes() -> tuple:
    import mmeff.models  # noqa: F401
    from mmeff.models.families import iter_families
    return tuple(f.cls for f in iter_families())


def _is_supported_type(btype, supported) -> bool:
    """``'mmeff.EfficientFormer'`` (or the bare class itself) is; an unscoped name is not, since
    it is looked up in mmseg's registry, which holds no mmeff class."""
    if isinstance(btype, type):
        return btype in _backbone_classes()
    return str(btype) in supported


def load_segmentor(config: str, checkpoint: Optional[str] = None,
                   cfg_options: Optional[dict] = None) -> Tuple[nn.Module, dict]:
    """Build the mmseg segmentor of ``config`` with the weights of ``checkpoint``.

    Args:
        config (str): An mmseg config (``.py``) whose ``model`` is an ``EncoderDecoder`` with an
            mmeff EfficientFormer backbone (:func:`supported_backbone_types`), e.g.
            ``configs/segmentation/fpn_effformer_l1_ade20k_40k.py``.
        checkpoint (str | None): The checkpoint tools/train.py saved with this config (a whole
            segmentor). ``None`` keeps random weights (fine for latency and for testing the
            export, meaningless for predictions).
        cfg_options (dict | None): Config entries to override before anything is built, as
            ``--cfg-options`` on the tools (:func:`mmeff.deploy.tasks.load_config`), e.g.
            ``{'model.decode_head.num_classes': 19}``. Defaults to None.

    Returns:
        tuple[nn.Module, dict]: The segmentor in eval mode, and ``meta`` (``config``,
        ``weights``, ``classes`` (the checkpoint's dataset classes, or None), ``arch``,
        ``backbone``).

    Raises:
        ValueError: The config is not an EncoderDecoder with a supported backbone, or the
            checkpoint does not fit (:class:`mmeff.checkpoint.CheckpointMismatchError`).
        FileNotFoundError: The config or the checkpoint does not exist.
    """
    config = str(config)
    if not config.endswith('.py'):
        raise ValueError(f'the segmentor export needs an mmseg config file (.py), got {config!r}')
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file {config!r} does not exist')
    import mmeff.models  # noqa: F401  (registers mmeff's backbones)
    from mmengine.config import ConfigDict
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    from mmeff.compat import sync_bn_to_bn

    from .tasks import load_config
    cfg = load_config(config, cfg_options)
    model_cfg = cfg.get('model')
    if model_cfg is None:
        raise ValueError(f'config {config!r} has no `model` dict')
    model_cfg = copy.deepcopy(model_cfg.to_dict() if hasattr(model_cfg, 'to_dict')
                              else dict(model_cfg))
    mtype = model_cfg.get('type')
    if str(mtype).split('.')[-1] != 'EncoderDecoder':
        raise ValueError(f"config {config!r}: model.type is {mtype!r}; the segmentor export takes "
                         f"mmseg's 'EncoderDecoder' (Semantic FPN, UPerNet, ...)")
    backbone_cfg = model_cfg.get('backbone') or {}
    btype = backbone_cfg.get('type')
    supported = supported_backbone_types()
    if not _is_supported_type(btype, supported):
        raise ValueError(
            f'config {config!r}: model.backbone is {btype!r}, which is not an mmeff '
            f'EfficientFormer; the segmentor export supports the backbone types '
            f'{", ".join(supported)} (their attention biases are cached and their BN folded for '
            f'the export). Use one of configs/segmentation/, or set model.backbone.type to one '
            f'of them')
    if checkpoint:  # before building: a missing or unreadable file is found at once
        from mmeff.checkpoint import check_checkpoint_file
        check_checkpoint_file(checkpoint)
    sync_bn_to_bn(model_cfg)  # SyncBN needs CUDA; at inference it is BN
    model_cfg['pretrained'] = None
    backbone_cfg = model_cfg['backbone']
    backbone_cfg['init_cfg'] = None  # the weights come from `checkpoint`, not a pretrained file
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmseg')):
        model = MODELS.build(ConfigDict(model_cfg))  # mmseg reads test_cfg.mode etc.
    if not isinstance(model.backbone, _backbone_classes()):
        raise ValueError(f'config {config!r}: the built backbone is '
                         f'{type(model.backbone).__name__}, not one of {", ".join(supported)}')
    weights, classes = 'random (no checkpoint given)', None
    if checkpoint:
        from mmeff.checkpoint import check_model_fit, mmengine_state_dict, read_checkpoint
        raw = read_checkpoint(checkpoint)
        state_dict = mmengine_state_dict(raw)
        fit = check_model_fit(model, state_dict, str(checkpoint), purpose='exact',
                              config=config)
        model.load_state_dict(state_dict, strict=False)
        weights = f'{checkpoint} ({len(fit.matched)} tensors loaded)'
        meta = raw.get('meta') if isinstance(raw, dict) else None
        dataset_meta = meta.get('dataset_meta') if isinstance(meta, dict) else None
        if isinstance(dataset_meta, dict) and dataset_meta.get('classes'):
            classes = [str(c) for c in dataset_meta['classes']]
    arch = backbone_cfg.get('arch')
    meta = dict(config=config, weights=weights, classes=classes,
                arch=arch if isinstance(arch, str) else 'custom',
                backbone=f'{type(model.backbone).__name__}({arch!r})')
    return model.eval(), meta


def check_input_size(size) -> Tuple[int, int]:
    """``(H, W)`` of ``size`` if a segmentor can be exported at it, else a ``ValueError``
    naming the size and the fix."""
    h, w = parse_input_size(size)
    if min(h, w) < MIN_INPUT_SIDE:
        raise ValueError(
            f'input size {h}x{w} is too small for a segmentor export: each side must be at '
            f'least {MIN_INPUT_SIDE} px (the stride-32 stage needs one token per side); export '
            f'at the size the app will feed, e.g. --input-size 512x512, and resize images to it '
            f'(mmeff.deploy.preprocess)')
    return h, w


class SegmentorExportModule(nn.Module):
    """``image -> labels | logits`` of an mmseg ``EncoderDecoder``, traceable (see module doc).

    Args:
        segmentor (nn.Module): The mmseg segmentor (its modules are shared, not copied).
        output (str): ``'labels'`` (``(B, H, W)`` int32) or ``'logits'``
            (``(B, num_classes, H, W)`` float32). Defaults to ``'labels'``.
        normalize (bool): Start with the config's ``(x - mean) / std`` (input: pixels 0-255);
            else the input is normalised already. Defaults to True.
    """

    def __init__(self, segmentor: nn.Module, output: str = 'labels', normalize: bool = True):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f'output must be one of {OUTPUTS}, got {output!r}')
        self.backbone = segmentor.backbone
        self.neck = segmentor.neck if getattr(segmentor, 'with_neck', False) else None
        self.decode_head = segmentor.decode_head
        self.align_corners = bool(segmentor.align_corners)
        self.output = output
        self.threshold = float(getattr(self.decode_head, 'threshold', 0.3) or 0.3)
        preprocessor = getattr(segmentor, 'data_preprocessor', None)
        self.normalize = bool(normalize and getattr(preprocessor, '_enable_normalize', False))
        if self.normalize:
            mean = preprocessor.mean.detach().float().reshape(1, -1, 1, 1)
            std = preprocessor.std.detach().float().reshape(1, -1, 1, 1)
            self.register_buffer('mean', mean.clone())
            self.register_buffer('inv_std', 1. / std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        if self.normalize:
            x = (x - self.mean) * self.inv_std
        feats = self.backbone(x)
        if self.neck is not None:
            feats = self.neck(feats)
        logits = self.decode_head(feats)
        logits = F.interpolate(logits, size=size, mode='bilinear',
                               align_corners=self.align_corners)
        if self.output == 'logits':
            return logits
        if logits.shape[1] == 1:  # a binary head: mmseg thresholds the sigmoid
            return (logits.sigmoid() > self.threshold).to(torch.int32)[:, 0]
        return logits.argmax(dim=1).to(torch.int32)


def _check_input(normalize: bool, shape) -> torch.Tensor:
    """A fixed random input: pixel values 0-255 (or about their normalised values)."""
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 255.
    if not normalize:
        x = (x - 127.5) / 58.
    return x


def compare_outputs(output: str, exported: np.ndarray, reference: torch.Tensor) -> dict:
    """How an exported model's output matches torch's: ``rel_err`` and ``max_abs_err`` for
    logits, ``label_agreement`` (share of equal pixels) for labels."""
    ref = reference.detach().cpu().numpy()
    exported = np.asarray(exported)
    if exported.shape != ref.shape:
        raise RuntimeError(f'exported output shape {exported.shape} differs from torch\'s '
                           f'{ref.shape}')
    if output == 'labels':
        return dict(label_agreement=float((exported == ref).mean()))
    diff = exported.astype(np.float64) - ref.astype(np.float64)
    return dict(max_abs_err=float(np.abs(diff).max()),
                rel_err=float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-12)))


def _check_agreement(output: str, errs: dict, rtol: float, what: str) -> None:
    if output == 'labels':
        if not errs['label_agreement'] >= MIN_LABEL_AGREEMENT:
            raise RuntimeError(f'{what}: labels agree with torch on only '
                               f"{100 * errs['label_agreement']:.3f}% of the pixels (needed: "
                               f'{100 * MIN_LABEL_AGREEMENT}%)')
    elif not errs['rel_err'] <= rtol:  # also catches NaN
        raise RuntimeError(f"{what}: logits differ from torch: relative error "
                           f"{errs['rel_err']:.2e} > {rtol:.0e}")


@torch.no_grad()
def fuse_conv_modules_(model: nn.Module) -> int:
    """In place: fold the BatchNorm of every mmcv ``ConvModule`` (conv -> norm -> act, the
    neck's and decode head's layers) into its conv; returns how many were folded. ONNX Runtime
    and Core ML fold these themselves, but the exported graph is smaller and the fusion report
    then counts no BN at all."""
    from mmcv.cnn import ConvModule
    from torch.nn.modules.batchnorm import _BatchNorm

    from .fuse import fuse_conv_bn
    folded = 0
    for m in model.modules():
        if not (isinstance(m, ConvModule) and m.with_norm and isinstance(m.conv, nn.Conv2d)
                and isinstance(m.norm, _BatchNorm)):
            continue
        if list(m.order).index('norm') != list(m.order).index('conv') + 1:
            continue  # a norm before the conv (order norm, conv, act) cannot be folded into it
        m.conv = fuse_conv_bn(m.conv, m.norm)
        setattr(m, m.norm_name, nn.Identity())
        folded += 1
    return folded


def _pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)``: row ``i`` averages the bin ``[floor(i n_in / n_out),
    ceil((i + 1) n_in / n_out))``, the bins of ``nn.AdaptiveAvgPool2d``."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1. / (end - start)
    return m


class FixedAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` for one input size, as two matmuls with constant averaging
    matrices: ``rows @ x @ cols``. The same function (the bins are rectangles, so the mean is
    separable), with no gather: exporters lower an adaptive pool whose input size is not a
    multiple of its output size (UPerNet's PPM bins 1, 2, 3, 6 on a 3x4 map) to index
    gathers in ONNX and to one slice and mean per bin in Core ML."""

    def __init__(self, output_size: Tuple[int, int], input_size: Tuple[int, int]):
        super().__init__()
        self.input_size = tuple(input_size)
        self.register_buffer('rows', _pool_matrix(input_size[0], output_size[0]).float())
        self.register_buffer('cols', _pool_matrix(input_size[1], output_size[1]).t().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f'FixedAdaptiveAvgPool2d was made for {self.input_size} inputs, '
                             f'got {tuple(x.shape[-2:])}')
        return self.rows @ x @ self.cols


def fix_adaptive_pools_(model: nn.Module, x: torch.Tensor) -> int:
    """In place: replace every ``nn.AdaptiveAvgPool2d`` whose input (on ``x``) is not a
    multiple of its output by :class:`FixedAdaptiveAvgPool2d`; returns how many."""
    seen = {}
    hooks = [m.register_forward_hook(lambda m, inp, out: seen.__setitem__(
        id(m), (tuple(inp[0].shape[-2:]), tuple(out.shape[-2:]))))
        for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) not in seen:
                continue
            (ih, iw), (oh, ow) = seen[id(child)]
            if ih % oh or iw % ow:
                setattr(parent, name, FixedAdaptiveAvgPool2d((oh, ow), (ih, iw)))
                replaced += 1
    return replaced


def _prepare(segmentor: nn.Module, x: torch.Tensor, output: str, normalize: bool,
             fuse: bool) -> Tuple[nn.Module, nn.Module]:
    """``(exported, reference)``: the module to export for inputs shaped like ``x`` (fused or
    with cached biases, export GroupNorms, fixed adaptive pools) and the unfused module as
    built, both in eval mode."""
    size = tuple(x.shape[-2:])
    check_export_memory(segmentor.backbone, tuple(x.shape))
    reference = SegmentorExportModule(segmentor, output=output, normalize=normalize).eval()
    if fuse:
        exported = fuse_model(reference, size)
        fuse_conv_modules_(exported)
    else:  # still cache the biases: an exported graph must not gather
        exported = cache_attention_bias(reference, size)
    export_friendly_norms_(exported)
    fix_adaptive_pools_(exported, x)
    return exported.eval(), reference


def export_segmentor(config: str,
                     checkpoint: Optional[str] = None,
                     fmt: str = 'onnx',
                     input_size=(512, 512),
                     out: Optional[str] = None,
                     output: str = 'labels',
                     batch_size: int = 1,
                     normalize: bool = True,
                     fuse: bool = True,
                     precision: str = 'fp16',
                     image_input: bool = False,
                     compute_units: str = 'ALL',
                     method: str = 'auto',
                     opset: int = 18,
                     dynamic_batch: bool = False,
                     rtol: float = 1e-4,
                     cfg_options: Optional[dict] = None) -> dict:
    """Export the whole segmentor of ``config`` (+ ``checkpoint``) and check the file.

    Args:
        config (str): mmseg config with an mmeff backbone (see :func:`load_segmentor`).
        checkpoint (str | None): Its trained checkpoint; ``None``: random weights.
        fmt (str): ``'onnx'`` or ``'coreml'``. Defaults to ``'onnx'``.
        input_size: ``(H, W)``, ``512`` or ``'512x1024'``; at least 32 px a side.
            Defaults to (512, 512).
        out (str | None): Output file (``.onnx``) or package (``.mlpackage``). Defaults to
            ``work_dirs/export/<config name>_segmentor_<output>_<H>x<W>.<ext>``.
        output (str): ``'labels'`` (argmax in the graph, int32) or ``'logits'``.
            Defaults to ``'labels'``.
        batch_size (int): Batch of the export. Defaults to 1.
        normalize (bool): The config's mean/std in the graph (input: pixels 0-255). Defaults
            to True; an ImageType input needs it.
        fuse (bool): Fold the backbone's BN and layer scales. Defaults to True.
        precision (str): Core ML: ``'fp16'`` or ``'fp32'``. Defaults to ``'fp16'``.
        image_input (bool): Core ML: ``ImageType`` input (8-bit pixels, channel order of the
            config) instead of a float tensor. Defaults to False.
        compute_units (str): Core ML: recorded in the metadata (see
            :func:`mmeff.deploy.export_coreml`). Defaults to ``'ALL'``.
        method (str): Core ML: ``'auto'``, ``'export'`` or ``'trace'``. Defaults to ``'auto'``.
        opset (int): ONNX opset. Defaults to 18.
        dynamic_batch (bool): ONNX: dynamic batch dimension. Defaults to False.
        rtol (float): ONNX logits: allowed relative error against torch. Defaults to 1e-4.
        cfg_options (dict | None): Config entries to override before the segmentor is built
            (``--cfg-options``, see :func:`load_segmentor`). Defaults to None.

    Returns:
        dict: The export report: ``path``, ``format``, ``task`` (``'segmentor'``),
        ``output``, ``inputs``/``outputs``, ``op_histogram``, ``gather_ops``, ``fusion``,
        ``fused_vs_unfused`` (torch), ``preprocessing`` (what the input is), ``model``
        (config, weights, classes, arch), ``problems`` (empty when all checks pass: ONNX no
        gather and no bicubic resize, :func:`~mmeff.deploy.export.onnx_problems`; Core ML
        the spec checks) and for ONNX ``onnxruntime`` (agreement with torch).
    """
    if fmt not in FORMATS:
        raise ValueError(f'fmt must be one of {FORMATS}, got {fmt!r}')
    if output not in OUTPUTS:
        raise ValueError(f'output must be one of {OUTPUTS}, got {output!r}')
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f'batch_size must be an int >= 1, got {batch_size!r}')
    if fmt == 'coreml':
        if precision not in ('fp16', 'fp32'):
            raise ValueError(f"precision must be 'fp16' or 'fp32', got {precision!r}")
        if compute_units not in COMPUTE_UNITS:
            raise ValueError(f'compute_units must be one of {COMPUTE_UNITS}, '
                             f'got {compute_units!r}')
        if image_input and not normalize:
            raise ValueError('a Core ML image input takes 8-bit pixels: it needs the '
                             'normalisation in the graph (normalize=True)')
    h, w = check_input_size(input_size)
    ext = '.onnx' if fmt == 'onnx' else '.mlpackage'
    if out is None:
        name = osp.splitext(osp.basename(str(config)))[0]
        out = osp.join('work_dirs', 'export', f'{name}_segmentor_{output}_{h}x{w}{ext}')
    elif not str(out).endswith(ext):
        raise ValueError(f'a {fmt} export is written to a path ending in {ext}, got {out!r}')

    segmentor, meta = load_segmentor(config, checkpoint, cfg_options)
    in_channels = getattr(segmentor.backbone, 'in_channels', 3)
    if image_input and in_channels != 3:
        raise ValueError(f'an ImageType input needs 3 channels, the model takes {in_channels}')
    x = _check_input(normalize, (batch_size, in_channels, h, w))
    exported, reference = _prepare(segmentor, x, output, normalize, fuse)
    with torch.no_grad():
        ref = exported(x)
        logits_fused = _as_logits(exported)(x)
        logits_unfused = _as_logits(reference)(x)
    bad = nonfinite([('torch logits', logits_fused)])
    if bad:
        raise ValueError(f'the torch segmentor itself gives NaN or Inf on the check image '
                         f'({bad[0]}): check the checkpoint ({meta["weights"]})')
    preprocessor = segmentor.data_preprocessor
    channel_order = 'RGB' if getattr(preprocessor, 'channel_conversion', False) else \
        'as loaded (BGR with cv2/mmcv)'
    preprocessing = dict(
        input='pixel values 0-255, ' + channel_order if exported.normalize else
        'normalised by the config\'s mean/std (as mmseg\'s data_preprocessor gives it)',
        mean=[round(float(v), 4) for v in preprocessor.mean.flatten()]
        if exported.normalize else None,
        std=[round(float(v), 4) for v in preprocessor.std.flatten()]
        if exported.normalize else None,
        resize='images of another size: mmeff.deploy.preprocess (keep_ratio: scale to fit, '
               'pad bottom/right with the mean; stretch)',
        align_corners=exported.align_corners)
    report = dict(task='segmentor', output=output, fused=fuse, fusion=fusion_report(exported),
                  fused_vs_unfused=compare_outputs('logits', logits_fused.numpy(),
                                                   logits_unfused),
                  preprocessing=preprocessing, model=meta,
                  num_classes=int(segmentor.decode_head.out_channels))
    if fmt == 'onnx':
        report.update(_onnx(exported, x, ref, out, output, opset, dynamic_batch, rtol))
    else:
        metadata = {'mmeff.task': 'segmentor', 'mmeff.arch': meta['arch'],
                    'mmeff.output': output,
                    'mmeff.config': str(config), 'mmeff.weights': meta['weights'],
                    'mmeff.input': preprocessing['input'],
                    'mmeff.align_corners': str(exported.align_corners)}
        if preprocessing['mean']:
            metadata['mmeff.mean'] = json.dumps(preprocessing['mean'])
            metadata['mmeff.std'] = json.dumps(preprocessing['std'])
        if meta['classes']:
            metadata['mmeff.classes'] = json.dumps(meta['classes'])
        report.update(_coreml(exported, x, ref, out, output, precision, compute_units,
                              image_input, method, metadata,
                              bgr=exported.normalize and channel_order != 'RGB'))
    return report


def _as_logits(module: SegmentorExportModule) -> SegmentorExportModule:
    """The same module (shared weights) returning logits."""
    view = copy.copy(module)
    view.output = 'logits'
    return view


def _onnx(module, x, ref, path, output, opset, dynamic_batch, rtol) -> dict:
    """Export to ONNX beside ``path``, check there, then replace ``path`` (never before the
    checks passed: a failed export leaves the previous file, see :mod:`mmeff.deploy.output`)."""
    with StagedOutput(path) as staged:
        report = _onnx_at(module, x, ref, staged.path, path, output, opset, dynamic_batch, rtol)
        place_checked(staged, report)
    return report


def _onnx_at(module, x, ref, tmp, path, output, opset, dynamic_batch, rtol) -> dict:
    """:func:`_onnx`'s export to ``tmp`` and its checks (the runtime layer's writer, graph
    report and session); messages name ``path``."""
    from mmeff.runtime import onnx_graph_report, ort_session, write_onnx
    dynamic_axes = {'image': {0: 'batch'}, output: {0: 'batch'}} if dynamic_batch else None
    written = write_onnx(module, x, tmp, input_names=('image',), output_names=(output,),
                         opset=opset, dynamic_axes=dynamic_axes, atomic=False)
    graph = onnx_graph_report(tmp)  # onnx.checker, ops, NaN/Inf weights, problems
    bad = graph['nonfinite_constants']
    if bad:
        raise RuntimeError(f'{path}: {len(bad)} ONNX weight tensor(s) hold NaN or Inf: {bad[:3]}')
    (got,) = ort_session(tmp).run(None, {'image': x.numpy()})
    errs = compare_outputs(output, got, ref)
    _check_agreement(output, errs, rtol, f'ONNX Runtime ({path})')
    return dict(graph, path=osp.abspath(path), exporter=written['exporter'], opset=opset,
                export_s=written['export_s'], onnxruntime=errs)


def _coreml(module, x, ref, path, output, precision, compute_units, image_input, method,
            metadata, bgr) -> dict:
    from mmeff.runtime import convert_coreml
    # The image input takes pixels 0-255 as they are (the config's mean/std are in the
    # graph); gathers are reported by the spec checks below, as for every export.
    mlmodel, info = convert_coreml(
        module, x, outputs=[(output, np.int32 if output == 'labels' else np.float32)],
        image_input=image_input, image_scale=1., color_layout='BGR' if bgr else 'RGB',
        precision=precision, compute_units=compute_units, method=method, refuse_ops=False)
    used, reason, convert_s = info['method'], info['fallback_reason'], info['convert_s']
    size = 'x'.join(str(s) for s in x.shape)
    metadata = {'mmeff.input_shape': size, 'mmeff.precision': precision,
                'mmeff.compute_units': compute_units, 'mmeff.conversion': used,
                'mmeff.image_input': str(bool(image_input)), **metadata}
    mlmodel.user_defined_metadata.update({k: str(v) for k, v in metadata.items()})
    mlmodel.short_description = (f'{metadata["mmeff.config"]}: whole segmentor (mmeff), input '
                                 f'{size} ({metadata["mmeff.input"]}), output {output}')
    with StagedOutput(path) as staged:  # saved and inspected beside `path`, then placed
        report = _coreml_checked(staged.path, mlmodel, ref, output, precision, image_input,
                                 used, reason, convert_s)
        place_checked(staged, report)
    return report


def _coreml_checked(path, mlmodel, ref, output, precision, image_input, used, reason,
                    convert_s) -> dict:
    """Save ``mlmodel`` at ``path`` (the staging place) and check it."""
    mlmodel.save(path)
    report = inspect_coreml(path)
    # The upsample ops' scale factors are op parameters, FP32 by the op's definition: not
    # tensors the model computes in FP32 (coreml_problems would count them as such).
    params = _scale_factor_consts(path)
    report['non_fp16_tensors'] = [t for t in report['non_fp16_tensors']
                                  if _tensor_name(t) not in params]
    report['fp32_op_parameters'] = sorted(params)
    report.update(method=used, fallback_reason=reason, convert_s=round(convert_s, 2),
                  torch_nonfinite_outputs=nonfinite([(f'output {output!r}', ref)]))
    problems = coreml_problems(report, expect_fp16=precision == 'fp16')
    expected = dict(name=output, shape=list(ref.shape),
                    dtype='INT32' if output == 'labels' else 'FLOAT32')
    got = report['outputs'][0] if len(report['outputs']) == 1 else None
    if got is None or {k: got.get(k) for k in expected} != expected:
        problems.append(f"outputs are {report['outputs']}, expected one {expected}")
    want_kind = 'image' if image_input else 'tensor'
    if [i.get('kind') for i in report['inputs']] != [want_kind]:
        problems.append(f"inputs are {report['inputs']}, expected one {want_kind} input")
    report['problems'] = problems
    return report


def evaluate_onnx_segmentor(path: str, config: str, data_root: Optional[str] = None,
                            mode: str = 'keep_ratio') -> dict:
    """mmseg's metric of an exported ONNX segmentor on the test set of ``config``.

    Every image of the config's test dataset goes through
    :func:`mmeff.deploy.preprocess.preprocess_image` (to the export's input size), ONNX Runtime
    and back (:func:`~mmeff.deploy.preprocess.labels_to_image`, or for a logits output
    :func:`~mmeff.deploy.preprocess.logits_to_image` and argmax); the labels go as
    ``pred_sem_seg``, with the dataset's own ground truth (the config's ``LoadAnnotations``,
    e.g. ``reduce_zero_label``), into the config's ``test_evaluator`` (``IoUMetric``).

    Args:
        path (str): The ``.onnx`` file (:func:`export_segmentor`, normalisation in the graph).
        config (str): The segmentation config it was exported from.
        data_root (str | None): Overrides the test dataset's ``data_root``.
        mode (str): Preprocessing, ``'keep_ratio'`` or ``'stretch'``. Defaults to
            ``'keep_ratio'``.

    Returns:
        dict: ``metrics`` (the evaluator's, e.g. ``mIoU``), ``labels`` (``img_path`` -> the
        ``(h, w)`` label map), ``input_size`` (H, W).
    """
    import cv2
    from mmengine.config import Config
    from mmengine.evaluator import Evaluator
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    from .preprocess import labels_to_image, logits_to_image, preprocess_image
    import mmeff.models  # noqa: F401  (the config's custom_imports)
    cfg = Config.fromfile(config)
    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    if data_root is not None:
        loader_cfg.dataset.data_root = data_root
    # Images are read and resized here; the dataset only gives paths and the ground truth at
    # the image's own size (the config's LoadAnnotations, without its resizing steps).
    loader_cfg.dataset.pipeline = [t for t in loader_cfg.dataset.pipeline if t['type'] in (
        'LoadAnnotations', 'PackSegInputs')]
    loader_cfg.batch_size, loader_cfg.num_workers, loader_cfg.persistent_workers = 1, 0, False
    preprocessor = cfg.model.get('data_preprocessor', {})
    to_rgb = bool(preprocessor.get('bgr_to_rgb', False))
    align_corners = bool(cfg.model.decode_head.get('align_corners', False))
    with DefaultScope.overwrite_default_scope(cfg.get('default_scope', 'mmseg')):
        loader = Runner.build_dataloader(loader_cfg)
        evaluator = Evaluator(copy.deepcopy(cfg.test_evaluator))
    evaluator.dataset_meta = loader.dataset.metainfo
    sess = ort_session(path)
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    size = tuple(int(s) for s in inp.shape[-2:])
    labels_by_path = {}
    for batch in loader:
        samples = []
        for sample in batch['data_samples']:
            image = cv2.imread(sample.img_path)
            if image is None:
                raise FileNotFoundError(f'cannot read image {sample.img_path!r}')
            x, meta = preprocess_image(image[:, :, ::-1] if to_rgb else image, size, mode)
            (y,) = sess.run(None, {inp.name: x})
            labels = labels_to_image(y, meta) if out.name == 'labels' else \
                logits_to_image(y, meta, align_corners).argmax(0)
            labels_by_path[sample.img_path] = labels
            pred = SegDataSample(metainfo=sample.metainfo)
            pred.gt_sem_seg = sample.gt_sem_seg
            pred.pred_sem_seg = PixelData(data=torch.from_numpy(labels.astype(np.int64))[None])
            samples.append(pred)
        evaluator.process(samples, batch)
    metrics = evaluator.evaluate(len(loader.dataset))
    return dict(metrics=metrics, labels=labels_by_path, input_size=size)


_PARAMETER_INPUTS = ('scale_factor_height', 'scale_factor_width')


def _tensor_name(entry: str) -> str:
    """``'const -> name: FLOAT32'`` (an :func:`inspect_coreml` entry) -> ``'name'``."""
    return entry.split(' -> ', 1)[-1].rsplit(':', 1)[0]


def _scale_factor_consts(path: str) -> set:
    """Names of the ``const`` tensors of a saved mlprogram that are only used as the scale
    factors of upsample ops."""
    ct = require('coremltools')
    spec = ct.utils.load_spec(path)
    func = spec.mlProgram.functions['main']
    ops = func.block_specializations[func.opset].operations
    consts = {o.name for op in ops if op.type == 'const' for o in op.outputs}
    as_param, elsewhere = set(), set()
    for op in ops:
        for param, arg in op.inputs.items():
            for a in arg.arguments:
                if a.name in consts:
                    (as_param if param in _PARAMETER_INPUTS else elsewhere).add(a.name)
    return as_param - elsewhere


def format_segmentor_report(report: dict) -> str:
    """:func:`mmeff.deploy.format_report` plus the segmentor's own lines."""
    base = {k: v for k, v in report.items() if k != 'onnxruntime'}
    lines = [format_report(base)]
    pre = report['preprocessing']
    lines.append(f"  input: {pre['input']}" + (f"; mean {pre['mean']}, std {pre['std']}"
                                               if pre['mean'] else ''))
    lines.append(f"  output: {report['output']} ({report['num_classes']} classes; "
                 f"align_corners={pre['align_corners']})")
    f = report['fused_vs_unfused']
    lines.append(f"  torch fused vs unfused logits: relative err {f['rel_err']:.2e}")
    if report.get('fp32_op_parameters'):
        lines.append(f"  FP32 op parameters (upsample scale factors, not computed tensors): "
                     f"{len(report['fp32_op_parameters'])}")
    if 'onnxruntime' in report:
        e = report['onnxruntime']
        lines.append('  onnxruntime vs torch: ' + (
            f"labels agree on {100 * e['label_agreement']:.3f}% of pixels"
            if 'label_agreement' in e else
            f"max abs err {e['max_abs_err']:.2e}, relative err {e['rel_err']:.2e}"))
    return '\n'.join(lines)


__all__ = ['OUTPUTS', 'MIN_INPUT_SIDE', 'supported_backbone_types', 'load_segmentor',
           'check_input_size', 'SegmentorExportModule', 'export_segmentor', 'compare_outputs',
           'evaluate_onnx_segmentor', 'format_segmentor_report']
