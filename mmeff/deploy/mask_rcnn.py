"""Mask R-CNN exported whole: an RGB image in; ``boxes, scores, labels, masks`` out (ONNX).

What :class:`MaskRCNNExport` computes, for one fixed input size ``(H, W)``, is mmdet's
``MaskRCNN.predict`` (``rescale=False``) step by step, each step with the arithmetic of the
mmdet/mmcv code it replaces:

1. ``(image - mean) / std`` with the config's ``data_preprocessor`` statistics (the input is an
   RGB image, pixel values 0-255, resized and padded to ``(H, W)``:
   :func:`mmeff.deploy.detector.preprocess_detection_image`); the fused backbone and the FPN.
2. RPN (``RPNHead.predict_by_feat``): per level the ``nms_pre`` best anchors (``TopK``; mmdet
   sorts and slices), their boxes decoded as ``DeltaXYWHBBoxCoder`` does (anchors of ``(H, W)``
   as constants, ``wh_ratio_clip``, clipped to the input), boxes of zero width or height dropped
   (``min_bbox_size``), NMS per level as mmcv's ``batched_nms`` with the level ids as classes
   (boxes of different levels offset apart; ONNX ``NonMaxSuppression``), the ``max_per_img``
   best proposals.
3. RoI features (``SingleRoIExtractor``): each RoI's FPN level by ``map_roi_levels``
   (``floor(log2(sqrt(area) / finest_scale + 1e-6))``), then, level by level, RoIAlign on the
   RoIs of that level only and the result scattered into the RoI's row, as mmdet does
   (``NonZero``, ``RoiAlign``, ``ScatterND``): no level is computed for RoIs that do not belong
   to it. RoIAlign is torchvision's ``roi_align(aligned=True)`` with the config's
   ``sampling_ratio`` (0: adaptive, ``ceil(roi_size / output_size)`` points per bin), which
   exports as ONNX ``RoiAlign`` (opset 16, ``coordinate_transformation_mode='half_pixel'``)
   and computes what mmcv's ``RoIAlign(aligned=True)`` computes.
4. The box head (``BBoxHead._predict_by_feat_single`` + ``multiclass_nms``): softmax scores,
   per-class boxes decoded from the RoIs and clipped to the input, every (RoI, class) pair with
   a score over ``score_thr`` (``NonZero``), class-aware NMS (class offsets, as ``batched_nms``),
   the ``max_dets`` best.
5. The mask head on the final boxes (their RoI features as in 3, at the mask extractor's output
   size), the channel of each box's label, sigmoid.

Outputs (rows sorted by score, padded to ``max_dets``; padding rows have score 0, label -1, a
zero box and a zero mask):

* ``boxes (max_dets, 4)``: x1, y1, x2, y2 in input pixels;
* ``scores (max_dets,)``, ``labels (max_dets,)`` (int64);
* ``masks (max_dets, M, M)``: mask probabilities **in box coordinates**, the mask head's own
  output resolution (``M = 28`` for mmdet's ``FCNMaskHead``). They are not pasted into the
  image in the graph: :func:`paste_masks` does mmdet's ``_do_paste_mask`` job (bilinear
  ``grid_sample`` of each mask into its box, threshold ``mask_thr_binary``) on the app's side,
  at the resolution the app wants (mmdet: the original image).

Where the graph differs from mmdet's code, and why the numbers agree:

* The RPN proposals and the box head's RoIs are padded to a fixed count (``max_per_img`` of
  the RPN) with zero boxes whose scores are forced to 0: they are never over ``score_thr``, so
  they never become detections (mmdet's list is shorter instead).
* The mask head runs on all ``max_dets`` rows (padding rows included, masked to 0 after):
  mmdet runs it on the detections only. Same masks for the real rows; the cost is that of a
  full ``max_dets`` image.
* NMS: torchvision's ``nms`` (ONNX ``NonMaxSuppression``) instead of mmcv's; both keep boxes
  in score order and suppress at IoU > threshold. The class/level offset is ``max(H, W) + 1``
  (boxes are clipped to the input) where mmcv adds ``boxes.max() + 1``: the same separation.
* ``TopK`` instead of a full sort for ``nms_pre``; the same candidates (up to exact ties).

Only Mask R-CNN (``MaskRCNN`` with ``RPNHead``, ``StandardRoIHead``, a ``BBoxHead`` with
``DeltaXYWHBBoxCoder``, ``SingleRoIExtractor`` with ``RoIAlign``, ``FCNMaskHead``) is exported;
:func:`check_mask_rcnn_config` names what else a config has. Core ML is refused
(:data:`COREML_REFUSAL`).
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

OUTPUT_NAMES = ('boxes', 'scores', 'labels', 'masks')
WH_RATIO_CLIP = 16 / 1000  # DeltaXYWHBBoxCoder.decode's default, used by mmdet's heads

# What the exported graph implements, per part of the config (short type names).
SUPPORTED = dict(rpn_head=('RPNHead',), roi_head=('StandardRoIHead',),
                 bbox_roi_extractor=('SingleRoIExtractor',),
                 mask_roi_extractor=('SingleRoIExtractor',), roi_layer=('RoIAlign',),
                 mask_head=('FCNMaskHead',), bbox_coder=('DeltaXYWHBBoxCoder',))

COREML_REFUSAL = (
    'Core ML cannot run this Mask R-CNN exactly: it has no RoIAlign with mmcv\'s adaptive '
    'sampling (sampling_ratio=0 averages ceil(roi_size / output_size)^2 points per bin; Core '
    'ML\'s crop_resize samples one point per bin, so large RoIs would differ), and its fixed-'
    'shape programs have no data-dependent RoI count or per-level RoI assignment; no '
    'approximation is shipped. Export it with --format onnx (ONNX Runtime has an exact '
    'RoiAlign), or put only its backbone on Core ML with --task backbone')

CASCADE_REFUSAL = (
    'Cascade Mask R-CNN is not exported whole: its CascadeRoIHead refines the RoIs through '
    'three box heads (each stage decodes the previous one\'s boxes, the class scores are the '
    'average of the three stages) and averages three mask heads, where the exported graph has '
    'the one box head and one mask head of StandardRoIHead (mmeff.deploy.mask_rcnn). Export '
    'its backbone with --task backbone, or a Mask R-CNN config whole')


def _short_type(t) -> str:
    return str(t).split('.')[-1]


def check_mask_rcnn_config(model_cfg, config: str) -> None:
    """Raise a ``ValueError`` naming the part of ``model_cfg`` (an mmdet ``MaskRCNN`` model
    dict) that the exported graph does not implement (see :data:`SUPPORTED`)."""
    def check(what, t, allowed):
        if _short_type(t) not in allowed:
            raise ValueError(f'config {config!r}: {what} is {t!r}; the whole Mask R-CNN export '
                             f"implements {', '.join(allowed)} there (mmeff.deploy.mask_rcnn)")

    rpn = model_cfg.get('rpn_head') or {}
    check('model.rpn_head.type', rpn.get('type'), SUPPORTED['rpn_head'])
    check('model.rpn_head.bbox_coder.type', (rpn.get('bbox_coder') or {}).get('type'),
          SUPPORTED['bbox_coder'])
    roi = model_cfg.get('roi_head') or {}
    check('model.roi_head.type', roi.get('type'), SUPPORTED['roi_head'])
    for key in ('bbox_roi_extractor', 'mask_roi_extractor'):
        ext = roi.get(key) or {}
        check(f'model.roi_head.{key}.type', ext.get('type'), SUPPORTED[key])
        layer = ext.get('roi_layer') or {}
        check(f'model.roi_head.{key}.roi_layer.type', layer.get('type'), SUPPORTED['roi_layer'])
        if not layer.get('aligned', True) or layer.get('pool_mode', 'avg') != 'avg':
            raise ValueError(f'config {config!r}: model.roi_head.{key}.roi_layer is {layer}; '
                             f"the export implements RoIAlign(aligned=True, pool_mode='avg') "
                             f'(ONNX RoiAlign half_pixel)')
    bbox = roi.get('bbox_head') or {}
    check('model.roi_head.bbox_head.bbox_coder.type', (bbox.get('bbox_coder') or {}).get('type'),
          SUPPORTED['bbox_coder'])
    check('model.roi_head.mask_head.type', (roi.get('mask_head') or {}).get('type'),
          SUPPORTED['mask_head'])


def delta2bbox(priors: torch.Tensor, deltas: torch.Tensor, means: torch.Tensor,
               stds: torch.Tensor, max_hw: Optional[Tuple[int, int]],
               wh_ratio_clip: float = WH_RATIO_CLIP) -> torch.Tensor:
    """mmdet's ``delta2bbox`` (``DeltaXYWHBBoxCoder.decode``), step by step: ``priors (N, 4)``
    and ``deltas (N, 4)`` -> boxes ``(N, 4)``, clipped to ``max_hw`` (H, W) when given."""
    d = deltas * stds + means
    pxy = (priors[:, :2] + priors[:, 2:]) * 0.5
    pwh = priors[:, 2:] - priors[:, :2]
    dxy_wh = pwh * d[:, :2]
    max_ratio = float(np.abs(np.log(wh_ratio_clip)))
    dwh = d[:, 2:].clamp(min=-max_ratio, max=max_ratio)
    gxy = pxy + dxy_wh
    gwh = pwh * dwh.exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=1)
    if max_hw is not None:
        h, w = max_hw
        lim = torch.tensor([w, h, w, h], dtype=boxes.dtype)
        boxes = torch.minimum(boxes.clamp(min=0), lim)
    return boxes


def _coder_stats(coder) -> Tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(coder.means, dtype=torch.float32).view(1, 4),
            torch.tensor(coder.stds, dtype=torch.float32).view(1, 4))


class MaskRCNNExport(nn.Module):
    """Image ``(1, 3, H, W)``, RGB 0-255, resized/padded to the export size -> ``boxes,
    scores, labels, masks`` (see the module docstring). Built from an mmdet ``MaskRCNN``.

    Args:
        detector (nn.Module): The mmdet detector (eval mode; fused or not).
        input_size (tuple[int, int]): ``(H, W)``.
        max_dets (int | None): Output rows (mmdet's ``test_cfg.rcnn.max_per_img``; ``None``
            reads it).
        score_thr (float | None): Box score threshold (``test_cfg.rcnn.score_thr``).
        iou_thr (float | None): IoU threshold of the box head's NMS
            (``test_cfg.rcnn.nms.iou_threshold``).
        nms_pre (int | None): RPN candidates per level (``test_cfg.rpn.nms_pre``).
    """
    output_names = OUTPUT_NAMES
    # Share of the detections the export's self-check (torch vs ONNX Runtime on a random
    # image) lets differ: on noise, RPN scores tie to float rounding at the proposal cuts
    # (nms_pre per level, max_per_img) where a different proposal changes the detections
    # drawn from it; 2-7 of 100 seen, with every matched box within 1e-4 px.
    tie_tolerance = 0.1

    def __init__(self, detector: nn.Module, input_size: Tuple[int, int],
                 max_dets: Optional[int] = None, score_thr: Optional[float] = None,
                 iou_thr: Optional[float] = None, nms_pre: Optional[int] = None):
        super().__init__()
        self.backbone, self.neck = detector.backbone, detector.neck
        self.rpn_head = detector.rpn_head
        roi_head = detector.roi_head
        self.bbox_head, self.mask_head = roi_head.bbox_head, roi_head.mask_head
        self.height, self.width = input_size
        rpn_cfg = dict(detector.rpn_head.test_cfg or {})
        rcnn_cfg = dict(roi_head.test_cfg or {})
        self.rpn_nms_pre = int(rpn_cfg.get('nms_pre', -1) if nms_pre is None else nms_pre)
        self.rpn_max = int(rpn_cfg.get('max_per_img', 1000))
        self.rpn_iou = float((rpn_cfg.get('nms') or {}).get('iou_threshold', 0.7))
        self.min_bbox_size = float(rpn_cfg.get('min_bbox_size', -1))
        self.max_dets = int(rcnn_cfg.get('max_per_img', 100) if max_dets is None else max_dets)
        self.score_thr = float(rcnn_cfg.get('score_thr', 0.05) if score_thr is None
                               else score_thr)
        self.iou_thr = float((rcnn_cfg.get('nms') or {}).get('iou_threshold', 0.5)
                             if iou_thr is None else iou_thr)
        self.mask_thr_binary = float(rcnn_cfg.get('mask_thr_binary', 0.5))
        # boxes lie in [0, max(H, W)]: this offset keeps classes (levels) apart in one NMS
        self.nms_offset = float(max(self.height, self.width) + 1)
        pre = detector.data_preprocessor
        self.register_buffer('mean', pre.mean.view(1, 3, 1, 1).float().clone())
        self.register_buffer('inv_std', 1. / pre.std.view(1, 3, 1, 1).float())
        for name, coder in (('rpn', self.rpn_head.bbox_coder), ('rcnn', self.bbox_head.bbox_coder)):
            if getattr(coder, 'add_ctr_clamp', False):
                raise ValueError(f'the {name} box coder has add_ctr_clamp=True, which the export '
                                 f'does not implement')
            means, stds = _coder_stats(coder)
            self.register_buffer(f'{name}_means', means)
            self.register_buffer(f'{name}_stds', stds)
        self.rpn_clip = bool(self.rpn_head.bbox_coder.clip_border)
        self.rcnn_clip = bool(self.bbox_head.bbox_coder.clip_border)
        if getattr(self.bbox_head, 'custom_cls_channels', False):
            raise ValueError('the box head\'s loss has its own activation (custom_cls_channels); '
                             'the export implements the softmax of BBoxHead')
        self.num_classes = int(self.bbox_head.num_classes)
        self.reg_class_agnostic = bool(self.bbox_head.reg_class_agnostic)
        self.mask_class_agnostic = bool(self.mask_head.class_agnostic)
        self.rpn_sigmoid = bool(self.rpn_head.use_sigmoid_cls)
        self.extractors = {}
        for key in ('bbox_roi_extractor', 'mask_roi_extractor'):
            ext = getattr(roi_head, key)
            layer = ext.roi_layers[0]
            self.extractors[key] = dict(
                finest_scale=float(ext.finest_scale), out_channels=int(ext.out_channels),
                output_size=tuple(int(s) for s in layer.output_size),
                sampling_ratio=int(layer.sampling_ratio),
                scales=[float(r.spatial_scale) for r in ext.roi_layers])
        with torch.no_grad():  # the anchors of (H, W): constants of the graph
            feats = self.neck(self.backbone(torch.zeros(1, 3, self.height, self.width)))
            cls_scores, _ = self.rpn_head(feats)
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        anchors = self.rpn_head.prior_generator.grid_priors(sizes, device='cpu')
        self.num_levels = len(anchors)
        for i, a in enumerate(anchors):
            self.register_buffer(f'anchors_{i}', a.float().clone())
        ext = self.extractors['mask_roi_extractor']
        with torch.no_grad():  # the mask head's output resolution (28 for FCNMaskHead)
            m = self.mask_head(torch.zeros((1, ext['out_channels']) + ext['output_size']))
        self.mask_size = tuple(int(s) for s in m.shape[-2:])

    # ------------------------------------------------------------------------- pieces
    def _nms(self, boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
             iou: float) -> torch.Tensor:
        """mmcv's ``batched_nms``: NMS within each group (boxes offset apart); kept indices in
        score order."""
        from torchvision.ops import nms
        offset = groups.to(boxes.dtype)[:, None] * self.nms_offset
        return nms(boxes + offset, scores, iou)

    def proposals(self, feats: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """RPN: ``(boxes (P, 4), valid (P,))``, ``P`` = the RPN's ``max_per_img``; rows past
        the proposals mmdet keeps are zero boxes with ``valid`` 0."""
        cls_scores, bbox_preds = self.rpn_head(feats)
        boxes, scores, levels = [], [], []
        for lvl, (cls, reg) in enumerate(zip(cls_scores, bbox_preds)):
            cls = cls[0].permute(1, 2, 0).reshape(-1, self.rpn_head.cls_out_channels)
            s = cls.sigmoid().reshape(-1) if self.rpn_sigmoid else cls.softmax(-1)[:, 0]
            d = reg[0].permute(1, 2, 0).reshape(-1, 4)
            priors = getattr(self, f'anchors_{lvl}')
            if 0 < self.rpn_nms_pre < s.shape[0]:
                s, idx = s.topk(self.rpn_nms_pre)
                d, priors = d[idx], priors[idx]
            boxes.append(delta2bbox(priors, d, self.rpn_means, self.rpn_stds,
                                    (self.height, self.width) if self.rpn_clip else None))
            scores.append(s)
            levels.append(torch.full_like(s, lvl, dtype=torch.long))
        boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
        if self.min_bbox_size >= 0:
            wh = boxes[:, 2:] - boxes[:, :2]
            keep = torch.nonzero((wh[:, 0] > self.min_bbox_size)
                                 & (wh[:, 1] > self.min_bbox_size)).squeeze(1)
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = self._nms(boxes, scores, levels, self.rpn_iou)[:self.rpn_max]
        P = self.rpn_max
        out = torch.cat([boxes[keep], boxes.new_zeros(P, 4)])[:P]
        valid = torch.cat([scores.new_ones(keep.shape[0]), scores.new_zeros(P)])[:P]
        return out, valid

    def roi_features(self, key: str, feats: Sequence[torch.Tensor],
                     boxes: torch.Tensor) -> torch.Tensor:
        """``SingleRoIExtractor``: each box's level by ``map_roi_levels``, RoIAlign on the
        boxes of each level, scattered into their rows."""
        from torchvision.ops import roi_align
        ext = self.extractors[key]
        num_levels = len(ext['scales'])
        wh = boxes[:, 2:] - boxes[:, :2]
        scale = torch.sqrt(wh[:, 0] * wh[:, 1])
        lvls = torch.floor(torch.log2(scale / ext['finest_scale'] + 1e-6))
        lvls = lvls.clamp(min=0, max=num_levels - 1).long()
        rois = torch.cat([boxes.new_zeros(boxes.shape[0], 1), boxes], dim=1)
        out = feats[0].new_zeros((boxes.shape[0], ext['out_channels']) + ext['output_size'])
        for i in range(num_levels):
            inds = torch.nonzero(lvls == i).squeeze(1)
            out[inds] = roi_align(feats[i], rois[inds], ext['output_size'], ext['scales'][i],
                                  ext['sampling_ratio'], aligned=True)
        return out

    def detections(self, feats: Sequence[torch.Tensor], proposals: torch.Tensor,
                   valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The box head and ``multiclass_nms``: ``boxes (D, 4), scores (D,), labels (D,)``
        padded to ``D = max_dets`` (score 0, label -1, zero box)."""
        C = self.num_classes
        cls_score, bbox_pred = self.bbox_head(
            self.roi_features('bbox_roi_extractor', feats, proposals))
        scores = cls_score.softmax(-1)[:, :C] * valid[:, None]  # padding RoIs score 0
        clip = (self.height, self.width) if self.rcnn_clip else None
        if self.reg_class_agnostic:
            boxes = delta2bbox(proposals, bbox_pred.reshape(-1, 4), self.rcnn_means,
                               self.rcnn_stds, clip)[:, None].expand(-1, C, 4)
        else:
            rois = proposals[:, None].expand(-1, C, 4).reshape(-1, 4)  # each RoI C times
            boxes = delta2bbox(rois, bbox_pred.reshape(-1, 4), self.rcnn_means, self.rcnn_stds,
                               clip)
        boxes, scores = boxes.reshape(-1, 4), scores.reshape(-1)
        cand = torch.nonzero(scores > self.score_thr).squeeze(1)
        labels = cand % C
        boxes, scores = boxes[cand], scores[cand]
        keep = self._nms(boxes, scores, labels, self.iou_thr)[:self.max_dets]
        D = self.max_dets
        return (torch.cat([boxes[keep], boxes.new_zeros(D, 4)])[:D],
                torch.cat([scores[keep], scores.new_zeros(D)])[:D],
                torch.cat([labels[keep], labels.new_full((D,), -1)])[:D])

    def masks(self, feats: Sequence[torch.Tensor], boxes: torch.Tensor,
              labels: torch.Tensor) -> torch.Tensor:
        """The mask head on the final boxes: ``(D, M, M)`` probabilities of each box's label,
        zero for padding rows."""
        preds = self.mask_head(self.roi_features('mask_roi_extractor', feats, boxes))
        if self.mask_class_agnostic:
            preds = preds[:, 0]
        else:
            preds = preds[torch.arange(preds.shape[0]), labels.clamp(min=0)]
        return preds.sigmoid() * (labels >= 0).to(preds.dtype)[:, None, None]

    def forward(self, image: torch.Tensor):
        if image.shape[0] != 1:
            raise ValueError(f'the exported detector takes one image, got a batch of '
                             f'{image.shape[0]}')
        feats = self.neck(self.backbone((image - self.mean) * self.inv_std))
        proposals, valid = self.proposals(feats)
        boxes, scores, labels = self.detections(feats, proposals, valid)
        return boxes, scores, labels, self.masks(feats, boxes, labels)


