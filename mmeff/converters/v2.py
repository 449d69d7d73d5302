"""EfficientFormerV2 state-dict remaps: the authors' and timm's layouts -> mmeff's.

mmeff's V2 layout is timm's ``efficientformerv2_*`` layout under ``backbone.`` (``stem.conv1.
{conv,bn}``, ``stages.{i}.downsample.{conv,attn}``, ``stages.{i}.blocks.{j}.{token_mixer,mlp,
ls1,ls2}``) with the classifier's ``head.norm``, ``head.head``, ``head.dist_head``.

The authors' files (snap-research/EfficientFormer ``models/efficientformer_v2.py``, e.g.
``eformer_s0_450.pth``) name the same tensors differently; timm's hub weights were remapped
offline, so timm has no filter to reuse. The correspondence, read from both model definitions:

* stem ``patch_embed.{0,1,3,4}`` (conv, BN, act, conv, BN) -> ``stem.conv{1,2}.{conv,bn}``;
* ``network`` alternates stages (even entries) and ``Embedding`` downsamples (odd entries):
  ``proj``/``norm`` -> ``downsample.conv.{conv,bn}``; the attention downsample into stage 4 has
  ``conv``/``bn`` and ``attn`` (``Attention4DDownsample``);
* ``nn.Sequential(conv, BN)`` pairs ``x.0``/``x.1`` -> timm's ``ConvNorm`` ``x.conv``/``x.bn``;
  the attention ``proj`` is ``(act, conv, BN)``: ``proj.1``/``proj.2``; the downsample query's
  ``q.local.0`` is timm's plain ``q.local``;
* the FFN's ``fc1``/``norm1``, ``mid``/``mid_norm``, ``fc2``/``norm2`` -> ``mlp.{fc1,mid,fc2}.
  {conv,bn}``;
* layer scales ``layer_scale_{1,2}`` of shape (C, 1, 1) -> ``ls{1,2}.gamma`` of shape (C,);
* the bias tables need no permutation (both order offsets as ``|dy| * W + |dx|``); the
  authors' ``attention_bias_idxs`` buffers are dropped (recomputed by the model).
"""
import re
from collections import OrderedDict
from typing import Dict, List, Union

import torch

from mmeff.checkpoint import CheckpointError

_SEQ = {'0': 'conv', '1': 'bn'}
_STEM = {'0': 'conv1.conv', '1': 'conv1.bn', '3': 'conv2.conv', '4': 'conv2.bn'}
_MLP = {'fc1': 'fc1.conv', 'norm1': 'fc1.bn', 'mid': 'mid.conv', 'mid_norm': 'mid.bn',
        'fc2': 'fc2.conv', 'norm2': 'fc2.bn'}
_HEAD = {'norm': 'head.norm', 'head': 'head.head', 'dist_head': 'head.dist_head',
         'head_dist': 'head.dist_head'}
_MID = re.compile(r'\.mlp\.mid(_norm)?\.')


def is_v2(sd) -> bool:
    """Whether a state dict (any layout) holds EfficientFormerV2 blocks: every V2 block's FFN
    has a depthwise ``mid`` conv, which no V1 block has."""
    return any(_MID.search(k) for k in sd)


def _attention(rest: str, key: str) -> str:
    """Authors' ``Attention4D`` / ``Attention4DDownsample`` sub-key -> timm's."""
    m = re.match(r'^(q|k|v|v_local|stride_conv)\.([01])\.(.*)$', rest)
    if m:
        return f'{m.group(1)}.{_SEQ[m.group(2)]}.{m.group(3)}'
    m = re.match(r'^proj\.([12])\.(.*)$', rest)
    if m:
        return f"proj.{'conv' if m.group(1) == '1' else 'bn'}.{m.group(2)}"
    m = re.match(r'^q\.local\.0\.(.*)$', rest)
    if m:
        return f'q.local.{m.group(1)}'
    m = re.match(r'^q\.proj\.([01])\.(.*)$', rest)
    if m:
        return f'q.proj.{_SEQ[m.group(1)]}.{m.group(2)}'
    if re.match(r'^(talking_head[12]\.(weight|bias)|attention_biases)$', rest):
        return rest
    raise CheckpointError(f'unexpected attention key in an authors-layout EfficientFormerV2 '
                          f'checkpoint: {key!r}')


def _block(rest: str, key: str) -> str:
    m = re.match(r'^layer_scale_([12])$', rest)
    if m:
        return f'ls{m.group(1)}.gamma'
    m = re.match(r'^mlp\.(fc1|norm1|mid|mid_norm|fc2|norm2)\.(.*)$', rest)
    if m:
        return f'mlp.{_MLP[m.group(1)]}.{m.group(2)}'
    m = re.match(r'^token_mixer\.(.*)$', rest)
    if m:
        return 'token_mixer.' + _attention(m.group(1), key)
    raise CheckpointError(f'unexpected block key in an authors-layout EfficientFormerV2 '
                          f'checkpoint: {key!r}')


def _drop(key: str) -> bool:
    return key.endswith('attention_bias_idxs')


def _is_mmeff(sd) -> bool:
    return any(k.startswith('backbone.stem.') for k in sd)


