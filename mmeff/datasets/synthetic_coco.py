"""A small dataset in COCO-2017's layout and annotation format, generated on the spot, for tests
and demos that must run without the real data.

Layout (what mmdet's ``CocoDataset`` and ``CocoMetric`` read; ``data_root`` is ``root``)::

    root/train2017/%012d.jpg         root/annotations/instances_train2017.json
    root/val2017/%012d.jpg           root/annotations/instances_val2017.json

Each image holds a few non-overlapping filled shapes (one shape kind per category: rectangle,
ellipse, triangle, ... ) on a noisy background. Every shape is drawn from the very polygon that
is written to the JSON, so boxes, polygons, areas and the pixels agree exactly (a prediction
equal to the ground truth scores AP 1.0 under pycocotools). A category always has the same
colour (plus noise), so a detector can learn the task.
"""
import json
import math
import os
import os.path as osp
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

SPLITS = ('train2017', 'val2017')
SHAPES = ('rectangle', 'ellipse', 'triangle', 'diamond', 'hexagon')


def _shape_polygon(kind: str, x0: float, y0: float, w: float, h: float) -> List[float]:
    """Polygon (flat [x1, y1, x2, y2, ...]) of a shape inscribed in the box (x0, y0, w, h)."""
    cx, cy = x0 + w / 2, y0 + h / 2
    if kind == 'rectangle':
        pts = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    elif kind == 'ellipse':
        pts = [(cx + w / 2 * math.cos(2 * math.pi * k / 24),
                cy + h / 2 * math.sin(2 * math.pi * k / 24)) for k in range(24)]
    elif kind == 'triangle':
        pts = [(cx, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    elif kind == 'diamond':
        pts = [(cx, y0), (x0 + w, cy), (cx, y0 + h), (x0, cy)]
    elif kind == 'hexagon':
        pts = [(cx + w / 2 * math.cos(math.pi * k / 3), cy + h / 2 * math.sin(math.pi * k / 3))
               for k in range(6)]
    else:
        raise ValueError(f'unknown shape {kind!r}; choose from {SHAPES}')
    return [round(v, 2) for p in pts for v in p]


def _polygon_area(poly: Sequence[float]) -> float:
    xs, ys = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2)


def _place_boxes(rng: np.random.Generator, height: int, width: int, count: int,
                 min_size: int) -> List[Tuple[int, int, int, int]]:
    """Up to ``count`` non-overlapping integer boxes (x0, y0, w, h) inside the image."""
    boxes: List[Tuple[int, int, int, int]] = []
    max_w, max_h = max(min_size, width // 2), max(min_size, height // 2)
    for _ in range(50 * count):
        if len(boxes) == count:
            break
        w = int(rng.integers(min_size, max_w + 1))
        h = int(rng.integers(min_size, max_h + 1))
        if w >= width - 2 or h >= height - 2:
            continue
        x0 = int(rng.integers(1, width - w - 1))
        y0 = int(rng.integers(1, height - h - 1))
        # 2-pixel gap: drawn shapes never touch, so each object's pixels are its own.
        if all(x0 + w + 2 <= bx or bx + bw + 2 <= x0 or y0 + h + 2 <= by or by + bh + 2 <= y0
               for bx, by, bw, bh in boxes):
            boxes.append((x0, y0, w, h))
    return boxes


def make_coco_dataset(root: str,
                      num_images: Union[int, Tuple[int, int]] = (8, 4),
                      size: Union[int, Tuple[int, int], Sequence[Tuple[int, int]]] = (96, 128),
                      classes: Sequence[str] = SHAPES[:3],
                      objects_per_image: Tuple[int, int] = (1, 3),
                      min_object_size: int = 16,
                      noise: float = 10.,
                      seed: int = 0) -> Dict[str, object]:
    """Write a COCO-format instance segmentation dataset under ``root`` and describe it.

    Args:
        root (str): Folder to create (the ``data_root`` of a config). Existing files with the
            same names are overwritten.
        num_images (int | tuple[int, int]): Images in (train2017, val2017); an int gives both
            splits that many. Defaults to (8, 4).
        size (int | tuple[int, int] | list[tuple[int, int]]): Image (height, width); a list
            cycles through several sizes. Defaults to (96, 128).
        classes (Sequence[str]): Category names, each one of ``SHAPES`` (the shape drawn for
            it). Category ids are 1..len(classes), as in COCO's 1-based ids.
            Defaults to ``('rectangle', 'ellipse', 'triangle')``.
        objects_per_image (tuple[int, int]): Inclusive range of objects per image (fewer if
            they do not fit). Defaults to (1, 3).
        min_object_size (int): Smallest box side in pixels. Defaults to 16.
        noise (float): Std of the Gaussian noise added to the image. Defaults to 10.
        seed (int): Random seed; the same arguments give the same files. Defaults to 0.

    Returns:
        dict: ``data_root``, ``classes``, and per split ``'<split>_ann_file'`` (absolute
        path), ``'<split>_images'`` (list of paths) and ``'<split>_num_objects'``.

    Example:
        >>> info = make_coco_dataset('/tmp/coco', num_images=(4, 2), size=(64, 96))
        >>> sorted(info)[:3]
        ['classes', 'data_root', 'train2017_ann_file']
    """
    from PIL import Image, ImageDraw

    if isinstance(num_images, int):
        num_images = (num_images, num_images)
    if len(num_images) != 2 or any(not isinstance(n, int) or n < 0 for n in num_images):
        raise ValueError(f'num_images must be an int or (train, val) ints >= 0, got {num_images!r}')
    sizes = [(size, size)] if isinstance(size, int) else (
        [tuple(size)] if isinstance(size[0], int) else [tuple(s) for s in size])
    for h, w in sizes:
        if min(h, w) < min_object_size + 4:
            raise ValueError(f'image size {(h, w)} is too small for objects of at least '
                             f'{min_object_size} px; use a larger size or min_object_size')
    unknown = [c for c in classes if c not in SHAPES]
    if not classes or unknown:
        raise ValueError(f'classes must be a non-empty subset of {SHAPES}, got unknown {unknown}')
    lo, hi = objects_per_image
    if not 1 <= lo <= hi:
        raise ValueError(f'objects_per_image must be (lo, hi) with 1 <= lo <= hi, got '
                         f'{objects_per_image!r}')

    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 256, size=(len(classes), 3))  # RGB per category
    categories = [dict(id=i + 1, name=name, supercategory='shape')
                  for i, name in enumerate(classes)]
    info: Dict[str, object] = dict(data_root=osp.abspath(root), classes=tuple(classes))
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    image_id, ann_id = 0, 0
    for split, count in zip(SPLITS, num_images):
        os.makedirs(osp.join(root, split), exist_ok=True)
        images, annotations, paths = [], [], []
        for n in range(count):
            image_id += 1
            h, w = sizes[n % len(sizes)]
            background = rng.integers(0, 60, size=3)
            pixels = np.empty((h, w, 3), dtype=np.float32)
            pixels[:] = background
            canvas = Image.fromarray(pixels.astype(np.uint8))
            draw = ImageDraw.Draw(canvas)
            boxes = _place_boxes(rng, h, w, int(rng.integers(lo, hi + 1)), min_object_size)
            for x0, y0, bw, bh in boxes:
                cat = int(rng.integers(len(classes)))
                poly = _shape_polygon(classes[cat], x0, y0, bw, bh)
                draw.polygon(list(zip(poly[0::2], poly[1::2])),
                             fill=tuple(int(c) for c in colours[cat]))
                xs, ys = poly[0::2], poly[1::2]
                bx, by = min(xs), min(ys)
                ann_id += 1
                annotations.append(dict(
                    id=ann_id, image_id=image_id, category_id=cat + 1, iscrowd=0,
                    segmentation=[poly], area=round(_polygon_area(poly), 2),
                    bbox=[round(bx, 2), round(by, 2), round(max(xs) - bx, 2),
                          round(max(ys) - by, 2)]))
            noisy = np.asarray(canvas, dtype=np.float32) + rng.normal(0, noise, size=(h, w, 3))
            file_name = f'{image_id:012d}.jpg'
            path = osp.join(root, split, file_name)
            Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=95)
            paths.append(osp.abspath(path))
            images.append(dict(id=image_id, file_name=file_name, height=h, width=w))
        ann_file = osp.join(root, 'annotations', f'instances_{split}.json')
        with open(ann_file, 'w') as f:
            json.dump(dict(info=dict(description='mmeff synthetic COCO', version='1.0'),
                           licenses=[], images=images, annotations=annotations,
                           categories=categories), f)
        info[f'{split}_ann_file'] = osp.abspath(ann_file)
        info[f'{split}_images'] = paths
        info[f'{split}_num_objects'] = len(annotations)
    return info


__all__ = ['make_coco_dataset', 'SHAPES']
