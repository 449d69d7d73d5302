"""The images behind every accuracy a slimming run reports: BN calibration and validation.

The supernet's BN running statistics are shared by every network it holds, so each subnet's
are re-estimated (:func:`mmeff.slimming.supernet.recalibrate_bn`) before it is judged, and again
before its weights are exported. For the exported weights to score exactly what the search
reported, both must see the same calibration batches:

* **images**: ``batches x batch_size`` images of the *training* split (the config's
  ``train_dataloader.dataset``, batch size ``train_dataloader.batch_size``), drawn by
  mmengine's ``DefaultSampler`` shuffled with a fixed ``seed`` (0 unless told): the same
  images in the same batches in every phase and on every run over the same split;
* **transforms**: the *validation* pipeline (``val_dataloader.dataset.pipeline``, in the
  shipped configs resize, centre crop and normalisation: nothing random), not the training
  pipeline, whose random crops, RandAugment and erasing would draw different pixels in every
  phase. The statistics are then also those of the kind of images the network is judged on.

The accuracy itself is top-1 on the validation split (``val_dataloader``, its sampler made
unshuffled), over its first ``eval_batches`` batches or all of it. :func:`calibration_record` and
:func:`validation_record` describe both (split, pipeline, seed, counts, a hash of the image
list): the search stores them in the trajectory, and the export refuses to cut subnets with
other ones (:func:`check_same_images`).
"""
import copy
import hashlib
import itertools
import json
import os.path as osp
from typing import Callable, Iterable, List, Optional, Tuple

CALIB_SEED = 0


def _scope():
    from mmengine.registry import DefaultScope
    return DefaultScope.overwrite_default_scope('mmeff')


def calibration_loader(cfg, seed: int = CALIB_SEED):
    """The training split through the validation pipeline, shuffled by a seeded
    ``DefaultSampler`` (see the module docstring): a data loader whose batches are the same
    on every call."""
    from mmengine.runner import Runner
    if 'train_dataloader' not in cfg or 'val_dataloader' not in cfg:
        raise ValueError('the supernet config needs train_dataloader (calibration images) and '
                         'val_dataloader (its pipeline, and the images accuracy is measured on)')
    loader = copy.deepcopy(cfg.train_dataloader)
    if 'pipeline' not in loader.dataset or 'pipeline' not in cfg.val_dataloader.dataset:
        raise ValueError(
            f"calibration needs train_dataloader.dataset and val_dataloader.dataset with their "
            f"own pipeline (the training images pass through the validation pipeline), got "
            f"types {loader.dataset.get('type')!r} and "
            f"{cfg.val_dataloader.dataset.get('type')!r}: give the supernet config plain "
            f"datasets (ImageFolderDataset)")
    loader.dataset.pipeline = copy.deepcopy(cfg.val_dataloader.dataset.pipeline)
    loader.sampler = dict(type='DefaultSampler', shuffle=True, seed=seed)
    loader.pop('batch_sampler', None)
    loader['persistent_workers'] = False
    with _scope():
        return Runner.build_dataloader(loader, seed=seed)


def validation_loader(cfg):
    """The config's ``val_dataloader``, never shuffled (an estimate over its first batches is
    over the same images every time)."""
    from mmengine.runner import Runner
    loader = copy.deepcopy(cfg.val_dataloader)
    loader['persistent_workers'] = False
    loader.sampler = dict(type='DefaultSampler', shuffle=False)
    loader.pop('batch_sampler', None)
    with _scope():
        return Runner.build_dataloader(loader)


def _image_list(loader, num_images: Optional[int]) -> List[str]:
    """The image paths the loader yields first (``num_images``; all with None), in order,
    relative to the dataset's ``data_root`` where they are under it."""
    dataset = loader.dataset
    root = getattr(dataset, 'data_root', None) or ''
    indices = list(iter(loader.sampler))
    if num_images is not None:
        indices = indices[:num_images]
    paths = []
    for i in indices:
        info = dataset.get_data_info(i)
        path = str(info.get('img_path', i))
        if root and osp.abspath(path).startswith(osp.abspath(root) + osp.sep):
            path = osp.relpath(path, root)
        paths.append(f"{path}:{info.get('gt_label', '')}")
    return paths


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def calibration_record(cfg, loader, batches: int, seed: int = CALIB_SEED) -> dict:
    """What the calibration batches are, as plain data (stored in the trajectory)."""
    size = int(loader.batch_size)
    images = _image_list(loader, batches * size)
    return dict(split='train (train_dataloader.dataset)',
                transforms='val_dataloader.dataset.pipeline',
                pipeline=_digest(cfg.val_dataloader.dataset.pipeline),
                sampler=f'DefaultSampler(shuffle=True, seed={seed})', seed=seed,
                batches=batches, batch_size=size, images=len(images),
                images_sha256=_digest(images))


