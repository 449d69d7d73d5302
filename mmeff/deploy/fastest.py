"""One call to the fastest way PyTorch runs an EfficientFormer here: :func:`fastest`.

Candidates, for the device asked for:

* ``fused``: :func:`~mmeff.deploy.fuse.fuse_model` (BN and layer scales folded, attention
  biases cached for the input size, backbones channels-last inside: ``channels_last=True``),
  in eager mode. Always
  built; it is the fallback.
* ``compile``: ``torch.compile`` (inductor) of that fused model. Kept only if it compiles here
  (inductor needs a C++ compiler on CPU and Triton on CUDA) and its output matches the
  *unfused* model's within ``rtol`` on a random input of the requested shape.

On CUDA the unfused reference runs on the same device, and PyTorch runs convolutions in TF32
by default (``torch.backends.cudnn.allow_tf32``; matrix products too with
``torch.backends.cuda.matmul.allow_tf32``): 10-bit mantissas, so two correct models differ by
~1e-4 relative (H200, L1 at 224: fused 9.2e-5, compiled 1.5e-4 against eager,
``benchmarks/l1_l3_l7_224_cuda_h200.md``). The fusion, which is exact, is therefore checked
with TF32 off (within ``rtol``), and the compiled model, which runs as the user will run it,
within ``max(rtol, TF32_RTOL)`` while TF32 is on.

By default a ``compile`` that passes is chosen (inductor fuses the elementwise work the eager
model does op by op); with ``measure=N`` both are timed, ``N`` repetitions interleaved (the
project's discipline, :func:`mmeff.runtime.time_interleaved`), and the faster one is kept.
What was tried, what it gave and why one was chosen is in :attr:`Fastest.record`.

Example:
    >>> import torch
    >>> from mmeff.models import EfficientFormer
    >>> from mmeff.deploy.fastest import fastest
    >>> run = fastest(EfficientFormer('l1').eval(), 224)
    >>> outs = run(torch.rand(1, 3, 224, 224))
    >>> run.record['chosen'] in ('compile', 'fused')
    True
"""
import contextlib
import copy
import time
from typing import Callable, Union

import torch
import torch.nn as nn

from mmeff.runtime import rel_err, short_error

from .fuse import SizeLike, fuse_model, parse_input_size


# How far a correct model may differ from the unfused one on CUDA while TF32 is on (see above).
TF32_RTOL = 1e-3


def tf32_on(device: torch.device) -> bool:
    """Whether ``device`` runs convolutions or matrix products in TF32 now."""
    return device.type == 'cuda' and bool(torch.backends.cudnn.allow_tf32
                                          or torch.backends.cuda.matmul.allow_tf32)


@contextlib.contextmanager
def full_fp32(device: torch.device):
    """Within the block, CUDA convolutions and matrix products in full FP32 (TF32 off);
    the flags are restored afterwards. Nothing changes for another device."""
    if device.type != 'cuda':
        yield
        return
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def _check_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device; use 'cpu', 'cuda' or "
                         f"'cuda:N'") from None
    if dev.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no usable CUDA device "
                         f"(torch.cuda.is_available() is False); use device='cpu'")
    if dev.type not in ('cpu', 'cuda'):
        raise ValueError(f"device {device!r}: fastest() knows 'cpu' and 'cuda' devices")
    return dev


class Fastest:
    """The inference callable :func:`fastest` chose: ``outputs = fastest_model(images)``.

    Calls run without autograd; an input on another device is moved to :attr:`device`.

    Attributes:
        module (nn.Module): The fused eager model (also what ``compile`` compiled).
        device (torch.device): Where it runs.
        record (dict): ``chosen`` (``'compile'`` or ``'fused'``), ``reason``, ``device``,
            ``input_size``, ``batch_size``, ``threads``, ``torch`` (version), ``rtol``,
            ``compile_rtol`` (``rtol``, or :data:`TF32_RTOL` on CUDA with TF32 on) and
            ``candidates``: per candidate its ``status`` (``'ok'``, ``'error: ...'``,
            ``'mismatch: ...'`` or ``'not tried: ...'``), ``rel_err`` against the unfused
            model, ``setup_s`` and, with ``measure``, ``median_ms``.
    """

    def __init__(self, module: nn.Module, call: Callable, device: torch.device, record: dict):
        self.module = module
        self.device = device
        self.record = record
        self._call = call

    def __call__(self, x: torch.Tensor):
        if x.device != self.device:
            x = x.to(self.device)
        with torch.no_grad():  # as compiled: autograd on would recompile
            return self._call(x)

    def __repr__(self) -> str:
        r = self.record
        return (f"Fastest(chosen={r['chosen']!r}, device={r['device']!r}, "
                f"input_size={tuple(r['input_size'])}, reason={r['reason']!r})")


