"""Multi-head self-attention with a LeViT-style relative-position bias that works at any grid.

The authors (and timm, mmpretrain) learn one bias per head and per *absolute* 2D offset
``(|dy|, |dx|)`` on the 7x7 token grid of a 224x224 input: a table of shape ``(heads, 7*7)``
indexed by ``|dy| * 7 + |dx|``. At any other grid those implementations either crash (timm at
512x512) or, in the authors' dense code, throw the trained table away.

Resizing policy (``bias_interpolation``): the table is viewed as an image ``(heads, 7, 7)``
over offsets and resized to ``(H, W)`` with ``F.interpolate(mode, align_corners=True)``, so
that offset 0 and the largest offset map onto each other exactly (the convention of Swin and
the authors' bicubic resizing, but starting from the *pretrained* table). At the native grid no
interpolation happens: the trained table is gathered exactly as trained. Interpolation runs in
float32 and the result is cast to the activations' dtype (safe under fp16/bf16 autocast).
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

_BIAS_MODES = ('bicubic', 'bilinear')


def check_bias_interpolation(mode: str) -> str:
    """``mode`` if it is a valid ``bias_interpolation``, else a ValueError naming the choices."""
    if mode not in _BIAS_MODES:
        raise ValueError(f'bias_interpolation must be one of {_BIAS_MODES}, got {mode!r}')
    return mode


def resize_bias_table(table: torch.Tensor, src_grid: Tuple[int, int], dst_grid: Tuple[int, int],
                      mode: str = 'bicubic') -> torch.Tensor:
    """Resize a bias table ``(heads, src_h*src_w)`` over offsets to ``(heads, dst_h*dst_w)``.

    The table is viewed as an image ``(heads, src_h, src_w)`` over offsets ``(|dy|, |dx|)`` and
    resized with ``F.interpolate(mode, align_corners=True)`` (offset 0 and the largest offset map
    onto each other exactly). At ``src_grid == dst_grid`` the table itself is returned. Runs in
    float32 and casts back to the table's dtype (safe under fp16/bf16 autocast). Shared by V1's
    :class:`Attention` and every V2 attention (``mmeff.models.layers.v2``).
    """
    src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
    if src_grid == dst_grid:
        return table
    heads = table.shape[0]
    image = table.float().reshape(1, heads, *src_grid)
    image = F.interpolate(image, size=dst_grid, mode=mode, align_corners=True)
    return image.reshape(heads, dst_grid[0] * dst_grid[1]).to(table.dtype)


def relative_offset_index(height: int, width: int, device=None) -> torch.Tensor:
    """Index ``|dy| * width + |dx|`` for every pair of tokens of a ``height x width`` grid."""
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    pos = torch.stack(torch.meshgrid(ys, xs, indexing='ij')).flatten(1)  # (2, N)
    rel = (pos[:, :, None] - pos[:, None, :]).abs()
    return rel[0] * width + rel[1]


class Attention(nn.Module):
    """MHSA of EfficientFormer's MB3D block (fused qkv, 8 heads, key_dim 32, attn_ratio 4).

    Args:
        dim (int): Token channels.
        key_dim (int): Channels of q and k per head. Defaults to 32.
        num_heads (int): Number of heads. Defaults to 8.
        attn_ratio (float): Channels of v per head divided by ``key_dim``. Defaults to 4.
        resolution (int | tuple): Token grid the bias table is learned on. Defaults to 7.
        bias_interpolation (str): ``'bicubic'`` or ``'bilinear'``, how the table is resized
            to other grids (see the module docstring). Defaults to ``'bicubic'``.
    """

    def __init__(self,
                 dim: int,
                 key_dim: int = 32,
                 num_heads: int = 8,
                 attn_ratio: float = 4,
                 resolution=7,
                 bias_interpolation: str = 'bicubic'):
        super().__init__()
        check_bias_interpolation(bias_interpolation)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.scale = key_dim**-0.5
        self.val_dim = int(attn_ratio * key_dim)
        self.val_attn_dim = self.val_dim * num_heads
        self.bias_interpolation = bias_interpolation
        self.resolution: Tuple[int, int] = (resolution, resolution) if isinstance(
            resolution, int) else tuple(resolution)

        self.qkv = nn.Linear(dim, key_dim * num_heads * 2 + self.val_attn_dim)
        self.proj = nn.Linear(self.val_attn_dim, dim)
        self.attention_biases = nn.Parameter(
            torch.zeros(num_heads, self.resolution[0] * self.resolution[1]))
        # Native-grid index: a non-persistent buffer so that it follows .to(device) and is not
        # part of checkpoints (it is a pure function of the resolution).
        self.register_buffer(
            'attention_bias_idxs', relative_offset_index(*self.resolution), persistent=False)
        # Set by ``fix_bias(grid)`` for deployment: the bias precomputed for one grid. A
        # buffer (not a plain attribute) so that it follows .to(device)/.half().
        self.register_buffer('cached_bias', None, persistent=False)
        self._cached_grid: Optional[Tuple[int, int]] = None

    def train(self, mode: bool = True):
        if mode:
            self.drop_cached_bias()  # a training step changes the table
        return super().train(mode)

    def table_for_grid(self, height: int, width: int) -> torch.Tensor:
        """Bias table ``(heads, height*width)`` over offsets for a ``height x width`` grid."""
        return resize_bias_table(self.attention_biases, self.resolution, (height, width),
                                 self.bias_interpolation)

    def get_bias(self, height: int, width: int) -> torch.Tensor:
        """Attention bias ``(heads, N, N)`` for a ``height x width`` token grid."""
        if self.cached_bias is not None and self._cached_grid == (height, width):
            return self.cached_bias
        if (height, width) == self.resolution:
            idx = self.attention_bias_idxs
        else:
            idx = relative_offset_index(height, width, self.attention_biases.device)
        return self.table_for_grid(height, width)[:, idx]

    @torch.no_grad()
    def fix_bias(self, height: int, width: int) -> None:
        """Precompute the bias for one grid (deployment: no gather op in the exported graph)."""
        self._cached_grid = (height, width)
        self.cached_bias = self.get_bias(height, width).detach().clone()

    def drop_cached_bias(self) -> None:
        self.cached_bias = None
        self._cached_grid = None

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn + self.get_bias(*hw_shape).to(attn.dtype)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.val_attn_dim)
        return self.proj(x)