# ----------------------------------------------------------------------------- app side
def paste_masks(boxes: np.ndarray, masks: np.ndarray, img_h: int, img_w: int,
                thr: Optional[float] = 0.5) -> np.ndarray:
    """Paste box-coordinate masks into an ``img_h x img_w`` image as mmdet's
    ``FCNMaskHead`` does on the CPU (``_do_paste_mask`` box by box, ``skip_empty``: bilinear
    ``grid_sample``, ``align_corners=False``, zero outside the mask, only within one pixel
    around the box; then ``>= thr``).

    Args:
        boxes (np.ndarray): ``(N, 4)`` x1, y1, x2, y2 in the pixels of the target image (for
            mmdet's result: the exported boxes divided by the preprocessing scale).
        masks (np.ndarray): ``(N, M, M)`` probabilities (the export's ``masks`` output).
        img_h (int): Target height.
        img_w (int): Target width.
        thr (float | None): Binarisation threshold (mmdet's ``mask_thr_binary``, 0.5);
            ``None`` returns the pasted probabilities.

    Returns:
        np.ndarray: ``(N, img_h, img_w)``, bool (or float32 with ``thr=None``).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    masks = np.asarray(masks, np.float32)
    if masks.ndim != 3 or len(masks) != len(boxes):
        raise ValueError(f'paste_masks needs boxes (N, 4) and masks (N, M, M), got '
                         f'{boxes.shape} and {masks.shape}')
    out = np.zeros((len(boxes), img_h, img_w), np.float32)
    mh, mw = masks.shape[1:]
    for i, (box, mask) in enumerate(zip(boxes, masks)):
        x0, y0, x1, y1 = (np.float32(v) for v in box)
        # the pixels mmdet fills: one pixel around the box, inside the image
        xa = max(int(np.floor(x0)) - 1, 0)
        ya = max(int(np.floor(y0)) - 1, 0)
        xb = min(int(np.ceil(x1)) + 1, img_w)
        yb = min(int(np.ceil(y1)) + 1, img_h)
        if xb <= xa or yb <= ya:
            continue
        with np.errstate(divide='ignore', invalid='ignore'):
            gx = (np.arange(xa, xb, dtype=np.float32) + np.float32(0.5) - x0) / (x1 - x0) \
                * np.float32(2) - np.float32(1)
            gy = (np.arange(ya, yb, dtype=np.float32) + np.float32(0.5) - y0) / (y1 - y0) \
                * np.float32(2) - np.float32(1)
        gx[np.isinf(gx)] = 0  # mmdet zeroes infinite grid values (a box of zero size)
        gy[np.isinf(gy)] = 0
        # grid_sample(align_corners=False): grid value g -> mask pixel ((g + 1) * M - 1) / 2
        px = ((gx + 1) * mw - 1) / 2
        py = ((gy + 1) * mh - 1) / 2
        out[i, ya:yb, xa:xb] = _bilinear_zeros(mask, py, px)
    if thr is None:
        return out
    return out >= thr


def _bilinear_zeros(mask: np.ndarray, py: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``mask`` at rows ``py`` x columns ``px`` (a separable grid), zero
    outside the mask (``grid_sample``'s ``padding_mode='zeros'``). A NaN coordinate (a pixel
    centre on a box of zero size, 0 / 0) samples nothing: 0."""
    mh, mw = mask.shape
    py = np.where(np.isnan(py), -2, py)
    px = np.where(np.isnan(px), -2, px)
    y0, x0 = np.floor(py).astype(np.int64), np.floor(px).astype(np.int64)
    wy1, wx1 = (py - y0).astype(np.float32), (px - x0).astype(np.float32)
    wy0, wx0 = 1 - wy1, 1 - wx1
    out = np.zeros((len(py), len(px)), np.float32)
    for yy, wy in ((y0, wy0), (y0 + 1, wy1)):
        vy = (yy >= 0) & (yy < mh)
        for xx, wx in ((x0, wx0), (x0 + 1, wx1)):
            vx = (xx >= 0) & (xx < mw)
            vals = mask[np.clip(yy, 0, mh - 1)][:, np.clip(xx, 0, mw - 1)]
            w = (wy * vy)[:, None] * (wx * vx)[None, :]
            out += w * vals
    return out


