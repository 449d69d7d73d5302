"""Inference-time reparameterisation of EfficientFormer: fold BN and layer scales, cache biases.

What :func:`fuse_model` does to every EfficientFormer inside a model (backbone, classifier,
detector...), all exact in real arithmetic (folding runs in float64, so fp32 outputs match the
unfused model to ~1e-7 relative error):

* **BatchNorm folding** (the paper's finding 3: CONV-BN is free at inference): the stem's
  ``conv1/norm1`` and ``conv2/norm2``, every downsample's ``conv/norm`` and every MB4D MLP's
  ``fc1/norm1`` and ``fc2/norm2``. The norm becomes ``nn.Identity``. Norms that are not
  BatchNorm (e.g. ``norm_cfg=dict(type='GN')``) cannot be folded and are left in place.
* **Layer-scale folding** into the layer that produces the scaled branch (a per-output-channel
  scale of a conv/linear is a scale of its weight rows and bias): MB4D ``ls2`` into
  ``mlp.fc2`` (after its BN is folded), MB3D ``ls1`` into ``token_mixer.proj`` and ``ls2`` into
  ``mlp.fc2``.
* **MB4D ``ls1`` is kept** as a per-channel multiply: its branch is ``AvgPool(x) - x``, which
  has no weights to fold into, and the residual stream ``x`` it scales is also the identity
  path, so the scale cannot move to an earlier layer either. Rewriting the pool as a
  depthwise conv is not exact (``count_include_pad=False`` divides border pixels by 4 or 6,
  not 9). The multiply costs one elementwise op per MB4D block (Core ML and ONNX Runtime fuse it
  with the adjacent sub/add; the channels-last eager path computes the mixer, the scale and
  the residual as one ``torch.lerp``, see below).
* **Attention bias caching**: with ``input_size`` given, every MHSA precomputes its bias for the
  token grid of that input in its stage (stride 32 in the last stage, stride 16 for the MB3D
  blocks some slimmed archs have in stage 3; ``Attention.fix_bias``), so the traced/exported
  graph has no ``gather`` and no interpolation. The fused model still runs at other sizes
  (the bias is then computed on the fly, as in the unfused model), but an export is specific
  to one size.
* Dropout and DropPath (identities at inference) are replaced by ``nn.Identity`` so that they
  leave no node in exported graphs.

LayerNorm (MB3D blocks, head) is not folded: the normalisation is input-dependent, which is
exactly why the paper keeps it out of the 4D part.

EfficientFormerV2 (:class:`~mmeff.models.EfficientFormerV2`), all exact in real arithmetic too:

* **BatchNorm folding** of every conv unit (``ConvNorm``: ``conv`` + ``bn``): the stem, the
  downsamples, every FFN's ``fc1``/``mid``/``fc2``, every attention's ``q``/``k``/``v``/
  ``v_local``/``proj`` and stage 3's ``stride_conv``. The activations after them stay.
* **The attention downsample's query pool** (``AvgPool2d(1, 2)``, i.e. the pixel at the centre
  tap of the depthwise 3x3 stride-2 ``local`` conv) is folded into ``local`` (centre weight
  + 1): one conv instead of conv + pool + add.
* **Layer scales** ``ls1`` into ``token_mixer.proj`` and ``ls2`` into ``mlp.fc2`` (every V2
  branch ends in a conv, so none is kept).
* **The classifier head's BatchNorm** (``EfficientFormerV2ClsHead``: BN -> average pool ->
  linear) into ``head`` and ``dist_head`` (a per-channel affine map commutes with the mean).
* **Bias caching** for every attention kind (stage 3's strided Attention4D, the attention
  downsample, stage 4's Attention4D; ``fix_bias`` with the size of the map each receives,
  :meth:`~mmeff.models.EfficientFormerV2.attention_input_sizes`): no gather and no bicubic
  resize left in a graph traced at that size.

Both families, **channels-last layout** (``channels_last=True``, for eager inference; what
:func:`mmeff.deploy.fastest.fastest` runs): every 4D weight of each EfficientFormer backbone
is stored channels-last, and the backbone converts its input to that layout (a forward
pre-hook) and its outputs back to contiguous NCHW (a forward hook). On CPU this is what makes
the fused model fast: PyTorch's ``avg_pool2d`` is vectorised over channels only for
channels-last maps (the NCHW kernel took about a fifth of L1's time), oneDNN convolutions skip
their NCHW <-> blocked reorders, and V1's 4D -> 3D flatten before the MB3D blocks becomes a
view. Two eager-only rewrites go with the layout (:func:`to_channels_last_`): 1x1 convs as
GEMMs over the NHWC view (:class:`PointwiseLinear`) and each MB4D mixer with its residual as
one ``torch.lerp``. The values are the same (to ~1e-7). Outputs are NCHW-contiguous because
some consumers read raw memory as NCHW (mmcv's CPU ``RoIAlign``). It is off by default because
exporters gain nothing from it (ONNX and Core ML graphs have no layout) and ``torch.export``
with a dynamic batch fails on it (the strides of a channels-last map depend on whether the
batch is 1, so the export specialises the batch it was asked to keep dynamic).

For **ONNX export** (:func:`onnx_mixers`, which :func:`mmeff.runtime.write_onnx` applies to
every module it writes), each fused MB4D mixer with its residual and kept ``ls1`` scale is
written as two depthwise 1x1 convs, ``(1 - s) * x + s * pool(x)``: ONNX Runtime runs convs,
pooling and a sum of two same-shaped maps in its blocked NCHWc layout, but not the ``Sub`` and
the broadcast ``Mul`` of ``x + s * (pool(x) - x)``, so every MB4D block used to leave and
re-enter that layout twice (L3 classifier: 43 ``ReorderInput`` and 48 ``ReorderOutput`` nodes;
0 and 1 with the convs, the flatten into the MB3D blocks). Same values to ~1e-7.

Backbones are found through the family registry (:mod:`mmeff.models.families`); the rules
above are keyed by the layers the families are built of, and a family registered with its own
``fuse`` rule gets it called on each of its backbones as well.
"""
import contextlib
import copy
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from mmeff.models.backbones.efficientformer import Downsample, Stem
from mmeff.models.classifiers.efficientformer_classifier import EfficientFormerV2ClsHead
from mmeff.models.layers import Attention, LayerScale, Meta3D, Meta4D
from mmeff.models.layers.blocks import ConvMlp, Pooling
from mmeff.models.families import FAMILIES, family_of
from mmeff.models.layers.v2 import BlockV2, ConvNorm, LocalGlobalQuery, ResizableBiasAttention

