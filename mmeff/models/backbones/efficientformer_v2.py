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
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from mmeff.registry import MODELS
from ..families import register_family
from ..layers.v2 import BlockV2, ConvNorm, DownsampleV2, ResizableBiasAttention
from .base import BIAS_TABLE_INPUT_SIZE, EfficientFormerBase, pretrained_to_init_cfg


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
class EfficientFormerV2(EfficientFormerBase):
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
        init_cfg = pretrained_to_init_cfg('EfficientFormerV2', pretrained, init_cfg)
        super().__init__(init_cfg=copy.deepcopy(init_cfg))
        self.arch = self._parse_arch(arch)
        self._init_common(in_channels, out_indices, frozen_stages, norm_eval, drop_path_rate,
                          with_cp)

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

        self._init_outputs(widths, out_norm_cfg)

    # ------------------------------------------------------------------ validation
    @classmethod
    def _parse_arch(cls, arch) -> dict:
        arch = cls._arch_dict(arch)
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

    # ------------------------------------------------------------------ deployment
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


# The family record (``mmeff.models.families``): what the rest of the code knows about V2.
register_family(
    key='v2',
    label='EfficientFormerV2',
    timm_names={arch: f'efficientformerv2_{arch}' for arch in EfficientFormerV2.arch_settings},
    converters={'authors': 'mmeff.converters.v2:convert_authors_v2',
                'timm': 'mmeff.converters.v2:convert_timm_v2'},  # mmpretrain has no V2
    # Every V2 FFN has a depthwise mid conv; the stem is ConvNorm units conv1.{conv,bn}, ...
    block_keys=(r'\.mlp\.mid(_norm)?\.', 'FFN blocks (mlp.mid.*)'),
    stem_keys=(r'^conv1\.conv\.', 'stem.conv1.conv.*'),
    infer_arch='mmeff.converters.v2:infer_arch_v2',
    cls_head='EfficientFormerV2ClsHead',
    config_token='effformerv2',
    export_prefix='v2_',
    display_prefix='V2-',  # V2's L is not V1's L1
    colour='navy',
    paper_ref='Li et al., Rethinking Vision Transformers for MobileNet Size and Speed, ICCV 2023 '
              '(arXiv 2212.08059), and the authors\' README '
              '(https://github.com/snap-research/EfficientFormer)',
    # ImageNet-1K at 224x224: top-1 after 300 epochs (top1_450: 450), params with one head;
    # iPhone 12: Core ML, iOS 16. 'dense' (Mask R-CNN 1x, Semantic FPN 40k) for S2 and L only,
    # from a secondary source (PaddleSeg's README), not yet checked against the paper; the
    # paper reports none for S0/S1 (snap-research/EfficientFormer issue 54).
    paper={
        's0': dict(params_m=3.5, gmacs=0.40, top1=75.7, top1_450=76.2, iphone12_ms=0.9),
        's1': dict(params_m=6.1, gmacs=0.65, top1=79.0, top1_450=79.7, iphone12_ms=1.1),
        's2': dict(params_m=12.6, gmacs=1.25, top1=81.6, top1_450=82.0, iphone12_ms=1.6,
                   dense=dict(detection=dict(bbox_mAP=43.4, segm_mAP=39.5),
                              segmentation=dict(mIoU=42.4), checked=False)),
        'l': dict(params_m=26.1, gmacs=2.56, top1=83.3, top1_450=83.5, iphone12_ms=2.7,
                  dense=dict(detection=dict(bbox_mAP=44.7, segm_mAP=40.4),
                             segmentation=dict(mIoU=45.2), checked=False)),
    },
    # timm's results list (params with both heads).
    timm_figures={'s0': dict(params_m=3.60, gmacs=0.41), 's1': dict(params_m=6.19, gmacs=0.67),
                  's2': dict(params_m=12.71, gmacs=1.27), 'l': dict(params_m=26.32, gmacs=2.59)},
)(EfficientFormerV2)
