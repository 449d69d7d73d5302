"""Hooks of supernet training (registered in ``mmeff.registry.HOOKS``)."""
import math

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmeff.registry import HOOKS

_SCHEDULES = ('exp', 'linear', 'cosine')


@HOOKS.register_module()
class GumbelTemperatureHook(Hook):
    """Anneal the Gumbel-softmax temperature of a supernet from ``start`` to ``end`` over
    training (FBNet/GDAS: a high temperature explores, a low one approaches hard sampling).

    The temperature is a function of ``runner.iter / runner.max_iters`` only, set before
    every iteration, so a resumed run continues the schedule where it stopped (nothing to
    save).

    Args:
        start (float): Temperature at iteration 0. Defaults to 5.
        end (float): Temperature at the last iteration. Defaults to 0.5.
        schedule (str): ``'exp'`` (geometric, as FBNet), ``'linear'`` or ``'cosine'``.
            Defaults to ``'exp'``.
    """

    priority = 'NORMAL'

    def __init__(self, start: float = 5., end: float = 0.5, schedule: str = 'exp') -> None:
        if not (start > 0 and end > 0):
            raise ValueError(f'temperatures must be > 0, got start={start}, end={end}')
        if schedule not in _SCHEDULES:
            raise ValueError(f'schedule must be one of {_SCHEDULES}, got {schedule!r}')
        self.start, self.end, self.schedule = float(start), float(end), schedule

    def temperature(self, progress: float) -> float:
        """The temperature at ``progress`` in [0, 1] (clipped)."""
        p = min(max(progress, 0.), 1.)
        if self.schedule == 'exp':
            return self.start * (self.end / self.start) ** p
        if self.schedule == 'linear':
            return self.start + (self.end - self.start) * p
        return self.end + (self.start - self.end) * (1 + math.cos(math.pi * p)) / 2

    def _apply(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if not hasattr(model, 'temperature'):
            raise TypeError(f'GumbelTemperatureHook needs a model with a temperature '
                            f'(mmeff.SlimmingSupernet), got {type(model).__name__}')
        model.temperature = self.temperature(runner.iter / max(runner.max_iters - 1, 1))

    def before_train(self, runner) -> None:
        self._apply(runner)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._apply(runner)


__all__ = ['GumbelTemperatureHook']
