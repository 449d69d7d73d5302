"""Build the model to export or benchmark from an arch name or a config, with optional weights.

Two tasks:

* ``'backbone'``: the backbone of a registered family (``mmeff.models.families``):
  :class:`~mmeff.models.EfficientFormer` (V1: ``l1``/``l3``/``l7``) or
  :class:`~mmeff.models.EfficientFormerV2` (V2: ``s0``/``s1``/``s2``/``l``), returning its stage
  maps (what detection/segmentation models run); from an arch name it uses the backbone's
  defaults, from a config the ``model.backbone`` dict (mmdet/mmseg configs) or a bare backbone
  ``model`` dict.
* ``'classifier'``: ``EfficientFormerClassifier(...).as_inference_module()`` (image -> logits),
  from ``mmeff.models.classifiers``.

Checkpoints in any layout ``mmeff.converters`` knows (mmeff, authors', timm's, mmpretrain's,
V1 or V2, or a whole mmdet/mmseg model whose backbone keys start with ``backbone.``) are
converted and loaded; a file that does not fit the model is an error, never silently random
weights.
"""
import copy
import os.path as osp
from typing import Optional, Sequence, Tuple

import torch.nn as nn

TASKS = ('backbone', 'classifier')


def _backbone_class(btype) -> str:
    """The class name of a registered family (``mmeff.models.families``) for a backbone type in
    any scope (``'mmeff.EfficientFormerV2'``, ``'EfficientFormer'``), else ``''``."""
    from mmeff.models.families import is_family_type
    return str(btype).split('.')[-1] if is_family_type(btype) else ''


def _classifier_cls():
    try:
        from mmeff.models.classifiers import EfficientFormerClassifier
    except ImportError as exc:
        raise ImportError(
            'the classifier task needs mmeff.models.classifiers.EfficientFormerClassifier, '
            f'which could not be imported ({exc}); export the backbone with task="backbone" '
            '(--task backbone) instead') from exc
    return EfficientFormerClassifier


def _model_cfg_from_config(path: str, task: str,
                           cfg_options: Optional[dict] = None) -> Tuple[dict, str]:
    """The model dict to build from a config file (with ``cfg_options`` merged as the tools
    merge ``--cfg-options``), and a name for it."""
    from mmengine.config import Config

    from mmeff.engine.launch import apply_cfg_options
    cfg = apply_cfg_options(Config.fromfile(path), cfg_options)
    model_cfg = cfg.get('model')
    if model_cfg is None:
        raise ValueError(f'config {path!r} has no `model` dict')
    model_cfg = copy.deepcopy(model_cfg.to_dict() if hasattr(model_cfg, 'to_dict') else model_cfg)
    mtype = str(model_cfg.get('type', ''))
    if task == 'backbone':
        if _backbone_class(mtype):
            return model_cfg, osp.splitext(osp.basename(path))[0]
        backbone = model_cfg.get('backbone')
        btype = backbone.get('type') if isinstance(backbone, dict) else None
        if not _backbone_class(btype):
            from mmeff.models.families import FAMILIES
            raise ValueError(f'config {path!r}: model.backbone is not an '
                             f'{" or ".join(FAMILIES)} (type {btype!r})')
        return backbone, osp.splitext(osp.basename(path))[0]
    if mtype.split('.')[-1] != 'EfficientFormerClassifier':
        raise ValueError(f'config {path!r}: task "classifier" needs model.type '
                         f"'EfficientFormerClassifier', got {mtype!r}; use task 'backbone' to "
                         f'export the backbone of a detection/segmentation config')
    return model_cfg, osp.splitext(osp.basename(path))[0]


def _load_weights(model: nn.Module, checkpoint: str, task: str,
                  config: Optional[str] = None) -> str:
    """Convert ``checkpoint`` to mmeff's layout and load it with the fit checks of
    ``mmeff.checkpoint`` (``config``, the model's, is named with its counterpart of the other
    EfficientFormer family when the checkpoint is of that one); returns a one-line report."""
    from mmeff.checkpoint import (CheckpointMismatchError, backbone_part, check_model_fit,
                                  describe_checkpoint, load_backbone_state_dict)
    from mmeff.converters import CheckpointError, convert_state_dict, load_checkpoint_file
    raw = load_checkpoint_file(checkpoint)
    try:
        sd, layout = convert_state_dict(raw)
    except CheckpointError:
        _, description, _ = describe_checkpoint(raw)
        raise CheckpointMismatchError(
            f'{checkpoint} cannot be exported: it is {description}, not EfficientFormer(V2) '
            f'weights in a layout mmeff converts (mmeff, authors\', timm\'s, '
            f'mmpretrain\'s)') from None
    if task == 'backbone':
        bb = backbone_part(sd, 'backbone.', checkpoint)
        return f'{layout} layout: ' + load_backbone_state_dict(model, bb, source=checkpoint,
                                                               config=config)
    fit = check_model_fit(model, sd, checkpoint, purpose='exact',
                          hint='A dense (detection/segmentation) or backbone checkpoint has no '
                               'classifier head: export it with task "backbone".', config=config)
    model.load_state_dict(sd, strict=False)
    msg = f'{layout} layout: {len(fit.matched)} keys loaded'
    if fit.unexpected:
        msg += f'; ignored {fit.unexpected[:5]}'
    return msg


