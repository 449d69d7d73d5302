"""A small dataset in ADE20K's layout and label convention, generated on the spot, for tests and
demos that must run without the real data.

Layout (what mmseg's ``ADE20KDataset`` reads; ``data_root`` is ``root``)::

    root/images/{training,validation}/ADE_{train,val}_%08d.jpg
    root/annotations/{training,validation}/ADE_{train,val}_%08d.png

Label maps follow ADE20K: single-channel uint8 PNGs, 0 = "other" (ignored: ``reduce_zero_label``
maps it to 255), 1..150 = the 150 classes (become 0..149). Each image is a few rectangles of
random classes on a class-0 background; a class always has the same colour in the JPEG (plus
noise), so a model can learn the task and mIoU rises above chance within a few hundred steps.
"""
import os
import os.path as osp
from typing import Dict, Sequence, Tuple, Union

import numpy as np

SPLITS = (('training', 'train'), ('validation', 'val'))


def _palette(num_classes: int, seed: int = 12345) -> np.ndarray:
    """Fixed colour (BGR) per raw label value 0..num_classes; class 0 (other) is mid grey."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(num_classes + 1, 3), dtype=np.uint8)
    colours[0] = 128
    return colours


def make_ade_dataset(root: str,
                     num_images: Union[int, Tuple[int, int]] = (8, 4),
                     size: Union[int, Tuple[int, int], Sequence[Tuple[int, int]]] = (96, 128),
                     num_classes: int = 150,
                     classes_in_use: int = 8,
                     rects_per_image: int = 4,
                     noise: float = 12.,
                     seed: int = 0) -> Dict[str, object]:
    """Write an ADE20K-format dataset under ``root`` and describe it.

    Args:
        root (str): Folder to create (the ``data_root`` of the config). Existing files with
            the same names are overwritten.
        num_images (int | tuple[int, int]): Images in (training, validation); an int gives
            both splits that many. Defaults to (8, 4).
        size (int | tuple[int, int] | list[tuple[int, int]]): Image (height, width); a list
            cycles through several sizes (e.g. sizes that are not multiples of 32).
            Defaults to (96, 128).
        num_classes (int): Classes of the convention, raw values 1..num_classes.
            Defaults to 150 (ADE20K).
        classes_in_use (int): Raw labels 1..classes_in_use are drawn; fewer classes make the
            task learnable in a few steps. Defaults to 8.
        rects_per_image (int): Rectangles per image. Defaults to 4.
        noise (float): Std of the Gaussian noise added to the colours. Defaults to 12.
        seed (int): Random seed; the same arguments give the same files. Defaults to 0.

    Returns:
        dict: ``data_root``, ``num_classes``, ``classes_in_use``, and per split
        (``'training'``, ``'validation'``) the lists of image and label paths
        (``'<split>_images'``, ``'<split>_labels'``).
    """
    import cv2  # opencv ships with mmcv; imported here to keep `import mmeff.datasets` light
    if isinstance(num_images, int):
        num_images = (num_images, num_images)
    if len(num_images) != 2 or min(num_images) < 0:
        raise ValueError(f'num_images must be an int or (train, val) ints >= 0, got {num_images!r}')
    if isinstance(size, int):
        sizes = [(size, size)]
    elif len(size) == 2 and all(isinstance(s, int) for s in size):
        sizes = [tuple(size)]
    else:
        sizes = [tuple(s) for s in size]
    if any(len(s) != 2 or min(s) < 8 for s in sizes):
        raise ValueError(f'size must be (height, width) pairs of at least 8 px, got {size!r}')
    if not 1 <= classes_in_use <= num_classes <= 254:
        raise ValueError('need 1 <= classes_in_use <= num_classes <= 254 (255 is ignore_index '
                         f'after reduce_zero_label), got classes_in_use={classes_in_use}, '
                         f'num_classes={num_classes}')

    rng = np.random.default_rng(seed)
    palette = _palette(num_classes)
    info = dict(data_root=root, num_classes=num_classes, classes_in_use=classes_in_use)
    k = 0
    for (split, short), count in zip(SPLITS, num_images):
        img_dir = osp.join(root, 'images', split)
        ann_dir = osp.join(root, 'annotations', split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        images, labels = [], []
        for i in range(count):
            h, w = sizes[k % len(sizes)]
            k += 1
            label = np.zeros((h, w), np.uint8)
            for _ in range(rects_per_image):
                y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
                y1 = rng.integers(y0 + max(2, h // 4), h + 1)
                x1 = rng.integers(x0 + max(2, w // 4), w + 1)
                label[y0:y1, x0:x1] = rng.integers(1, classes_in_use + 1)
            image = palette[label].astype(np.float32)
            image += rng.normal(0., noise, image.shape)
            image = np.clip(image, 0, 255).astype(np.uint8)
            name = f'ADE_{short}_{i + 1:08d}'
            img_path = osp.join(img_dir, name + '.jpg')
            ann_path = osp.join(ann_dir, name + '.png')
            if not cv2.imwrite(img_path, image, [cv2.IMWRITE_JPEG_QUALITY, 95]):
                raise OSError(f'could not write {img_path}')
            if not cv2.imwrite(ann_path, label):
                raise OSError(f'could not write {ann_path}')
            images.append(img_path)
            labels.append(ann_path)
        info[f'{split}_images'] = images
        info[f'{split}_labels'] = labels
    return info
