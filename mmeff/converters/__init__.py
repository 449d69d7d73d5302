"""Pure, idempotent state-dict remaps to mmeff's layout, and safe checkpoint file I/O.

mmeff layout (what ``EfficientFormerClassifier.state_dict()`` gives; dense models use the
``backbone.*`` part):

* ``backbone.stem.{conv1,norm1,conv2,norm2}``
* ``backbone.stages.{i}.downsample.{conv,norm}`` (i >= 1)
* ``backbone.stages.{i}.blocks.{j}.*``: real blocks only, numbered 0.. (the parameterless
  ``Flat`` of the other layouts takes no index), layer scales ``ls1.gamma``/``ls2.gamma``,
  MHSA ``token_mixer.{qkv,proj,attention_biases}`` (the index buffer is recomputed).
* ``backbone.norm{i}``: output norms of dense backbones.
* ``head.norm`` (final LayerNorm), ``head.head`` and ``head.dist_head`` (classifier).

Sources: the authors' (snap-research/EfficientFormer: ``patch_embed``, ``network``,
``layer_scale_1``, ``dist_head``), timm's (``stem``, ``stages``, ``ls1.gamma``, ``head_dist``)
and mmpretrain's (``backbone.patch_embed.N.{conv,bn}``, ``backbone.network``, ``ls1.weight``).

EfficientFormerV2 (S0/S1/S2/L) files come in the authors' (``eformer_s0_450.pth``), timm's
(``efficientformerv2_*``) and mmeff's layouts; :mod:`mmeff.converters.v2` maps them. The layout
names are shared by every family (:func:`detect_layout`); :func:`detect_family` tells the
families apart by the key patterns each declares (``mmeff.models.families``: ``block_keys``,
``stem_keys``), and :func:`convert_state_dict` picks the converter the family declares for the
layout. A file that is no family's, or that mixes signs of two, is refused with a message naming
what was found.

Imports: this package reads files through ``mmeff.checkpoint`` and reads the family registry
(``mmeff.models.families``, built from the backbone classes) when a function needs it; nothing
here is imported by ``mmeff.checkpoint`` or the models at module level.
"""
import re
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch

from mmeff.checkpoint import (CheckpointError, read_checkpoint_file, unwrap_state_dict,
                             unwrap_state_dict_of)

from .v2 import arch_name_v2, convert_authors_v2, convert_timm_v2, infer_arch_v2, is_v2

LAYOUTS = ('mmeff', 'authors', 'timm', 'mmpretrain')
_WHOSE = {'authors': "the authors'", 'timm': "timm's", 'mmpretrain': "mmpretrain's"}


def _families():
    """The registered model families (importing ``mmeff.models`` registers them)."""
    from mmeff.models.families import FAMILIES as registry
    return registry


def _family(key: str):
    """The family whose short key (``'v1'``, ``'v2'``) is ``key``."""
    for family in _families().values():
        if family.key == key:
            return family
    raise ValueError(f'no model family has key {key!r}; keys: '
                     f'{[f.key for f in _families().values()]}')


def __getattr__(name: str):
    if name == 'FAMILIES':  # the families' short keys, from the registry
        return tuple(f.key for f in _families().values())
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def load_checkpoint_file(path: str, map_location='cpu') -> Dict[str, torch.Tensor]:
    """Read a local checkpoint file and return its state dict; errors name the file and the
    problem (missing, empty, corrupt, holding Python objects other than mmengine's, no tensors).

    Reads with ``weights_only=True`` (``mmeff.checkpoint.read_checkpoint_file``); a file that
    holds other objects is refused unless ``MMEFF_ALLOW_UNSAFE_LOAD=1``.
    """
    return unwrap_state_dict_of(str(path), read_checkpoint_file(path, map_location))


def save_checkpoint_atomic(obj, path: str) -> None:
    """``torch.save(obj, path)`` through a temporary file and a rename: a kill or a full disk
    never leaves a half-written checkpoint under ``path``
    (``mmeff.engine.checkpointing.save_checkpoint_atomic``, imported on first use)."""
    from mmeff.engine.checkpointing import save_checkpoint_atomic as save
    save(obj, path)


