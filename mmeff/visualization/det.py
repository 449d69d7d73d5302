"""mmdet's inferencer and visualizer with the demo's readable pictures (see the package doc)."""
from typing import Optional

from mmdet.apis import DetInferencer
from mmdet.visualization import DetLocalVisualizer

from . import line_width_pt, text_height_px, top_k_instances

# mmdet's label size (pt) for its largest boxes; it draws 0.5x that for small boxes.
_MMDET_FONT_PT = 13.


class ReadableDetLocalVisualizer(DetLocalVisualizer):
    """``DetLocalVisualizer`` whose box lines and label text follow the picture's size.

    mmdet's fixed 3-pt lines and 13-pt labels suit a COCO-sized picture; here both scale with
    ``sqrt(H * W)`` (:func:`mmeff.visualization.line_width_pt` / ``text_height_px``), keeping
    mmdet's relative size between small and large boxes, and labels never fall below a
    readable height.
    """

    _picture_hw = None

    def _draw_instances(self, image, instances, classes, palette):
        self._picture_hw = image.shape[:2]
        self.line_width = line_width_pt(*self._picture_hw)
        return super()._draw_instances(image, instances, classes, palette)

    def draw_texts(self, texts, positions, font_sizes=None, **kwargs):
        if self._picture_hw is not None and isinstance(font_sizes, (int, float)):
            px = text_height_px(*self._picture_hw, relative=font_sizes / _MMDET_FONT_PT)
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
