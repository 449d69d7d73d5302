"""EfficientFormerV2 building blocks: conv-BN units, the FFN, Attention4D and the attention
downsample, each attention with a relative-position bias that works at any grid.

Paper: Li et al., "Rethinking Vision Transformers for MobileNet Size and Speed", ICCV 2023
(arXiv 2212.08059). Module and parameter names follow timm's ``efficientformer_v2.py``
(``conv``/``bn``, ``token_mixer.q``, ``ls1.gamma``, ``attention_biases``...) so that timm's and
the authors' checkpoints load by a key filter/remap, with tables copied without permutation.

Everything is 4D (B, C, H, W): V2 has no LayerNorm and no 4D <-> 3D reshapes between blocks.

Bias tables at any grid: every attention learns one bias per head and per absolute offset
``(|dy|, |dx|)`` on the grid it sees for a 224x224 input (7x7 in Attention4D, stage 3's
strided one included; 14x14 key offsets in the attention downsample). On other grids the table
is resized with V1's policy (:func:`~mmeff.models.layers.attention.resize_bias_table`: the
pretrained table, ``align_corners=True``, no resize at the native grid). The bias of a module
depends only on its *input* size, so ``fix_bias(height, width)`` takes the size of the feature
map the module receives (for deployment: no gather and no interpolation in the exported graph).

Odd grids: the strided convs pad by 1 and give ``ceil(H / 2)``; Attention4D's x2 bilinear
upsample is cropped back to the input size (every output pixel keeps the sampling position it
has at even sizes); the attention downsample's queries sit on the stride-2 positions of the key
grid whatever its parity.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from .attention import check_bias_interpolation, relative_offset_index, resize_bias_table
from .blocks import LayerScale, build_act, build_norm


def strided_query_offset_index(height: int, width: int, stride: int = 2,
                               device=None) -> torch.Tensor:
    """Index ``|dy| * width + |dx|`` between queries on the stride-``stride`` positions of a
    ``height x width`` key grid (``ceil(height / stride) x ceil(width / stride)`` queries, at
    key coordinates ``(stride * i, stride * j)``) and every key; offsets are in key units, so
    they index a table over the key grid's offsets. ``stride=1`` is
    :func:`~mmeff.models.layers.attention.relative_offset_index`.
    """
    k_pos = torch.stack(torch.meshgrid(torch.arange(height, device=device),
                                       torch.arange(width, device=device),
                                       indexing='ij')).flatten(1)
    q_pos = torch.stack(torch.meshgrid(torch.arange(0, height, stride, device=device),
                                       torch.arange(0, width, stride, device=device),
                                       indexing='ij')).flatten(1)
    rel = (q_pos[:, :, None] - k_pos[:, None, :]).abs()
    return rel[0] * width + rel[1]


def _ceil_half(height: int, width: int) -> Tuple[int, int]:
    """Output size of a 3x3 stride-2 pad-1 conv (and of ``AvgPool2d(1, 2)``)."""
    return (height + 1) // 2, (width + 1) // 2


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, heads * c, H, W) -> (B, heads, c, H * W)."""
    return x.flatten(2).unflatten(1, (num_heads, -1))


def _merge_heads(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, heads, H * W, c) -> (B, heads * c, H, W) shaped as ``like``, in ``like``'s memory
    layout when that is channels-last (a fused model, ``mmeff.deploy.fuse``): the upsample,
    add and conv that follow have fast kernels for that layout only (PyTorch's CPU bilinear
    x2 of a 1024-channel 7x7 map took 6x longer in NCHW). A training model (NCHW) gets
    exactly what it always did. ``reshape_as``: no size arithmetic in traced graphs
    (coremltools cannot cast folded sizes back to ints); the layout change is an Identity in
    ONNX and a no-op in Core ML."""
    x = x.transpose(2, 3).reshape_as(like)
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class ConvNorm(nn.Module):
    """Conv2d (with bias) -> norm (-> activation): timm's ``ConvNorm``/``ConvNormAct``.

    The norm is named ``bn`` whatever ``norm_cfg`` builds, as timm names it, so that keys match.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 stride: int = 1, groups: int = 1, norm_cfg: dict = dict(type='BN'),
                 act_cfg: Optional[dict] = None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                              kernel_size // 2, groups=groups)
        self.bn = build_norm(norm_cfg, out_channels)
        self.act = build_act(act_cfg) if act_cfg else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class FFN(nn.Module):
    """1x1 conv-BN-act -> depthwise 3x3 conv-BN-act -> 1x1 conv-BN (the V2 local mixer)."""

    def __init__(self, dim: int, hidden: int, norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='GELU'), drop: float = 0.):
        super().__init__()
        self.fc1 = ConvNorm(dim, hidden, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.mid = ConvNorm(hidden, hidden, 3, groups=hidden, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.fc2 = ConvNorm(hidden, dim, 1, norm_cfg=norm_cfg)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.mid(self.fc1(x)))))


