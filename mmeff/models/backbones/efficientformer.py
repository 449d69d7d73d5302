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
from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from mmeff.checkpoint import load_backbone_state_dict  # noqa: F401  (public here too)
from mmeff.registry import MODELS
from ..families import register_family
from ..layers import Meta3D, Meta4D
from ..layers.blocks import build_norm
# MHSA bias tables are learned on the token grid of a 224 input (224 // stride: 7x7 in the
# stride-32 stage as in the authors' and timm's models, 14x14 for MB3D blocks in the stride-16
# stage); any other grid resizes the table (``mmeff.models.layers.attention``).
from .base import (BIAS_TABLE_INPUT_SIZE, MIN_INPUT_SIZE,  # noqa: F401  (public here too)
                   EfficientFormerBase, pretrained_to_init_cfg)


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
class EfficientFormer(EfficientFormerBase):
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
        init_cfg = pretrained_to_init_cfg('EfficientFormer', pretrained, init_cfg)
        super().__init__(init_cfg=copy.deepcopy(init_cfg))
        self.arch = self._parse_arch(arch)
        self._init_common(in_channels, out_indices, frozen_stages, norm_eval, drop_path_rate,
                          with_cp)

        depths, widths = self.arch['depths'], self.arch['widths']
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

        self._init_outputs(widths, out_norm_cfg)

    # ------------------------------------------------------------------ validation
    @classmethod
    def _parse_arch(cls, arch) -> dict:
        arch = cls._arch_dict(arch)
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


# The family record (``mmeff.models.families``): what the rest of the code knows about V1.
register_family(
    key='v1',
    label='EfficientFormer (V1)',
    timm_names={arch: f'efficientformer_{arch}' for arch in EfficientFormer.arch_settings},
    converters={'authors': 'mmeff.converters:convert_authors',
                'timm': 'mmeff.converters:convert_timm',
                'mmpretrain': 'mmeff.converters:convert_mmpretrain'},
    block_keys=None,  # V1 blocks have no key of their own: the blocks without V2's
    stem_keys=(r'^norm1\.', 'stem.conv1.*, stem.norm1.*'),
    infer_arch='mmeff.converters:infer_arch_v1',
    cls_head='EfficientFormerClsHead',
    config_token='effformer',
    colour='crimson',
    paper_ref='Li et al., EfficientFormer: Vision Transformers at MobileNet Speed, NeurIPS 2022 '
              '(arXiv 2206.01191), Tables 1 and 3',
    # ImageNet-1K at 224x224 (Table 1; iPhone 12: Core ML, iOS 16) and, under 'dense', Mask
    # R-CNN 1x on COCO val2017 and Semantic FPN 40k on ADE20K val (Table 3).
    paper={
        'l1': dict(params_m=12.3, gmacs=1.3, top1=79.2, iphone12_ms=1.6,
                   dense=dict(detection=dict(bbox_mAP=37.9, segm_mAP=35.4),
                              segmentation=dict(mIoU=38.9), checked=True)),
        'l3': dict(params_m=31.3, gmacs=3.9, top1=82.4, iphone12_ms=3.0,
                   dense=dict(detection=dict(bbox_mAP=41.4, segm_mAP=38.1),
                              segmentation=dict(mIoU=43.5), checked=True)),
        'l7': dict(params_m=82.1, gmacs=10.2, top1=83.3, iphone12_ms=7.0,
                   dense=dict(detection=dict(bbox_mAP=42.6, segm_mAP=39.0),
                              segmentation=dict(mIoU=45.1), checked=True)),
    },
    # timm's results list (params with both heads).
    timm_figures={'l1': dict(params_m=12.29, gmacs=1.30), 'l3': dict(params_m=31.41, gmacs=3.93),
                  'l7': dict(params_m=82.23, gmacs=10.17)},
)(EfficientFormer)
