"""A small dataset in ImageNet's ImageFolder layout, generated on the spot, for tests and demos
that must run without the real data.

Layout (what ``mmeff.ImageFolderDataset`` reads; ``data_root`` is ``root``)::

    root/{train,val}/n%08d/n%08d_%d.JPEG

Class folders are named like ImageNet WordNet ids; files are RGB JPEGs with ImageNet's
upper-case extension. Each class has its own colour and stripe direction (plus noise), so a
model can learn the task and top-1 rises above chance within a few steps.
"""
import os
import os.path as osp
from typing import Dict, Tuple, Union

import numpy as np


def make_imagefolder_dataset(root: str,
                             num_classes: int = 5,
                             per_class: Union[int, Tuple[int, int]] = (4, 2),
                             size: Union[int, Tuple[int, int]] = 48,
                             noise: float = 20.,
                             seed: int = 0) -> Dict[str, object]:
    """Write an ImageFolder dataset (``train/`` and ``val/``) under ``root`` and describe it.

    Args:
        root (str): Folder to create (the ``data_root`` of the config). Existing files with
            the same names are overwritten.
        num_classes (int): Number of class folders. Defaults to 5.
        per_class (int | tuple[int, int]): Images per class in (train, val); an int gives
            both splits that many. Defaults to (4, 2).
        size (int | tuple[int, int]): Image (height, width). Defaults to 48.
        noise (float): Std of the Gaussian noise added to the pixels. Defaults to 20.
        seed (int): Random seed; the same arguments give the same files. Defaults to 0.

    Returns:
        dict: ``data_root``, ``classes`` (folder names in label order), ``num_classes`` and,
        per split (``'train'``, ``'val'``), the list of ``(path, label)``.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
    n_train, n_val = (per_class, per_class) if isinstance(per_class, int) else per_class
    if n_train < 1 or n_val < 1:
        raise ValueError(f'per_class must be >= 1 for both splits, got {per_class!r}')
    h, w = (size, size) if isinstance(size, int) else size
    from PIL import Image
    rng = np.random.default_rng(seed)
    colours = np.random.default_rng(12345).integers(30, 226, size=(num_classes, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    classes = [f'n{i:08d}' for i in range(num_classes)]
    info: Dict[str, object] = dict(data_root=root, classes=classes, num_classes=num_classes)
    for split, count in (('train', n_train), ('val', n_val)):
        items = []
        for label, name in enumerate(classes):
            folder = osp.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            angle = np.pi * label / num_classes
            stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / 8.)
            for k in range(count):
                img = colours[label][None, None, :] + 40. * stripes[..., None]
                img = img + rng.normal(0., noise, size=(h, w, 3))
                path = osp.join(folder, f'{name}_{k}.JPEG')
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=95)
                items.append((path, label))
        info[split] = items
    return info