# Modules with a resizable, cacheable bias (``fix_bias``/``cached_bias``): V1's MHSA, V2's
# Attention4D (strided or not) and attention downsample.
_BIAS_ATTENTIONS = (Attention, ResizableBiasAttention)

SizeLike = Union[int, Sequence[int]]


def parse_input_size(size: SizeLike) -> Tuple[int, int]:
    """``224`` / ``(224,)`` / ``(800, 1333)`` / ``'800x1333'`` -> ``(H, W)``."""
    if isinstance(size, str):
        parts = size.lower().replace('*', 'x').split('x')
        try:
            size = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"input size {size!r} is not 'N' or 'HxW' (e.g. 224, 800x1333)")
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    size = tuple(size)
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        raise ValueError(f'input size must be an int or (height, width) ints, got {size!r}')
    if min(size) < 1:
        raise ValueError(f'input size must be positive, got {size!r}')
    return size


def token_grid(height: int, width: int, num_halvings: int = 5) -> Tuple[int, int]:
    """Spatial size after ``num_halvings`` 3x3 stride-2 pad-1 convs (ceil division each time):
    the MHSA token grid of an EfficientFormer's last stage is ``token_grid(H, W)`` (stride 32),
    that of stage 3 ``token_grid(H, W, 4)`` (stride 16)."""
    for _ in range(num_halvings):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


