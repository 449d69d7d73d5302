"""mmdet's inferencer and visualizer with the demo's readable pictures (see the package doc)."""
import re
from typing import Optional

import numpy as np
import torch
from mmdet.apis import DetInferencer
from mmdet.visualization import DetLocalVisualizer

from . import (CHAR_WIDTH, MIN_PICTURE_SIDE, line_width_pt, place_label, text_height_px,
               top_k_instances, upscale_factor)

# mmdet's label size (pt) for its largest boxes; it draws 0.5x that for small boxes.
_MMDET_FONT_PT = 13.
# mmdet's label background: matplotlib's bbox pad, in font sizes, on each side.
_LABEL_PAD = 0.7
# mmdet writes a score as "<class>: 87.3" (percent, without the sign).
_SCORE = re.compile(r': (\d+(?:\.\d+)?)$')


def _scaled_sample(data_sample, k: int):
    """A copy of ``data_sample`` with its instances' boxes and masks ``k`` times larger, or None
    when it holds something else that would have to be scaled (semantic/panoptic maps, boxes
    or masks of other types)."""
    if any(key in data_sample for key in ('gt_sem_seg', 'pred_sem_seg', 'gt_panoptic_seg',
                                          'pred_panoptic_seg')):
        return None
    sample = data_sample.clone()
    for key in ('gt_instances', 'pred_instances'):
        if key not in sample:
            continue
        instances = sample.get(key)
        if 'bboxes' in instances:
            if not isinstance(instances.bboxes, torch.Tensor):
                return None
            instances.bboxes = instances.bboxes * k
        if 'masks' in instances:
            masks = instances.masks
            if isinstance(masks, torch.Tensor):
                instances.masks = masks.repeat_interleave(k, 1).repeat_interleave(k, 2)
            elif isinstance(masks, np.ndarray):
                instances.masks = masks.repeat(k, 1).repeat(k, 2)
            elif hasattr(masks, 'rescale'):  # mmdet's BitmapMasks / PolygonMasks
                instances.masks = masks.rescale(k)
            else:
                return None
    return sample


class ReadableDetLocalVisualizer(DetLocalVisualizer):
    """``DetLocalVisualizer`` drawing pictures that can be read at any input size.

    * A picture whose shorter side is below ``min_side`` is drawn enlarged by a whole factor
      (boxes and masks with it).
    * Box lines and label text follow the picture's size (mmdet: fixed 3-pt lines and 13-pt
      labels, which suit a COCO-sized picture), keeping mmdet's relative size between small and
      large boxes, never below a readable height.
    * Labels stay inside the picture and apart from each other, and scores read ``87.3%``.
    * Masks are drawn first, translucent (``mask_alpha``), so the object stays visible under
      them, and the boxes and labels on top (mmdet draws the masks over the labels).

    Args:
        name, *args, **kwargs: ``DetLocalVisualizer``'s.
        min_side (int): shorter side (px) below which pictures are enlarged; 0: never.
        mask_alpha (float): opacity of the masks (mmdet: ``alpha``, 0.8, for boxes and masks).
    """

    def __init__(self, name: str = 'visualizer', *args, min_side: int = MIN_PICTURE_SIDE,
                 mask_alpha: float = 0.4, **kwargs):
        if not 0. <= mask_alpha <= 1.:
            raise ValueError(f'mask_alpha must be in [0, 1], got {mask_alpha!r}')
        super().__init__(name, *args, **kwargs)
        self.min_side = int(min_side)
        self.mask_alpha = mask_alpha
        self._picture_hw = None
        self._write_labels = True
        self.label_boxes = []  # (x0, y0, x1, y1) of the labels of the last picture, in px

    def add_datasample(self, name, image, data_sample=None, *args, **kwargs):
        k = upscale_factor(*image.shape[:2], self.min_side) if self.min_side else 1
        if k > 1:
            scaled = _scaled_sample(data_sample, k) if data_sample is not None else None
            if data_sample is None or scaled is not None:
                image = np.ascontiguousarray(image.repeat(k, 0).repeat(k, 1))
                data_sample = scaled
        return super().add_datasample(name, image, data_sample, *args, **kwargs)

    def _draw_instances(self, image, instances, classes, palette):
        self._picture_hw = image.shape[:2]
        self.line_width = line_width_pt(*self._picture_hw)
        self.label_boxes = []
        if 'masks' in instances and 'bboxes' in instances and len(instances) > 0:
            masks_only = instances.clone()
            del masks_only.bboxes
            alpha, self.alpha, self._write_labels = self.alpha, self.mask_alpha, False
            try:
                image = super()._draw_instances(image, masks_only, classes, palette)
            finally:
                self.alpha, self._write_labels = alpha, True
            instances = instances.clone()
            del instances.masks
        return super()._draw_instances(image, instances, classes, palette)

    def draw_texts(self, texts, positions, font_sizes=None, **kwargs):
        if not self._write_labels:
            return self  # the masks' own labels: the boxes' are written afterwards
        if self._picture_hw is not None and isinstance(font_sizes, (int, float)):
            px = text_height_px(*self._picture_hw, relative=font_sizes / _MMDET_FONT_PT)
            if isinstance(texts, str):
                texts = _SCORE.sub(r': \1%', texts)
                pad = _LABEL_PAD * px
                width = CHAR_WIDTH * px * len(texts) + 2 * pad
                height = 1.2 * px + 2 * pad
                x, y = (float(v) for v in np.asarray(positions, dtype=np.float64).reshape(-1)[:2])
                x, y = place_label(x - pad, y - pad, width, height, self._picture_hw,
                                   self.label_boxes)
                positions = np.array([x + pad, y + pad])
            font_sizes = px * 72. / self.dpi  # matplotlib sizes text in points
        return super().draw_texts(texts, positions, font_sizes=font_sizes, **kwargs)


class DemoDetInferencer(DetInferencer):
    """``DetInferencer`` that keeps each image's ``max_dets`` best detections and draws them
    with :class:`ReadableDetLocalVisualizer`.

    The cut happens on the model's predictions, so the pictures and the prediction files
    (``preds/<image>.json``) hold the same detections; ``pred_score_thr`` then decides which
    of them are drawn, as in mmdet.

    Args:
        *args, **kwargs: ``DetInferencer``'s.
        max_dets (int, optional): detections kept per image, best scores first; None keeps all.
    """

    def __init__(self, *args, max_dets: Optional[int] = 20, **kwargs):
        if max_dets is not None and (not isinstance(max_dets, int) or max_dets < 1):
            raise ValueError(f'max_dets must be a positive int or None, got {max_dets!r}')
        self.max_dets = max_dets
        super().__init__(*args, **kwargs)

    def _init_visualizer(self, cfg):
        # Only mmdet's own visualizer is replaced; a config's custom one is kept as it is.
        if cfg.get('visualizer') is not None and \
                cfg.visualizer.get('type') in ('DetLocalVisualizer', 'mmdet.DetLocalVisualizer'):
            cfg.visualizer.type = ReadableDetLocalVisualizer
        return super()._init_visualizer(cfg)

    def forward(self, inputs, **kwargs):
        preds = super().forward(inputs, **kwargs)
        for pred in preds:
            if 'pred_instances' in pred:
                pred.pred_instances = top_k_instances(pred.pred_instances, self.max_dets)
        return preds


__all__ = ['ReadableDetLocalVisualizer', 'DemoDetInferencer']
