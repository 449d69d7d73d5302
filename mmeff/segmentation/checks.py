"""Early, clear errors for the segmentation data mistakes that mmseg reports late or never.

What mmseg 1.2 does without these checks:

* a label value ``>= num_classes`` that is not ``ignore_index``: ``CrossEntropyLoss`` fails deep
  inside the loss (CPU: ``IndexError: Target 163 is out of bounds``; CUDA: a device-side assert
  that names nothing), and ``IoUMetric`` silently drops the pixels (``torch.histc`` ignores values
  outside its range), so the mIoU is wrong without a word;
* a head whose ``num_classes`` differs from the dataset's classes: too small fails like the above,
  too large trains and evaluates without complaint;
* an image without its label map: a bare ``FileNotFoundError`` from a dataloader worker mid-run;
* a label map without its image: left out without a word (mmseg lists the images), so the
  metrics cover fewer images than the annotations.

(Missing or empty data folders are caught earlier, before the datasets are built, by
``mmeff.engine.check_data_paths`` in tools/train.py and tools/test.py.)

The checks are cheap: the dataset checks run once per dataset (one ``stat`` per label map), the
label check is two comparisons over a batch's label maps, before the model sees it.
"""
import logging
import os
import os.path as osp
from typing import Iterable, List, Optional, Sequence

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from mmeff.registry import HOOKS


def _heads(model) -> List[tuple]:
    """``(name, head)`` of every decode/auxiliary head that predicts ``num_classes`` classes."""
    if is_model_wrapper(model):
        model = model.module
    found = []
    for name in ('decode_head', 'auxiliary_head'):
        head = getattr(model, name, None)
        if head is None:
            continue
        heads = list(head) if isinstance(head, torch.nn.ModuleList) else [head]
        for i, h in enumerate(heads):
            if hasattr(h, 'num_classes'):
                found.append((name if len(heads) == 1 else f'{name}[{i}]', h))
    return found


def _leaves(dataset) -> Iterable:
    """The datasets inside wrappers (``RepeatDataset``, ``ConcatDataset``, ...)."""
    if hasattr(dataset, 'datasets'):
        for d in dataset.datasets:
            yield from _leaves(d)
    elif hasattr(dataset, 'dataset'):
        yield from _leaves(dataset.dataset)
    else:
        yield dataset


def check_num_classes(model, dataset, split: str = 'train') -> None:
    """Raise ``ValueError`` if a head of ``model`` predicts another number of classes than
    ``dataset.metainfo['classes']`` holds (what ``IoUMetric`` evaluates)."""
    classes = dataset.metainfo.get('classes')
    if not classes:
        return
    for name, head in _heads(model):
        if head.num_classes != len(classes):
            raise ValueError(
                f'model.{name}.num_classes={head.num_classes} but the {split} dataset '
                f'({type(dataset).__name__}) has {len(classes)} classes '
                f'({", ".join(map(str, classes[:3]))}, ...). Set num_classes={len(classes)} in '
                f'the decode (and auxiliary) head, or give the dataset metainfo=dict(classes=...) '
                f'matching the model.')


def check_files(dataset, split: str = 'test') -> None:
    """Match a segmentation dataset's images with its label maps, once per dataset.

    An image without its label map raises ``FileNotFoundError`` (mmseg would fail on it
    mid-run). Label maps without an image are left out by mmseg, which lists the images only,
    so the metrics silently cover fewer images: they are reported in a warning naming how many
    and one of them (folder datasets only: an ``ann_file`` list names its samples itself).
    """
    for leaf in _leaves(dataset):
        if not hasattr(leaf, 'get_data_info') or getattr(leaf, '_mmeff_files_checked', False):
            continue
        prefix = getattr(leaf, 'data_prefix', None) or {}
        suffix = getattr(leaf, 'seg_map_suffix', '')
        missing, used, total = [], set(), len(leaf)
        for i in range(total):
            path = leaf.get_data_info(i).get('seg_map_path')
            if not path or '://' in str(path):
                continue
            used.add(osp.abspath(path))
            if not osp.isfile(path):
                missing.append(path)
        if missing:
            raise FileNotFoundError(
                f'{len(missing)} of the {total} images of the {split} dataset have no label map, '
                f'e.g. {missing[0]!r}. Every image needs <name>{suffix}'
                f' under data_prefix.seg_map_path={prefix.get("seg_map_path")!r}.')
        seg_dir = prefix.get('seg_map_path')
        if used and seg_dir and not getattr(leaf, 'ann_file', '') and osp.isdir(seg_dir):
            orphans = sorted(
                osp.join(root, name) for root, _, names in os.walk(seg_dir) for name in names
                if name.endswith(suffix) and osp.abspath(osp.join(root, name)) not in used)
            if orphans:
                print_log(
                    f'{len(orphans)} label map(s) of the {split} dataset have no image, e.g. '
                    f'{orphans[0]!r}: they are not scored, the metrics cover the {total} images '
                    f'under data_prefix.img_path={prefix.get("img_path")!r} (restore the missing '
                    f'images, or remove their label maps)', logger='current',
                    level=logging.WARNING)
        leaf._mmeff_files_checked = True