def attention_grids(model: nn.Module, input_size: SizeLike) -> Dict[int, Tuple[int, int]]:
    """``id(attention) -> (h, w)``: what every attention's ``fix_bias`` takes for an input of
    ``input_size``. V1: the token grid every MHSA sees, from the stride of the EfficientFormer
    stage holding it (an MHSA outside any EfficientFormer stage gets the stride-32 grid). V2:
    the size of the map each attention receives
    (:meth:`~mmeff.models.EfficientFormerV2.attention_input_sizes`); a V2 attention outside an
    EfficientFormerV2 gets no entry."""
    height, width = parse_input_size(input_size)
    grids = {id(m): token_grid(height, width) for m in model.modules()
             if isinstance(m, Attention)}
    for backbone in _efficientformers(model):
        if hasattr(backbone, 'attention_input_sizes'):  # V2: each attention's input size
            grids.update({id(m): size
                          for m, size in backbone.attention_input_sizes(height, width)})
            continue
        for stride, stage in zip(backbone.strides, backbone.stages):
            grid = token_grid(height, width, stride.bit_length() - 1)  # log2(stride) halvings
            grids.update({id(m): grid for m in stage.modules() if isinstance(m, Attention)})
    return grids


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: _BatchNorm) -> nn.Conv2d:
    """A new conv equal to ``bn(conv(x))`` with ``bn`` in eval mode (running statistics)."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f'expected nn.Conv2d, got {type(conv).__name__}')
    if not isinstance(bn, _BatchNorm):
        raise TypeError(f'expected a BatchNorm layer, got {type(bn).__name__}')
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError('cannot fold a BatchNorm without running statistics '
                         '(track_running_stats=False): its output depends on the batch')
    dtype = conv.weight.dtype
    w = conv.weight.double()
    b = conv.bias.double() if conv.bias is not None else torch.zeros_like(bn.running_mean,
                                                                           dtype=torch.float64)
    inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(inv_std)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv_std)
    scale = gamma * inv_std
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True,
                      padding_mode=conv.padding_mode, device=conv.weight.device, dtype=dtype)
    fused.weight.copy_((w * scale.view(-1, 1, 1, 1)).to(dtype))
    fused.bias.copy_(((b - bn.running_mean.double()) * scale + beta).to(dtype))
    return fused


@torch.no_grad()
def fold_output_scale_(layer: nn.Module, gamma: torch.Tensor) -> None:
    """In place: make ``layer(x) * gamma`` (per output channel) the output of ``layer``."""
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        raise TypeError(f'can fold a per-channel scale into Conv2d/Linear, '
                        f'got {type(layer).__name__}')
    g = gamma.detach().double()
    if g.numel() != layer.weight.shape[0]:
        raise ValueError(f'scale has {g.numel()} channels, the layer has '
                         f'{layer.weight.shape[0]} outputs')
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.copy_((layer.weight.double() * g.view(shape)).to(layer.weight.dtype))
    if layer.bias is not None:
        layer.bias.copy_((layer.bias.double() * g).to(layer.bias.dtype))


def _maybe_fuse(parent: nn.Module, conv_name: str, norm_name: str) -> int:
    conv, norm = getattr(parent, conv_name), getattr(parent, norm_name)
    if isinstance(norm, _BatchNorm) and isinstance(conv, nn.Conv2d):
        setattr(parent, conv_name, fuse_conv_bn(conv, norm))
        setattr(parent, norm_name, nn.Identity())
        return 1
    return 0


def _fold_layer_scale(block: nn.Module, ls_name: str, layer: nn.Module) -> int:
    ls = getattr(block, ls_name)
    if not isinstance(ls, LayerScale):
        return 0
    fold_output_scale_(layer, ls.gamma)
    setattr(block, ls_name, nn.Identity())
    return 1


@torch.no_grad()
def fold_pool_into_local_(query: LocalGlobalQuery) -> bool:
    """In place: ``local(x) + AvgPool2d(1, 2)(x)`` as one conv (centre tap + 1). The pool takes
    pixel ``(2i, 2j)``, the centre tap of the depthwise 3x3 stride-2 pad-1 ``local`` conv at
    output ``(i, j)``, so this is exact. Returns whether it folded."""
    conv, pool = query.local, query.pool
    if not (isinstance(pool, nn.AvgPool2d) and isinstance(conv, nn.Conv2d)
            and conv.groups == conv.in_channels == conv.out_channels
            and conv.kernel_size == (3, 3) and conv.stride == (2, 2) and conv.padding == (1, 1)
            and pool.kernel_size in (1, (1, 1)) and pool.stride in (2, (2, 2))
            and pool.padding in (0, (0, 0))):
        return False
    conv.weight[:, 0, 1, 1] += 1
    query.pool = None
    return True


@torch.no_grad()
def fold_bn_into_linear_heads_(head: EfficientFormerV2ClsHead) -> bool:
    """In place: V2's ``BN -> mean -> linear`` as ``mean -> linear`` (BN in eval is a per-channel
    affine map, which commutes with the spatial mean). Returns whether it folded."""
    bn = head.norm
    if not isinstance(bn, _BatchNorm) or bn.running_mean is None:
        return False
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    for linear in (head.head, head.dist_head):
        w = linear.weight.double()
        linear.bias.copy_((linear.bias.double() + w @ shift).to(linear.bias.dtype))
        linear.weight.copy_((w * scale).to(linear.weight.dtype))
    head.norm = nn.Identity()
    return True


def _fuse_block_v2(block: BlockV2) -> None:
    if block.token_mixer is not None and isinstance(block.token_mixer.proj.bn, nn.Identity):
        _fold_layer_scale(block, 'ls1', block.token_mixer.proj.conv)
    if isinstance(block.mlp.fc2.bn, nn.Identity):  # an unfoldable norm keeps the scale after it
        _fold_layer_scale(block, 'ls2', block.mlp.fc2.conv)
    block.mlp.drop = nn.Identity()
    block.drop_path = nn.Identity()


def _efficientformers(model: nn.Module):
    """Every backbone of a registered family in ``model`` (outermost first)."""
    classes = tuple(family.cls for family in FAMILIES.values())
    return [m for m in model.modules() if isinstance(m, classes)]


def _channels_last_input(backbone: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of a fused backbone: its image in channels-last layout."""
    x, *rest = args
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x, *rest)


