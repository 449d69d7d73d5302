"""What ``tools/train.py`` and ``tools/test.py`` share: config loading, CLI overrides, data path
checks, CPU-distributed set-up and building mmengine's Runner (or the scope's own runner).

The config's ``default_scope`` (``mmdet``, ``mmseg``, ``mmeff``) decides which library's
registries build the model, datasets and metrics; mmeff adds nothing to the loop itself.
"""
import os
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config, DictAction  # noqa: F401  (DictAction re-exported)


def prepare_config(config: str, work_dir: Optional[str] = None, cfg_options: Optional[dict] = None,
                   amp: bool = False, launcher: str = 'none') -> Config:
    """Load a config and apply the command-line options of the train/test tools."""
    if not osp.isfile(config):
        raise FileNotFoundError(f'Config file {config!r} does not exist')
    import mmeff.models  # noqa: F401  (compat fixes; registers mmeff models)
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
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
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
        if not torch.cuda.is_available():
            # fp16 autocast on CPU is slow/unsupported for many ops; bf16 is the CPU choice.
            cfg.optim_wrapper.dtype = 'bfloat16'
    if not torch.cuda.is_available():
        from mmeff.compat import sync_bn_to_bn
        sync_bn_to_bn(cfg.model)  # SyncBN needs CUDA, even under CPU DDP
    if launcher != 'none' and not torch.cuda.is_available():
        from mmeff.compat import cpu_ddp_model_wrapper_cfg, init_cpu_distributed
        init_cpu_distributed('gloo')
        cfg.model_wrapper_cfg = cpu_ddp_model_wrapper_cfg()
    return cfg


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
                f'point the config at it, e.g. --cfg-options {name}.dataset.data_root=/path/ '
                f'(configs in configs/ also take a top-level data_root variable when edited)')
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


def build_runner(cfg: Config):
    """Build the scope's runner (``runner_type`` if set, else mmengine's ``Runner``)."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    os.makedirs(cfg.work_dir, exist_ok=True)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
