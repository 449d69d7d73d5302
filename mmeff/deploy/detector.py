"""Export a whole mmdet detector with an mmeff backbone: image in, ``boxes, scores, labels`` out.

What is exported (:class:`DetectorExport`), for one fixed input size ``(H, W)``:

1. ``(image - mean) / std`` with the config's ``data_preprocessor`` statistics: the input is
   an RGB image with pixel values 0-255, already resized and padded to ``(H, W)``
   (:func:`preprocess_detection_image`).
2. The fused backbone (:func:`mmeff.deploy.fuse_model`: BN and layer scales folded, attention
   biases cached for the grid of ``(H, W)``), the neck and the head, as trained.
3. The anchors of ``(H, W)``, computed once by the head's own ``prior_generator``, as
   constants; box decoding with the arithmetic of mmdet's ``DeltaXYWHBBoxCoder`` (means/stds,
   the ``wh_ratio_clip`` clamp, boxes clipped to the image); per-class sigmoid scores.
4. NMS, and outputs padded to ``max_dets`` rows: ``boxes (max_dets, 4)`` (x1, y1, x2, y2 in
   input pixels), ``scores (max_dets,)``, ``labels (max_dets,)``; padding rows have score 0,
   label -1 and a zero box. Rows are sorted by score.

   * ONNX: mmdet's test-time post-processing step by step: the ``nms_pre`` best
     (anchor, class) pairs per level (``TopK``), boxes with zero width or height dropped
     (``min_bbox_size=0``), class-aware NMS as mmdet's ``batched_nms`` does it (boxes of
     different classes offset apart) through torchvision's ``nms``, which exports as ONNX
     ``NonMaxSuppression``, then the ``score_thr`` and the ``max_dets`` best.
   * Core ML: Core ML's own ``non_maximum_suppression`` op (per-class suppression) on every
     anchor's box and class scores, emitted by a converter registered for the custom op
     ``mmeff::coreml_nms`` (eager stand-in below, for the torch side). No ``TopK`` and no
     ``gather``. Core ML's NMS returns boxes, each anchor at most once with its class scores,
     labelled here with its best class: an anchor whose second class also passes
     ``score_thr`` yields one detection where mmdet (and the ONNX export) may yield two; and
     there is no ``nms_pre`` step (all anchors go to the op).

Exported: RetinaNet (a single-stage head that mmdet decodes with anchors and
``DeltaXYWHBBoxCoder``, above) and Mask R-CNN (:mod:`mmeff.deploy.mask_rcnn`: RPN, RoIAlign,
box head, NMS and mask head in one ONNX graph, ``boxes, scores, labels, masks`` out; Core ML
refused, with the reason). Other detectors (Cascade Mask R-CNN among them), and backbones that
are not mmeff's, are refused with the reason.
"""
import copy
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from mmeff.runtime import coreml_problems, file_size, inspect_coreml, nonfinite

from .export import check_export_memory, export_friendly_norms_, require
from .fuse import fuse_model, fusion_report, parse_input_size
from .output import StagedOutput, place_checked

FORMATS = ('onnx', 'coreml')
DETECTORS = ('RetinaNet', 'MaskRCNN')
OUTPUT_NAMES = ('boxes', 'scores', 'labels')
ONNX_OPSET = 17  # RoiAlign's half_pixel mode (mmcv's aligned=True) needs 16
MIN_SIZE = 32  # one token after the stride-32 stage


# ----------------------------------------------------------------------------- building
def _short_type(t) -> str:
    return str(t).split('.')[-1]


def load_detector_config(config: str, cfg_options: Optional[dict] = None):
    """Read ``config`` (with ``cfg_options`` merged as the train/test tools merge them:
    :func:`mmeff.engine.launch.apply_cfg_options`) and check that it is a detector this module
    exports; returns the :class:`mmengine.Config`."""
    from mmengine.config import Config

    from mmeff.engine.launch import apply_cfg_options
    if not isinstance(config, str) or not config.endswith('.py'):
        raise ValueError(f'config must be the path of an mmdet config file (.py), got {config!r}')
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file {config!r} does not exist')
    cfg = apply_cfg_options(Config.fromfile(config), cfg_options)
    model = cfg.get('model')
    if model is None:
        raise ValueError(f'config {config!r} has no `model` dict')
    backbone = model.get('backbone') or {}
    btype = backbone.get('type') if isinstance(backbone, dict) else None
    from mmeff.models.families import FAMILIES, is_family_type
    if not is_family_type(btype):
        raise ValueError(
            f'config {config!r}: model.backbone is {btype!r}, not an mmeff backbone '
            f"({', '.join(f.type for f in FAMILIES.values())}). export_detector folds and "
            f'caches what is specific to EfficientFormer; export other backbones with mmdeploy')
    mtype = _short_type(model.get('type'))
    if mtype == 'CascadeRCNN':
        from .mask_rcnn import CASCADE_REFUSAL
        raise ValueError(f'config {config!r}: {CASCADE_REFUSAL}')
    if mtype not in DETECTORS:
        raise ValueError(f'config {config!r}: model.type {mtype!r} cannot be exported as a whole '
                         f'detector; supported: {DETECTORS}. Export its backbone with --task '
                         f'backbone')
    if mtype == 'MaskRCNN':
        from .mask_rcnn import check_mask_rcnn_config
        check_mask_rcnn_config(model, config)
        return cfg
    head = model.get('bbox_head') or {}
    coder = _short_type((head.get('bbox_coder') or {}).get('type'))
    if coder != 'DeltaXYWHBBoxCoder':
        raise ValueError(f'config {config!r}: bbox_head.bbox_coder is {coder!r}; the exported '
                         f'box decoding is that of DeltaXYWHBBoxCoder')
    return cfg


