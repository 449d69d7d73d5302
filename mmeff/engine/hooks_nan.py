"""Stop training on a non-finite loss (registered as ``mmeff.CheckFiniteLossHook``).

Without it a NaN loss goes unnoticed: the optimizer turns every weight into NaN, BatchNorm
statistics follow, training runs to the end, checkpoints of NaN weights are saved and
validation only says that the results are empty.

mmdet has ``CheckInvalidLossHook`` for this, but it is not enough here: it checks every 50
iterations by default, reports through a bare ``assert`` whose message is ``None`` (the return
value of ``logger.info``) and that ``python -O`` removes, and it lives in mmdet, which
segmentation and classification users need not install. This hook checks every iteration and
raises :class:`NonFiniteLossError` with the iteration, the loss terms and the usual fixes.
"""
import math
from typing import Optional

import torch
from mmengine.hooks import Hook
from mmengine.runner import EpochBasedTrainLoop

from mmeff.registry import HOOKS


class NonFiniteLossError(FloatingPointError, ValueError):
    """The training loss became NaN or infinite.

    Also a ``ValueError``: what causes it is a value the user chose (learning rate, gradient
    clipping) or their data, so the tools report it as a user's mistake, in one line
    (``mmeff.cli``), rather than as a bug with a traceback.
    """


def _as_float(value) -> Optional[float]:
    if isinstance(value, torch.Tensor):
        return value.detach().float().mean().item() if value.numel() else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


@HOOKS.register_module()
class CheckFiniteLossHook(Hook):
    """Raise :class:`NonFiniteLossError` as soon as a training loss is NaN or infinite.

    The check runs after the iteration's optimizer step, before any other hook of that
    iteration (``priority='VERY_HIGH'``), so the checkpoint hook never saves the weights the
    step has just spoiled: the last checkpoint in the work dir is from before the NaN. Under DDP
    every rank checks its own loss; the rank that fails ends the run (torchrun stops the others).
    Under AMP too a non-finite *loss* stops the run (DeiT's ``main.py`` does the same); the
    gradient scaler only handles overflowing gradients.

    Args:
        interval (int): Check every ``interval`` training iterations. Defaults to 1 (every
            iteration: the check is one ``isfinite`` on a scalar per loss term).
    """

    priority = 'VERY_HIGH'

    def __init__(self, interval: int = 1) -> None:
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            raise ValueError(f'interval must be a positive int, got {interval!r}')
        self.interval = interval

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not isinstance(outputs, dict) or not self.every_n_train_iters(runner, self.interval):
            return
        # ``loss`` is the sum that was back-propagated, the other ``loss*`` entries its terms
        # (mmengine's parse_losses sums the keys containing 'loss'). Logged extras such as
        # mmseg's ``acc_seg`` are left out: a crop holding only ignored pixels makes it NaN
        # while the loss stays finite.
        values = {name: _as_float(v) for name, v in outputs.items() if 'loss' in name}
        bad = [name for name, v in values.items() if v is not None and not math.isfinite(v)]
        if not bad:
            return
        total = values.get('loss')
        terms = ', '.join(f'{name}={v}' for name, v in values.items() if v is not None)
        epoch = (f' (epoch {runner.epoch + 1}, batch {batch_idx + 1})'
                 if isinstance(runner.train_loop, EpochBasedTrainLoop) else '')
        raise NonFiniteLossError(
            f'Training stopped: the loss is {total if total is not None else "non-finite"} at '
            f'iteration {runner.iter + 1}{epoch}; non-finite: {", ".join(bad)} '
            f'(all terms: {terms}). The weights are no longer usable and were not saved: the '
            f'checkpoints in {runner.work_dir} are from before this iteration. Usual causes: '
            f'a learning rate too high for the batch size (lower optim_wrapper.optimizer.lr, '
            f'keep the warm-up, or use --auto-scale-lr), exploding gradients (set '
            f'optim_wrapper.clip_grad=dict(max_norm=...)), or bad data (NaN/Inf pixels, '
            f'degenerate boxes, labels out of range). Fix it, then --resume from the last '
            f'checkpoint')
