"""EfficientFormer (V1) backbone for OpenMMLab 2.x: one class, L1/L3/L7 as data.

Paper: Li et al., "EfficientFormer: Vision Transformers at MobileNet Speed", NeurIPS 2022
(arXiv 2206.01191). Architecture as in the authors' code (Apache-2.0, snap-research/EfficientFormer)
and timm's ``efficientformer.py``; parameter names follow timm so that converting the
authors', timm's and mmpretrain's checkpoints is a key remap (``mmeff.converters``).

What this adds over timm/mmpretrain: outputs at any input size (the MHSA bias table is resized
to the actual token grid, see ``mmeff.models.layers.attention``), OpenMMLab dense-prediction
arguments, and input validation with messages that say what is allowed.
"""
import copy
import os.path as osp
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from mmeff.checkpoint import load_backbone_state_dict  # noqa: F401  (public here too)
from mmeff.registry import MODELS
from ..layers import Meta3D, Meta4D
from ..layers.blocks import build_norm

MIN_INPUT_SIZE = 32  # one token after the stride-32 stage
# MHSA bias tables are learned on the token grid of this input size (224 // stride: 7x7 in the
# stride-32 stage as in the authors' and timm's models, 14x14 for MB3D blocks in the stride-16
# stage); any other grid resizes the table (``mmeff.models.layers.attention``).
BIAS_TABLE_INPUT_SIZE = 224