def validation_record(cfg, loader, eval_batches: Optional[int]) -> dict:
    """What the accuracy estimates are measured on, as plain data (stored in the trajectory)."""
    size = int(loader.batch_size)
    images = _image_list(loader, None if eval_batches is None else eval_batches * size)
    return dict(split='val (val_dataloader)', batches=eval_batches, batch_size=size,
                images=len(images), pipeline=_digest(cfg.val_dataloader.dataset.pipeline),
                images_sha256=_digest(images))


def calibration_batches(cfg, batches: int, seed: int = CALIB_SEED) -> Tuple[list, dict]:
    """The first ``batches`` batches of :func:`calibration_loader` (a list, loaded once) and
    their :func:`calibration_record`.

    Raises:
        ValueError: ``batches`` is not a positive int, or the split gives fewer batches (named,
            with the number of images it has).
    """
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f'the number of calibration batches must be a positive int, got '
                         f'{batches!r}')
    loader = calibration_loader(cfg, seed)
    out = list(itertools.islice(loader, batches))
    if len(out) < batches:
        raise ValueError(
            f'the training split ({len(loader.dataset)} images, batch size '
            f'{loader.batch_size}) gives {len(out)} calibration batches, not {batches}: use '
            f'--calib-batches {max(len(out), 1)} or fewer' if out else
            f'the training split ({len(loader.dataset)} images) gave no batch of '
            f'{loader.batch_size} to recalibrate BN statistics with (drop_last with fewer '
            f'images than one batch?)')
    return out, calibration_record(cfg, loader, batches, seed)


def top1(logits_of: Callable, batches: Iterable, preprocess: Callable) -> float:
    """Top-1 (%) of ``logits_of(inputs)`` over ``batches`` (the data loader's dicts, turned into
    ``dict(inputs, data_samples)`` by ``preprocess``)."""
    import torch
    correct = total = 0
    with torch.no_grad():
        for batch in batches:
            data = preprocess(batch)
            logits = logits_of(data['inputs'])
            labels = torch.stack([torch.as_tensor(ds.gt_label).reshape(())
                                  for ds in data['data_samples']]).to(logits.device)
            correct += int((logits.argmax(dim=1) == labels).sum())
            total += labels.numel()
    if not total:
        raise ValueError('the validation split gave no images to estimate accuracy on')
    return 100. * correct / total


def accuracy_estimator(model, calib: list, val_loader, eval_batches: Optional[int] = None):
    """``choices -> top-1 (%)`` of the subnet with the supernet's weights on the validation
    split (its first ``eval_batches`` batches, or all), after recalibrating BN on ``calib``:
    the same batches for every network (:func:`calibration_batches`), so that the estimates
    differ by the networks only, and the exported weights score the same."""
    from mmeff.slimming.supernet import recalibrate_bn

    def estimate(choices):
        recalibrate_bn(model, calib, choices)
        return top1(lambda x: model.forward_choices(x, choices),
                    itertools.islice(val_loader, eval_batches),
                    lambda b: model.data_preprocessor(b, False))
    return estimate


def check_same_images(recorded: Optional[dict], current: dict, what: str, source: str,
                      fix: str) -> None:
    """Raise ``ValueError`` naming the first field in which ``current`` differs from the
    ``recorded`` description of the calibration or validation images."""
    if not recorded:
        raise ValueError(f'{source} does not record its {what} images (made by an older '
                         f'mmeff): {fix}')
    for key in ('split', 'transforms', 'pipeline', 'seed', 'batches', 'batch_size', 'images',
                'images_sha256'):
        if recorded.get(key) != current.get(key):
            raise ValueError(
                f'the {what} images differ from those of {source} ({key}: '
                f'{recorded.get(key)!r} then, {current.get(key)!r} now; the dataset, its '
                f'pipeline or the batch settings changed): {fix}')


__all__ = ['CALIB_SEED', 'calibration_loader', 'validation_loader', 'calibration_record',
           'validation_record', 'calibration_batches', 'top1', 'accuracy_estimator',
           'check_same_images']
