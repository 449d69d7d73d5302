"""EfficientFormerV2 backbone for OpenMMLab 2.x: one class, S0/S1/S2/L as data.

Paper: Li et al., "Rethinking Vision Transformers for MobileNet Size and Speed", ICCV 2023
(arXiv 2212.08059). Architecture as in the authors' code (Apache-2.0, snap-research/
EfficientFormer ``models/efficientformer_v2.py``) and timm's ``efficientformer_v2.py``, whose
state-dict keys this backbone has exactly (``stem.*``, ``stages.*``): timm's checkpoints load by
dropping the classifier keys, the authors' by a key remap (``mmeff.converters``).

What this adds over timm and the authors' dense code: any input size of at least 32 px per side
(every attention's bias table, pretrained at 224, is resized to the actual grid; odd stride-16
grids work, see ``mmeff.models.layers.v2``), OpenMMLab dense-prediction arguments, and input
validation with messages that say what is allowed. V1 (``efficientformer.py``) sits beside it
and shares the layers that are truly the same (norm/act builders, layer scale, bias resizing).
"""
import copy
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from mmeff.registry import MODELS
from ..layers.blocks import build_norm
from ..layers.v2 import BlockV2, ConvNorm, DownsampleV2, ResizableBiasAttention
from .efficientformer import BIAS_TABLE_INPUT_SIZE, EfficientFormer


class StemV2(nn.Sequential):
    """Two 3x3 stride-2 conv-BN-GELU (stride 4), as ``conv1``/``conv2`` (timm's ``Stem4``)."""

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: dict, act_cfg: dict):
        super().__init__()
        self.add_module('conv1', ConvNorm(in_channels, out_channels // 2, 3, stride=2,
                                          norm_cfg=norm_cfg, act_cfg=act_cfg))
        self.add_module('conv2', ConvNorm(out_channels // 2, out_channels, 3, stride=2,
                                          norm_cfg=norm_cfg, act_cfg=act_cfg))


class EfficientFormerV2Stage(nn.Module):
    """Optional downsample, then V2 blocks (all 4D)."""

    def __init__(self, blocks: List[nn.Module], downsample: Optional[nn.Module] = None):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.with_cp = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            if self.with_cp and x.requires_grad and self.training:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