class Stem(nn.Sequential):
    """Two 3x3 stride-2 conv + BN + ReLU (stride 4); a conv stem instead of a patchify one."""

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: dict):
        super().__init__()
        self.add_module('conv1', nn.Conv2d(in_channels, out_channels // 2, 3, 2, 1))
        self.add_module('norm1', build_norm(norm_cfg, out_channels // 2))
        self.add_module('act1', nn.ReLU())
        self.add_module('conv2', nn.Conv2d(out_channels // 2, out_channels, 3, 2, 1))
        self.add_module('norm2', build_norm(norm_cfg, out_channels))
        self.add_module('act2', nn.ReLU())


class Downsample(nn.Module):
    """3x3 stride-2 conv (with bias) + norm between stages."""

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: dict):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.norm = build_norm(norm_cfg, out_channels)

    def forward(self, x):
        return self.norm(self.conv(x))


class EfficientFormerStage(nn.Module):
    """Optional downsample, MB4D blocks, then one flatten and MB3D blocks (if any).

    MB3D blocks sit in the last stage and, for archs whose ``num_vit`` exceeds the last
    stage's depth, also at the end of the one before it; such a stage gives its output back
    as a 4D map, so the next downsample sees what it always does.
    """

    def __init__(self, blocks: List[nn.Module], downsample: nn.Module = None):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.ModuleList(blocks)
        self.with_cp = False

    def _run(self, block, x, hw_shape):
        if self.with_cp and x.requires_grad and self.training:
            return cp.checkpoint(block, x, hw_shape, use_reentrant=False)
        return block(x, hw_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        B, C, H, W = x.shape
        flat = False
        for block in self.blocks:
            if isinstance(block, Meta3D) and not flat:
                x = x.flatten(2).transpose(1, 2)  # the single 4D -> 3D reshape
                flat = True
            x = self._run(block, x, (H, W))
        if flat:
            x = x.transpose(1, 2).reshape(B, C, H, W)
        return x


@MODELS.register_module()
class EfficientFormer(BaseModule):
    """EfficientFormer backbone returning 4D maps at strides 4, 8, 16, 32.

    Args:
        arch (str | dict): ``'l1'``, ``'l3'``, ``'l7'`` or a dict with keys ``depths`` (4
            ints), ``widths`` (4 ints), ``num_vit`` (MB3D blocks at the end of the network:
            ``min(num_vit, depths[3])`` at the end of the last stage, the rest at the end of
            stage 3, the last stage being then all MB3D; at most ``depths[2] + depths[3]``)
            and optionally ``mlp_ratios`` (float or 4 floats), e.g.
            an arch of the slimming search space (``mmeff.slimming``). Defaults to ``'l1'``.
        in_channels (int): Input image channels. Defaults to 3.
        out_indices (Sequence[int] | int): Stages (0..3) whose outputs are returned.
            Defaults to ``(0, 1, 2, 3)``.
        out_norm_cfg (dict | None): Norm applied to every returned map, as the authors'
            dense backbones did; ``None`` returns the raw stage outputs.
            Defaults to ``dict(type='GN', num_groups=1)``.
        frozen_stages (int): ``-1`` freezes nothing; ``k >= 0`` freezes the stem and stages
            ``0..k-1`` (weights and BN statistics). Allowed: -1..4. Defaults to -1.
        norm_eval (bool): Keep BN layers in eval mode during training. Defaults to False.
        norm_cfg (dict): Norm of the 4D part (stem, downsamples, MB4D). Defaults to BN.
        act_cfg (dict): Activation of the MLPs. Defaults to GELU.
        drop_rate (float): Dropout in the MLPs. Defaults to 0.
        drop_path_rate (float): Stochastic depth, increasing linearly over blocks.
            Defaults to 0.
        layer_scale_init_value (float): Initial layer scale (authors: 1e-5; 1e-6 for their
            dense L7). Defaults to 1e-5.
        bias_interpolation (str): How the MHSA bias table is resized to grids other than the
            one it is learned on (7x7 in the last stage, 14x14 in stage 3: the grids of a 224
            input) (``'bicubic'`` or ``'bilinear'``). Defaults to ``'bicubic'``.
        with_cp (bool): Gradient checkpointing of every block. Defaults to False.
        pretrained (str, optional): Deprecated, same as ``init_cfg=dict(type='Pretrained',
            checkpoint=pretrained, prefix='backbone.')``. Defaults to None.
        init_cfg (dict | list[dict] | None): OpenMMLab init config, e.g.
            ``dict(type='Pretrained', checkpoint='l3.pth', prefix='backbone.')``.

    Example:
        >>> import torch
        >>> from mmeff.models import EfficientFormer
        >>> model = EfficientFormer('l1').eval()
        >>> for out in model(torch.rand(1, 3, 250, 333)):
        ...     print(tuple(out.shape))
        (1, 48, 63, 84)
        (1, 96, 32, 42)
        (1, 224, 16, 21)
        (1, 448, 8, 11)
    """

    arch_settings: Dict[str, dict] = {
        'l1': dict(depths=[3, 2, 6, 4], widths=[48, 96, 224, 448], num_vit=1, mlp_ratios=4),
        'l3': dict(depths=[4, 4, 12, 6], widths=[64, 128, 320, 512], num_vit=4, mlp_ratios=4),
        'l7': dict(depths=[6, 6, 18, 8], widths=[96, 192, 384, 768], num_vit=8, mlp_ratios=4),
    }
    num_stages = 4
    strides = (4, 8, 16, 32)

    def __init__(self,
                 arch: Union[str, dict] = 'l1',
                 in_channels: int = 3,
                 out_indices: Union[Sequence[int], int] = (0, 1, 2, 3),
                 out_norm_cfg: dict = dict(type='GN', num_groups=1),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='GELU'),
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-5,
                 bias_interpolation: str = 'bicubic',
                 with_cp: bool = False,
                 pretrained: Optional[str] = None,
                 init_cfg=[
                     dict(type='TruncNormal', layer='Linear', std=.02, bias=0.),
                     dict(type='Constant', layer=['LayerNorm', 'GroupNorm'], val=1., bias=0.),
                 ]):
        if pretrained is not None:
            # Deprecated OpenMMLab argument (mmseg's EncoderDecoder sets it from model.pretrained).
            if not isinstance(pretrained, str):
                raise TypeError(f'pretrained must be a checkpoint path or None, got {pretrained!r}')
            warnings.warn('EfficientFormer(pretrained=...) is deprecated; use init_cfg=dict('
                          "type='Pretrained', checkpoint=..., prefix='backbone.')")
            init_cfg = dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')
        super().__init__(init_cfg=copy.deepcopy(init_cfg))
        self.arch = self._parse_arch(arch)
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

        depths, widths = self.arch['depths'], self.arch['widths']
        num_vit = self.arch['num_vit']
        mlp_ratios = self.arch['mlp_ratios']
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()

        self.stem = Stem(in_channels, widths[0], norm_cfg)
        self.stages = nn.ModuleList()
        block_id = 0
        for i, (depth, width) in enumerate(zip(depths, widths)):
            downsample = Downsample(widths[i - 1], width, norm_cfg) if i > 0 else None
            blocks = []
            stage_vit = self.num_vit_per_stage(self.arch)[i]
            for j in range(depth):
                common = dict(mlp_ratio=mlp_ratios[i], act_cfg=act_cfg, drop=drop_rate,
                              drop_path=dpr[block_id + j],
                              layer_scale_init_value=layer_scale_init_value)
                if j >= depth - stage_vit:
                    blocks.append(Meta3D(width, bias_interpolation=bias_interpolation,
                                         resolution=BIAS_TABLE_INPUT_SIZE // self.strides[i],
                                         **common))
                else:
                    blocks.append(Meta4D(width, norm_cfg=norm_cfg, **common))
            block_id += depth
            stage = EfficientFormerStage(blocks, downsample)
            stage.with_cp = with_cp
            self.stages.append(stage)

        self.out_norm_cfg = copy.deepcopy(out_norm_cfg)
        for i in self.out_indices:
            norm = build_norm(out_norm_cfg, widths[i]) if out_norm_cfg else nn.Identity()
            self.add_module(f'norm{i}', norm)

        # The output contract, as data.
        self.out_channels = [widths[i] for i in self.out_indices]
        self.out_strides = [self.strides[i] for i in self.out_indices]
        self.feature_info = [
            dict(num_chs=widths[i], reduction=self.strides[i], module=f'stages.{i}')
            for i in self.out_indices
        ]
        self._freeze_stages()

    # ------------------------------------------------------------------ validation
    @classmethod
    def _parse_arch(cls, arch) -> dict:
        if isinstance(arch, str):
            if arch.lower() not in cls.arch_settings:
                raise ValueError(f'Unknown EfficientFormer arch {arch!r}; choose one of '
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
                    or not all(isinstance(v, int) and v > 0 for v in val)):
                raise ValueError(f'arch[{key!r}] must be {cls.num_stages} positive ints, got {val!r}')
            arch[key] = list(val)
        num_vit, depths = arch['num_vit'], arch['depths']
        if (not isinstance(num_vit, int) or isinstance(num_vit, bool)
                or not 0 <= num_vit <= depths[2] + depths[3]):
            raise ValueError(
                f"arch['num_vit'] must be an int in [0, depths[2] + depths[3] = "
                f"{depths[2] + depths[3]}] (the MB3D blocks at the end of the network: up to "
                f"depths[3]={depths[3]} in the last stage, the rest at the end of stage 3), "
                f"got {num_vit!r}")
        ratios = arch.get('mlp_ratios', 4)
        if isinstance(ratios, (int, float)):
            ratios = [ratios] * cls.num_stages
        if len(ratios) != cls.num_stages:
            raise ValueError(f"arch['mlp_ratios'] must be a number or {cls.num_stages} numbers")
        arch['mlp_ratios'] = list(ratios)
        return arch

    @classmethod
    def num_vit_per_stage(cls, arch: dict) -> List[int]:
        """How many of each stage's blocks are MB3D (at the stage's end) for a parsed arch:
        the last stage takes ``min(num_vit, depths[3])``, stage 3 the rest."""
        last = min(arch['num_vit'], arch['depths'][-1])
        return [0] * (cls.num_stages - 2) + [arch['num_vit'] - last, last]

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