def _contiguous_outputs(backbone: nn.Module, args: tuple, outputs):
    """Forward hook of a fused backbone: its maps back in contiguous NCHW layout."""
    if isinstance(outputs, torch.Tensor):
        return outputs.contiguous()
    return type(outputs)(o.contiguous() if isinstance(o, torch.Tensor) else o for o in outputs)


class PointwiseLinear(nn.Module):
    """A 1x1, stride-1, ungrouped conv as one GEMM over the NHWC view of a channels-last map
    (``F.linear`` on ``x.permute(0, 2, 3, 1)``, a view for such a map; the result permuted
    back is channels-last again). Same values as the conv; on CPU it skips oneDNN's per-call
    weight reorder (with the MB4D lerp: fused eager L3 1.24-1.27x -> 1.35-1.36x timm, 2 threads;
    README's latency section)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.weight = nn.Parameter(conv.weight.detach().flatten(1).clone(),
                                   requires_grad=conv.weight.requires_grad)
        self.bias = None if conv.bias is None else nn.Parameter(
            conv.bias.detach().clone(), requires_grad=conv.bias.requires_grad)

    @staticmethod
    def applies_to(conv: nn.Module) -> bool:
        return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
                and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f'{self.in_channels}, {self.out_channels}, bias={self.bias is not None}'


def _fused_mixer(module: nn.Module) -> bool:
    """An MB4D block whose pooling mixer, residual and kept ``ls1`` scale can be computed in
    one rewritten form (the eager lerp, :func:`onnx_mixers`' convs): ``ls1`` still a
    :class:`LayerScale`, a :class:`Pooling` mixer, no drop path."""
    return (isinstance(module, Meta4D) and isinstance(module.ls1, LayerScale)
            and isinstance(module.token_mixer, Pooling)
            and isinstance(module.drop_path, nn.Identity))


def _eager_rewrites_(backbone: nn.Module) -> None:
    """The eager-only rewrites of :func:`to_channels_last_` (values unchanged to ~1e-7)."""
    for module in backbone.modules():
        if isinstance(module, ConvMlp):
            names = ('fc1', 'fc2')
        elif isinstance(module, ConvNorm):
            names = ('conv',)
        else:
            names = ()
        for name in names:
            if PointwiseLinear.applies_to(getattr(module, name)):
                setattr(module, name, PointwiseLinear(getattr(module, name)))
        if _fused_mixer(module):
            module.mixer_scale = module.ls1.gamma.detach().view(1, -1, 1, 1).clone()
            module.ls1 = nn.Identity()


@contextlib.contextmanager
def onnx_mixers(model: nn.Module):
    """Within the block, every fused MB4D block of ``model`` computes its pooling mixer with its
    residual and kept ``ls1`` scale ``s`` as two depthwise 1x1 convs, ``(1 - s) * x + s *
    pool(x)`` (``x + s * (pool(x) - x)`` as ONNX Runtime can keep in its blocked layout; see
    the module doc). The same values to ~1e-7; ``model`` is as before afterwards. Yields the
    number of blocks rewritten (0 for a model without MB4D blocks, e.g. V2)."""
    # In eval mode and not rewritten already (an enclosing onnx_mixers; the eager lerp has
    # replaced ls1, which _fused_mixer sees).
    modules = model.modules() if isinstance(model, nn.Module) else ()
    blocks = [m for m in modules
              if _fused_mixer(m) and not m.training and m.mixer_weight is None]
    try:
        for block in blocks:
            scale = block.ls1.gamma.detach().reshape(-1, 1, 1, 1)
            block.mixer_keep = 1 - scale
            block.mixer_weight = scale.clone()
        yield len(blocks)
    finally:
        for block in blocks:
            block.mixer_keep = None
            block.mixer_weight = None


def to_channels_last_(backbone: nn.Module) -> nn.Module:
    """In place: run ``backbone`` channels-last inside (4D weights in that layout, its input
    converted by a forward pre-hook) while it takes and returns NCHW tensors as before (a
    forward hook makes its outputs contiguous). For eager inference of a fused backbone, two
    rewrites go with the layout: the 1x1 convs of V1's MB4D MLPs and of V2's conv units become
    :class:`PointwiseLinear` GEMMs, and each fused MB4D block computes its pooling mixer with
    its residual and kept ``ls1`` scale as one ``torch.lerp`` (``x + s * (pool(x) - x)``).
    Same values (to ~1e-7 relative); calling it twice changes nothing. Returns ``backbone``."""
    _eager_rewrites_(backbone)
    backbone.to(memory_format=torch.channels_last)
    hooks = list(backbone._forward_pre_hooks.values()) + list(backbone._forward_hooks.values())
    if _channels_last_input not in hooks:
        backbone.register_forward_pre_hook(_channels_last_input)
        backbone.register_forward_hook(_contiguous_outputs)
    return backbone


@torch.no_grad()
def fuse_model(model: nn.Module,
               input_size: Optional[SizeLike] = None,
               inplace: bool = False,
               channels_last: bool = False) -> nn.Module:
    """Fold BN and layer scales, and cache attention biases, for inference (see module doc).

    Args:
        model (nn.Module): An :class:`EfficientFormer` / :class:`EfficientFormerV2` or any
            module containing one or more (classifier, detector, ``as_inference_module()``
            wrapper).
        input_size (int | tuple[int, int] | str | None): Image size the model will run at;
            caches every attention bias for its token grid (needed for a gather-free export).
            ``None`` leaves the biases dynamic. Defaults to None.
        inplace (bool): Modify ``model`` itself instead of a deep copy. Defaults to False.
        channels_last (bool): Run every backbone channels-last inside (:func:`to_channels_last_`;
            inputs and outputs stay NCHW): faster eager inference, not for export (see the
            module doc). Defaults to False.

    Returns:
        nn.Module: The fused model, in eval mode. Fusion uses BN running statistics, so it is
        for inference: training it again would train a different parameterisation.

    Example:
        >>> import torch
        >>> from mmeff.models import EfficientFormer
        >>> from mmeff.deploy import fuse_model
        >>> model = EfficientFormer('l1').eval()
        >>> fused = fuse_model(model, input_size=(512, 512))
        >>> x = torch.rand(1, 3, 512, 512)
        >>> all(torch.allclose(a, b, atol=1e-5) for a, b in zip(fused(x), model(x)))
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'fuse_model expects an nn.Module, got {type(model).__name__}')
    backbones = _efficientformers(model)
    if not backbones:
        raise ValueError(f'{type(model).__name__} contains no mmeff EfficientFormer backbone '
                         f'(registered families: {", ".join(FAMILIES)}); fuse_model only knows '
                         f'how to reparameterise those')
    if not inplace:
        model = copy.deepcopy(model)
    grids = attention_grids(model, input_size) if input_size is not None else {}
    model.eval()
    for module in list(model.modules()):
        if isinstance(module, Stem):
            _maybe_fuse(module, 'conv1', 'norm1')
            _maybe_fuse(module, 'conv2', 'norm2')
        elif isinstance(module, Downsample):
            _maybe_fuse(module, 'conv', 'norm')
        elif isinstance(module, Meta4D):
            mlp = module.mlp
            _maybe_fuse(mlp, 'fc1', 'norm1')
            fc2_is_last = _maybe_fuse(mlp, 'fc2', 'norm2') or isinstance(mlp.norm2, nn.Identity)
            if fc2_is_last:  # with an unfoldable norm2 the scale must stay after it
                _fold_layer_scale(module, 'ls2', mlp.fc2)
            mlp.drop = nn.Identity()
            module.drop_path = nn.Identity()
        elif isinstance(module, Meta3D):
            _fold_layer_scale(module, 'ls1', module.token_mixer.proj)
            _fold_layer_scale(module, 'ls2', module.mlp.fc2)
            module.mlp.drop = nn.Identity()
            module.drop_path = nn.Identity()
        elif isinstance(module, _BIAS_ATTENTIONS) and id(module) in grids:
            module.fix_bias(*grids[id(module)])
    # V2: conv units first (children before the blocks that fold into them), then the rest.
    for module in list(model.modules()):
        if isinstance(module, ConvNorm):
            _maybe_fuse(module, 'conv', 'bn')
        elif isinstance(module, LocalGlobalQuery):
            fold_pool_into_local_(module)
        elif isinstance(module, EfficientFormerV2ClsHead):
            fold_bn_into_linear_heads_(module)
            module.drop = nn.Identity()
    for module in list(model.modules()):
        if isinstance(module, BlockV2):
            _fuse_block_v2(module)
    for backbone in _efficientformers(model):
        rule = family_of(backbone).fuse_rule()
        if rule is not None:  # a family with blocks of its own
            rule(backbone, grids)
        if channels_last:
            to_channels_last_(backbone)
    return model


