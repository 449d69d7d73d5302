"""EfficientFormer's meta blocks: MB4D (pool mixer + conv MLP, BN) and MB3D (MHSA + MLP, LN).

Parameter names follow timm (``mlp.fc1``, ``ls1.gamma``, ``token_mixer.qkv``...) so that
checkpoint conversion is a pure key remap.
"""
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from .attention import Attention


def build_norm(norm_cfg: dict, num_features: int) -> nn.Module:
    """Build a norm layer from an OpenMMLab ``norm_cfg`` (``BN``, ``SyncBN``, ``GN``, ``LN``)."""
    from mmcv.cnn import build_norm_layer  # mmcv registers the norm layers
    return build_norm_layer(norm_cfg, num_features)[1]


def build_act(act_cfg: dict) -> nn.Module:
    from mmcv.cnn import build_activation_layer
    return build_activation_layer(act_cfg)


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch; ``channel_dim`` is 1 for NCHW, -1 for NLC."""

    def __init__(self, dim: int, init_value: float, channel_dim: int = -1):
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(dim))
        self.channel_dim = channel_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_dim == 1:
            return x * self.gamma.view(1, -1, 1, 1)
        return x * self.gamma


class Pooling(nn.Module):
    """PoolFormer token mixer: ``AvgPool3x3(x) - x`` (the residual adds x back)."""

    def __init__(self, pool_size: int = 3):
        super().__init__()
        self.pool = nn.AvgPool2d(
            pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x):
        return self.pool(x) - x


class ConvMlp(nn.Module):
    """1x1 conv -> norm -> act -> 1x1 conv -> norm (the MB4D MLP, BN folds at inference)."""

    def __init__(self, dim, hidden, norm_cfg, act_cfg, drop=0.):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.norm1 = build_norm(norm_cfg, hidden)
        self.act = build_act(act_cfg)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm2 = build_norm(norm_cfg, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop(self.act(self.norm1(self.fc1(x))))
        return self.drop(self.norm2(self.fc2(x)))


class Mlp(nn.Module):
    """Linear -> act -> Linear (the MB3D MLP)."""

    def __init__(self, dim, hidden, act_cfg, drop=0.):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = build_act(act_cfg)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Meta4D(nn.Module):
    """MB4D block on (B, C, H, W): pooling mixer and conv MLP, each with layer scale."""

    def __init__(self, dim, mlp_ratio=4., pool_size=3, norm_cfg=dict(type='BN'),
                 act_cfg=dict(type='GELU'), drop=0., drop_path=0., layer_scale_init_value=1e-5):
        super().__init__()
        self.token_mixer = Pooling(pool_size)
        self.ls1 = LayerScale(dim, layer_scale_init_value, channel_dim=1)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), norm_cfg, act_cfg, drop)
        self.ls2 = LayerScale(dim, layer_scale_init_value, channel_dim=1)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        # Eager inference only (mmeff.deploy.fuse.to_channels_last_ sets it to ls1's scale as
        # (1, C, 1, 1)): the mixer and its residual, x + s * (pool(x) - x), as one lerp pass.
        self.register_buffer('mixer_scale', None, persistent=False)
        # ONNX export only (mmeff.deploy.fuse.onnx_mixers sets them to 1 - s and s as (C, 1, 1,
        # 1)): the same as two depthwise 1x1 convs, (1 - s) * x + s * pool(x).
        self.register_buffer('mixer_keep', None, persistent=False)
        self.register_buffer('mixer_weight', None, persistent=False)

    def forward(self, x, hw_shape=None):
        # The mixer with its residual; the two rewrites are set only without a drop path.
        if self.mixer_scale is not None:
            x = torch.lerp(x, self.token_mixer.pool(x), self.mixer_scale)
        elif self.mixer_weight is not None:
            c = x.shape[1]
            x = (F.conv2d(x, self.mixer_keep, groups=c)
                 + F.conv2d(self.token_mixer.pool(x), self.mixer_weight, groups=c))
        else:
            x = x + self.drop_path(self.ls1(self.token_mixer(x)))
        return x + self.drop_path(self.ls2(self.mlp(x)))


class Meta3D(nn.Module):
    """MB3D block on (B, N, C) tokens: LN + MHSA and LN + MLP, each with layer scale."""

    def __init__(self, dim, mlp_ratio=4., act_cfg=dict(type='GELU'), drop=0., drop_path=0.,
                 layer_scale_init_value=1e-5, key_dim=32, num_heads=8, attn_ratio=4,
                 resolution=7, bias_interpolation='bicubic'):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mixer = Attention(dim, key_dim, num_heads, attn_ratio, resolution,
                                     bias_interpolation)
        self.ls1 = LayerScale(dim, layer_scale_init_value)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_cfg, drop)
        self.ls2 = LayerScale(dim, layer_scale_init_value)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]):
        x = x + self.drop_path(self.ls1(self.token_mixer(self.norm1(x), hw_shape)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
