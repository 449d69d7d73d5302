"""ImageNet-1K (any ImageFolder tree) for mmengine: dataset, timm transforms, repeated
augmentation sampler.

Layout, as torchvision's ``ImageFolder`` and DeiT: ``data_root/train/<class>/<image>`` and
``data_root/val/<class>/<image>``; class indices are the sorted class-folder names, so ``train``
and ``val`` must hold the same class folders (``mmeff.ClassNumCheckHook`` checks it).

The images go through timm's ``create_transform`` exactly as in DeiT/the authors' code
(RandomResizedCrop + flip + RandAugment + normalisation + random erasing for training, resize
256 bicubic + centre crop 224 for evaluation), so the samples are normalised tensors and the
model's data preprocessor only moves them to the device. Mixup/CutMix works on the batch and
lives in the classifier.

Heavy imports (timm) happen inside the transforms, to keep ``import mmeff.datasets`` light.
"""
import os
import os.path as osp
from typing import Optional, Sequence

import torch
from mmengine.dataset import BaseDataset
from mmengine.dist import get_dist_info
from mmengine.registry import DATA_SAMPLERS, DefaultScope
from mmengine.structures import BaseDataElement
from torch.utils.data import Sampler

from mmeff.registry import DATASETS, TRANSFORMS

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


@DATASETS.register_module()
class ImageFolderDataset(BaseDataset):
    """A ``<root>/<class>/<image>`` tree (ImageNet ``train``/``val``), labels from the sorted
    class-folder names.

    Args:
        data_root (str): Dataset root, e.g. ``'data/imagenet'``.
        data_prefix (dict): ``dict(img_path='train')``: the split folder under ``data_root``.
        pipeline (list): Transforms (``LoadPILImage``, ``TimmTransform``, ``PackClsInputs``).
        classes (Sequence[str] | None): Class folders to use, in label order. ``None``: every
            sub-folder, sorted (torchvision's ``ImageFolder`` order).
        extensions (Sequence[str]): Image file extensions (case-insensitive).
        **kwargs: Other ``mmengine.dataset.BaseDataset`` arguments (``indices``,
            ``serialize_data``, ``lazy_init``, ...).

    Raises:
        FileNotFoundError: the split folder is missing, holds no class folder, a requested
            class folder is missing, or a class folder holds no image.
    """

    METAINFO = dict(classes=None)

    def __init__(self,
                 data_root: str = '',
                 data_prefix: dict = dict(img_path=''),
                 pipeline: Sequence = (),
                 classes: Optional[Sequence[str]] = None,
                 extensions: Sequence[str] = IMG_EXTENSIONS,
                 **kwargs):
        if 'ann_file' in kwargs and kwargs['ann_file']:
            raise ValueError('ImageFolderDataset reads the folder tree; it takes no ann_file '
                             f"(got {kwargs['ann_file']!r})")
        kwargs.pop('ann_file', None)
        self.extensions = tuple(e.lower() for e in extensions)
        metainfo = dict(kwargs.pop('metainfo', None) or {})
        if classes is not None:
            metainfo['classes'] = tuple(classes)
        # Built outside a Runner (no default scope), bare transform names such as
        # 'LoadPILImage' would be looked up in mmengine's root registry only.
        scope = 'mmeff' if DefaultScope.get_current_instance() is None else None
        with DefaultScope.overwrite_default_scope(scope):
            super().__init__(ann_file='', metainfo=metainfo, data_root=data_root,
                             data_prefix=dict(data_prefix), pipeline=list(pipeline), **kwargs)

    def load_data_list(self):
        folder = self.data_prefix.get('img_path', '') or self.data_root
        if not osp.isdir(folder):
            raise FileNotFoundError(
                f'Image folder {folder!r} does not exist: expected an ImageFolder tree '
                f'<data_root>/<split>/<class>/<image>; set data_root (e.g. --cfg-options '
                f'data_root=/data/imagenet or train_dataloader.dataset.data_root=...)')
        found = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        classes = self._metainfo.get('classes')
        if classes is None:
            if not found:
                raise FileNotFoundError(
                    f'No class folders in {folder!r}: expected {folder}/<class>/<image> '
                    f'(one sub-folder per class, as ImageNet train/ and val/)')
            classes = tuple(found)
        else:
            missing = [c for c in classes if c not in found]
            if missing:
                raise FileNotFoundError(
                    f'{len(missing)} class folders given in classes= are missing from '
                    f'{folder!r}, e.g. {missing[:3]}; fix classes= or the folder tree')
        data_list = []
        for label, name in enumerate(classes):
            class_dir = osp.join(folder, name)
            files = sorted(
                osp.join(root, f) for root, _, fs in os.walk(class_dir, followlinks=True)
                for f in fs if f.lower().endswith(self.extensions))
            if not files:
                raise FileNotFoundError(
                    f'Class folder {class_dir!r} has no image (extensions {self.extensions}): '
                    f'add its images or remove the folder (class indices come from the sorted '
                    f'folder names, so train/ and val/ must have the same class folders)')
            data_list.extend(dict(img_path=p, gt_label=label) for p in files)
        self._metainfo['classes'] = tuple(classes)
        return data_list