@torch.no_grad()
def fastest(model: nn.Module,
            input_size: SizeLike,
            device=None,
            *,
            batch_size: int = 1,
            compile: Union[bool, dict] = True,
            measure: int = 0,
            rtol: float = 1e-4,
            seed: int = 0) -> Fastest:
    """The fastest PyTorch inference callable for ``model`` at ``input_size`` on ``device``.

    Args:
        model (nn.Module): An EfficientFormer / EfficientFormerV2 or a module holding one
            (classifier inference module, detector...), as :func:`fuse_model` takes. Not
            modified.
        input_size (int | tuple[int, int] | str): Image size it will run at (biases are cached
            for it; ``compile`` is checked and specialised at it).
        device (str | torch.device | None): ``'cpu'``, ``'cuda'``, ``'cuda:N'``; None: the
            device of the model's parameters.
        batch_size (int): Batch of the parity check (and of the timing). Defaults to 1.
        compile (bool | dict): Try ``torch.compile``; a dict gives its keyword arguments
            (e.g. ``dict(mode='max-autotune')``). Defaults to True.
        measure (int): Timed repetitions per candidate (after 2 untimed ones) to choose the
            faster; 0 chooses ``compile`` whenever it passes. Defaults to 0.
        rtol (float): Largest relative error against the unfused model a candidate may have
            (on CUDA: the fused model's, in full FP32; the compiled model's while TF32 is on
            is ``max(rtol, TF32_RTOL)``). Defaults to 1e-4.
        seed (int): Seed of the random check input. Defaults to 0.

    Returns:
        Fastest: The callable, with :attr:`Fastest.record` saying what was chosen and why.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'fastest expects an nn.Module, got {type(model).__name__}')
    h, w = parse_input_size(input_size)
    for name, value, least in (('batch_size', batch_size, 1), ('measure', measure, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f'{name} must be an int >= {least}, got {value!r}')
    if not isinstance(rtol, (int, float)) or not rtol > 0:
        raise ValueError(f'rtol must be a positive number, got {rtol!r}')
    if not isinstance(compile, (bool, dict)):
        raise TypeError(f'compile must be True, False or a dict of torch.compile keyword '
                        f'arguments, got {compile!r}')
    params = list(model.parameters())
    model_device = params[0].device if params else torch.device('cpu')
    dev = _check_device(device if device is not None else model_device)

    x = torch.randn(batch_size, 3, h, w, generator=torch.Generator().manual_seed(seed)).to(dev)
    # The unfused reference on the device the candidates run on (a copy if the model is
    # elsewhere: it is not modified), as the user runs it and in full FP32.
    was_training = model.training
    reference = model if model_device == dev else copy.deepcopy(model).to(dev)
    reference.eval()
    tf32 = tf32_on(dev)  # read outside full_fp32, which turns it off
    try:
        expected = reference(x)
        with full_fp32(dev):
            exact = reference(x) if tf32 else expected
    finally:
        model.train(was_training)
        del reference
    compile_rtol = max(rtol, TF32_RTOL) if tf32 else rtol
    sync = torch.cuda.synchronize if dev.type == 'cuda' else None

    t0 = time.perf_counter()
    fused = fuse_model(model, (h, w), channels_last=True).to(dev)
    with full_fp32(dev):
        err = rel_err(fused(x), exact)
    candidates = dict(fused=dict(status='ok', rel_err=float(f'{err:.3g}'),
                                 setup_s=round(time.perf_counter() - t0, 2)))
    if err > rtol:  # fusion is exact: this is a bug, not a choice to make
        raise RuntimeError(f'the fused model differs from the unfused one by {err:.2e} '
                           f'(relative) at {h}x{w} on {dev}, more than rtol={rtol:g}'
                           + (' (both in full FP32, TF32 off)' if dev.type == 'cuda' else ''))
    calls = {'fused': fused}
    if compile is False:
        candidates['compile'] = dict(status='not tried: compile=False')
    else:
        t0 = time.perf_counter()
        try:
            compiled = torch.compile(fused, **(compile if isinstance(compile, dict) else {}))
            err = rel_err(compiled(x), expected)  # compiles now
        except Exception as exc:  # no compiler, an op inductor cannot lower...: fused it is
            candidates['compile'] = dict(status=f'error: {short_error(exc)}')
        else:
            row = dict(rel_err=float(f'{err:.3g}'), setup_s=round(time.perf_counter() - t0, 2))
            if err <= compile_rtol:
                row['status'] = 'ok'
                calls['compile'] = compiled
            else:
                row['status'] = f'mismatch: rel. err {err:.2e} > rtol {compile_rtol:g}'
            candidates['compile'] = row

    if measure and len(calls) > 1:
        from mmeff.runtime import time_interleaved
        times = time_interleaved({k: (lambda f=f: f(x)) for k, f in calls.items()},
                                 warmup=2, reps=measure, sync=sync)
        for name, t in times.items():
            candidates[name]['median_ms'] = round(float(torch.tensor(t).median()) * 1e3, 3)
        chosen = min(calls, key=lambda k: candidates[k]['median_ms'])
        reason = (f"{chosen} was the faster over {measure} interleaved repetitions "
                  f"({candidates['compile']['median_ms']} ms compiled vs "
                  f"{candidates['fused']['median_ms']} ms eager, medians)")
    elif 'compile' in calls:
        chosen = 'compile'
        reason = (f"torch.compile compiled and matches the unfused model (rel. err "
                  f"{candidates['compile']['rel_err']:.1e} <= {compile_rtol:g}"
                  + (', TF32 on' if compile_rtol != rtol else '') + ')')
    else:
        chosen = 'fused'
        reason = f"torch.compile not used ({candidates['compile']['status']})"
    record = dict(chosen=chosen, reason=reason, device=str(dev), input_size=[h, w],
                  batch_size=batch_size, threads=torch.get_num_threads(),
                  torch=torch.__version__, rtol=rtol, compile_rtol=compile_rtol,
                  candidates=candidates)
    return Fastest(fused, calls[chosen], dev, record)


__all__ = ['fastest', 'Fastest', 'TF32_RTOL', 'tf32_on', 'full_fp32']