def detections_with_masks(outputs: Sequence[np.ndarray], scale, ori_hw: Sequence[int],
                          mask_thr: float = 0.5) -> dict:
    """The export's ``boxes, scores, labels, masks`` as mmdet's ``pred_instances`` of the
    original image: padding rows dropped, boxes divided by the preprocessing ``scale`` (a
    float or ``(w_scale, h_scale)``; not clipped, as mmdet's ``rescale``), masks pasted into
    ``ori_hw`` (:func:`paste_masks`, threshold ``mask_thr``)."""
    from .detector import detections_to_image
    boxes, scores, labels, masks = outputs
    det = detections_to_image(boxes, scores, labels, scale, ori_hw, clip=False)
    keep = np.asarray(labels) >= 0
    det['masks'] = paste_masks(det['bboxes'], np.asarray(masks)[keep], int(ori_hw[0]),
                               int(ori_hw[1]), mask_thr)
    return det


def compare_masks(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest IoU between corresponding binary masks ``(N, h, w)`` of two results (1.0 for
    two empty masks)."""
    if len(a) == 0:
        return 1.0
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    inter = (a & b).sum(1)
    union = (a | b).sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return float(iou.min())


__all__ = ['OUTPUT_NAMES', 'SUPPORTED', 'COREML_REFUSAL', 'CASCADE_REFUSAL', 'MaskRCNNExport',
           'check_mask_rcnn_config', 'compare_masks', 'delta2bbox', 'detections_with_masks',
           'paste_masks']
