"""What ``tools/train.py`` and ``tools/test.py`` share: config loading, CLI overrides, data path
checks, CPU-distributed set-up and building mmengine's Runner (or the scope's own runner).

The config's ``default_scope`` (``mmdet``, ``mmseg``, ``mmeff``) decides which library's
registries build the model, datasets and metrics; mmeff adds nothing to the loop itself.
"""
import logging
import os
import os.path as osp
from collections import Counter
from contextlib import contextmanager
from typing import Optional

import torch
from mmengine.config import Config, DictAction  # noqa: F401  (DictAction re-exported)
from mmengine.logging import print_log

from .diagnostics import (check_label_maps, check_launcher_env, check_resume,
                          explain_json_error)


def prepare_config(config: str, work_dir: Optional[str] = None, cfg_options: Optional[dict] = None,
                   amp: bool = False, launcher: str = 'none') -> Config:
    """Load a config and apply the command-line options of the train/test tools."""
    if not osp.isfile(config):
        raise FileNotFoundError(f'Config file {config!r} does not exist')
    check_launcher_env(launcher, config)  # before torch.distributed waits for a rendezvous
    import mmeff.models  # noqa: F401  (compat fixes; registers mmeff models)
    cfg = Config.fromfile(config)
    if cfg_options:
        before = {name: cfg.get(name) for name in PROPAGATED_VARIABLES}
        cfg.merge_from_dict(cfg_options)
        propagate_variables(cfg, before, cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('work_dirs', osp.splitext(osp.basename(config))[0])
    if amp:
        if cfg.get('optim_wrapper') is None:
            raise ValueError('--amp needs an optim_wrapper in the config')
        optim_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if optim_type not in ('OptimWrapper', 'AmpOptimWrapper'):
            raise ValueError(f'--amp works with OptimWrapper, the config uses {optim_type}')
        if not _amp_device_available():
            raise ValueError("--amp needs a GPU: mmengine's AmpOptimWrapper runs on CUDA, NPU, "
                             'MLU or MUSA devices only (none is available here); run without '
                             '--amp on CPU')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
        # Evaluation under autocast too (mmengine's ValLoop/TestLoop take fp16=True).
        for loop in ('val_cfg', 'test_cfg'):
            if isinstance(cfg.get(loop), dict) and cfg[loop].get('type', 'ValLoop') in (
                    'ValLoop', 'TestLoop'):
                cfg[loop].fp16 = True
    if not torch.cuda.is_available():
        from mmeff.compat import sync_bn_to_bn
        sync_bn_to_bn(cfg.model)  # SyncBN needs CUDA, even under CPU DDP
    if launcher != 'none' and not torch.cuda.is_available():
        from mmeff.compat import cpu_ddp_model_wrapper_cfg, init_cpu_distributed
        init_cpu_distributed('gloo')
        cfg.model_wrapper_cfg = cpu_ddp_model_wrapper_cfg()
    return cfg


def _amp_device_available() -> bool:
    from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                                 is_npu_available)
    return is_cuda_available() or is_npu_available() or is_mlu_available() or is_musa_available()


# Top-level config variables that the tools carry, when overridden with ``--cfg-options``, into
# the entries that were built from them. A config is plain Python evaluated once, so without
# this ``--cfg-options data_root=/x/`` would only change the variable, not the datasets or the
# evaluator's ann_file that used it.
PROPAGATED_VARIABLES = ('data_root', 'pretrained')