@MODELS.register_module()
class EfficientFormerV2(BaseModule):
    """EfficientFormerV2 backbone returning 4D maps at strides 4, 8, 16, 32.

    Args:
        arch (str | dict): ``'s0'``, ``'s1'``, ``'s2'``, ``'l'`` or a dict with keys
            ``depths`` (4 ints), ``widths`` (4 ints), ``num_vit`` (attention blocks at the end
            of stage 3 and at the end of stage 4, at most ``min(depths[2], depths[3])``) and
            optionally ``mlp_ratios`` (FFN expansion: a number, or 4 entries each a number or
            one number per block of the stage). Defaults to ``'s0'``.
        in_channels (int): Input image channels. Defaults to 3.
        out_indices (Sequence[int] | int): Stages (0..3) whose outputs are returned.
            Defaults to ``(0, 1, 2, 3)``.
        out_norm_cfg (dict | None): Norm applied to every returned map (modules ``norm{i}``);
            ``None`` returns the raw stage outputs, as the authors' dense backbones do.
            Defaults to None.
        frozen_stages (int): ``-1`` freezes nothing; ``k >= 0`` freezes the stem and stages
            ``0..k-1`` (weights and BN statistics). Allowed: -1..4. Defaults to -1.
        norm_eval (bool): Keep BN layers in eval mode during training. Defaults to False.
        norm_cfg (dict): Norm of every conv unit. Defaults to BN.
        act_cfg (dict): Activation (stem, FFN, attention). Defaults to GELU.
        drop_rate (float): Dropout in the FFNs. Defaults to 0.
        drop_path_rate (float): Stochastic depth, increasing linearly over blocks (authors:
            0 for S0/S1, 0.02 for S2, 0.1 for L). Defaults to 0.
        layer_scale_init_value (float): Initial layer scale. Defaults to 1e-5.
        bias_interpolation (str): How bias tables are resized to grids other than those of a
            224 input (``'bicubic'`` or ``'bilinear'``). Defaults to ``'bicubic'``.
        with_cp (bool): Gradient checkpointing of every block. Defaults to False.
        pretrained (str, optional): Deprecated, same as ``init_cfg=dict(type='Pretrained',
            checkpoint=pretrained, prefix='backbone.')``. Defaults to None.
        init_cfg (dict | list[dict] | None): OpenMMLab init config, e.g.
            ``dict(type='Pretrained', checkpoint='s2.pth', prefix='backbone.')``; ``None``
            keeps PyTorch's default init (zero bias tables), as timm. Defaults to None.

    Example:
        >>> import torch
        >>> from mmeff.models import EfficientFormerV2
        >>> model = EfficientFormerV2('s0').eval()
        >>> for out in model(torch.rand(1, 3, 250, 333)):
        ...     print(tuple(out.shape))
        (1, 32, 63, 84)
        (1, 48, 32, 42)
        (1, 96, 16, 21)
        (1, 176, 8, 11)
    """

    arch_settings: Dict[str, dict] = {
        's0': dict(depths=[2, 2, 6, 4], widths=[32, 48, 96, 176], num_vit=2,
                   mlp_ratios=[4, 4, [4, 3, 3, 3, 4, 4], [4, 3, 3, 4]]),
        's1': dict(depths=[3, 3, 9, 6], widths=[32, 48, 120, 224], num_vit=2,
                   mlp_ratios=[4, 4, [4, 4, 3, 3, 3, 3, 4, 4, 4], [4, 4, 3, 3, 4, 4]]),
        's2': dict(depths=[4, 4, 12, 8], widths=[32, 64, 144, 288], num_vit=4,
                   mlp_ratios=[4, 4, [4, 4, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4],
                               [4, 4, 3, 3, 3, 3, 4, 4]]),
        'l': dict(depths=[5, 5, 15, 10], widths=[40, 80, 192, 384], num_vit=6,
                  mlp_ratios=[4, 4, [4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4],
                              [4, 4, 4, 3, 3, 3, 3, 4, 4, 4]]),
    }
    # The authors' drop path per variant (timm's defaults), for configs.
    default_drop_path_rates = {'s0': 0., 's1': 0., 's2': 0.02, 'l': 0.1}
    num_stages = 4
    strides = (4, 8, 16, 32)

    def __init__(self,
                 arch: Union[str, dict] = 's0',
                 in_channels: int = 3,
                 out_indices: Union[Sequence[int], int] = (0, 1, 2, 3),
                 out_norm_cfg: Optional[dict] = None,
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
                 init_cfg=None):
        if pretrained is not None:
            if not isinstance(pretrained, str):
                raise TypeError(f'pretrained must be a checkpoint path or None, got {pretrained!r}')
            warnings.warn('EfficientFormerV2(pretrained=...) is deprecated; use init_cfg=dict('
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
        num_vit, mlp_ratios = self.arch['num_vit'], self.arch['mlp_ratios']
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        # Grids of a 224 input, on which the bias tables are learned.
        grid = [-(-BIAS_TABLE_INPUT_SIZE // s) for s in self.strides]

        self.stem = StemV2(in_channels, widths[0], norm_cfg, act_cfg)
        self.stages = nn.ModuleList()
        block_id = 0
        for i, (depth, width) in enumerate(zip(depths, widths)):
            downsample = None
            if i > 0:
                # Into the last stage: conv + attention downsample, keys on the previous grid.
                downsample = DownsampleV2(widths[i - 1], width, use_attn=i == 3,
                                          resolution=grid[i - 1], norm_cfg=norm_cfg,
                                          act_cfg=act_cfg, bias_interpolation=bias_interpolation)
            blocks = []
            for j in range(depth):
                use_attn = i >= 2 and j >= depth - num_vit
                blocks.append(BlockV2(
                    width, mlp_ratios[i][j], use_attn=use_attn,
                    # stage 3 attends on its grid halved (the strided Attention4D)
                    resolution=-(-grid[i] // 2) if i == 2 else grid[i],
                    stride=2 if i == 2 else None, norm_cfg=norm_cfg, act_cfg=act_cfg,
                    drop=drop_rate, drop_path=dpr[block_id + j],
                    layer_scale_init_value=layer_scale_init_value,
                    bias_interpolation=bias_interpolation))
            block_id += depth
            stage = EfficientFormerV2Stage(blocks, downsample)
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
                raise ValueError(f'Unknown EfficientFormerV2 arch {arch!r}; choose one of '
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
        depths = arch['depths']
        if arch['widths'][0] % 2:
            raise ValueError(f"arch['widths'][0] must be even (the stem's first conv has half "
                             f"of it), got {arch['widths'][0]}")
        num_vit, limit = arch['num_vit'], min(depths[2], depths[3])
        if not isinstance(num_vit, int) or isinstance(num_vit, bool) or not 0 <= num_vit <= limit:
            raise ValueError(f"arch['num_vit'] must be an int in [0, min(depths[2], depths[3]) = "
                             f"{limit}] (the attention blocks at the end of stage 3 and at the "
                             f"end of stage 4), got {num_vit!r}")
        ratios = arch.get('mlp_ratios', 4)
        if isinstance(ratios, (int, float)) and not isinstance(ratios, bool):
            ratios = [ratios] * cls.num_stages
        if not isinstance(ratios, (list, tuple)) or len(ratios) != cls.num_stages:
            raise ValueError(f"arch['mlp_ratios'] must be a number or {cls.num_stages} entries "
                             f"(each a number or one number per block), got {ratios!r}")
        per_block = []
        for i, (r, depth) in enumerate(zip(ratios, depths)):
            r = [r] * depth if isinstance(r, (int, float)) and not isinstance(r, bool) else r
            if (not isinstance(r, (list, tuple)) or len(r) != depth
                    or not all(isinstance(v, (int, float)) and v > 0 for v in r)):
                raise ValueError(f"arch['mlp_ratios'][{i}] must be a positive number or "
                                 f"depths[{i}]={depth} positive numbers, got {r!r}")
            per_block.append(list(r))
        arch['mlp_ratios'] = per_block
        return arch

    # Shared with V1 (the same contract and messages; none of these calls super()).
    _parse_out_indices = EfficientFormer._parse_out_indices
    _check_input = EfficientFormer._check_input
    _freeze_stages = EfficientFormer._freeze_stages
    output_shape = EfficientFormer.output_shape
    set_grad_checkpointing = EfficientFormer.set_grad_checkpointing
    _load_pretrained = EfficientFormer._load_pretrained

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

    def attention_input_sizes(self, height: int, width: int
                              ) -> Iterator[Tuple[ResizableBiasAttention, Tuple[int, int]]]:
        """``(attention, (h, w))`` for every attention module: the size of the map it receives
        for a ``height x width`` image (what ``fix_bias`` takes). The attention downsample into
        stage ``i`` sees the grid of stage ``i - 1``; the blocks that of their stage."""
        grids, h, w = [], height, width
        for i in range(self.num_stages):
            for _ in range(2 if i == 0 else 1):
                h, w = (h + 1) // 2, (w + 1) // 2
            grids.append((h, w))
        for i, stage in enumerate(self.stages):
            if isinstance(stage.downsample, DownsampleV2) and stage.downsample.attn is not None:
                yield stage.downsample.attn, grids[i - 1]
            for block in stage.blocks:
                if block.token_mixer is not None:
                    yield block.token_mixer, grids[i]

    # ------------------------------------------------------------------ training state
    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------ init
    def init_weights(self):
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        pretrained = [c for c in cfgs if isinstance(c, dict) and c.get('type') == 'Pretrained']
        if not pretrained:
            super().init_weights()
            return
        if len(pretrained) > 1:
            raise ValueError(f'init_cfg has {len(pretrained)} Pretrained entries; give one')
        # The other entries first (mmengine's order), then the checkpoint with V1's fit check
        # (mmengine's own PretrainedInit only logs a file that does not fit).
        others = [c for c in cfgs if c is not pretrained[0] and c is not None]
        if others:
            original, self.init_cfg = self.init_cfg, others
            try:
                super().init_weights()
            finally:
                self.init_cfg = original
        self._load_pretrained(pretrained[0])
        self._is_init = True