def build_detector(config: str, checkpoint: Optional[str] = None,
                   cfg_options: Optional[dict] = None) -> Tuple[nn.Module, object, str]:
    """Build the detector of ``config`` (mmdet's registry; ``cfg_options`` merged) in eval
    mode, with the weights of ``checkpoint`` when given (the whole model, checked by
    :func:`mmeff.checkpoint.check_model_fit`: a file that does not fit is an error naming what
    differs).

    Returns:
        tuple: ``(model, cfg, weights)``, ``weights`` a one-line description.
    """
    cfg = load_detector_config(config, cfg_options)
    if checkpoint:  # before building: a missing or unreadable file is found at once
        from mmeff.checkpoint import check_checkpoint_file
        check_checkpoint_file(checkpoint)
    import mmeff.models  # noqa: F401  (registers mmeff.EfficientFormer*)
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope
    register_all_modules(init_default_scope=False)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None  # weights come from `checkpoint` (or stay random)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(model_cfg)
    weights = 'random (no checkpoint given)'
    if checkpoint:
        from mmeff.checkpoint import check_model_fit, mmengine_state_dict, read_checkpoint
        sd = mmengine_state_dict(read_checkpoint(checkpoint))
        fit = check_model_fit(model, sd, str(checkpoint), purpose='exact',
                              hint=f'export_detector needs the checkpoint tools/train.py saved '
                                   f'with {config}.', config=config)
        model.load_state_dict(sd, strict=False)
        weights = f'{checkpoint} ({len(fit.matched)} tensors)'
    return model.eval(), cfg, weights