def propagate_variables(cfg: Config, before: dict, cfg_options: dict) -> None:
    """Replace the old value of each overridden ``PROPAGATED_VARIABLES`` entry in the config.

    Strings equal to the old value get the new one; for ``data_root`` also strings that start
    with it (``data_root + 'annotations/...'``). Entries set explicitly in the same
    ``cfg_options`` keep their explicit value.
    """
    explicit = {k for k in cfg_options if k not in PROPAGATED_VARIABLES}
    for name in PROPAGATED_VARIABLES:
        if name not in cfg_options:
            continue
        old, new = before.get(name), cfg_options[name]
        if not isinstance(old, str) or not old:
            print_log(f'--cfg-options {name}={new!r}: the config has no top-level {name!r} '
                      f'variable, so nothing else changes; set the entries that need it '
                      f'(e.g. train_dataloader.dataset.data_root) instead',
                      logger='current', level=logging.WARNING)
            continue
        if not isinstance(new, str) or new == old:
            continue
        if name == 'data_root' and old.endswith('/') and not new.endswith('/'):
            new = new + '/'  # mmdet configs build paths as data_root + 'annotations/...'
            cfg[name] = new

        seen = set()  # a dict shared by two entries (test_dataloader = val_dataloader) once

        def _replace(node, path):
            if id(node) in seen:
                return
            seen.add(id(node))
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, value in list(items):
                here = f'{path}.{key}' if path else str(key)
                if here in explicit:
                    continue
                if isinstance(value, str):
                    if value == old:
                        node[key] = new
                    elif name == 'data_root' and value.startswith(old):
                        node[key] = new + value[len(old):]
                elif isinstance(value, (dict, list)):
                    _replace(value, here)

        for key in list(cfg.keys()):
            if key != name and isinstance(cfg[key], (dict, list)):
                _replace(cfg[key], key)


def _iter_datasets(cfg: Config):
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(name)
        if not loader or not loader.get('dataset'):
            continue
        stack = [loader['dataset']]
        while stack:
            ds = stack.pop()
            if isinstance(ds, dict):
                if 'dataset' in ds:
                    stack.append(ds['dataset'])
                if 'datasets' in ds:
                    stack.extend(ds['datasets'])
                yield name, ds
            elif isinstance(ds, (list, tuple)):
                stack.extend(ds)


def check_data_paths(cfg: Config, which=('train_dataloader', 'val_dataloader',
                                         'test_dataloader')) -> None:
    """Fail early, naming the missing path and the option to change, instead of deep inside a
    dataset's ``__init__``."""
    for name, ds in _iter_datasets(cfg):
        if name not in which:
            continue
        data_root = ds.get('data_root') or ''
        if data_root and '://' not in data_root and not osp.isdir(data_root):
            raise FileNotFoundError(
                f'{name}: data_root {data_root!r} does not exist. Put the dataset there or '
                f'point the config at it with --cfg-options data_root=/path/to/data/ (the '
                f'top-level variable, carried into every dataset and evaluator) or '
                f'{name}.dataset.data_root=/path/')
        ann = ds.get('ann_file')
        if ann and isinstance(ann, str) and '://' not in ann:
            path = ann if osp.isabs(ann) else osp.join(data_root, ann)
            if not osp.exists(path):
                raise FileNotFoundError(f'{name}: annotation file {path!r} does not exist '
                                        f'(data_root={data_root!r}, ann_file={ann!r})')
        prefix = ds.get('data_prefix') or {}
        if isinstance(prefix, dict):
            for key, sub in prefix.items():
                if not sub or not isinstance(sub, str) or '://' in sub:
                    continue
                path = sub if osp.isabs(sub) else osp.join(data_root, sub)
                if key in ('img', 'img_path', 'seg_map_path', 'seg') and not osp.isdir(path):
                    raise FileNotFoundError(f'{name}: data_prefix.{key} folder {path!r} does '
                                            f'not exist (data_root={data_root!r})')
                if key == 'seg_map_path':  # mmseg's; mmdet's panoptic 'seg' maps are RGB
                    check_label_maps(path, ds.get('seg_map_suffix') or '.png', name,
                                     pipeline=ds.get('pipeline'))
                if key in ('img', 'img_path'):
                    # An empty image folder otherwise fails inside mmengine's dataset
                    # serialisation ("need at least one array to concatenate").
                    with os.scandir(path) as entries:
                        if next(entries, None) is None:
                            raise FileNotFoundError(f'{name}: data_prefix.{key} folder {path!r} '
                                                    f'is empty (data_root={data_root!r})')