def _raise_not_index_map(path: str, seg: torch.Tensor) -> None:
    from mmeff.engine.diagnostics import DataFileError, label_map_problem
    problem = label_map_problem(path) if osp.isfile(path) else None
    raise DataFileError(f'Label map {path!r} ' + (problem or (
        f'gives a ground truth of shape {tuple(seg.shape)}: a label map holds one class index '
        f'per pixel (a single-channel or palette PNG)')))


def check_label_range(data_samples: Sequence, num_classes: int,
                      ignore_index: Optional[int] = 255) -> None:
    """Raise ``ValueError`` if a ground-truth map holds a value outside ``[0, num_classes)``
    that is not ``ignore_index``, or has several channels (a colour PNG); the message names the
    file and the values before and after ``reduce_zero_label``."""
    for sample in data_samples:
        gt = getattr(sample, 'gt_sem_seg', None)
        if gt is None:
            continue
        seg = gt.data
        if seg.dim() == 3 and seg.shape[0] != 1:
            # mmseg packs an (H, W, 3) map from a colour PNG as if it had H channels.
            _raise_not_index_map(sample.metainfo.get('seg_map_path', '<unknown file>'), seg)
        bad = (seg < 0) | (seg >= num_classes)
        if ignore_index is not None:
            bad &= seg != ignore_index
        if not bool(bad.any()):
            continue
        values = torch.unique(seg[bad]).tolist()
        path = sample.metainfo.get('seg_map_path', '<unknown file>')
        msg = (f'Label map {path!r} has values {values[:10]}{" ..." if len(values) > 10 else ""} '
               f'outside [0, {num_classes - 1}] (num_classes={num_classes}) that are not '
               f'ignore_index={ignore_index}')
        if sample.metainfo.get('reduce_zero_label'):
            raw = [v + 1 for v in values[:10]]
            msg += (f'. These are raw file values {raw} after reduce_zero_label (v -> v - 1, '
                    f'0 -> 255): with it the file may only hold 0 (ignored) and '
                    f'1..{num_classes}')
        raise ValueError(msg + '. Fix the label maps, num_classes, or reduce_zero_label.')


@HOOKS.register_module()
class SegDataCheckHook(Hook):
    """Check the data against the model before and during training, validation and testing.

    Before a loop runs: every image has its label map (``check_files``), and every head's
    ``num_classes`` equals the dataset's number of classes.
    Before every iteration (``check_labels``): label values lie in ``[0, num_classes)`` or equal
    the decode head's ``ignore_index``. All failures raise with a message that says what to fix.

    Args:
        check_files (bool): Check that every image's label map exists. Defaults to True.
        check_labels (bool): Check the label range of every batch. Defaults to True.
    """

    priority = 'VERY_HIGH'  # before any hook that reads the batch

    def __init__(self, check_files: bool = True, check_labels: bool = True):
        self.check_files = check_files
        self.check_labels = check_labels
        self._checked = set()

    def _check_loop(self, runner, loop, split: str) -> None:
        if loop is None or not hasattr(loop, 'dataloader'):
            return
        dataset = loop.dataloader.dataset
        if id(dataset) in self._checked:
            return
        if self.check_files:
            check_files(dataset, split)
        check_num_classes(runner.model, dataset, split)
        self._checked.add(id(dataset))

    def before_train(self, runner) -> None:
        self._check_loop(runner, runner.train_loop, 'train')
        self._check_loop(runner, runner.val_loop, 'val')  # built by Runner.train already

    def before_val(self, runner) -> None:
        self._check_loop(runner, runner.val_loop, 'val')

    def before_test(self, runner) -> None:
        self._check_loop(runner, runner.test_loop, 'test')

    def _before_iter(self, runner, batch_idx: int, data_batch=None, mode: str = 'train') -> None:
        if not self.check_labels or not isinstance(data_batch, dict):
            return
        heads = _heads(runner.model)
        if not heads:
            return
        head = heads[0][1]
        check_label_range(data_batch.get('data_samples') or [], head.num_classes,
                          getattr(head, 'ignore_index', 255))