def build_model(model: str = 'l1',
                task: str = 'backbone',
                checkpoint: Optional[str] = None,
                out_indices: Optional[Sequence[int]] = None,
                num_classes: int = 1000,
                cfg_options: Optional[dict] = None) -> Tuple[nn.Module, dict]:
    """Build an EfficientFormer (V1 or V2) for export/benchmarking.

    Args:
        model (str): ``'l1'``, ``'l3'``, ``'l7'`` (V1), ``'s0'``, ``'s1'``, ``'s2'``, ``'l'``
            (V2) or the path of a config (``.py``).
        task (str): ``'backbone'`` or ``'classifier'``. Defaults to ``'backbone'``.
        checkpoint (str | None): Weights in any layout ``mmeff.converters`` converts; ``None``
            keeps random weights (fine for latency, meaningless for accuracy).
        out_indices (Sequence[int] | None): Backbone stages to return (backbone task, overrides
            the config/default). Defaults to None.
        num_classes (int): Classes of a classifier built from an arch name. Defaults to 1000.
        cfg_options (dict | None): Config entries to override (``--cfg-options``, merged as
            the train/test tools merge them); only with a config. Defaults to None.

    Returns:
        tuple[nn.Module, dict]: The model in eval mode (for the classifier, its inference
        module) and a ``meta`` dict (``arch``, ``task``, ``source``, ``weights``).
    """
    if task not in TASKS:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    if cfg_options and not str(model).endswith('.py'):
        raise ValueError(f'--cfg-options changes a config: give a config file (.py) instead of '
                         f'the arch name {model!r}, or drop the options')
    if checkpoint:  # before building: a missing or unreadable file is found at once
        from mmeff.checkpoint import check_checkpoint_file
        check_checkpoint_file(checkpoint)
    import mmeff.models  # noqa: F401  (registers the models)
    from mmeff.models.families import FAMILIES, family_of, family_of_arch
    from mmeff.registry import MODELS

    is_config = str(model).endswith('.py')
    if is_config:
        if not osp.isfile(model):
            raise FileNotFoundError(f'config file {model!r} does not exist')
        cfg, name = _model_cfg_from_config(model, task, cfg_options)
        # init_cfg (e.g. Pretrained) only acts in init_weights(), which is not called here:
        # weights come from `checkpoint`.
        if task == 'backbone':
            cfg['type'] = family_of(cfg['type']).type  # mmeff's scope
            if out_indices is not None:
                cfg['out_indices'] = tuple(out_indices)
        # Built in mmeff's scope whatever scope is current (another library's default scope,
        # left by an earlier Runner in this process, would look the type up in its registry).
        from mmengine.registry import DefaultScope
        with DefaultScope.overwrite_default_scope('mmeff'):
            net = MODELS.build(cfg)
        bcfg = cfg if task == 'backbone' else cfg.get('backbone', {})
        arch = bcfg.get('arch') or family_of(
            net if task == 'backbone' else net.backbone).default_arch
    else:
        arch = str(model).lower()
        try:
            family = family_of_arch(arch)
        except ValueError:
            raise ValueError(
                'model must be '
                + ', '.join(f'an {f.label} arch: one of {sorted(f.archs)}'
                            for f in FAMILIES.values())
                + f' or a config file path ending in .py, got {model!r}') from None
        name = f'{family.export_prefix}{arch}'
        if task == 'backbone':
            kwargs = {} if out_indices is None else dict(out_indices=tuple(out_indices))
            net = family.cls(arch, **kwargs)
        else:
            net = _classifier_cls()(backbone=dict(type=family.type, arch=arch),
                                    num_classes=num_classes)
    weights = 'random (no checkpoint given)'
    if checkpoint:
        report = _load_weights(net, checkpoint, task, config=model if is_config else None)
        weights = f'{checkpoint} ({report})'
    if task == 'classifier':
        net = net.as_inference_module()
    meta = dict(arch=arch if isinstance(arch, str) else 'custom', name=name, task=task,
                source=str(model), weights=weights)
    return net.eval(), meta
