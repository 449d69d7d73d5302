"""Image files that cannot be read: found by name and reported in one line with the fix.

mmcv's ``LoadImageFromFile`` (mmdet's and mmseg's pipelines) reports an undecodable image as
``AssertionError: failed to load image: PATH`` and an empty one as OpenCV's
``(-215:Assertion failed) !buf.empty() in function 'imdecode_'``, which names no file; both
surface from the middle of a test or demo run as what looks like a bug. A truncated JPEG is
decoded silently with its missing part grey. :func:`image_problem` says what is wrong with one
file, :func:`explain_image_error` turns such a failure into a ``DataFileError`` that names the
file and the fix.
"""
import os.path as osp
import re
from typing import Iterable, List, Optional, Tuple

from mmeff.engine.diagnostics import DataFileError

# What the image loaders say when a file does not decode (mmcv/cv2, PIL), also inside the text
# of an error re-raised from a DataLoader worker.
_READ_FAILURE = re.compile(r'failed to load image|imdecode|buf\.empty\(\)|cannot identify image '
                           r'file|image file is truncated|broken data stream')
_NAMED_FAILURE = re.compile(r'failed to load image: (.+?)\s*$', re.MULTILINE)


def image_problem(path: str) -> Optional[str]:
    """What keeps ``path`` from being read as an image (``'is empty (0 bytes)'``...), or None.

    Checks that the file exists and is not empty, that a JPEG's last scan ends with its
    end-of-image marker and a PNG has its ``IEND`` chunk (truncated files, which OpenCV decodes
    without a word), then decodes it with OpenCV.
    """
    import cv2
    import numpy as np
    if not osp.isfile(path):
        return 'does not exist'
    size = osp.getsize(path)
    if size == 0:
        return 'is empty (0 bytes)'
    with open(path, 'rb') as f:
        data = f.read()
    if data.startswith(b'\xff\xd8'):
        # The end-of-image marker after the last start-of-scan (an EXIF thumbnail has its own
        # earlier; motion photos append data after the main image's).
        if data.find(b'\xff\xd9', max(0, data.rfind(b'\xff\xda'))) < 0:
            return f'is a truncated JPEG ({size} bytes, no end-of-image marker)'
    elif data.startswith(b'\x89PNG\r\n\x1a\n'):
        if data.rfind(b'IEND') < 0:
            return f'is a truncated PNG ({size} bytes, no IEND chunk)'
    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is None:
        return f'cannot be decoded as an image ({size} bytes: corrupt, or not an image file)'
    return None


def unreadable_images(paths: Iterable[str], limit: Optional[int] = None) -> List[Tuple[str, str]]:
    """``(path, problem)`` of each of ``paths`` that :func:`image_problem` finds fault with, at
    most ``limit`` of them."""
    bad = []
    for path in paths:
        problem = image_problem(path)
        if problem is not None:
            bad.append((path, problem))
            if limit is not None and len(bad) >= limit:
                break
    return bad


def dataset_image_paths(dataset) -> List[str]:
    """The ``img_path`` of every sample of an mmengine dataset (wrappers unwrapped)."""
    leaves, todo = [], [dataset]
    while todo:
        d = todo.pop(0)
        if hasattr(d, 'datasets'):
            todo.extend(d.datasets)
        elif hasattr(d, 'dataset'):
            todo.append(d.dataset)
        else:
            leaves.append(d)
    paths = []
    for leaf in leaves:
        if not hasattr(leaf, 'get_data_info'):
            continue
        for i in range(len(leaf)):
            path = leaf.get_data_info(i).get('img_path')
            if isinstance(path, str) and '://' not in path:
                paths.append(path)
    return paths


def is_image_read_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is an image loader's failure to read a
    file."""
    while exc is not None:
        if _READ_FAILURE.search(str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def explain_image_error(exc: BaseException, paths: Iterable[str],
                        where: str = 'the dataset') -> Optional[DataFileError]:
    """A ``DataFileError`` naming the unreadable image behind ``exc`` and the fix, or None when
    ``exc`` is not a failure to read an image or no image of ``paths`` is at fault.

    The file named in mmcv's message is checked first; otherwise (OpenCV's message for an
    empty file names none) ``paths`` are checked in order.
    """
    if not is_image_read_failure(exc):
        return None
    named = _NAMED_FAILURE.search(str(exc))
    bad = []
    if named:
        problem = image_problem(named.group(1))
        if problem is not None:
            bad = [(named.group(1), problem)]
    paths = list(paths)
    if not bad:
        bad = unreadable_images(paths)
    if not bad:
        return None
    path, problem = bad[0]
    more = ''
    if len(bad) > 1:
        more = f' ({len(bad)} of its {len(paths)} images cannot be read)'
    return DataFileError(
        f'Image {path!r} of {where} {problem}{more}: replace it with a good copy, or remove it '
        f'from the dataset (with its annotation), and run again')


__all__ = ['image_problem', 'unreadable_images', 'dataset_image_paths', 'is_image_read_failure',
           'explain_image_error']