class ResizableBiasAttention(nn.Module):
    """Bias table, its resizing to any grid and the deployment cache, shared by the V2
    attentions (the same API as V1's :class:`~mmeff.models.layers.attention.Attention`:
    ``table_for_grid``, ``get_bias``, ``fix_bias``, ``drop_cached_bias``, ``cached_bias``).

    Subclasses set ``native_input`` (the input size of the 224 model) and implement
    ``table_grid(h, w)`` (the offset grid of the table for an input of ``h x w``) and
    ``bias_index(h, w, device)``.
    """

    def _init_bias(self, num_heads: int, resolution: Tuple[int, int],
                   native_input: Tuple[int, int], bias_interpolation: str) -> None:
        self.num_heads = num_heads
        self.resolution = tuple(resolution)  # offset grid of the learned table
        self.native_input = tuple(native_input)
        self.bias_interpolation = check_bias_interpolation(bias_interpolation)
        self.attention_biases = nn.Parameter(
            torch.zeros(num_heads, self.resolution[0] * self.resolution[1]))
        # Index at the native grid: non-persistent (timm's checkpoints do not hold it, and it
        # is a pure function of the grid), a buffer so that it follows .to(device).
        self.register_buffer('attention_bias_idxs', self.bias_index(*self.native_input),
                             persistent=False)
        # Set by ``fix_bias`` for deployment; a buffer so that it follows .to(device)/.half().
        self.register_buffer('cached_bias', None, persistent=False)
        self._cached_grid: Optional[Tuple[int, int]] = None

    def table_grid(self, height: int, width: int) -> Tuple[int, int]:
        raise NotImplementedError

    def bias_index(self, height: int, width: int, device=None) -> torch.Tensor:
        raise NotImplementedError

    def train(self, mode: bool = True):
        if mode:
            self.drop_cached_bias()  # a training step changes the table
        return super().train(mode)

    def table_for_grid(self, height: int, width: int) -> torch.Tensor:
        """Bias table ``(heads, h*w)`` over offsets for an input of ``height x width``."""
        return resize_bias_table(self.attention_biases, self.resolution,
                                 self.table_grid(height, width), self.bias_interpolation)

    def get_bias(self, height: int, width: int) -> torch.Tensor:
        """Attention bias ``(heads, queries, keys)`` for an input of ``height x width``."""
        if self.cached_bias is not None and self._cached_grid == (height, width):
            return self.cached_bias
        if (height, width) == self.native_input:
            idx = self.attention_bias_idxs
        else:
            idx = self.bias_index(height, width, self.attention_biases.device)
        return self.table_for_grid(height, width)[:, idx]

    @torch.no_grad()
    def fix_bias(self, height: int, width: int) -> None:
        """Precompute the bias for one input size (deployment: no gather op, no resize)."""
        self._cached_grid = (height, width)
        self.cached_bias = self.get_bias(height, width).detach().clone()

    def drop_cached_bias(self) -> None:
        self.cached_bias = None
        self._cached_grid = None