@torch.no_grad()
def cache_attention_bias(model: nn.Module, input_size: SizeLike,
                         inplace: bool = False) -> nn.Module:
    """Only precompute every MHSA bias for ``input_size`` (no folding), e.g. to export the
    unfused model without ``gather``. Returns the (copied unless ``inplace``) model in eval mode.
    """
    if not inplace:
        model = copy.deepcopy(model)
    grids = attention_grids(model, input_size)
    for module in model.modules():
        if isinstance(module, _BIAS_ATTENTIONS) and id(module) in grids:
            module.fix_bias(*grids[id(module)])
    return model.eval()


def fusion_report(model: nn.Module) -> Dict[str, object]:
    """What is left to fold in ``model`` (a fused V1 model has no BN and only MB4D ``ls1``, a
    fused V2 model neither BN nor layer scale).

    Returns a dict with ``batchnorms`` (count), ``layer_scales`` (count of LayerScale modules),
    ``mb4d_ls1`` (how many of those are the kept MB4D ``ls1``), ``attention`` (count of
    attentions with a bias table: V1 MHSA, V2 Attention4D and attention downsample) and
    ``cached_bias_grids`` (sorted list of the (h, w) sizes attention biases are cached for: V1
    token grids, V2 input sizes of the attentions).
    """
    bns = sum(isinstance(m, _BatchNorm) for m in model.modules())
    lss = sum(isinstance(m, LayerScale) for m in model.modules())
    kept = sum(isinstance(m, Meta4D) and (isinstance(m.ls1, LayerScale)
                                          or m.mixer_scale is not None)  # the lerp's scale
               for m in model.modules())
    attns = [m for m in model.modules() if isinstance(m, _BIAS_ATTENTIONS)]
    grids = sorted({m._cached_grid for m in attns if m.cached_bias is not None})
    return dict(batchnorms=bns, layer_scales=lss, mb4d_ls1=kept, attention=len(attns),
                cached_bias_grids=grids)


__all__ = ['fuse_model', 'cache_attention_bias', 'fuse_conv_bn', 'fold_output_scale_',
           'fold_pool_into_local_', 'fold_bn_into_linear_heads_', 'fusion_report',
           'parse_input_size', 'token_grid', 'attention_grids', 'to_channels_last_',
           'PointwiseLinear', 'onnx_mixers']
