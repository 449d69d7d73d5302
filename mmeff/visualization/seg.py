"""mmseg's inferencer and visualizer with the demo's readable pictures (see the package doc)."""
import numpy as np
from mmseg.apis import MMSegInferencer
from mmseg.visualization import SegLocalVisualizer

from . import draw_region_labels


class ReadableSegLocalVisualizer(SegLocalVisualizer):
    """``SegLocalVisualizer`` whose class names stay readable at any picture size.

    The overlay is mmseg's (image and class colours blended with ``alpha``); the names are
    written by :func:`mmeff.visualization.draw_region_labels` on top of it, at full opacity,
    with a text height that follows the picture and never falls below a readable size, one per
    class on its largest region, without overlapping. mmseg's own labels (a fixed fraction of
    the picture, blended into the overlay) are not drawn.
    """

    def _draw_sem_seg(self, image, sem_seg, classes, palette, with_labels=True):
        drawn = super()._draw_sem_seg(image, sem_seg, classes, palette, with_labels=False)
        if with_labels:
            label_map = np.asarray(sem_seg.cpu().data)[0]
            drawn, _ = draw_region_labels(drawn, label_map, classes, palette)
            self.set_image(drawn)
        return drawn


class DemoSegInferencer(MMSegInferencer):
    """``MMSegInferencer`` drawing with :class:`ReadableSegLocalVisualizer`."""

    def _init_visualizer(self, cfg):
        # Only mmseg's own visualizer is replaced; a config's custom one is kept as it is.
        if cfg.get('visualizer') is not None and \
                cfg.visualizer.get('type') in ('SegLocalVisualizer', 'mmseg.SegLocalVisualizer'):
            cfg.visualizer.type = ReadableSegLocalVisualizer
        return super()._init_visualizer(cfg)


__all__ = ['ReadableSegLocalVisualizer', 'DemoSegInferencer']