def check_pretrained(cfg: Config) -> None:
    """Fail before the datasets are loaded (minutes for COCO) when a ``Pretrained`` init_cfg of
    the model names a local file that does not exist; the backbone would only fail later, in
    ``init_weights``."""
    def _walk(node, path):
        if isinstance(node, dict):
            init = node.get('init_cfg')
            for item in init if isinstance(init, list) else [init]:
                ckpt = item.get('checkpoint') if isinstance(item, dict) else None
                if (isinstance(item, dict) and item.get('type') == 'Pretrained'
                        and isinstance(ckpt, str) and '://' not in ckpt
                        and not osp.isfile(osp.expanduser(ckpt))):
                    raise FileNotFoundError(
                        f'{path}.init_cfg: Pretrained checkpoint {ckpt!r} does not exist. '
                        f'Produce it with tools/convert_checkpoint.py (authors/timm/mmpretrain '
                        f'weights), point the config at it (--cfg-options pretrained=/path.pth '
                        f'in configs/ with a top-level pretrained variable, or '
                        f'{path}.init_cfg.checkpoint=/path.pth), or set {path}.init_cfg=None '
                        f'to start from random weights on purpose')
            for key, value in node.items():
                if key != 'init_cfg':
                    _walk(value, f'{path}.{key}')
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                _walk(value, f'{path}.{i}')

    _walk(cfg.get('model'), 'model')


class EmptyDatasetError(ValueError):
    """A dataset that holds no sample once mmdet/mmseg filtered it."""


def explain_empty_dataset(exc: BaseException) -> Optional[EmptyDatasetError]:
    """mmengine serialises a dataset's samples with ``np.concatenate``; an empty one fails with
    numpy's bare ``need at least one array to concatenate``. Return an error that says what
    usually empties a dataset, or None when ``exc`` is something else."""
    if not (isinstance(exc, ValueError)
            and 'need at least one array to concatenate' in str(exc)):
        return None
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_name != '_serialize_data':
        tb = tb.tb_next
    if tb is None:
        return None
    dataset = tb.tb_frame.f_locals.get('self')
    desc = type(dataset).__name__ if dataset is not None else 'a dataset'
    ann_file = getattr(dataset, 'ann_file', None)
    img_suffix = getattr(dataset, 'img_suffix', None)
    img_dir = (getattr(dataset, 'data_prefix', None) or {}).get('img_path')
    if img_suffix is not None and not ann_file and img_dir and osp.isdir(img_dir):
        # mmseg scans img_dir for files ending with img_suffix (ADE20K: '.jpg').
        found = Counter(osp.splitext(f)[1] or '(none)'
                        for _, _, files in os.walk(img_dir) for f in files)
        held = ', '.join(f'{n} {ext}' for ext, n in found.most_common(5)) or 'no file'
        return EmptyDatasetError(
            f'{desc} found no image: no file under {img_dir!r} ends with '
            f'img_suffix={img_suffix!r} (the folder holds {held}). Convert the images, or set '
            f'the suffix the files have, e.g. --cfg-options '
            f'train_dataloader.dataset.img_suffix=.png (and the val/test datasets the same)')
    classes = (getattr(dataset, 'metainfo', None) or {}).get('classes')
    shown = ', '.join(map(str, classes[:5])) + (', ...' if classes and len(classes) > 5 else '') \
        if classes else None
    return EmptyDatasetError(
        f'{desc} is empty after loading and filtering (ann_file={ann_file!r}): no image kept '
        f'an object of the classes the dataset looks for ({shown}). Check that '
        f'metainfo.classes names the categories of the annotation file (mmdet keeps only '
        f'images with objects of those classes when filter_cfg.filter_empty_gt=True), that '
        f'filter_cfg.min_size is below the image sizes, and that data_prefix points at the '
        f'images')


@contextmanager
def explain_dataset_errors():
    """Re-raise numpy's bare empty-dataset error from inside the block as
    ``explain_empty_dataset``'s ``EmptyDatasetError``, and an annotation file that does not
    parse as JSON as ``explain_json_error``'s ``DataFileError`` (naming the file); other errors
    pass unchanged."""
    try:
        yield
    except ValueError as exc:
        clear = explain_empty_dataset(exc) or explain_json_error(exc)
        if clear is None:
            raise
        raise clear from exc


def build_runner(cfg: Config):
    """Build the scope's runner (``runner_type`` if set, else mmengine's ``Runner``)."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    check_resume(cfg)
    os.makedirs(cfg.work_dir, exist_ok=True)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
