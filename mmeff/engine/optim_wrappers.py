"""Optimiser wrappers with adaptive gradient clipping (AGC), the authors' ImageNet clipping.

The authors' ``main.py`` (V1 and V2) clips with timm's AGC (``--clip-mode agc --clip-grad
0.01``; Brock et al. 2021): the gradient of every output unit of a weight is scaled down so
that its norm is at most ``clip_factor`` times that unit's weight norm (at least ``eps``).
mmengine's ``OptimWrapper`` clips by global norm or by value only, and a global-norm cap of
0.01 is a different method, so these wrappers add ``clip_grad=dict(type='agc', ...)`` and call
timm's own :func:`timm.utils.adaptive_clip_grad` (after unscaling, under AMP).

Config::

    optim_wrapper = dict(type='mmeff.AGCOptimWrapper', optimizer=dict(type='AdamW', ...),
                         clip_grad=dict(type='agc', clip_factor=0.01))

``tools/train.py --amp`` switches it to ``mmeff.AmpAGCOptimWrapper``. As in the authors'
training, every parameter of the model is clipped (heads included).
"""
from contextlib import contextmanager
from typing import Optional

import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper

from mmeff.registry import OPTIM_WRAPPERS

_AGC_KEYS = ('clip_factor', 'eps', 'norm_type')


def parse_agc(clip_grad: Optional[dict]) -> dict:
    """Checked keyword arguments of ``adaptive_clip_grad`` from ``clip_grad``.

    Raises:
        ValueError: ``clip_grad`` is not ``dict(type='agc', clip_factor=..., [eps], [norm_type])``.
    """
    if not isinstance(clip_grad, dict) or clip_grad.get('type') != 'agc':
        raise ValueError("AGC optimiser wrappers need clip_grad=dict(type='agc', "
                         f'clip_factor=0.01[, eps=1e-3]), got clip_grad={clip_grad!r}; for '
                         "norm or value clipping use type='OptimWrapper'")
    kwargs = {k: v for k, v in clip_grad.items() if k != 'type'}
    unknown = sorted(set(kwargs) - set(_AGC_KEYS))
    if unknown:
        raise ValueError(f'clip_grad of type agc takes {list(_AGC_KEYS)}, got unknown '
                         f'{unknown}')
    factor = kwargs.get('clip_factor')
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
        raise ValueError(f'clip_grad.clip_factor must be a positive number (the authors: 0.01), '
                         f'got {factor!r}')
    eps = kwargs.setdefault('eps', 1e-3)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        raise ValueError(f'clip_grad.eps must be a positive number (timm: 1e-3), got {eps!r}')
    return kwargs


class _AGCMixin:
    """Replaces mmengine's clip function by timm's AGC; everything else is mmengine's."""

    def _setup_agc(self, clip_grad: Optional[dict]) -> None:
        from timm.utils import adaptive_clip_grad
        self.clip_grad_kwargs = parse_agc(clip_grad)
        # ``OptimWrapper._clip_grad`` calls ``clip_func(params, **clip_grad_kwargs)`` on every
        # parameter with a gradient (AmpOptimWrapper unscales first); AGC returns no norm.
        self.clip_func = adaptive_clip_grad


@OPTIM_WRAPPERS.register_module()
class AGCOptimWrapper(_AGCMixin, OptimWrapper):
    """:class:`mmengine.optim.OptimWrapper` clipping gradients with AGC (see module doc)."""

    def __init__(self, optimizer, accumulative_counts: int = 1,
                 clip_grad: Optional[dict] = None):
        super().__init__(optimizer, accumulative_counts=accumulative_counts, clip_grad=None)
        self._setup_agc(clip_grad)


@OPTIM_WRAPPERS.register_module()
class AmpAGCOptimWrapper(_AGCMixin, AmpOptimWrapper):
    """:class:`mmengine.optim.AmpOptimWrapper` clipping unscaled gradients with AGC."""

    def __init__(self, optimizer, accumulative_counts: int = 1,
                 clip_grad: Optional[dict] = None, **kwargs):
        super().__init__(optimizer=optimizer, accumulative_counts=accumulative_counts,
                         clip_grad=None, **kwargs)
        self._setup_agc(clip_grad)


def cpu_bf16_supported() -> bool:
    """Whether this CPU computes bf16 natively enough for autocast to pay (oneDNN's own test:
    AVX512 BW/VL/DQ or newer); without it every bf16 op is emulated and slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


@OPTIM_WRAPPERS.register_module()
class BF16AutocastOptimWrapper(OptimWrapper):
    """:class:`mmengine.optim.OptimWrapper` whose ``optim_context`` runs the forward under CPU
    bf16 autocast. mmengine's ``AmpOptimWrapper`` runs on GPU-like devices only (it asserts
    one); bf16 has fp32's exponent range, so no loss scaling is needed and the step is the
    plain one. ``tools/train.py --amp`` selects it for the supernet on a CPU with bf16
    (:func:`cpu_bf16_supported`)."""

    cast_dtype = torch.bfloat16

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast('cpu', dtype=torch.bfloat16):
            yield