def check_input_size(input_size, divisor: int = 32) -> Tuple[int, int]:
    """``(H, W)`` if a detector can be exported for it: both sides at least 32 pixels (one
    token after stride 32) and multiples of ``divisor`` (the config's
    ``data_preprocessor.pad_size_divisor``: mmdet pads every image to it, so the trained model
    never saw other sizes and its FPN levels only align at multiples of it)."""
    h, w = parse_input_size(input_size)
    if min(h, w) < MIN_SIZE:
        raise ValueError(f'input size {h}x{w} is too small: the backbone needs at least '
                         f'{MIN_SIZE} pixels per side (stride 32); use e.g. 512x512')
    if h % divisor or w % divisor:
        up = lambda s: -(-s // divisor) * divisor  # noqa: E731
        raise ValueError(f'input size {h}x{w} cannot be taken by this detector: both sides must '
                         f'be multiples of {divisor} (data_preprocessor.pad_size_divisor); '
                         f'use {up(h)}x{up(w)} and pad the image (preprocess_detection_image)')
    return h, w


# ----------------------------------------------------------------------------- NMS for Core ML
@torch.library.custom_op('mmeff::coreml_nms', mutates_args=())
def coreml_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
               score_threshold: float, max_boxes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """What Core ML's ``non_maximum_suppression`` (per-class suppression) computes, in torch.

    Every box takes its best class; boxes whose best score is below ``score_threshold`` are
    dropped; NMS runs within each class; the ``max_boxes`` best survivors are returned, padded
    with zero rows. Args: ``boxes (N, 4)`` x1y1x2y2, ``scores (N, C)``. Returns ``(boxes
    (max_boxes, 4), scores (max_boxes, C))``. In a Core ML export this call becomes the op.
    """
    from torchvision.ops import batched_nms
    best, label = scores.max(1)
    keep = torch.nonzero(best >= score_threshold).squeeze(1)
    order = batched_nms(boxes[keep], best[keep], label[keep], iou_threshold)[:max_boxes]
    keep = keep[order]
    out_boxes = boxes.new_zeros(max_boxes, 4)
    out_scores = scores.new_zeros(max_boxes, scores.shape[1])
    out_boxes[:len(keep)] = boxes[keep]
    out_scores[:len(keep)] = scores[keep]
    return out_boxes, out_scores


@coreml_nms.register_fake
def _coreml_nms_fake(boxes, scores, iou_threshold, score_threshold, max_boxes):
    return boxes.new_empty(max_boxes, 4), scores.new_empty(max_boxes, scores.shape[1])


def _register_coreml_nms() -> None:
    """Teach coremltools' torch frontend ``mmeff::coreml_nms`` -> MIL ``non_maximum_suppression``
    (iOS 15 op, per-class suppression; boxes converted to the op's centre/size layout)."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import (
        _TORCH_OPS_REGISTRY, register_torch_op)
    if _TORCH_OPS_REGISTRY.get_func('mmeff::coreml_nms') is not None:
        return

    @register_torch_op(torch_alias=['mmeff::coreml_nms'])
    def mmeff_coreml_nms(context, node):
        boxes, scores, iou, score_thr, max_boxes = _get_inputs(context, node, expected=5)
        x1, y1, x2, y2 = mb.split(x=boxes, num_splits=4, axis=-1)
        w, h = mb.sub(x=x2, y=x1), mb.sub(x=y2, y=y1)
        cxcywh = mb.concat(values=[mb.add(x=x1, y=mb.mul(x=w, y=0.5)),
                                   mb.add(x=y1, y=mb.mul(x=h, y=0.5)), w, h], axis=-1)
        out_boxes, out_scores, _, _ = mb.non_maximum_suppression(
            boxes=mb.expand_dims(x=cxcywh, axes=[0]), scores=mb.expand_dims(x=scores, axes=[0]),
            iou_threshold=float(iou.val), score_threshold=float(score_thr.val),
            max_boxes=int(max_boxes.val), per_class_suppression=True)
        out_boxes = mb.squeeze(x=out_boxes, axes=[0])
        cx, cy, bw, bh = mb.split(x=out_boxes, num_splits=4, axis=-1)
        half_w, half_h = mb.mul(x=bw, y=0.5), mb.mul(x=bh, y=0.5)
        xyxy = mb.concat(values=[mb.sub(x=cx, y=half_w), mb.sub(x=cy, y=half_h),
                                 mb.add(x=cx, y=half_w), mb.add(x=cy, y=half_h)], axis=-1,
                         name=node.outputs[0])
        context.add(xyxy)
        context.add(mb.squeeze(x=out_scores, axes=[0], name=node.outputs[1]))


# ----------------------------------------------------------------------------- the graph
class DetectorExport(nn.Module):
    """Image (1, 3, H, W), RGB 0-255, resized/padded to the export size -> ``boxes, scores,
    labels`` (see the module docstring). Built from an mmdet RetinaNet-style detector.

    Args:
        detector (nn.Module): The mmdet detector (eval mode; fused or not).
        input_size (tuple[int, int]): ``(H, W)``.
        nms (str): ``'onnx'`` (mmdet's steps, torchvision NMS) or ``'coreml'`` (Core ML's op).
        max_dets (int): Rows of the outputs (mmdet's ``max_per_img``).
        score_thr (float): Score threshold (mmdet's ``score_thr``).
        iou_thr (float): NMS IoU threshold.
        nms_pre (int): Candidates per level before NMS (ONNX only; mmdet's ``nms_pre``).
    """
    output_names = OUTPUT_NAMES

    def __init__(self, detector: nn.Module, input_size: Tuple[int, int], nms: str = 'onnx',
                 max_dets: int = 100, score_thr: float = 0.05, iou_thr: float = 0.5,
                 nms_pre: int = 1000):
        super().__init__()
        if nms not in FORMATS:
            raise ValueError(f'nms must be one of {FORMATS}, got {nms!r}')
        self.backbone, self.neck, self.head = detector.backbone, detector.neck, detector.bbox_head
        self.nms, self.max_dets, self.score_thr, self.iou_thr = nms, max_dets, score_thr, iou_thr
        self.height, self.width = input_size
        self.num_classes = self.head.cls_out_channels
        pre = detector.data_preprocessor
        mean, std = pre.mean.view(1, 3, 1, 1).float(), pre.std.view(1, 3, 1, 1).float()
        self.register_buffer('mean', mean.clone())
        self.register_buffer('inv_std', 1. / std)
        coder = self.head.bbox_coder
        self.register_buffer('coder_means', torch.tensor(coder.means).view(1, 4).float())
        self.register_buffer('coder_stds', torch.tensor(coder.stds).view(1, 4).float())
        self.max_ratio = float(abs(np.log(16 / 1000)))  # DeltaXYWHBBoxCoder's wh_ratio_clip
        self.clip_border = bool(coder.clip_border)
        self.add_ctr_clamp, self.ctr_clamp = bool(coder.add_ctr_clamp), float(coder.ctr_clamp)
        with torch.no_grad():  # the feature sizes of (H, W), hence the anchors: constants
            x = torch.zeros(1, 3, self.height, self.width)
            cls_scores, _ = self.head(self.neck(self.backbone(x)))
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        anchors = self.head.prior_generator.grid_priors(sizes, device='cpu')
        self.level_sizes = [len(a) for a in anchors]
        anchors = torch.cat(anchors).float()
        self.register_buffer('anchor_centres', (anchors[:, :2] + anchors[:, 2:]) * 0.5)
        self.register_buffer('anchor_sizes', anchors[:, 2:] - anchors[:, :2])
        self.nms_pre = [min(nms_pre, n * self.num_classes) if nms_pre > 0
                        else n * self.num_classes for n in self.level_sizes]

    def decode(self, deltas: torch.Tensor) -> torch.Tensor:
        """mmdet's ``delta2bbox`` for every anchor at once: (N, 4) deltas -> (N, 4) boxes."""
        d = deltas * self.coder_stds + self.coder_means
        dxy_wh = self.anchor_sizes * d[:, :2]
        if self.add_ctr_clamp:
            dxy_wh = dxy_wh.clamp(min=-self.ctr_clamp, max=self.ctr_clamp)
            dwh = d[:, 2:].clamp(max=self.max_ratio)
        else:
            dwh = d[:, 2:].clamp(min=-self.max_ratio, max=self.max_ratio)
        gxy = self.anchor_centres + dxy_wh
        half = self.anchor_sizes * dwh.exp() * 0.5
        x1y1, x2y2 = gxy - half, gxy + half
        if self.clip_border:
            # max_shape is the (padded) input: the exported model does not know the image's
            # extent inside the padding
            # (relu, not clamp(min=0): a one-sided clamp becomes a clip to +inf in Core ML,
            # a constant FP16 cannot hold)
            lim = torch.tensor([self.width, self.height], dtype=deltas.dtype)
            x1y1 = torch.minimum(torch.relu(x1y1), lim)
            x2y2 = torch.minimum(torch.relu(x2y2), lim)
        return torch.cat([x1y1, x2y2], dim=1)

    def raw(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decoded boxes (N, 4) and sigmoid scores (N, C) of every anchor, before NMS."""
        if image.shape[0] != 1:
            raise ValueError(f'the exported detector takes one image, got a batch of '
                             f'{image.shape[0]}')
        x = (image - self.mean) * self.inv_std
        cls_scores, bbox_preds = self.head(self.neck(self.backbone(x)))
        scores = torch.cat([c.permute(0, 2, 3, 1).reshape(-1, self.num_classes)
                            for c in cls_scores]).sigmoid()
        deltas = torch.cat([b.permute(0, 2, 3, 1).reshape(-1, 4) for b in bbox_preds])
        return self.decode(deltas), scores

    def forward(self, image: torch.Tensor):
        boxes, scores = self.raw(image)
        # min_bbox_size=0: mmdet drops boxes of zero width or height (clipped to a border)
        wh = boxes[:, 2:] - boxes[:, :2]
        nonempty = ((wh[:, 0] > 0) & (wh[:, 1] > 0)).to(scores.dtype)
        scores = scores * nonempty[:, None]
        if self.nms == 'coreml':
            out_boxes, out_scores = torch.ops.mmeff.coreml_nms(
                boxes, scores, self.iou_thr, self.score_thr, self.max_dets)
            score, label = out_scores.max(1)
        else:
            out_boxes, score, label = self._onnx_nms(boxes, scores)
        valid = score > self.score_thr
        label = torch.where(valid, label, torch.full_like(label, -1))
        score = score * valid.to(score.dtype)
        return out_boxes * valid.to(out_boxes.dtype)[:, None], score, label

    def _onnx_nms(self, boxes: torch.Tensor, scores: torch.Tensor):
        from torchvision.ops import nms
        C, start, cand = self.num_classes, 0, []
        for n, k in zip(self.level_sizes, self.nms_pre):  # mmdet: nms_pre pairs per level
            _, idx = scores[start:start + n].reshape(-1).topk(k)
            cand.append(idx + start * C)
            start += n
        idx = torch.cat(cand)
        anchor, label = torch.div(idx, C, rounding_mode='floor'), idx % C
        score = scores.reshape(-1)[idx]
        cand_boxes = boxes[anchor]
        # class-aware NMS as mmdet's batched_nms: classes offset apart (boxes lie in the image)
        offset = (label.to(cand_boxes.dtype) * float(max(self.height, self.width) + 1))[:, None]
        keep = nms(cand_boxes + offset, score, self.iou_thr)[:self.max_dets]
        pad = self.max_dets
        out_boxes = torch.cat([cand_boxes[keep], cand_boxes.new_zeros(pad, 4)])[:pad]
        out_score = torch.cat([score[keep], score.new_zeros(pad)])[:pad]
        out_label = torch.cat([label[keep], label.new_full((pad,), -1)])[:pad]
        return out_boxes, out_score, out_label


# ----------------------------------------------------------------------------- preprocessing
def preprocess_detection_image(image: np.ndarray, input_size, mean=(123.675, 116.28, 103.53)
                               ) -> Tuple[np.ndarray, float]:
    """Fit an RGB ``(h, w, 3)`` image into the export size as mmdet's test pipeline with
    ``Resize(scale=(W, H), keep_ratio=True)`` does (mmcv ``imrescale``, bilinear), then pad at
    the bottom/right with the mean colour (0 after the normalisation in the graph, as mmdet
    pads). Returns ``(input (1, 3, H, W) float32, scale)``: divide the output boxes by
    ``scale`` to get original-image pixels."""
    import mmcv
    H, W = parse_input_size(input_size)
    resized, scale = mmcv.imrescale(image, (W, H), return_scale=True, backend='cv2')
    if resized.shape[0] > H or resized.shape[1] > W:
        raise ValueError(f'image of {image.shape[:2]} does not fit {H}x{W} with its ratio kept')
    padded = np.empty((H, W, 3), np.float32)
    padded[...] = np.asarray(mean, np.float32)
    padded[:resized.shape[0], :resized.shape[1]] = resized
    return padded.transpose(2, 0, 1)[None].copy(), float(scale)


# ----------------------------------------------------------------------------- export
def compare_detections(a: Sequence[np.ndarray], b: Sequence[np.ndarray], box_tol: float = 0.05
                       ) -> dict:
    """How far two ``(boxes, scores, labels)`` outputs agree: ``matched`` counts the rows of
    ``a`` (padding excluded) that have a row in ``b`` with the same label and every box
    coordinate within ``box_tol`` pixels (order-free: near-equal scores may swap rows). With a
    fourth output on both sides (Mask R-CNN's ``masks``, one array per row),
    ``max_abs_err_masks`` is the largest difference between the masks of matched rows."""
    va, vb = np.asarray(a[2]) >= 0, np.asarray(b[2]) >= 0
    ba, sa, la = (np.asarray(t)[va] for t in a[:3])
    bb, sb, lb = (np.asarray(t)[vb] for t in b[:3])
    with_masks = len(a) > 3 and len(b) > 3
    if with_masks:
        ma, mb = np.asarray(a[3])[va], np.asarray(b[3])[vb]
    used, matched, box_err, score_err, mask_err = np.zeros(len(lb), bool), 0, 0., 0., 0.
    for i in range(len(la)):
        diff = np.abs(bb - ba[i]).max(1) if len(lb) else np.zeros(0)
        cand = np.flatnonzero((lb == la[i]) & (diff <= box_tol) & ~used)
        if len(cand):
            j = cand[np.argmin(diff[cand])]
            used[j], matched = True, matched + 1
            box_err = max(box_err, float(diff[j]))
            score_err = max(score_err, float(abs(sa[i] - sb[j])))
            if with_masks:
                mask_err = max(mask_err, float(np.abs(ma[i] - mb[j]).max()))
    agree = dict(detections_a=int(va.sum()), detections_b=int(vb.sum()), matched=matched,
                 max_abs_err_boxes=box_err, max_abs_err_scores=score_err)
    if with_masks:
        agree['max_abs_err_masks'] = mask_err
    return agree


def detection_problems(agree: dict, tolerance: float = 0.02) -> list:
    """What :func:`compare_detections`' result says is wrong with an export: too few of
    torch's detections matched. A ``tolerance`` share of the rows may differ (2 %: 2 of 100):
    candidates whose scores tie to float rounding at a cut (``nms_pre``, ``max_dets``) may be
    kept on one side and not the other (Mask R-CNN, :attr:`MaskRCNNExport.tie_tolerance`: a
    near-tie at the RPN's proposal cut changes a proposal, and the detections drawn from it).
    Where ``agree`` holds ``torch_rounding_matched`` (:func:`rounding_agreement`: how many
    of its own detections torch keeps when the image moves by a rounding-sized amount), ONNX
    Runtime may differ as much as torch differs from itself.
    Both sides finding nothing is agreement (a detector may find nothing on the check image),
    ONNX Runtime finding boxes where torch finds none is not."""
    n = agree['detections_a']
    if n == 0:
        if agree['detections_b'] == 0:
            return []
        return [f"ONNX Runtime finds {agree['detections_b']} detections where torch finds "
                f"none: {agree}"]
    least = min(n - int(tolerance * n), agree.get('torch_rounding_matched', n))
    if agree['matched'] < least:
        return [f"ONNX Runtime's detections differ from torch's: {agree}"]
    return []


# How far :func:`rounding_agreement` moves the check image (pixel values 0-255): far below
# one grey level, of the order of the float rounding by which ONNX Runtime's kernels differ
# from torch's.
ROUNDING_EPS = 1e-3


@torch.no_grad()
def rounding_agreement(module: nn.Module, x: torch.Tensor, ref: Sequence[np.ndarray],
                       eps: float = ROUNDING_EPS, seeds: Sequence[int] = range(1, 7)
                       ) -> dict:
    """How far torch agrees with itself on the check image ``x`` moved by uniform noise of
    ``+-eps``: :func:`compare_detections` of ``ref`` (``module(x)``) and ``module(x + noise)``,
    the worst over ``seeds``. A detector whose scores tie on the check image (random weights,
    noise input: many near-equal RPN scores at a proposal cut) keeps other proposals, and so
    other detections, under such a change; an export may then differ from torch as much
    without a fault in its graph, while a wrong graph misses far more. Measured on the
    V2-S0 Mask R-CNN of ``tests/test_export_mask_rcnn.py`` (128x160): torch matched 84-98 of
    its own 100 detections under perturbations of 1e-5 to 1e-1 (the matched boxes within
    5e-5 px at 1e-3, as close as ONNX Runtime's), ONNX Runtime 85: which perturbation flips
    a near-tie is chance, hence the worst of several."""
    worst = None
    for seed in seeds:
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        out = [t.numpy() for t in module(x + eps * noise)]
        agree = compare_detections(ref, out)
        if worst is None or agree['matched'] < worst['matched']:
            worst = agree
    return worst


def _onnx_report(module: nn.Module, x: torch.Tensor, path: str, opset: int = ONNX_OPSET
                 ) -> dict:
    """Write ``module`` to ``path`` (ONNX, :func:`mmeff.runtime.write_onnx`) through a staging
    file beside it, check it with onnx.checker and ONNX Runtime there, and put it in place
    (``path`` is replaced only when the checks pass; else it is kept at
    :func:`~mmeff.deploy.output.failed_path`)."""
    require('onnx')
    require('onnxruntime')
    with StagedOutput(path) as staged:
        report = _onnx_report_at(module, x, staged.path, opset)
        place_checked(staged, report)
    return report


# Gathers of the network would be a fault, as in the backbone export; those of the
# post-processing (top-level scope: picking the TopK candidates' boxes, NonMaxSuppression's
# selected indices, a mask's label channel) are how ONNX selects.
NETWORK_SCOPES = ('/backbone/', '/neck/', '/head/', '/rpn_head/', '/bbox_head/', '/mask_head/')


def _onnx_report_at(module: nn.Module, x: torch.Tensor, path: str, opset: int = ONNX_OPSET
                    ) -> dict:
    from mmeff.runtime import ort_session, write_onnx
    onnx = require('onnx')
    names = list(module.output_names)
    with torch.no_grad():
        ref = [t.numpy() for t in module(x)]
    # The TorchScript exporter: torchvision registers ONNX NonMaxSuppression (nms) and
    # RoiAlign (roi_align) there; the torch.export-based one cannot trace NMS's data-dependent
    # output size.
    written = write_onnx(module, (x,), path, input_names=('image',), output_names=names,
                         opset=opset, method='torchscript', atomic=False)
    proto = onnx.load(path)
    for out, r in zip(proto.graph.output, ref):  # NMS hides the static shapes from the exporter
        dims = out.type.tensor_type.shape.dim
        for d, n in zip(dims, r.shape):
            d.dim_value = int(n)
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    from collections import Counter
    hist = Counter(n.op_type for n in proto.graph.node)
    sess = ort_session(path)
    got = sess.run(None, {'image': x.numpy()})
    agree = compare_detections(ref, got)
    tolerance = getattr(module, 'tie_tolerance', 0.02)
    if detection_problems(agree, tolerance):  # within what rounding moves in torch itself?
        agree['torch_rounding_matched'] = rounding_agreement(module, x, ref)['matched']
    problems = detection_problems(agree, tolerance)
    if agree.get('max_abs_err_masks', 0) > 1e-2:
        problems.append(f"ONNX Runtime's masks differ from torch's: {agree}")
    bad = nonfinite([(f'onnxruntime output {k!r}', torch.from_numpy(np.asarray(v, np.float64)))
                     for k, v in zip(names, got)])
    if bad:
        problems.append(f'NaN/Inf in the outputs: {bad}')
    if 'NonMaxSuppression' not in hist:
        problems.append('no NonMaxSuppression op in the graph')
    if 'masks' in names and 'RoiAlign' not in hist:
        problems.append('no RoiAlign op in the graph')
    gathers = [n.name for n in proto.graph.node if 'Gather' in n.op_type]
    network = [g for g in gathers if g.startswith(NETWORK_SCOPES)]
    return dict(format='onnx', path=osp.abspath(path), exporter=written['exporter'],
                opset=opset, export_s=round(written['export_s'], 2),
                op_histogram=dict(hist.most_common()),
                gather_ops=len(network), postprocess_gather_ops=len(gathers) - len(network),
                inputs=[dict(name=i.name, shape=i.shape, dtype=i.type) for i in sess.get_inputs()],
                outputs=[dict(name=o.name, shape=o.shape, dtype=o.type)
                         for o in sess.get_outputs()],
                file_size_bytes=file_size(path), onnxruntime=agree, problems=problems)


def _coreml_report(module: nn.Module, x: torch.Tensor, path: str, precision: str,
                   image_input: bool, metadata: Optional[dict] = None,
                   compute_units: str = 'ALL') -> dict:
    from mmeff.runtime import convert_coreml
    require('coremltools')
    _register_coreml_nms()
    # torch.jit.trace: the custom NMS op becomes Core ML's non_maximum_suppression; with an
    # image input, 8-bit RGB pixels as they are (0-255): the graph normalises
    mlmodel, info = convert_coreml(
        module, x, outputs=['boxes', 'scores', ('labels', np.int32)], input_name='image',
        image_input=image_input, image_scale=1., color_layout='RGB', precision=precision,
        compute_units=compute_units, method='trace', refuse_ops=False)
    convert_s = info['convert_s']
    mlmodel.user_defined_metadata.update({
        **{k: str(v) for k, v in (metadata or {}).items()},
        'mmeff.task': 'detector', 'mmeff.input_shape': 'x'.join(map(str, x.shape)),
        'mmeff.precision': precision, 'mmeff.image_input': str(bool(image_input)),
        'mmeff.compute_units': compute_units,
        'mmeff.outputs': 'boxes (x1,y1,x2,y2 input pixels), scores, labels (-1: padding)'})
    mlmodel.short_description = (f'mmeff detector, input RGB 0-255 {x.shape[2]}x{x.shape[3]}, '
                                 f'outputs boxes, scores, labels')
    with StagedOutput(path) as staged:  # saved and inspected beside `path`, then placed
        mlmodel.save(staged.path)
        report = inspect_coreml(staged.path)
        # The FPN's upsample scale factors are op parameters, FP32 by the op's definition
        from .segmentor import _scale_factor_consts, _tensor_name
        params = _scale_factor_consts(staged.path)
        report['non_fp16_tensors'] = [t for t in report['non_fp16_tensors']
                                      if _tensor_name(t) not in params]
        report.update(method='trace', convert_s=round(convert_s, 2),
                      fp32_op_parameters=sorted(params))
        problems = coreml_problems(report, expect_fp16=precision == 'fp16')
        if 'non_maximum_suppression' not in report['op_histogram']:
            problems.append('no non_maximum_suppression op in the Core ML program')
        report['problems'] = problems
        place_checked(staged, report)
    return report


def export_detector(config: str, checkpoint: Optional[str] = None, fmt: str = 'onnx',
                    out: Optional[str] = None, input_size=None, max_dets: Optional[int] = None,
                    score_thr: Optional[float] = None, iou_thr: Optional[float] = None,
                    precision: str = 'fp16', image_input: bool = False,
                    nms_pre: Optional[int] = None, opset: int = ONNX_OPSET,
                    batch_size: int = 1, cfg_options: Optional[dict] = None,
                    compute_units: str = 'ALL') -> dict:
    """Export the whole detector of an mmdet config with an mmeff backbone (module docstring;
    Mask R-CNN: :mod:`mmeff.deploy.mask_rcnn`).

    Args:
        config (str): mmdet config: RetinaNet or Mask R-CNN with ``mmeff.EfficientFormer`` or
            ``mmeff.EfficientFormerV2``.
        checkpoint (str | None): The whole model's weights (what ``tools/train.py`` saved);
            ``None`` keeps random weights (latency only).
        fmt (str): ``'onnx'`` or ``'coreml'`` (RetinaNet only). Defaults to ``'onnx'``.
        out (str | None): Output file (``.onnx``) or package (``.mlpackage``); default
            ``work_dirs/export/<config>_detector_<H>x<W>.<ext>``.
        input_size: ``(H, W)``, ``512`` or ``'512x640'``; multiples of the config's
            ``pad_size_divisor`` (32). ``None``: 512x512.
        max_dets (int | None): Output rows; ``None`` reads the config's ``test_cfg``
            (``max_per_img``; Mask R-CNN: ``test_cfg.rcnn``).
        score_thr (float | None): Score threshold; ``None`` reads ``test_cfg``.
        iou_thr (float | None): NMS IoU threshold (Mask R-CNN: of the box head); ``None``
            reads ``test_cfg``.
        precision (str): Core ML compute precision, ``'fp16'`` or ``'fp32'`` (ONNX: fp32).
        image_input (bool): Core ML ``ImageType`` input (RGB, 0-255 pixels as they are).
        nms_pre (int | None): Candidates per level before NMS (ONNX; Mask R-CNN: of the RPN);
            ``None`` reads the config's ``test_cfg``.
        opset (int): ONNX opset, 11 to 20 (Mask R-CNN: 16 to 20, for RoiAlign's
            ``half_pixel`` mode). Defaults to 17.
        batch_size (int): Images per call; the exported post-processing takes one image, so
            only 1 is accepted.
        compute_units (str): Core ML: the compute units the package is meant for
            (``mmeff.runtime.COMPUTE_UNITS``; recorded in its metadata, chosen at load time).
            Defaults to ``'ALL'``.
        cfg_options (dict | None): Config overrides (``--cfg-options``, e.g.
            ``{'model.roi_head.bbox_head.num_classes': 3}``), merged as the train/test tools
            merge them (:func:`mmeff.engine.launch.apply_cfg_options`).

    Returns:
        dict: The export report (``path``, ``inputs``/``outputs``, ``op_histogram``,
        ``gather_ops``, ``problems`` and, for ONNX, ``onnxruntime`` agreement with torch),
        plus ``detector``, ``weights``, ``fusion``, ``postprocess`` (what was exported and how
        it differs from mmdet's test_cfg).
    """
    if fmt not in FORMATS:
        raise ValueError(f'fmt must be one of {FORMATS}, got {fmt!r}')
    if precision not in ('fp16', 'fp32'):
        raise ValueError(f"precision must be 'fp16' or 'fp32', got {precision!r}")
    from mmeff.runtime import COMPUTE_UNITS
    if compute_units not in COMPUTE_UNITS:
        raise ValueError(f'compute_units must be one of {COMPUTE_UNITS}, got {compute_units!r}')
    if max_dets is not None and (not isinstance(max_dets, int) or isinstance(max_dets, bool)
                                 or max_dets < 1):
        raise ValueError(f'max_dets (--max-dets) must be a positive int, the detections kept '
                         f'per image (e.g. 100), got {max_dets!r}')
    if score_thr is not None and not 0 <= score_thr < 1:
        raise ValueError(f'score_thr (--score-thr) must be in [0, 1), got {score_thr}')
    if iou_thr is not None and not 0 < iou_thr <= 1:
        raise ValueError(f'iou_thr (--iou-thr) must be in (0, 1], got {iou_thr}')
    if batch_size != 1:
        raise ValueError(f'batch_size (--batch-size) {batch_size!r}: a whole detector is '
                         f'exported for one image per call (its NMS is per image); use 1 and '
                         f'call it once per image')
    cfg = load_detector_config(config, cfg_options)
    mask_rcnn = _short_type(cfg.model.type) == 'MaskRCNN'
    if mask_rcnn and fmt == 'coreml':
        from .mask_rcnn import COREML_REFUSAL
        raise ValueError(f'config {config!r}: {COREML_REFUSAL}')
    low = 16 if mask_rcnn else 11
    if not isinstance(opset, int) or not low <= opset <= 20:
        raise ValueError(f'opset (--opset) must be an int from {low} to 20 for this detector '
                         f'(ONNX RoiAlign half_pixel needs 16; 20 is the last the TorchScript '
                         f'exporter writes), got {opset!r}')
    divisor = int((cfg.model.get('data_preprocessor') or {}).get('pad_size_divisor', 32) or 1)
    h, w = check_input_size((512, 512) if input_size is None else input_size, divisor)
    name = osp.splitext(osp.basename(config))[0]
    ext = '.onnx' if fmt == 'onnx' else '.mlpackage'
    out = out or osp.join('work_dirs', 'export', f'{name}_detector_{h}x{w}{ext}')
    if not str(out).endswith(ext):
        raise ValueError(f"{'an ONNX' if fmt == 'onnx' else 'a Core ML'} export is written to "
                         f'a path ending in {ext}, got {out!r}')
    model, cfg, weights = build_detector(config, checkpoint, cfg_options)
    check_export_memory(model.backbone, (1, 3, h, w))
    fused = fuse_model(model, (h, w))
    if fmt == 'onnx':  # two-step GroupNorm statistics (ONNX Runtime's one-pass sum drifts);
        export_friendly_norms_(fused)  # Core ML converts nn.GroupNorm as it is
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255
    if mask_rcnn:
        from .mask_rcnn import MaskRCNNExport
        module = MaskRCNNExport(fused, (h, w), max_dets=max_dets, score_thr=score_thr,
                                iou_thr=iou_thr, nms_pre=nms_pre).eval()
        report = _onnx_report(module, x, out, opset)
        report.update(detector='MaskRCNN', config=config, weights=weights, input_size=[h, w],
                      fusion=fusion_report(fused), postprocess=_mask_rcnn_postprocess(
                          module, model))
        return report
    test_cfg = dict(model.bbox_head.test_cfg or {})
    nms = test_cfg.get('nms') or {}
    if nms_pre is None:
        nms_pre = int(test_cfg.get('nms_pre', 1000))
    max_dets = int(test_cfg.get('max_per_img', 100)) if max_dets is None else max_dets
    score_thr = float(test_cfg.get('score_thr', 0.05)) if score_thr is None else score_thr
    iou_thr = float(nms.get('iou_threshold', 0.5)) if iou_thr is None else iou_thr
    module = DetectorExport(fused, (h, w), nms=fmt, max_dets=max_dets, score_thr=score_thr,
                            iou_thr=iou_thr, nms_pre=nms_pre).eval()
    if fmt == 'onnx':
        report = _onnx_report(module, x, out, opset)
    else:
        from mmeff.models.families import family_of
        arch = cfg.model.backbone.get('arch', family_of(cfg.model.backbone.type).default_arch)
        report = _coreml_report(module, x, out, precision, image_input, metadata={
            'mmeff.config': config, 'mmeff.weights': weights,
            'mmeff.arch': arch if isinstance(arch, str) else 'custom'},
            compute_units=compute_units)
    report.update(
        detector=_short_type(cfg.model.type), config=config, weights=weights,
        input_size=[h, w], fusion=fusion_report(fused),
        postprocess=dict(
            max_dets=max_dets, score_thr=score_thr, iou_thr=iou_thr,
            nms_pre=nms_pre if fmt == 'onnx' else None,
            nms=('ONNX NonMaxSuppression, class-aware (offsets)' if fmt == 'onnx'
                 else 'Core ML non_maximum_suppression, per_class_suppression, best class '
                      'per anchor'),
            mmdet_test_cfg=dict(nms_pre=test_cfg.get('nms_pre'),
                                score_thr=test_cfg.get('score_thr'),
                                iou_threshold=nms.get('iou_threshold'),
                                max_per_img=test_cfg.get('max_per_img'),
                                min_bbox_size=test_cfg.get('min_bbox_size'))))
    return report


def _mask_rcnn_postprocess(module, model) -> dict:
    """What a Mask R-CNN export does after the network, beside the config's test_cfg."""
    rpn_cfg = dict(model.rpn_head.test_cfg or {})
    rcnn_cfg = dict(model.roi_head.test_cfg or {})
    mask = module.extractors['mask_roi_extractor']
    return dict(
        max_dets=module.max_dets, score_thr=module.score_thr, iou_thr=module.iou_thr,
        nms_pre=module.rpn_nms_pre,
        nms=('ONNX NonMaxSuppression: RPN per level (level offsets), box head class-aware '
             '(class offsets)'),
        rpn=dict(nms_pre=module.rpn_nms_pre, max_per_img=module.rpn_max,
                 iou_threshold=module.rpn_iou, min_bbox_size=module.min_bbox_size),
        roi_align=('ONNX RoiAlign half_pixel (mmcv aligned=True), sampling_ratio '
                   f"{mask['sampling_ratio']}; RoIs assigned to levels as map_roi_levels, "
                   'each level computed for its own RoIs (NonZero, ScatterND)'),
        masks=(f'({module.max_dets}, {module.mask_size[0]}, {module.mask_size[1]}) '
               "probabilities of the label's channel in box coordinates; paste with "
               f'mmeff.deploy.mask_rcnn.paste_masks (threshold {module.mask_thr_binary})'),
        mask_thr_binary=module.mask_thr_binary,
        mmdet_test_cfg=dict(rpn=_plain(rpn_cfg), rcnn=_plain(rcnn_cfg)))


def _plain(d):
    """A config dict as plain, JSON-writable values."""
    if isinstance(d, dict):
        return {k: _plain(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_plain(v) for v in d]
    return d


def format_detector_report(report: dict) -> str:
    """Human-readable summary of an :func:`export_detector` report."""
    lines = [f"{report['format']} whole detector ({report['detector']}, {report['config']}): "
             f"{report['path']}",
             f"  weights: {report['weights']}",
             f"  file size: {report['file_size_bytes'] / 2**20:.1f} MiB"]
    for kind in ('inputs', 'outputs'):
        for io in report[kind]:
            lines.append(f"  {kind[:-1]:6s} {io['name']}: {io['shape']} {io.get('dtype', '')}")
    f = report['fusion']
    lines.append(f"  backbone: {f['batchnorms']} BatchNorm and {f['layer_scales']} layer scales "
                 f"left; attention bias cached for grid(s) {f['cached_bias_grids']}")
    lines.append('  ops: ' + ', '.join(f'{k} {v}' for k, v in report['op_histogram'].items()))
    lines.append(f"  gather ops in the network: {report['gather_ops']}"
                 + (f"; in the post-processing (candidate/NMS selection): "
                    f"{report['postprocess_gather_ops']}"
                    if 'postprocess_gather_ops' in report else ''))
    pp = report['postprocess']
    lines.append(f"  post-processing: {pp['nms']}; max_dets {pp['max_dets']}, score_thr "
                 f"{pp['score_thr']}, iou_thr {pp['iou_thr']}, nms_pre {pp['nms_pre']} "
                 f"(mmdet test_cfg: {pp['mmdet_test_cfg']})")
    for key in ('rpn', 'roi_align', 'masks'):
        if key in pp:
            lines.append(f'  {key}: {pp[key]}')
    if 'onnxruntime' in report:
        e = report['onnxruntime']
        lines.append(f"  onnxruntime vs torch (random image): {e['matched']} of "
                     f"{e['detections_a']} detections matched, max box err "
                     f"{e['max_abs_err_boxes']:.2e} px, max score err "
                     f"{e['max_abs_err_scores']:.2e}"
                     + (f", max mask err {e['max_abs_err_masks']:.2e}"
                        if 'max_abs_err_masks' in e else '')
                     + (f"; torch vs itself on the image moved by +-{ROUNDING_EPS:g}: "
                        f"{e['torch_rounding_matched']} matched"
                        if 'torch_rounding_matched' in e else ''))
    problems = report.get('problems', [])
    lines.append('  checks: ' + ('all passed' if not problems else
                                 'FAILED: ' + '; '.join(problems)))
    return '\n'.join(lines)


def detections_to_image(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                        scale, image_hw: Sequence[int], clip: bool = True
                        ) -> Dict[str, np.ndarray]:
    """The exported model's outputs (padding rows dropped) in original-image pixels: boxes
    divided by the preprocessing ``scale`` (a float, or mmdet's ``(w_scale, h_scale)``) and,
    with ``clip``, clipped to the image (mmdet's ``rescale`` does not clip again: boxes of
    padded inputs may end in the padding)."""
    keep = np.asarray(labels) >= 0
    sx, sy = (scale, scale) if np.isscalar(scale) else tuple(scale)
    b = np.asarray(boxes, np.float32)[keep] / np.array([sx, sy, sx, sy], np.float32)
    if clip:
        b[:, 0::2] = b[:, 0::2].clip(0, image_hw[1])
        b[:, 1::2] = b[:, 1::2].clip(0, image_hw[0])
    return dict(bboxes=b, scores=np.asarray(scores, np.float32)[keep],
                labels=np.asarray(labels)[keep].astype(np.int64))


def evaluate_onnx_detector(path: str, config: str, data_root: Optional[str] = None) -> dict:
    """mmdet's metric (the config's ``test_evaluator``: ``CocoMetric``, bbox and, for Mask
    R-CNN, segm) of an exported ONNX detector on the test set of ``config``.

    Every image goes through the config's own test pipeline (mmdet's ``Resize``), is padded
    at the bottom/right to the export's input size with the mean colour (what mmdet's
    ``DetDataPreprocessor`` pads with, 0 after the normalisation), through ONNX Runtime and
    back to the original image (:func:`detections_to_image`; Mask R-CNN masks pasted by
    :func:`mmeff.deploy.mask_rcnn.paste_masks` at ``mask_thr_binary``), then into the
    evaluator. The export clips boxes to its (padded) input where mmdet clips to the resized
    image: the same when the resized image fills the input.

    Args:
        path (str): The ``.onnx`` file (:func:`export_detector`).
        config (str): The detection config it was exported from.
        data_root (str | None): Overrides the config's ``data_root`` (in the dataset and the
            evaluator's ``ann_file``, as ``--cfg-options data_root=...`` does in the tools).

    Returns:
        dict: ``metrics`` (the evaluator's), ``predictions`` (``img_path`` -> the image's
        ``bboxes, scores, labels`` and ``masks``), ``input_size`` (H, W), ``images``.
    """
    from mmengine.evaluator import Evaluator
    from mmengine.registry import DefaultScope
    from mmengine.runner import Runner
    from mmengine.structures import InstanceData

    from mmeff.runtime import ort_session
    from .mask_rcnn import detections_with_masks
    if not osp.isfile(path):
        raise FileNotFoundError(f'ONNX file {path!r} does not exist; export it with '
                                f'tools/export.py {config} --task detector --format onnx')
    cfg = load_detector_config(config, None if data_root is None else dict(data_root=data_root))
    import mmeff.models  # noqa: F401  (the config's custom_imports)
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    loader_cfg = copy.deepcopy(cfg.test_dataloader)
    loader_cfg.batch_size, loader_cfg.num_workers, loader_cfg.persistent_workers = 1, 0, False
    pre = cfg.model.get('data_preprocessor') or {}
    mean = np.asarray(pre.get('mean', (123.675, 116.28, 103.53)), np.float32)
    to_rgb = bool(pre.get('bgr_to_rgb', False))
    rcnn = (cfg.model.get('test_cfg') or {}).get('rcnn') or {}
    mask_thr = float(rcnn.get('mask_thr_binary', 0.5))
    with DefaultScope.overwrite_default_scope('mmdet'):
        loader = Runner.build_dataloader(loader_cfg)
        evaluator = Evaluator(copy.deepcopy(cfg.test_evaluator))
    evaluator.dataset_meta = loader.dataset.metainfo
    sess = ort_session(path)
    inp = sess.get_inputs()[0]
    H, W = (int(s) for s in inp.shape[-2:])
    with_masks = len(sess.get_outputs()) == 4
    found = {}
    for batch in loader:
        for image, sample in zip(batch['inputs'], batch['data_samples']):
            c, h, w = image.shape
            if h > H or w > W:
                raise ValueError(f'{sample.img_path}: the test pipeline resizes it to {h}x{w}, '
                                 f'larger than the export input {H}x{W}; export at the '
                                 f"config's test scale (padded to 32)")
            x = np.empty((1, 3, H, W), np.float32)
            x[0] = mean[:, None, None]  # the mean in the image's channel order (RGB)
            pixels = image.numpy().astype(np.float32)
            x[0, :, :h, :w] = pixels[::-1] if to_rgb else pixels
            outputs = sess.run(None, {inp.name: x})
            meta = sample.metainfo
            if with_masks:
                det = detections_with_masks(outputs, meta['scale_factor'], meta['ori_shape'],
                                            mask_thr)
            else:
                det = detections_to_image(*outputs[:3], meta['scale_factor'],
                                          meta['ori_shape'], clip=False)
            found[sample.img_path] = det
            pred = InstanceData()
            for k, v in det.items():
                pred[k] = torch.from_numpy(v)
            sample.pred_instances = pred
        evaluator.process(batch['data_samples'], batch)
    metrics = evaluator.evaluate(len(loader.dataset))
    return dict(metrics=metrics, predictions=found, input_size=(H, W), images=len(found))


__all__ = ['FORMATS', 'DETECTORS', 'OUTPUT_NAMES', 'DetectorExport', 'build_detector',
           'check_input_size', 'compare_detections', 'coreml_nms', 'detection_problems',
           'rounding_agreement', 'ROUNDING_EPS',
           'detections_to_image', 'evaluate_onnx_detector', 'export_detector',
           'format_detector_report', 'load_detector_config', 'preprocess_detection_image']
