"""What EfficientFormer (V1) and EfficientFormerV2 share as OpenMMLab backbones.

The two families differ in their blocks and stages (``efficientformer.py``,
``efficientformer_v2.py``); everything around them is one contract: the OpenMMLab arguments and
their checks (``in_channels``, ``out_indices``, ``frozen_stages``, ``norm_eval``,
``drop_path_rate``, ``with_cp``, the deprecated ``pretrained``), the optional output norms
``norm{i}``, the output contract as data (``out_channels``, ``out_strides``, ``feature_info``,
``output_shape()``), input validation, freezing, gradient checkpointing, and loading a
pretrained checkpoint with a fit check.
"""
import copy
import os.path as osp
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers.blocks import build_norm

MIN_INPUT_SIZE = 32  # one token after the stride-32 stage
# Attention bias tables are learned on the token grids of this input size (224 // stride).
BIAS_TABLE_INPUT_SIZE = 224


def pretrained_to_init_cfg(name: str, pretrained: Optional[str], init_cfg):
    """``init_cfg`` for the deprecated OpenMMLab ``pretrained`` argument (mmseg's
    ``EncoderDecoder`` still sets it from ``model.pretrained``); ``init_cfg`` when None.

    A model-zoo name (``open-mmlab://``, ``torchvision://``, ``mmcls://``...) is refused here,
    when the backbone is built: mmengine's zoos hold no EfficientFormer weights, so it is the
    stock config's ResNet (mmseg's ``model.pretrained='open-mmlab://resnet50_v1c'``), which
    would otherwise fail only at weight initialisation, after the data is loaded.
    """
    if pretrained is None:
        return init_cfg
    if not isinstance(pretrained, str):
        raise TypeError(f'pretrained must be a checkpoint path or None, got {pretrained!r}')
    from mmeff.checkpoint import _MODEL_ZOO_SCHEMES
    if pretrained.lower().startswith(_MODEL_ZOO_SCHEMES):
        raise ValueError(
            f'{name}(pretrained={pretrained!r}): that is another backbone\'s checkpoint (the '
            f'stock config\'s model.pretrained, which mmseg hands to whatever backbone the '
            f'config has; no model zoo holds EfficientFormer weights): set '
            f'model.pretrained=None, and give EfficientFormer weights as '
            f"model.backbone.init_cfg=dict(type='Pretrained', checkpoint=FILE, "
            f"prefix='backbone.')")
    warnings.warn(f'{name}(pretrained=...) is deprecated; use init_cfg=dict('
                  "type='Pretrained', checkpoint=..., prefix='backbone.')")
    return dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')


