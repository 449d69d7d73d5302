"""Readable prediction pictures for tools/demo.py: sizes that follow the picture, few boxes.

mmdet's ``DetLocalVisualizer`` draws 3-pt lines and 6.5-13-pt labels whatever the picture's
size, and every detection above the score threshold: on the demo's 160x128 images one label is
as wide as the picture and twenty of them bury it. mmseg's ``SegLocalVisualizer`` writes class
names at ``min(H, W) / 500`` of OpenCV's font, a few pixels high on small pictures, blended
into the overlay. This package holds the pure pieces (sizes, top-k, region labels); the
visualizer and inferencer subclasses that use them are in ``det.py`` (mmdet) and ``seg.py``
(mmseg), imported only by the task that needs them.
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np

# A picture of this geometric-mean side (px) gets mmdet's own sizes: about COCO's images,
# which mmdet's fixed 3-pt lines and 13-pt labels were chosen for.
REFERENCE_SIDE = 600.
# Smallest label text height (px) that stays readable; labels never shrink below it.
MIN_TEXT_PX = 8.
# Label text height (px) at the reference side: mmdet's 13 pt at matplotlib's 100 dpi.
REFERENCE_TEXT_PX = 13 * 100 / 72


# Detection pictures whose shorter side is below this (px) are drawn enlarged by a whole factor
# (nearest neighbour, so that pixels stay visible as such): on the demo's 160x128 images even
# the smallest readable label covers a quarter of a box.
MIN_PICTURE_SIDE = 480
# Average advance of a character of matplotlib's default font (DejaVu Sans), in text heights:
# to keep labels inside the picture and apart before matplotlib lays them out.
CHAR_WIDTH = 0.62


def upscale_factor(height: int, width: int, min_side: int = MIN_PICTURE_SIDE) -> int:
    """The whole factor that brings the picture's shorter side to at least ``min_side`` (1 when
    it is already there, or ``min_side`` is 0)."""
    if height <= 0 or width <= 0:
        raise ValueError(f'picture size must be positive, got {height}x{width}')
    return max(1, -(-int(min_side) // min(height, width)))


def place_label(x: float, y: float, width: float, height: float, picture_hw: Tuple[int, int],
                taken: List[Tuple[float, float, float, float]]) -> Tuple[float, float]:
    """Top-left corner for a ``width`` x ``height`` label box wanted at ``(x, y)``: moved inside
    the picture, then down (or up) by whole label heights until it covers no box in ``taken``
    (left where it was when no such place exists). The chosen box is appended to ``taken``."""
    h, w = picture_hw
    x = min(max(0., x), max(0., w - width))
    y0 = min(max(0., y), max(0., h - height))
    rows = int(h // max(height, 1.))
    candidates = [y0 + j * height for j in range(rows + 1) if y0 + j * height + height <= h]
    candidates += [y0 - j * height for j in range(1, rows + 1) if y0 - j * height >= 0]
    chosen = y0
    for cy in candidates:
        box = (x, cy, x + width, cy + height)
        if not any(_boxes_overlap(box, other) for other in taken):
            chosen = cy
            break
    taken.append((x, chosen, x + width, chosen + height))
    return x, chosen


def picture_scale(height: int, width: int) -> float:
    """``sqrt(H * W) / REFERENCE_SIDE``: how much larger than a COCO image the picture is."""
    if height <= 0 or width <= 0:
        raise ValueError(f'picture size must be positive, got {height}x{width}')
    return float(np.sqrt(height * width)) / REFERENCE_SIDE


def text_height_px(height: int, width: int, relative: float = 1.) -> float:
    """Label text height in pixels for a picture: proportional to its size (mmdet's at the
    reference size), times ``relative`` (mmdet's 0.5-1 for small to large boxes), never below
    ``MIN_TEXT_PX``."""
    return max(MIN_TEXT_PX, REFERENCE_TEXT_PX * picture_scale(height, width) * relative)


def line_width_pt(height: int, width: int) -> float:
    """Box outline width in points: mmdet's 3 pt at the reference size, at least 1 pt."""
    return max(1., round(3. * picture_scale(height, width), 1))


def top_k_instances(instances, k: Optional[int]):
    """The ``k`` highest-scoring entries of an ``InstanceData`` (all when ``k`` is None or
    there are not more), best first."""
    if k is None or len(instances) <= k:
        return instances
    order = instances.scores.argsort(descending=True)[:k]
    return instances[order]


def _boxes_overlap(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw_region_labels(image: np.ndarray, label_map: np.ndarray, classes: Sequence[str],
                       palette: Sequence[Sequence[int]]) -> Tuple[np.ndarray, List[str]]:
    """Write each predicted class's name on its largest region, readable at any picture size.

    Each label sits at the point of the region farthest from its border (inside the region
    whatever its shape), in a box of the class colour with black or white text (whichever
    contrasts), at full opacity, with a text height from :func:`text_height_px`. Larger regions
    are labelled first; a label that would cover an earlier one, or a region smaller than half
    its label, is left out rather than drawn over.

    Args:
        image: (H, W, 3) uint8 picture (RGB), e.g. the blended overlay.
        label_map: (H, W) integer class indices; values outside ``classes`` are ignored.
        classes: class names.
        palette: one RGB colour per class.

    Returns:
        tuple: the new picture (``image`` is not modified) and the class names written.
    """
    import cv2
    if label_map.shape != image.shape[:2]:
        raise ValueError(f'label map {label_map.shape} and picture {image.shape[:2]} differ')
    out = np.ascontiguousarray(image.copy())
    h, w = label_map.shape
    ids, counts = np.unique(label_map, return_counts=True)
    keep = (ids >= 0) & (ids < len(classes))
    order = np.argsort(-counts[keep], kind='stable')
    ids = ids[keep][order]

    font = cv2.FONT_HERSHEY_SIMPLEX
    (_, ref_h), _ = cv2.getTextSize('Hg', font, 1., 1)
    font_scale = text_height_px(h, w) / ref_h
    thickness = max(1, int(round(font_scale * 1.5)))
    pad = max(1, int(round(font_scale * 3)))
    taken, written = [], []
    for cls in ids:
        mask = (label_map == cls).astype(np.uint8)
        n, comps, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        inside = cv2.distanceTransform((comps == largest).astype(np.uint8), cv2.DIST_L2, 3)
        cy, cx = np.unravel_index(int(np.argmax(inside)), inside.shape)
        text = str(classes[cls])
        (tw, th), base = cv2.getTextSize(text, font, font_scale, thickness)
        bw, bh = tw + 2 * pad, th + base + 2 * pad
        x0 = int(np.clip(cx - bw // 2, 0, max(0, w - bw)))
        y0 = int(np.clip(cy - bh // 2, 0, max(0, h - bh)))
        box = (x0, y0, x0 + bw, y0 + bh)
        if 2 * stats[largest, cv2.CC_STAT_AREA] < bw * bh:
            continue  # a speck: its label would hide more than the region itself
        if any(_boxes_overlap(box, other) for other in taken):
            continue
        color = tuple(int(c) for c in palette[cls])
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        text_color = (0, 0, 0) if luminance > 128 else (255, 255, 255)
        cv2.rectangle(out, box[:2], (box[2] - 1, box[3] - 1), color, -1)
        cv2.rectangle(out, box[:2], (box[2] - 1, box[3] - 1), text_color, 1)
        cv2.putText(out, text, (x0 + pad, y0 + pad + th), font, font_scale, text_color,
                    thickness, cv2.LINE_AA)
        taken.append(box)
        written.append(text)
    return out, written


__all__ = ['REFERENCE_SIDE', 'MIN_TEXT_PX', 'MIN_PICTURE_SIDE', 'CHAR_WIDTH', 'upscale_factor',
           'place_label', 'picture_scale', 'text_height_px', 'line_width_pt', 'top_k_instances',
           'draw_region_labels']