@TRANSFORMS.register_module()
class LoadPILImage:
    """Read ``results['img_path']`` as an RGB ``PIL.Image`` into ``results['img']`` (timm's
    and torchvision's transforms work on PIL images)."""

    def __call__(self, results: dict) -> dict:
        from PIL import Image
        path = results['img_path']
        try:
            with open(path, 'rb') as f:
                img = Image.open(f)
                img = img.convert('RGB')
        except OSError as exc:  # includes PIL.UnidentifiedImageError
            raise OSError(f'Cannot read image {path!r} ({exc}); replace or remove the '
                          f'file') from exc
        results['img'] = img
        results['ori_shape'] = (img.height, img.width)
        return results

    def __repr__(self):
        return f'{self.__class__.__name__}()'


@TRANSFORMS.register_module()
class TimmTransform:
    """``timm.data.create_transform(**kwargs)`` applied to ``results['img']`` (a PIL image);
    the result is a normalised (3, H, W) float tensor.

    DeiT's training transform is ``TimmTransform(input_size=224, is_training=True,
    auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic', re_prob=0.25,
    re_mode='pixel', re_count=1)`` and its evaluation transform ``TimmTransform(
    input_size=224, crop_pct=0.875, interpolation='bicubic')`` (resize 256, centre crop 224).
    """

    def __init__(self, **kwargs):
        from timm.data import create_transform

        from mmeff.compat import patch_timm_posterize
        patch_timm_posterize()  # RandAugment's 0-bit posterize fails on Pillow 13
        self.kwargs = kwargs
        try:
            self.transform = create_transform(**kwargs)
        except TypeError as exc:
            raise ValueError(f'TimmTransform: bad timm create_transform arguments {kwargs}: '
                             f'{exc}') from exc

    def __call__(self, results: dict) -> dict:
        img = self.transform(results['img'])
        results['img'] = img
        results['img_shape'] = tuple(img.shape[-2:])
        return results

    def __repr__(self):
        return f'{self.__class__.__name__}({self.kwargs})\n{self.transform}'


@TRANSFORMS.register_module()
class PackClsInputs:
    """Pack ``results`` into ``dict(inputs=img tensor, data_samples=BaseDataElement)`` with
    ``gt_label`` (a 0-d long tensor) and the image path/shapes as metainfo."""

    meta_keys = ('img_path', 'ori_shape', 'img_shape')

    def __call__(self, results: dict) -> dict:
        img = results['img']
        if not isinstance(img, torch.Tensor):
            raise TypeError(f'PackClsInputs expects a tensor image (put TimmTransform before '
                            f'it), got {type(img).__name__}')
        sample = BaseDataElement(metainfo={k: results[k] for k in self.meta_keys if k in results})
        if 'gt_label' in results:
            sample.gt_label = torch.tensor(results['gt_label'], dtype=torch.long)
        return dict(inputs=img, data_samples=sample)

    def __repr__(self):
        return f'{self.__class__.__name__}()'


@DATA_SAMPLERS.register_module()
class RepeatAugSampler(Sampler):
    """DeiT's repeated-augmentation sampler, i.e. timm's ``RepeatAugSampler``, built the way
    mmengine builds samplers (``dataset`` and ``seed`` given; rank and world size from
    ``mmengine.dist``).

    Every image appears ``num_repeats`` times per epoch, each copy on a different process with
    its own augmentation; each process then keeps ``floor(len(dataset) // selected_round *
    selected_round / world_size)`` indices, so an epoch still covers ``len(dataset)`` samples in
    total (DeiT's ``RASampler``). ``selected_round=0`` keeps ``ceil(len(dataset) /
    world_size)`` (for datasets smaller than ``selected_round`` images).

    Registered in mmengine's root ``DATA_SAMPLERS`` (mmeff has no sampler registry), as
    ``sampler=dict(type='RepeatAugSampler', ...)``.
    """

    def __init__(self, dataset, shuffle: bool = True, num_repeats: int = 3,
                 selected_round: int = 256, seed: Optional[int] = None):
        from timm.data.distributed_sampler import RepeatAugSampler as TimmRepeatAugSampler
        rank, world_size = get_dist_info()
        if len(dataset) < selected_round:
            raise ValueError(
                f'RepeatAugSampler: the dataset has {len(dataset)} images, fewer than '
                f'selected_round={selected_round}, so an epoch would be empty; set '
                f'train_dataloader.sampler.selected_round=0 (or a smaller value)')
        self.sampler = TimmRepeatAugSampler(dataset, num_replicas=world_size, rank=rank,
                                            shuffle=shuffle, num_repeats=num_repeats,
                                            selected_round=selected_round)
        # timm shuffles with torch.manual_seed(epoch); the Runner's seed (the same on every
        # rank) is added so that two runs with different seeds see different orders.
        self.seed = 0 if seed is None else int(seed)
        self.set_epoch(0)

    def __iter__(self):
        return iter(self.sampler)

    def __len__(self):
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(self.seed + epoch)
