"""What ``tools/train.py`` and ``tools/test.py`` share: config loading, CLI overrides, data path
checks, CPU-distributed set-up and building mmengine's Runner (or the scope's own runner).

The config's ``default_scope`` (``mmdet``, ``mmseg``, ``mmeff``) decides which library's
registries build the model, datasets and metrics; mmeff adds nothing to the loop itself.
"""
import copy
import logging
import os
import os.path as osp
from collections import Counter
from contextlib import contextmanager
from typing import List, Optional, Tuple

import torch
from mmengine.config import Config, DictAction  # noqa: F401  (DictAction re-exported)
from mmengine.logging import print_log

from .diagnostics import (check_label_maps, check_launcher_env, check_resume,
                          explain_json_error)


def apply_cfg_options(cfg: Config, cfg_options: Optional[dict]) -> Config:
    """Merge ``--cfg-options`` into ``cfg`` (in place; returned) as every mmeff tool does: a
    misspelt top-level key and an override of a variable that entries were derived from are
    refused with the entries to set instead, then the options are merged and the derived
    variables (``PROPAGATED_VARIABLES``) are carried to the entries that used them."""
    if not cfg_options:
        return cfg
    from .cfg_checks import check_cfg_option_keys  # cfg_checks imports this module
    check_cfg_option_keys(cfg, cfg_options)  # a misspelt top-level key, before merging
    check_variable_overrides(cfg, cfg_options)
    before = {name: cfg.get(name) for name in PROPAGATED_VARIABLES}
    cfg.merge_from_dict(cfg_options)
    propagate_variables(cfg, before, cfg_options)
    return cfg