class Attention4D(ResizableBiasAttention):
    """Attention on (B, C, H, W) with talking heads and a local value conv (``Attention2d``).

    With ``stride=2`` (stage 3) a depthwise 3x3 stride-2 conv-BN first halves the grid
    (``ceil``), attention runs there and the result is upsampled x2 (bilinear) and cropped to
    the input size before ``proj``.

    Args:
        dim (int): Channels.
        key_dim (int): Channels of q and k per head. Defaults to 32.
        num_heads (int): Heads. Defaults to 8.
        attn_ratio (float): Value channels per head divided by ``key_dim``. Defaults to 4.
        resolution (int | tuple): Grid attention runs on at 224 (after the stride); the
            table's offset grid. Defaults to 7.
        stride (int | None): 2 for the strided attention of stage 3. Defaults to None.
        norm_cfg, act_cfg (dict): Norm of the conv units, activation before ``proj``.
        bias_interpolation (str): ``'bicubic'`` or ``'bilinear'``. Defaults to ``'bicubic'``.
    """

    def __init__(self, dim: int, key_dim: int = 32, num_heads: int = 8, attn_ratio: float = 4,
                 resolution=7, stride: Optional[int] = None,
                 norm_cfg: dict = dict(type='BN'), act_cfg: dict = dict(type='GELU'),
                 bias_interpolation: str = 'bicubic'):
        super().__init__()
        if stride not in (None, 1, 2):
            raise ValueError(f'Attention4D stride must be None, 1 or 2, got {stride!r}')
        self.stride = stride if stride and stride > 1 else None
        self.key_dim = key_dim
        self.scale = key_dim**-0.5
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        kh = key_dim * num_heads
        resolution = (resolution, resolution) if isinstance(resolution, int) else resolution

        if self.stride is not None:
            self.stride_conv = ConvNorm(dim, dim, 3, stride=2, groups=dim, norm_cfg=norm_cfg)
        else:
            self.stride_conv = None
        self.q = ConvNorm(dim, kh, norm_cfg=norm_cfg)
        self.k = ConvNorm(dim, kh, norm_cfg=norm_cfg)
        self.v = ConvNorm(dim, self.dh, norm_cfg=norm_cfg)
        self.v_local = ConvNorm(self.dh, self.dh, 3, groups=self.dh, norm_cfg=norm_cfg)
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1)
        self.act = build_act(act_cfg)
        self.proj = ConvNorm(self.dh, dim, norm_cfg=norm_cfg)
        native_input = tuple(r * 2 for r in resolution) if self.stride else resolution
        self._init_bias(num_heads, resolution, native_input, bias_interpolation)

    def table_grid(self, height: int, width: int) -> Tuple[int, int]:
        return _ceil_half(height, width) if self.stride else (height, width)

    def bias_index(self, height: int, width: int, device=None) -> torch.Tensor:
        return relative_offset_index(*self.table_grid(height, width), device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        bias = self.get_bias(H, W)
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        # Heads split with constant sizes and the map restored by _merge_heads (no shape
        # arithmetic in traced graphs: coremltools cannot cast folded sizes back to ints).
        q = _split_heads(self.q(x), self.num_heads).transpose(2, 3)
        k = _split_heads(self.k(x), self.num_heads)
        v = self.v(x)
        v_local = self.v_local(v)
        v = _split_heads(v, self.num_heads).transpose(2, 3)

        attn = (q @ k) * self.scale + bias.to(q.dtype)
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
        x = _merge_heads(attn @ v, v_local) + v_local
        if self.stride is not None:
            # x2 then crop (not ``size=(H, W)``): at odd sizes every pixel keeps the sampling
            # position it has at even sizes, where this equals the authors' nn.Upsample(x2).
            x = F.interpolate(x, scale_factor=2., mode='bilinear', align_corners=False)
            if x.shape[-2] != H or x.shape[-1] != W:  # odd input: drop the extra row/column
                x = x[:, :, :int(H), :int(W)]
        return self.proj(self.act(x))


class LocalGlobalQuery(nn.Module):
    """Query of the attention downsample: ``proj(dwconv3x3_s2(x) + AvgPool(1, 2)(x))``."""

    def __init__(self, in_dim: int, out_dim: int, norm_cfg: dict = dict(type='BN')):
        super().__init__()
        self.pool = nn.AvgPool2d(1, 2, 0)
        self.local = nn.Conv2d(in_dim, in_dim, 3, 2, 1, groups=in_dim)
        self.proj = ConvNorm(in_dim, out_dim, 1, norm_cfg=norm_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.local(x)
        if self.pool is not None:  # None once folded into ``local`` (mmeff.deploy.fuse)
            q = q + self.pool(x)
        return self.proj(q)


class AttentionDownsample(ResizableBiasAttention):
    """Stride-2 attention into the last stage (``Attention2dDownsample``): queries on the
    ``ceil(H/2) x ceil(W/2)`` grid, keys and values on the full ``H x W`` input grid.

    The table is over key-grid offsets (14x14 at 224): query ``(i, j)`` sits at key position
    ``(2i, 2j)``, so its bias to key ``(y, x)`` is ``table[|2i - y|, |2j - x|]``; at other grids
    the table is resized to the key grid ``H x W`` (offsets 0..H-1 for both parities).

    Args:
        dim (int): Input channels.
        out_dim (int): Output channels. Defaults to ``dim``.
        key_dim (int): Defaults to 16. num_heads (int): Defaults to 8.
        attn_ratio (float): Defaults to 4.
        resolution (int | tuple): Key grid at 224 (the table's offset grid). Defaults to 14.
        norm_cfg, act_cfg, bias_interpolation: As :class:`Attention4D`.
    """

    def __init__(self, dim: int, out_dim: Optional[int] = None, key_dim: int = 16,
                 num_heads: int = 8, attn_ratio: float = 4, resolution=14,
                 norm_cfg: dict = dict(type='BN'), act_cfg: dict = dict(type='GELU'),
                 bias_interpolation: str = 'bicubic'):
        super().__init__()
        self.key_dim = key_dim
        self.scale = key_dim**-0.5
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        out_dim = out_dim or dim
        kh = key_dim * num_heads
        resolution = (resolution, resolution) if isinstance(resolution, int) else resolution

        self.q = LocalGlobalQuery(dim, kh, norm_cfg=norm_cfg)
        self.k = ConvNorm(dim, kh, norm_cfg=norm_cfg)
        self.v = ConvNorm(dim, self.dh, norm_cfg=norm_cfg)
        self.v_local = ConvNorm(self.dh, self.dh, 3, stride=2, groups=self.dh, norm_cfg=norm_cfg)
        self.act = build_act(act_cfg)
        self.proj = ConvNorm(self.dh, out_dim, norm_cfg=norm_cfg)
        self._init_bias(num_heads, resolution, resolution, bias_interpolation)

    def table_grid(self, height: int, width: int) -> Tuple[int, int]:
        return height, width

    def bias_index(self, height: int, width: int, device=None) -> torch.Tensor:
        return strided_query_offset_index(height, width, 2, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.get_bias(*x.shape[-2:])
        q = _split_heads(self.q(x), self.num_heads).transpose(2, 3)  # ceil(H/2) x ceil(W/2)
        k = _split_heads(self.k(x), self.num_heads)  # H x W
        v = self.v(x)
        v_local = self.v_local(v)  # on the query grid
        v = _split_heads(v, self.num_heads).transpose(2, 3)

        attn = ((q @ k) * self.scale + bias.to(q.dtype)).softmax(dim=-1)
        x = _merge_heads(attn @ v, v_local) + v_local
        return self.proj(self.act(x))


class DownsampleV2(nn.Module):
    """3x3 stride-2 conv-BN between stages, plus (into the last stage) the attention
    downsample added to it."""

    def __init__(self, in_channels: int, out_channels: int, use_attn: bool = False,
                 resolution=14, norm_cfg: dict = dict(type='BN'),
                 act_cfg: dict = dict(type='GELU'), bias_interpolation: str = 'bicubic'):
        super().__init__()
        self.conv = ConvNorm(in_channels, out_channels, 3, stride=2, norm_cfg=norm_cfg)
        self.attn = AttentionDownsample(
            in_channels, out_channels, resolution=resolution, norm_cfg=norm_cfg,
            act_cfg=act_cfg, bias_interpolation=bias_interpolation) if use_attn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.attn is not None:
            return self.attn(x) + out
        return out


class BlockV2(nn.Module):
    """EfficientFormerV2 block: optional Attention4D mixer, then the FFN; each residual branch
    with layer scale (channel dim 1) and drop path."""

    def __init__(self, dim: int, mlp_ratio: float = 4., use_attn: bool = False,
                 resolution=7, stride: Optional[int] = None,
                 norm_cfg: dict = dict(type='BN'), act_cfg: dict = dict(type='GELU'),
                 drop: float = 0., drop_path: float = 0., layer_scale_init_value: float = 1e-5,
                 bias_interpolation: str = 'bicubic'):
        super().__init__()
        if use_attn:
            self.token_mixer = Attention4D(dim, resolution=resolution, stride=stride,
                                           norm_cfg=norm_cfg, act_cfg=act_cfg,
                                           bias_interpolation=bias_interpolation)
            self.ls1 = LayerScale(dim, layer_scale_init_value, channel_dim=1)
        else:
            self.token_mixer = None
            self.ls1 = None
        self.mlp = FFN(dim, int(dim * mlp_ratio), norm_cfg, act_cfg, drop)
        self.ls2 = LayerScale(dim, layer_scale_init_value, channel_dim=1)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.token_mixer is not None:
            x = x + self.drop_path(self.ls1(self.token_mixer(x)))
        return x + self.drop_path(self.ls2(self.mlp(x)))
