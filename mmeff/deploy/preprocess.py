"""Fit an image of any size to a fixed-size exported segmentor, and map its output back.

An exported segmentor (:func:`mmeff.deploy.export_segmentor`) takes one input size, say
512x512. Images of another size go through one of two preprocessings, and the label map (or the
logits) the model returns is mapped back onto the original image with the inverse:

* ``'keep_ratio'`` (the default): scale the image by ``s = min(H / h, W / w)`` so that it fits
  into the export size ``(H, W)`` with its aspect ratio kept (new size
  ``(int(h * s + 0.5), int(w * s + 0.5))``, bilinear), then pad at the bottom and on the right
  up to ``(H, W)`` with ``pad_value``. This is what mmseg's test pipeline does with
  ``Resize(scale=(W, H), keep_ratio=True)`` and ``data_preprocessor.test_cfg=dict(size=(H, W))``
  (mmcv's ``imrescale`` rounds and interpolates the same way, and mmseg pads bottom/right with
  0 after normalisation, i.e. with the mean colour before it) whenever the image and the export
  size are both landscape or both portrait; mmcv then fits long side to long side, which for
  such images is the same factor.
  The inverse crops the padding off the output and resizes it to ``(h, w)``.
* ``'stretch'``: resize to ``(H, W)``, changing the aspect ratio (mmseg's
  ``Resize(scale=(W, H), keep_ratio=False)``); no padding. The inverse resizes back.

Outputs go back to the image either as labels (:func:`labels_to_image`: nearest neighbour on
the model's ``labels`` output, what an app does) or as logits (:func:`logits_to_image`: bilinear
on the logits, then argmax, exactly what mmseg's ``postprocess_result`` does). They differ only
on pixels next to a class border when the image is scaled.

Images are ``(h, w, 3)`` arrays in the channel order the export takes (RGB for mmeff's configs,
whose ``data_preprocessor`` has ``bgr_to_rgb=True``; ``cv2.imread`` gives BGR). With
normalisation in the exported graph (the default), the model takes pixel values 0-255.
"""
from typing import Dict, Sequence, Tuple, Union

import numpy as np

MODES = ('keep_ratio', 'stretch')
# The mean colour of mmeff's (and mmseg's ADE20K) configs, RGB 0-255: padding with it gives 0
# after the normalisation, as mmseg's SegDataPreProcessor pads.
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)

Number = Union[int, float]


def _size(size) -> Tuple[int, int]:
    from .fuse import parse_input_size
    return parse_input_size(size)


def fitted_size(image_hw: Sequence[int], size, mode: str = 'keep_ratio') -> Tuple[int, int]:
    """The ``(height, width)`` an image of ``image_hw`` is resized to before padding.

    Args:
        image_hw: ``(h, w)`` of the image.
        size: The export size, ``(H, W)``, ``512`` or ``'512x512'``.
        mode (str): ``'keep_ratio'`` or ``'stretch'``. Defaults to ``'keep_ratio'``.
    """
    if mode not in MODES:
        raise ValueError(f'mode must be one of {MODES}, got {mode!r}')
    H, W = _size(size)
    h, w = (int(s) for s in image_hw)
    if min(h, w) < 1:
        raise ValueError(f'image size must be positive, got {h}x{w}')
    if mode == 'stretch':
        return H, W
    scale = min(H / h, W / w)
    return max(1, min(H, int(h * scale + 0.5))), max(1, min(W, int(w * scale + 0.5)))