def prepare_config(config: str, work_dir: Optional[str] = None, cfg_options: Optional[dict] = None,
                   amp: bool = False, launcher: str = 'none') -> Config:
    """Load a config and apply the command-line options of the train/test tools."""
    if not osp.isfile(config):
        raise FileNotFoundError(f'Config file {config!r} does not exist')
    check_launcher_env(launcher, config)  # before torch.distributed waits for a rendezvous
    import mmeff.models  # noqa: F401  (compat fixes; registers mmeff models)
    cfg = apply_cfg_options(Config.fromfile(config), cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('work_dirs', osp.splitext(osp.basename(config))[0])
    if amp and _is_supernet_config(cfg):
        _supernet_amp(cfg, config)
    elif amp:
        if cfg.get('optim_wrapper') is None:
            raise ValueError('--amp needs an optim_wrapper in the config')
        optim_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        # Each wrapper and its mixed-precision twin.
        amp_types = {'OptimWrapper': 'AmpOptimWrapper', 'AmpOptimWrapper': 'AmpOptimWrapper',
                     'mmeff.AGCOptimWrapper': 'mmeff.AmpAGCOptimWrapper',
                     'mmeff.AmpAGCOptimWrapper': 'mmeff.AmpAGCOptimWrapper'}
        if optim_type not in amp_types:
            raise ValueError(f'--amp works with {sorted(amp_types)}, the config uses '
                             f'{optim_type}')
        if not _amp_device_available():
            raise ValueError("--amp needs a GPU: mmengine's AmpOptimWrapper runs on CUDA, NPU, "
                             'MLU or MUSA devices only (none is available here); run without '
                             '--amp on CPU')
        cfg.optim_wrapper.type = amp_types[optim_type]
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
        # Evaluation under autocast too (mmengine's ValLoop/TestLoop take fp16=True).
        for loop in ('val_cfg', 'test_cfg'):
            if isinstance(cfg.get(loop), dict) and cfg[loop].get('type', 'ValLoop') in (
                    'ValLoop', 'TestLoop'):
                cfg[loop].fp16 = True
    if not torch.cuda.is_available():
        from mmeff.compat import sync_bn_to_bn
        sync_bn_to_bn(cfg.model)  # SyncBN needs CUDA, even under CPU DDP
        if cfg.get('sync_bn'):
            # mmengine's Runner would convert every BN to torch's SyncBatchNorm in a distributed
            # run (the V2 ImageNet configs set sync_bn='torch'), which fails without CUDA.
            print_log(f"sync_bn={cfg.sync_bn!r} ignored: SyncBatchNorm needs CUDA; plain BN "
                      'statistics per process on CPU', logger='current', level=logging.WARNING)
            cfg.sync_bn = None
    if launcher != 'none' and not torch.cuda.is_available():
        from mmeff.compat import cpu_ddp_model_wrapper_cfg, init_cpu_distributed
        init_cpu_distributed('gloo')
        wrapper = cpu_ddp_model_wrapper_cfg()
        own = cfg.get('model_wrapper_cfg')
        if isinstance(own, dict) and own.get('type') not in (None, wrapper['type']):
            # The config's own DDP wrapper (the supernet's SupernetDDP), made CPU-ready.
            wrapper = dict(own, device_ids=None)
        cfg.model_wrapper_cfg = wrapper
    return cfg


def _is_supernet_config(cfg: Config) -> bool:
    optim = cfg.get('optim_wrapper')
    return isinstance(optim, dict) and str(optim.get('constructor', '')).split('.')[-1] == \
        'SupernetOptimWrapperConstructor'


def _supernet_amp(cfg: Config, config: str) -> None:
    """``--amp`` for the slimming supernet: fp16 with one loss scaler on a GPU, bf16 autocast
    on a CPU that computes bf16 (see mmeff.slimming.supernet, "Mixed precision")."""
    from .optim_wrappers import cpu_bf16_supported
    if _amp_device_available():
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
        fp16_loops = True
    elif cpu_bf16_supported():
        cfg.optim_wrapper.type = 'mmeff.BF16AutocastOptimWrapper'
        fp16_loops = False  # mmengine's ValLoop autocast is CUDA-only
    else:
        raise ValueError(
            f'--amp on a CPU needs bf16 support (AVX512 or newer, which this CPU lacks: bf16 '
            f'would be emulated, slower than fp32) and no GPU is available; train {config} '
            f'without --amp')
    for loop in ('val_cfg', 'test_cfg'):
        if fp16_loops and isinstance(cfg.get(loop), dict) and \
                cfg[loop].get('type', 'ValLoop') in ('ValLoop', 'TestLoop'):
            cfg[loop].fp16 = True


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


# Top-level entries that mmengine's Runner (``Runner.from_cfg``, ``Runner.__init__``) or the
# tools read themselves: ``--cfg-options NAME=VALUE`` on them takes effect as such.
RUNNER_VARIABLES = (
    'model', 'work_dir', 'train_dataloader', 'val_dataloader', 'test_dataloader', 'train_cfg',
    'val_cfg', 'test_cfg', 'auto_scale_lr', 'optim_wrapper', 'param_scheduler', 'val_evaluator',
    'test_evaluator', 'default_hooks', 'custom_hooks', 'data_preprocessor', 'load_from',
    'resume', 'launcher', 'env_cfg', 'log_processor', 'log_level', 'visualizer', 'default_scope',
    'randomness', 'experiment_name', 'model_wrapper_cfg', 'compile', 'runner_type', 'strategy',
    'sync_bn', 'find_unused_parameters', 'activation_checkpointing', 'efficient_conv_bn_eval',
    'custom_imports')


def _same_value(a, b) -> bool:
    """Equality that keeps ``True`` apart from ``1``, takes a tuple equal to a list, and
    ignores the ``_scope_`` key mmengine adds to some dicts of ``mmdet::``/``mmseg::`` bases."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        keys = set(a) - {'_scope_'}
        return keys == set(b) - {'_scope_'} and all(_same_value(a[k], b[k]) for k in keys)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, (dict, list, tuple)) or isinstance(b, (dict, list, tuple)):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001  (objects whose == does not give a bool)
        return False


def _without_scope(value):
    if isinstance(value, dict):
        return {k: _without_scope(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return type(value)(_without_scope(v) for v in value)
    return value


def _entries(node, path: str):
    """``(dotted path, value)`` of every entry below ``node``, list items by index (the paths
    ``--cfg-options`` accepts)."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        here = f'{path}.{key}' if path else str(key)
        yield here, value
        if isinstance(value, (dict, list, tuple)):
            yield from _entries(value, here)


def cli_value(value) -> str:
    """``value`` as ``--cfg-options`` (mmengine's ``DictAction``) parses it back."""
    if isinstance(value, (list, tuple)):
        inner = ','.join(cli_value(v) for v in value)
        return f'[{inner}]' if isinstance(value, list) else f'({inner}{"," * (len(value) == 1)})'
    if isinstance(value, str) and value and not any(c in value for c in ' ,[]()\'"'):
        return value
    return repr(value)


def _cli_assignments(path: str, value) -> list:
    if isinstance(value, dict):  # DictAction cannot parse a dict: one assignment per leaf
        return [a for k, v in value.items() if k != '_scope_'
                for a in _cli_assignments(f'{path}.{k}', v)]
    return [f'{path}={cli_value(value)}']


def check_variable_overrides(cfg: Config, cfg_options: dict) -> None:
    """Refuse ``--cfg-options NAME=VALUE`` on a top-level variable that would change nothing.

    A config file is Python, evaluated once: entries written as ``arch=arch`` or
    ``scale=img_scale`` hold the variable's value from then on, so overriding the variable
    afterwards changes only the variable itself. ``PROPAGATED_VARIABLES`` are carried into the
    entries by :func:`propagate_variables`, and the variables the Runner reads itself
    (``RUNNER_VARIABLES``: ``load_from``, ``work_dir``, ``default_scope``...) take effect as they
    are. For any other top-level variable, this raises ``ValueError`` naming the entries that
    hold its old value and the ``--cfg-options`` to set instead, unless each of those entries is
    set in the same ``cfg_options``. Matching is by value: for a number the list may include
    entries equal to it by chance; for ``None``, booleans and ``''`` only entries of the same
    name are taken. A variable that no entry holds may be set (nothing was built from it; a
    warning says that nothing else changes).

    Must be called before ``cfg_options`` are merged into ``cfg``.
    """
    explicit = [k for k in cfg_options if '.' in k]

    def covered(path):
        return any(path == k or path.startswith(k + '.') or k.startswith(path + '.')
                   for k in explicit)

    for name, new in cfg_options.items():
        if ('.' in name or name in PROPAGATED_VARIABLES or name in RUNNER_VARIABLES
                or name not in cfg or _same_value(cfg[name], new)):
            continue
        old = cfg[name]
        by_name_only = old is None or isinstance(old, bool) or old == ''
        holders = [path for path, value in _entries(cfg.to_dict(), '')
                   if path.split('.')[0] != name and _same_value(value, old)
                   and (not by_name_only or path.rsplit('.', 1)[-1] == name)]
        # an entry inside a matched one (a pipeline step inside a matched pipeline) goes with it
        holders = [p for p in holders if not any(p.startswith(q + '.') for q in holders)]
        # entries of other top-level variables (train_pipeline holding img_scale) only matter
        # through the entries built from those in turn, which are listed too
        used = [p for p in holders if p.split('.')[0] in RUNNER_VARIABLES]
        holders = used or holders
        if not holders:
            print_log(f'--cfg-options {name}={cli_value(new)} sets the top-level variable '
                      f'{name!r}, but no entry of the config holds its old value '
                      f'{_without_scope(old)!r}: nothing else changes', logger='current',
                      level=logging.WARNING)
            continue
        if all(covered(p) for p in holders):
            continue
        shown = ', '.join(holders[:8]) + (f' and {len(holders) - 8} more'
                                          if len(holders) > 8 else '')
        message = (f'--cfg-options {name}={cli_value(new)} would change only the top-level '
                   f'variable {name!r}: the config was read before the override, and the '
                   f'entries that hold its old value {_without_scope(old)!r} keep it '
                   f'({shown})')
        if isinstance(old, (int, float)) and not isinstance(old, bool):
            raise ValueError(f'{message}; some of them may equal {old!r} by chance. Set those '
                             f'that should change instead, e.g. --cfg-options '
                             f'{holders[0]}={cli_value(new)}')
        fixes = {p: new for p in holders}
        probe = Config(copy.deepcopy(cfg.to_dict()))
        probe.merge_from_dict(fixes)
        fixes.update({path: want for path, _, want in model_channel_mismatches(probe)
                      if want is not None})
        assignments = ' '.join(a for p, v in fixes.items() for a in _cli_assignments(p, v))
        raise ValueError(f'{message}. Set the entries instead: --cfg-options {assignments}')


def _efficientformer_out_channels(backbone: dict) -> Optional[List[int]]:
    """Channels of the maps an ``EfficientFormer`` or ``EfficientFormerV2`` config returns,
    from its ``arch`` and ``out_indices`` (without building it); None for another backbone or
    an out_indices the backbone itself will reject."""
    from mmeff.models.families import family_of, is_family_type
    if not is_family_type(backbone.get('type')):
        return None
    family = family_of(backbone['type'])
    widths = family.cls._parse_arch(backbone.get('arch', family.default_arch))['widths']
    indices = backbone.get('out_indices', (0, 1, 2, 3))
    indices = [indices] if isinstance(indices, int) else indices
    stages = len(widths)
    if (not isinstance(indices, (list, tuple)) or not indices
            or not all(isinstance(i, int) and -stages <= i < stages for i in indices)):
        return None
    return [widths[i] for i in sorted(i % stages for i in indices)]


def model_channel_mismatches(cfg: Config) -> List[Tuple[str, object, object]]:
    """``(entry, value, value it needs)`` for every ``in_channels`` (or ``in_index``, with
    ``None`` as the value it needs when it points past the backbone's maps) of the
    modules that take an EfficientFormer backbone's maps and do not match them: the neck (mmdet
    FPN and others); without a neck mmseg's ``decode_head``/``auxiliary_head`` (through their
    ``in_index``) and mmpretrain-style ``head`` (the last map). mmeff's classifier sizes its head
    from the backbone itself."""
    model = cfg.get('model')
    if not isinstance(model, dict) or not isinstance(model.get('backbone'), dict):
        return []
    out = _efficientformer_out_channels(model['backbone'])
    if out is None:
        return []
    found = []
    neck = model.get('neck')
    first, neck_path = (neck[0], 'model.neck.0') if isinstance(neck, list) and neck \
        else (neck, 'model.neck')
    if isinstance(first, dict) and 'in_channels' in first:
        have = first['in_channels']
        want = out if isinstance(have, (list, tuple)) or len(out) > 1 else out[0]
        if not _same_value(have, want):
            found.append((f'{neck_path}.in_channels', have, want))
        return found  # the heads take the neck's outputs
    if neck and not isinstance(first, dict):
        return found
    heads = []
    for key in ('decode_head', 'auxiliary_head'):
        head = model.get(key)
        if isinstance(head, list):
            heads += [(f'model.{key}.{i}', h) for i, h in enumerate(head)]
        elif head is not None:
            heads.append((f'model.{key}', head))
    for path, head in heads:
        if not isinstance(head, dict) or 'in_channels' not in head:
            continue
        have, index = head['in_channels'], head.get('in_index', -1)
        indices = index if isinstance(index, (list, tuple)) else [index]
        if not all(isinstance(i, int) for i in indices):
            continue
        if any(not -len(out) <= i < len(out) for i in indices):
            found.append((f'{path}.in_index', index, None))  # no value to propose
            continue
        want = [out[i] for i in indices]
        want = want if isinstance(index, (list, tuple)) else want[0]
        if not _same_value(have, want):
            found.append((f'{path}.in_channels', have, want))
    head = model.get('head')
    if not heads and isinstance(head, dict) and isinstance(head.get('in_channels'), int) \
            and head['in_channels'] != out[-1]:
        found.append(('model.head.in_channels', head['in_channels'], out[-1]))
    return found


def check_model_channels(cfg: Config) -> None:
    """Raise ``ValueError`` before anything is built when the neck/head ``in_channels`` of the
    config do not match what its EfficientFormer backbone returns (e.g. after
    ``--cfg-options model.backbone.arch=l1`` on an L3 config), naming the entries and the values
    to set; otherwise the first forward pass fails, after the datasets are loaded, with a bare
    convolution shape error."""
    found = model_channel_mismatches(cfg)
    if not found:
        return
    bb = cfg.model.backbone
    from mmeff.models.families import family_of
    family = family_of(bb['type'])
    arch = bb.get('arch', family.default_arch)
    out = _efficientformer_out_channels(bb)
    details = '; '.join(
        f'{path} is {cli_value(have)}, the backbone needs {cli_value(want)}' if want is not None
        else f'{path} is {cli_value(have)}, past the {len(out)} maps the backbone returns'
        for path, have, want in found)
    assignments = ' '.join(f'{path}={cli_value(want)}' for path, _, want in found
                           if want is not None)
    fix = f'Set --cfg-options {assignments}' if assignments else 'Set the in_index entries'
    indices = bb.get('out_indices', (0, 1, 2, 3))
    raise ValueError(
        f'model.backbone ({family.name} arch={arch!r}, out_indices={cli_value(indices)}) '
        f'returns maps of {out} channels, which the modules after it do not take: {details}. '
        f'{fix} (or change the backbone back)')


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


def _wait_for_a_new_logger_name(cfg: Config) -> None:
    """Wait (under a second) until the logger mmengine's Runner will name is not taken.

    The Runner names its logger ``<experiment_name or config name>_<timestamp>`` with a
    one-second timestamp, and ``MMLogger.get_instance`` hands an existing logger of that name
    back unchanged: a second run built in the same process within the same second (a tool's
    ``main`` called twice, a notebook) would write its whole log into the first run's log file,
    in the first run's work_dir, and leave its own log dir empty. Seen in the test suite on a
    fast host; waiting for the next second gives every run its own logger and file."""
    import time
    from mmengine.logging import MMLogger
    if cfg.get('experiment_name') is not None:
        prefix = f"{cfg.experiment_name}_"
    elif cfg.filename:
        prefix = f'{osp.splitext(osp.basename(cfg.filename))[0]}_'
    else:
        prefix = ''
    for _ in range(40):  # 2 s at most
        if not MMLogger.check_instance_created(prefix + time.strftime('%Y%m%d_%H%M%S')):
            return
        time.sleep(0.05)


def build_runner(cfg: Config):
    """Build the scope's runner (``runner_type`` if set, else mmengine's ``Runner``)."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    from .determinism import prepare_cuda_determinism, relax_cuda_determinism
    check_resume(cfg)
    os.makedirs(cfg.work_dir, exist_ok=True)
    prepare_cuda_determinism(cfg)
    _wait_for_a_new_logger_name(cfg)
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else Runner.from_cfg(cfg)
    relax_cuda_determinism(cfg)
    return runner