class EfficientFormerBase(BaseModule):
    """Base of the two backbone classes: subclasses parse their ``arch`` (with ``widths``),
    call :meth:`_init_common` first, build ``stem`` and ``stages`` (each with a ``with_cp``
    flag), then call :meth:`_init_outputs`."""

    num_stages = 4
    strides = (4, 8, 16, 32)

    def _init_common(self, in_channels: int, out_indices, frozen_stages: int, norm_eval: bool,
                     drop_path_rate: float, with_cp: bool) -> None:
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ValueError(f'in_channels must be a positive int, got {in_channels!r}')
        self.in_channels = in_channels
        self.out_indices = self._parse_out_indices(out_indices)
        if (not isinstance(frozen_stages, int) or isinstance(frozen_stages, bool)
                or not -1 <= frozen_stages <= self.num_stages):
            raise ValueError(f'frozen_stages must be an int in [-1, {self.num_stages}] '
                             f'(-1: nothing frozen, k: stem and the first k stages), '
                             f'got {frozen_stages!r}')
        if not 0. <= drop_path_rate < 1.:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp

    def _init_outputs(self, widths: List[int], out_norm_cfg: Optional[dict]) -> None:
        """Output norms ``norm{i}`` (``nn.Identity`` without ``out_norm_cfg``), the output
        contract as data, and the frozen stages."""
        self.out_norm_cfg = copy.deepcopy(out_norm_cfg)
        for i in self.out_indices:
            norm = build_norm(out_norm_cfg, widths[i]) if out_norm_cfg else nn.Identity()
            self.add_module(f'norm{i}', norm)
        self.out_channels = [widths[i] for i in self.out_indices]
        self.out_strides = [self.strides[i] for i in self.out_indices]
        self.feature_info = [
            dict(num_chs=widths[i], reduction=self.strides[i], module=f'stages.{i}')
            for i in self.out_indices
        ]
        self._freeze_stages()

    # ------------------------------------------------------------------ validation
    @classmethod
    def _arch_dict(cls, arch) -> dict:
        """A copy of ``arch`` (a name of ``cls.arch_settings`` or a dict) with its keys and its
        ``depths``/``widths`` checked (lists of ``num_stages`` positive ints); the rest of the
        checks are the family's (``_parse_arch``)."""
        if isinstance(arch, str):
            if arch.lower() not in cls.arch_settings:
                raise ValueError(f'Unknown {cls.__name__} arch {arch!r}; choose one of '
                                 f'{sorted(cls.arch_settings)} or pass a dict with keys '
                                 f"'depths', 'widths', 'num_vit' (and optional 'mlp_ratios')")
            arch = cls.arch_settings[arch.lower()]
        if not isinstance(arch, dict):
            raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}')
        required = {'depths', 'widths', 'num_vit'}
        missing = required - set(arch)
        unknown = set(arch) - required - {'mlp_ratios'}
        if missing or unknown:
            raise ValueError(f'arch dict must have keys {sorted(required)} (+ optional '
                             f"'mlp_ratios'); missing {sorted(missing)}, unknown {sorted(unknown)}")
        arch = copy.deepcopy(arch)
        for key in ('depths', 'widths'):
            val = arch[key]
            if (not isinstance(val, (list, tuple)) or len(val) != cls.num_stages
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                               for v in val)):
                raise ValueError(f'arch[{key!r}] must be {cls.num_stages} positive ints, '
                                 f'got {val!r}')
            arch[key] = list(val)
        return arch

    def _parse_out_indices(self, out_indices) -> Tuple[int, ...]:
        if isinstance(out_indices, int) and not isinstance(out_indices, bool):
            out_indices = [out_indices]
        if not isinstance(out_indices, (list, tuple)) or len(out_indices) == 0:
            raise TypeError('out_indices must be an int or a non-empty sequence of ints in '
                            f'0..{self.num_stages - 1}, got {out_indices!r}')
        result = []
        for idx in out_indices:
            if not isinstance(idx, int) or isinstance(idx, bool):
                raise TypeError(f'out_indices must contain ints, got {idx!r}')
            norm_idx = idx + self.num_stages if idx < 0 else idx
            if not 0 <= norm_idx < self.num_stages:
                raise ValueError(f'out_indices entry {idx} is out of range: allowed stage indices '
                                 f'are 0..{self.num_stages - 1} (or -{self.num_stages}..-1)')
            result.append(norm_idx)
        if len(set(result)) != len(result):
            raise ValueError(f'out_indices has duplicates: {out_indices!r}')
        return tuple(sorted(result))

    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'EfficientFormer expects a torch.Tensor, got {type(x).__name__}')
        if x.dim() == 3:
            raise ValueError(f'EfficientFormer expects a 4D (B, C, H, W) input, got shape '
                             f'{tuple(x.shape)}; add a batch dimension with x[None]')
        if x.dim() == 5:
            raise ValueError(f'EfficientFormer expects a 4D (B, C, H, W) input, got the 5D '
                             f'shape {tuple(x.shape)} (clips or groups of images?): fold the '
                             f'second dimension into the batch with x.flatten(0, 1) and '
                             f'reshape the outputs back, or take one image per sample')
        if x.dim() != 4:
            raise ValueError(f'EfficientFormer expects a 4D (B, C, H, W) input, got shape '
                             f'{tuple(x.shape)}')
        if x.shape[0] == 0:
            raise ValueError(f'EfficientFormer got an empty batch (shape {tuple(x.shape)}): '
                             f'at least one image is needed; check that the data loader or '
                             f'the caller does not filter every image out')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'Input has {x.shape[1]} channels but the backbone was built with '
                             f'in_channels={self.in_channels}; build it with '
                             f'in_channels={x.shape[1]} or feed {self.in_channels}-channel images')
        if x.shape[2] < MIN_INPUT_SIZE or x.shape[3] < MIN_INPUT_SIZE:
            raise ValueError(f'Input of {x.shape[2]}x{x.shape[3]} pixels is too small: '
                             f'EfficientFormer needs at least {MIN_INPUT_SIZE} pixels per side '
                             f'(one token at stride 32); resize or pad the input')

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        self._check_input(x)
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x))
            if i == self.out_indices[-1]:
                break  # later stages are not needed (and would give DDP unused parameters)
        return tuple(outs)

    def output_shape(self, height: int, width: int) -> List[Tuple[int, int, int]]:
        """(channels, H, W) of every output for a ``height x width`` input."""
        shapes, h, w = [], height, width
        for i in range(self.num_stages):
            for _ in range(2 if i == 0 else 1):
                h, w = (h + 1) // 2, (w + 1) // 2
            if i in self.out_indices:
                shapes.append((self.arch['widths'][i], h, w))
        return shapes

    # ------------------------------------------------------------------ training state
    def _freeze_stages(self):
        if self.frozen_stages < 0:
            return
        modules = [self.stem] + [self.stages[i] for i in range(self.frozen_stages)]
        modules += [getattr(self, f'norm{i}') for i in range(self.frozen_stages)
                    if i in self.out_indices]
        for m in modules:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def set_grad_checkpointing(self, enable: bool = True):
        self.with_cp = enable
        for stage in self.stages:
            stage.with_cp = enable

    # ------------------------------------------------------------------ init
    def init_weights(self):
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        pretrained = [c for c in cfgs if isinstance(c, dict) and c.get('type') == 'Pretrained']
        if not pretrained:
            super().init_weights()
            return
        if len(pretrained) > 1:
            raise ValueError(f'init_cfg has {len(pretrained)} Pretrained entries; give one')
        # The other entries first (mmengine's order), then the checkpoint, loaded with a fit
        # check: mmengine's own PretrainedInit only logs a file that does not fit.
        others = [c for c in cfgs if c is not pretrained[0] and c is not None]
        if others:
            original, self.init_cfg = self.init_cfg, others
            try:
                super().init_weights()
            finally:
                self.init_cfg = original
        self._load_pretrained(pretrained[0])
        self._is_init = True

    def _load_pretrained(self, init_cfg: dict):
        """Load ``init_cfg.checkpoint`` (a file, or a URL for mmengine's loaders) with
        ``mmeff.checkpoint.load_pretrained_backbone``: a file that does not fit the backbone is
        an error that says what it is, never silently random weights."""
        from mmeff.checkpoint import is_remote, load_pretrained_backbone
        ckpt_path = init_cfg.get('checkpoint')
        prefix = init_cfg.get('prefix', 'backbone.')
        if not ckpt_path:
            raise ValueError("init_cfg type 'Pretrained' needs a 'checkpoint' path")
        if not is_remote(str(ckpt_path)) and not osp.isfile(osp.expanduser(str(ckpt_path))):
            raise FileNotFoundError(
                f'Pretrained backbone checkpoint {ckpt_path!r} does not exist. Produce it with '
                f'tools/convert_checkpoint.py (authors/timm/mmpretrain weights) or '
                f'configs/classification, set the path in the config, or set '
                f'init_cfg=None to start from random weights on purpose.')
        report = load_pretrained_backbone(self, str(ckpt_path), prefix)
        print_log(f'Loaded pretrained backbone from {ckpt_path}: {report}', logger='current')