def detect_layout(sd: Dict[str, torch.Tensor]) -> str:
    """Name the layout of a state dict: one of ``LAYOUTS`` (V1 or V2, see
    :func:`detect_family`); raises on anything else, naming what the keys look like."""
    keys = list(sd)
    if any(k.startswith('backbone.stem.') for k in keys):
        return 'mmeff'
    if any(k.startswith('backbone.patch_embed.') for k in keys):
        if any(re.match(r'^backbone\.patch_embed\.\d+\.(weight|bias)$', k) for k in keys):
            parts = sorted({k.split('.')[0] for k in keys} - {'backbone'})
            with_parts = ', with ' + ', '.join(parts[:4]) if parts else ''
            raise CheckpointError(
                f"looks like the authors' dense (detection/segmentation) EfficientFormer model "
                f"(backbone.patch_embed.N.weight{with_parts})"
                f" but mmeff converts their ImageNet classification files (patch_embed.*, "
                f"network.*) and mmpretrain's backbones (backbone.patch_embed.N.conv.*); convert "
                f"the ImageNet checkpoint the dense model started from instead")
        return 'mmpretrain'
    if any(k.startswith('patch_embed.') for k in keys) \
            and any(k.startswith('network.') for k in keys):
        return 'authors'
    if any(k.startswith('stem.conv1.') for k in keys) \
            and any(k.startswith('stages.') for k in keys):
        return 'timm'
    raise CheckpointError('unknown checkpoint layout: not mmeff, authors, timm or mmpretrain '
                          f'{" or ".join(_families())} (first keys: {keys[:4]})')


def _stem_family(sd: Dict[str, torch.Tensor], layout: str):
    """The family the stem's key names point to (timm/mmeff layouts only, by each family's
    ``stem_keys``: V1's stem is plain ``conv1``/``norm1``, V2's ``conv1.conv``/``conv1.bn``),
    or None when they do not tell."""
    if layout not in ('timm', 'mmeff'):
        return None
    prefix = 'backbone.stem.' if layout == 'mmeff' else 'stem.'
    stem = [k[len(prefix):] for k in sd if k.startswith(prefix)]
    for family in _families().values():
        if any(re.match(family.stem_keys[0], k) for k in stem):
            return family
    return None


def _block_family(sd: Dict[str, torch.Tensor], layout: str):
    """The family the block keys point to: the one whose ``block_keys`` some key matches, else
    the family recognised by the absence of the others' (V1)."""
    found = [f for f in _families().values()
             if f.block_keys is not None and any(re.search(f.block_keys[0], k) for k in sd)]
    if len(found) > 1:
        raise CheckpointError(
            f'looks like a {layout}-layout checkpoint with the blocks of several families ('
            + ', '.join(f'{f.name}: {f.block_keys[1]}' for f in found)
            + '): a mix of families; convert the original file')
    if found:
        return found[0]
    return next(f for f in _families().values() if f.block_keys is None)


def detect_family(sd: Dict[str, torch.Tensor], layout: Optional[str] = None) -> str:
    """The short key of the family of ``sd`` (``mmeff.models.families``): ``'v1'``
    (EfficientFormer L1/L3/L7) or ``'v2'`` (EfficientFormerV2 S0/S1/S2/L).

    Told by the keys each family declares: V2 blocks all have a depthwise ``mlp.mid`` conv;
    timm's and mmeff's V2 stems are ``conv1.conv``/``conv1.bn`` where V1's are
    ``conv1``/``norm1``. A state dict whose blocks and stem disagree, or one in a layout its
    family's files never come in (mmpretrain has no V2), is refused.
    """
    layout = layout or detect_layout(sd)
    blocks = _block_family(sd, layout)
    stem = _stem_family(sd, layout)
    if stem is not None and stem is not blocks:
        if blocks.block_keys is not None:
            found = (f'{blocks.key.upper()} {blocks.block_keys[1]} but a {stem.key.upper()} '
                     f'stem ({stem.stem_keys[1]})')
        else:
            found = (f'a {stem.key.upper()} stem ({stem.stem_keys[1]}) but no '
                     f'{stem.key.upper()} {stem.block_keys[1]}')
        raise CheckpointError(
            f"looks like a {layout}-layout {stem.name} checkpoint but has {found}: a mix of "
            f"{blocks.name} and {stem.name} tensors, or a truncated file; convert the original "
            f"file")
    if layout in _WHOSE and layout not in blocks.converters:
        what = f' ({blocks.block_keys[1].split(" (")[-1]}' if blocks.block_keys else ''
        raise CheckpointError(
            f'looks like an {layout}-layout checkpoint but has {blocks.name} blocks{what}; '
            f'{layout} has no {blocks.key.upper()}: convert '
            + ' or '.join(_WHOSE[lt] for lt in blocks.converters)
            + f' {blocks.key.upper()} file instead')
    return blocks.key