def preprocess_image(image: np.ndarray, size, mode: str = 'keep_ratio',
                     pad_value: Union[Number, Sequence[Number]] = IMAGENET_MEAN_255
                     ) -> Tuple[np.ndarray, Dict[str, object]]:
    """Resize (and pad) an image to the export size; returns the model input and the mapping.

    Args:
        image (np.ndarray): ``(h, w, C)`` image (uint8 or float), in the channel order the
            export takes (RGB for mmeff's configs).
        size: The export size, ``(H, W)``, ``512`` or ``'512x512'``.
        mode (str): ``'keep_ratio'`` (scale to fit, pad bottom/right) or ``'stretch'``.
            Defaults to ``'keep_ratio'``.
        pad_value (number | sequence): Padding value, one or one per channel, in the units of
            ``image``. The default, the configs' mean colour (RGB, 0-255), becomes 0 after the
            normalisation in the graph, as mmseg pads. For an export without normalisation
            (``normalize=False``), whose input is already normalised, pad with 0.

    Returns:
        tuple: ``(x, meta)``: ``x`` the ``(1, C, H, W)`` float32 input, ``meta`` the mapping
        for :func:`labels_to_image` / :func:`logits_to_image` (``ori_shape`` (h, w),
        ``img_shape`` (the resized h, w), ``pad_shape`` (H, W), ``mode``).
    """
    import cv2
    image = np.ascontiguousarray(image)  # e.g. a BGR -> RGB view [:, :, ::-1], for cv2
    if image.ndim != 3:
        raise ValueError(f'image must be (height, width, channels), got shape {image.shape}')
    h, w, c = image.shape
    H, W = _size(size)
    nh, nw = fitted_size((h, w), (H, W), mode)
    resized = image if (nh, nw) == (h, w) else cv2.resize(image, (nw, nh),
                                                         interpolation=cv2.INTER_LINEAR)
    pad = np.broadcast_to(np.asarray(pad_value, np.float32), (c,)) if np.ndim(pad_value) \
        else np.full((c,), pad_value, np.float32)
    x = np.empty((H, W, c), np.float32)
    x[...] = pad
    x[:nh, :nw] = resized.reshape(nh, nw, c)
    meta = dict(ori_shape=(h, w), img_shape=(nh, nw), pad_shape=(H, W), mode=mode)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), meta


def _check_output(array: np.ndarray, meta: Dict[str, object], what: str) -> None:
    if tuple(array.shape[-2:]) != tuple(meta['pad_shape']):
        raise ValueError(f'{what} of shape {tuple(array.shape)} does not end in the export size '
                         f"{tuple(meta['pad_shape'])} that this mapping was made for")


def labels_to_image(labels: np.ndarray, meta: Dict[str, object]) -> np.ndarray:
    """The model's ``labels`` output, ``(H, W)`` or ``(1, H, W)``, back on the original image:
    the padding is cropped off and the rest resized to ``(h, w)`` by nearest neighbour (pixel
    centres: output pixel ``i`` takes input pixel ``floor((i + 0.5) * nh / h)``).

    Returns:
        np.ndarray: ``(h, w)`` labels, the dtype of ``labels``.
    """
    labels = np.asarray(labels)
    _check_output(labels, meta, 'labels')
    labels = labels.reshape(labels.shape[-2:])
    (h, w), (nh, nw) = meta['ori_shape'], meta['img_shape']
    labels = labels[:nh, :nw]
    rows = np.minimum(((np.arange(h) + 0.5) * nh / h).astype(np.int64), nh - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * nw / w).astype(np.int64), nw - 1)
    return labels[rows[:, None], cols[None, :]]


def logits_to_image(logits: np.ndarray, meta: Dict[str, object],
                    align_corners: bool = False) -> np.ndarray:
    """The model's ``logits`` output, ``(C, H, W)`` or ``(1, C, H, W)``, back on the original
    image as mmseg's ``postprocess_result`` does it: padding cropped off, bilinear resize to
    ``(h, w)`` (``align_corners`` as the config's decode head). ``.argmax(0)`` gives labels.

    Returns:
        np.ndarray: ``(C, h, w)`` float32 logits.
    """
    import torch
    import torch.nn.functional as F
    logits = np.asarray(logits)
    _check_output(logits, meta, 'logits')
    logits = logits.reshape(logits.shape[-3:])
    (h, w), (nh, nw) = meta['ori_shape'], meta['img_shape']
    t = torch.from_numpy(np.ascontiguousarray(logits[:, :nh, :nw], np.float32))[None]
    if (nh, nw) != (h, w):
        t = F.interpolate(t, size=(h, w), mode='bilinear', align_corners=align_corners)
    return t[0].numpy()


__all__ = ['MODES', 'IMAGENET_MEAN_255', 'fitted_size', 'preprocess_image', 'labels_to_image',
           'logits_to_image']