def convert_authors_v2(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """snap-research/EfficientFormer V2 layout (``eformer_s0_450.pth``) -> mmeff.

    Pure (``sd`` is not modified) and idempotent (an mmeff-layout dict comes back as a copy).
    """
    if _is_mmeff(sd):
        return OrderedDict(sd)
    out = OrderedDict()
    for k, v in sd.items():
        if _drop(k):
            continue
        m = re.match(r'^patch_embed\.([0134])\.(.*)$', k)
        if m:
            out[f'backbone.stem.{_STEM[m.group(1)]}.{m.group(2)}'] = v
            continue
        m = re.match(r'^network\.(\d+)\.(.*)$', k)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            if idx % 2 == 0:  # a stage
                b = re.match(r'^(\d+)\.(.*)$', rest)
                if b is None:
                    raise CheckpointError(f'unexpected key in an authors-layout '
                                          f'EfficientFormerV2 checkpoint: {k!r}')
                name = _block(b.group(2), k)
                if name.endswith('.gamma'):
                    v = v.reshape(-1)  # (C, 1, 1) -> LayerScale2d's (C,)
                out[f'backbone.stages.{idx // 2}.blocks.{b.group(1)}.{name}'] = v
                continue
            prefix = f'backbone.stages.{(idx + 1) // 2}.downsample.'
            d = re.match(r'^(proj|norm|conv|bn)\.(.*)$', rest)
            if d:
                part = 'conv' if d.group(1) in ('proj', 'conv') else 'bn'
                out[f'{prefix}conv.{part}.{d.group(2)}'] = v
                continue
            d = re.match(r'^attn\.(.*)$', rest)
            if d:
                out[f'{prefix}attn.{_attention(d.group(1), k)}'] = v
                continue
            raise CheckpointError(f'unexpected downsample key in an authors-layout '
                                  f'EfficientFormerV2 checkpoint: {k!r}')
        m = re.match(r'^(norm|head|dist_head)\.(.*)$', k)
        if m:
            out[f'{_HEAD[m.group(1)]}.{m.group(2)}'] = v
            continue
        raise CheckpointError(f'unexpected key in an authors-layout EfficientFormerV2 '
                              f'checkpoint: {k!r}')
    return out


def convert_timm_v2(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """timm ``efficientformerv2_*`` layout -> mmeff (``backbone.`` prefix, head renamed).

    A bare ``EfficientFormerV2(...).state_dict()`` has timm's keys too (plus the output norms
    ``norm{i}``, kept as ``backbone.norm{i}``).

    Pure and idempotent, like :func:`convert_authors_v2`.
    """
    if _is_mmeff(sd):
        return OrderedDict(sd)
    out = OrderedDict()
    for k, v in sd.items():
        if _drop(k):
            continue
        if k.startswith(('stem.', 'stages.')) or re.match(r'^norm\d\.', k):
            out['backbone.' + k] = v  # norm{i}: an mmeff backbone's output norms, saved bare
            continue
        m = re.match(r'^(norm|head|head_dist)\.(.*)$', k)
        if m:
            out[f'{_HEAD[m.group(1)]}.{m.group(2)}'] = v
            continue
        raise CheckpointError(f'unexpected key in a timm-layout EfficientFormerV2 checkpoint: '
                              f'{k!r}')
    return out


def infer_arch_v2(sd: Dict[str, torch.Tensor]) -> dict:
    """The V2 arch of an mmeff-layout state dict: ``depths``, ``widths``, ``num_vit`` (the
    attention blocks at the end of stages 3 and 4: an int when both have as many, else a
    list) and ``mlp_ratios`` (one list of per-block FFN expansion ratios per stage)."""
    depths, widths, ratios, vits = [], [], [], []
    for i in range(4):
        prefix = rf'^backbone\.stages\.{i}\.blocks\.(\d+)\.'
        blocks = sorted({int(m.group(1)) for k in sd for m in [re.match(prefix, k)] if m})
        depths.append(len(blocks))
        stage_ratios = []
        width = 0
        for j in blocks:
            fc1 = sd.get(f'backbone.stages.{i}.blocks.{j}.mlp.fc1.conv.weight')
            if fc1 is None:
                stage_ratios.append(None)
                continue
            width = int(fc1.shape[1])
            r = fc1.shape[0] / fc1.shape[1]
            stage_ratios.append(int(r) if float(r).is_integer() else r)
        widths.append(width)
        ratios.append(stage_ratios)
        vits.append(len({m.group(1) for k in sd
                         for m in [re.match(prefix + r'token_mixer\.q\.', k)] if m}))
    num_vit: Union[int, List[int]] = vits[3] if vits[2] == vits[3] else vits[2:]
    return dict(depths=depths, widths=widths, num_vit=num_vit, mlp_ratios=ratios)


def arch_name_v2(sd: Dict[str, torch.Tensor]):
    """``'s0'``/``'s1'``/``'s2'``/``'l'`` if the state dict matches one of
    ``EfficientFormerV2.arch_settings``, else the :func:`infer_arch_v2` dict."""
    from mmeff.converters import named_arch
    from mmeff.models.families import family_of
    return named_arch(family_of('EfficientFormerV2'), infer_arch_v2(sd))


__all__ = ['is_v2', 'convert_authors_v2', 'convert_timm_v2', 'infer_arch_v2', 'arch_name_v2']