def _compact_blocks(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Renumber ``stages.i.blocks.j`` so that parameterless entries (Flat) take no index."""
    pat = re.compile(r'^(backbone\.stages\.(\d+)\.blocks\.)(\d+)(\..*)$')
    seen: Dict[int, set] = {}
    for k in sd:
        m = pat.match(k)
        if m:
            seen.setdefault(int(m.group(2)), set()).add(int(m.group(3)))
    remap = {s: {j: n for n, j in enumerate(sorted(js))} for s, js in seen.items()}
    out = OrderedDict()
    for k, v in sd.items():
        m = pat.match(k)
        if m:
            k = f'{m.group(1)}{remap[int(m.group(2))][int(m.group(3))]}{m.group(4)}'
        out[k] = v
    return out


def _finish(out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = OrderedDict((k, v) for k, v in out.items() if not k.endswith('attention_bias_idxs'))
    return _compact_blocks(out)


_HEAD = {'norm': 'head.norm', 'head': 'head.head', 'dist_head': 'head.dist_head',
         'head_dist': 'head.dist_head'}


def convert_authors(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """snap-research/EfficientFormer layout -> mmeff (``network`` even = stages, odd = downsample).

    Files of another family (V2: ``eformer_s0_450.pth``) go to that family's authors'
    converter (:func:`~mmeff.converters.v2.convert_authors_v2`).
    """
    if detect_layout(sd) == 'mmeff':
        return OrderedDict(sd)
    family = _family(detect_family(sd, 'authors'))
    if family.converter('authors') is not convert_authors:
        return family.converter('authors')(sd)
    stem = {'0': 'conv1', '1': 'norm1', '3': 'conv2', '4': 'norm2'}
    out = OrderedDict()
    for k, v in sd.items():
        k2 = re.sub(r'layer_scale_([12])', r'ls\1.gamma', k)
        m = re.match(r'^patch_embed\.(\d+)\.(.*)$', k2)
        if m:
            out[f'backbone.stem.{stem[m.group(1)]}.{m.group(2)}'] = v
            continue
        m = re.match(r'^network\.(\d+)\.(proj|norm)\.(.*)$', k2)
        if m:  # downsample between stages
            idx = int(m.group(1))
            name = 'conv' if m.group(2) == 'proj' else 'norm'
            out[f'backbone.stages.{(idx + 1) // 2}.downsample.{name}.{m.group(3)}'] = v
            continue
        m = re.match(r'^network\.(\d+)\.(\d+)\.(.*)$', k2)
        if m:
            out[f'backbone.stages.{int(m.group(1)) // 2}.blocks.{m.group(2)}.{m.group(3)}'] = v
            continue
        m = re.match(r'^(norm|head|dist_head)\.(.*)$', k2)
        if m:
            out[f'{_HEAD[m.group(1)]}.{m.group(2)}'] = v
            continue
        raise CheckpointError(f'unexpected key in an authors-layout checkpoint: {k!r}')
    return _finish(out)


def convert_timm(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """timm ``efficientformer_l*`` layout -> mmeff; state dicts of another family
    (``efficientformerv2_*``) go to that family's timm converter
    (:func:`~mmeff.converters.v2.convert_timm_v2`)."""
    if detect_layout(sd) == 'mmeff':
        return OrderedDict(sd)
    family = _family(detect_family(sd, 'timm'))
    if family.converter('timm') is not convert_timm:
        return family.converter('timm')(sd)
    out = OrderedDict()
    for k, v in sd.items():
        if k.startswith(('stem.', 'stages.')):
            out['backbone.' + k] = v
            continue
        m = re.match(r'^(norm|head|head_dist)\.(.*)$', k)
        if m:
            out[f'{_HEAD[m.group(1)]}.{m.group(2)}'] = v
            continue
        raise CheckpointError(f'unexpected key in a timm-layout checkpoint: {k!r}')
    return _finish(out)


def convert_mmpretrain(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """mmpretrain ``EfficientFormer`` (+ ``EfficientFormerClsHead``) layout -> mmeff."""
    if detect_layout(sd) == 'mmeff':
        return OrderedDict(sd)
    detect_family(sd, 'mmpretrain')  # refuses a family mmpretrain does not have (V2)
    has_head = any(k.startswith('head.head.') for k in sd)
    out = OrderedDict()
    for k, v in sd.items():
        k2 = re.sub(r'\.ls([12])\.weight$', r'.ls\1.gamma', k)
        m = re.match(r'^backbone\.patch_embed\.([01])\.(conv|bn)\.(.*)$', k2)
        if m:
            name = ('conv' if m.group(2) == 'conv' else 'norm') + str(int(m.group(1)) + 1)
            out[f'backbone.stem.{name}.{m.group(3)}'] = v
            continue
        m = re.match(r'^backbone\.network\.(\d+)\.0\.(conv|bn)\.(.*)$', k2)
        if m and int(m.group(1)) > 0:  # ConvModule downsample is entry 0 of stages 1..3
            name = 'conv' if m.group(2) == 'conv' else 'norm'
            out[f'backbone.stages.{m.group(1)}.downsample.{name}.{m.group(3)}'] = v
            continue
        m = re.match(r'^backbone\.network\.(\d+)\.(\d+)\.(.*)$', k2)
        if m:
            out[f'backbone.stages.{m.group(1)}.blocks.{m.group(2)}.{m.group(3)}'] = v
            continue
        m = re.match(r'^backbone\.norm3\.(.*)$', k2)
        if m and has_head:  # the classifier's final LayerNorm
            out[f'head.norm.{m.group(1)}'] = v
            continue
        if re.match(r'^backbone\.norm\d\.', k2) or k2.startswith(('head.head.', 'head.dist_head.')):
            out[k2] = v
            continue
        raise CheckpointError(f'unexpected key in an mmpretrain-layout checkpoint: {k!r}')
    return _finish(out)


CONVERTERS = {'authors': convert_authors, 'timm': convert_timm,
              'mmpretrain': convert_mmpretrain, 'mmeff': lambda sd: OrderedDict(sd)}


def _check_structure(out: Dict[str, torch.Tensor], layout: str, family: str) -> None:
    """Refuse a converted state dict that lacks whole stages (a truncated file, another
    model's keys that happen to share the prefixes): it would load as a model with widths 0."""
    arch = infer_arch(out, family)
    empty = [i for i, (d, w) in enumerate(zip(arch['depths'], arch['widths'])) if not d or not w]
    if empty:
        raise CheckpointError(
            f'looks like a {layout}-layout {_family(family).name} checkpoint but stage(s) '
            f"{empty} have no blocks or no width (depths {arch['depths']}, widths "
            f"{arch['widths']}): a truncated or partial file; convert the complete checkpoint")


def convert_state_dict(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], str]:
    """Detect the layout (and family) of ``sd`` and convert it to mmeff's. Returns
    ``(state_dict, layout)``; :func:`detect_family` of either tells V1 from V2.

    Raises:
        CheckpointError: the layout is unknown, mixes V1 and V2, or lacks whole stages; the
            message names what was found.
    """
    layout = detect_layout(sd)
    family = detect_family(sd, layout)
    out = OrderedDict(sd) if layout == 'mmeff' else _family(family).converter(layout)(sd)
    _check_structure(out, layout, family)
    return out, layout


def infer_arch(sd: Dict[str, torch.Tensor], family: Optional[str] = None) -> dict:
    """Recover the arch dict from an mmeff-layout state dict, with the ``infer_arch`` function
    of its family (``family``: a short key such as ``'v2'``, detected when None): V2 gives
    :func:`~mmeff.converters.v2.infer_arch_v2`'s dict, V1 :func:`infer_arch_v1`'s."""
    family = _family(family) if family else _family(detect_family(sd, 'mmeff'))
    return family.arch_of_state_dict(sd)


def infer_arch_v1(sd: Dict[str, torch.Tensor]) -> dict:
    """The V1 (``EfficientFormer``) arch dict of an mmeff-layout state dict.

    ``num_vit`` counts the MHSA blocks (``token_mixer.qkv``) of stages 3 and 4, so the archs
    of the slimming search space, whose MB3D blocks may reach into stage 3, come back too.
    ``mlp_ratios`` (from the MLPs' hidden widths) is included only when some stage's ratio is
    not the default 4, so the dicts of L1/L3/L7 are ``depths``/``widths``/``num_vit`` only.
    """
    depths, widths, ratios = [], [], []
    num_vit = 0
    for i in range(4):
        prefix = rf'^backbone\.stages\.{i}\.blocks\.(\d+)\.'
        blocks = {int(m.group(1)) for k in sd for m in [re.match(prefix, k)] if m}
        depths.append(len(blocks))
        w = sd.get(f'backbone.stages.{i}.blocks.0.ls1.gamma')
        widths.append(int(w.shape[0]) if w is not None else 0)
        fc1 = sd.get(f'backbone.stages.{i}.blocks.0.mlp.fc1.weight')
        ratios.append(fc1.shape[0] / fc1.shape[1] if fc1 is not None else 4)
        if i >= 2:
            num_vit += len({m.group(1) for k in sd
                            for m in [re.match(prefix + r'token_mixer\.qkv\.', k)] if m})
    arch = dict(depths=depths, widths=widths, num_vit=num_vit)
    if any(r != 4 for r in ratios):
        arch['mlp_ratios'] = [int(r) if float(r).is_integer() else r for r in ratios]
    return arch


def arch_name(sd: Dict[str, torch.Tensor]):
    """The name of the family's arch (``'l1'``/``'l3'``/``'l7'``, ``'s0'``/``'s1'``/``'s2'``/
    ``'l'``...) that the mmeff-layout state dict is, else its arch dict (:func:`infer_arch`).
    Archs are compared as the backbone class parses them, so ``mlp_ratios=4`` equals
    ``[4, 4, 4, 4]`` and a V2 stage's single ratio its per-block list."""
    family = _family(detect_family(sd, 'mmeff'))
    return named_arch(family, family.arch_of_state_dict(sd))


def named_arch(family, arch):
    """The name of ``family``'s arch equal to the arch dict ``arch`` (as the backbone class
    parses both), else ``arch`` itself (also a name, or a dict the class refuses)."""
    if not isinstance(arch, dict):
        return arch
    try:
        parsed = family.cls._parse_arch(arch)
    except (TypeError, ValueError):  # e.g. V2 stages with different attention counts
        return arch
    for name, setting in family.cls.arch_settings.items():
        if family.cls._parse_arch(setting) == parsed:
            return name
    return arch


def family_name(sd: Dict[str, torch.Tensor]) -> str:
    """The backbone class a state dict of any layout is for (``'EfficientFormer'``,
    ``'EfficientFormerV2'``)."""
    return _family(detect_family(sd)).name


__all__ = ['LAYOUTS', 'FAMILIES', 'CheckpointError', 'unwrap_state_dict', 'load_checkpoint_file',
           'save_checkpoint_atomic', 'detect_layout', 'convert_authors', 'convert_timm',
           'convert_mmpretrain', 'convert_state_dict', 'infer_arch', 'infer_arch_v1',
           'arch_name', 'named_arch', 'detect_family', 'family_name', 'convert_authors_v2',
           'convert_timm_v2', 'infer_arch_v2', 'arch_name_v2', 'is_v2']
