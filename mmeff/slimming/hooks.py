"""Hooks of supernet training (registered in ``mmeff.registry.HOOKS``)."""
import math

from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from mmeff.engine.hooks import RNGStateHook, get_rng_state
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


class SupernetResumeError(ValueError):
    """A supernet checkpoint that this run cannot continue."""


@HOOKS.register_module()
class SupernetRunStateHook(RNGStateHook):
    """:class:`~mmeff.engine.RNGStateHook` for the supernet: with the global generators, every
    checkpoint holds the state of the supernet's architecture sampler (Gumbel noise and random
    widths, :attr:`SlimmingSupernet.sampler`) and the number of processes that trained it
    (``checkpoint['supernet']``), and, under DDP, every rank's global generator states
    (gathered at the end of each epoch, before the checkpoint of that epoch is written by
    rank 0). ``--resume`` restores all of them on every rank, so a killed and resumed run, on
    one process or several, is bit-identical to an uninterrupted one when resumed from an
    epoch checkpoint (iteration checkpoints under DDP: every rank gets rank 0's global states,
    as the parent hook says). Under ``mmeff.SupernetDDP`` it also gives every rank rank 0's BN
    statistics at the end of each epoch (before validation and the checkpoint), so that all
    ranks validate and resume with the statistics the checkpoint holds. A checkpoint written
    by another number of processes is refused:
    the global batch, the data each rank saw and the learning rate tuned for it would change
    silently mid-run.
    """

    # Before CheckpointHook (VERY_LOW) in after_train_epoch: the ranks' states are gathered
    # (a collective, which save_checkpoint, run by rank 0 only, cannot do) before it saves.
    priority = 'LOW'

    def __init__(self) -> None:
        super().__init__()
        self._rank_states = None  # (iteration, every rank's states)

    def after_train_epoch(self, runner) -> None:
        self._rank_states = None
        if hasattr(runner.model, 'broadcast_buffers_from_rank0'):  # mmeff.SupernetDDP
            # one set of BN statistics: validated on every rank, saved, resumed
            runner.model.broadcast_buffers_from_rank0()
        if get_world_size() > 1:
            self._rank_states = (runner.iter, all_gather_object(get_rng_state()))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        super().before_save_checkpoint(runner, checkpoint)
        model = _supernet(runner)
        checkpoint['supernet'] = dict(sampler=model.sampler_state(),
                                      world_size=get_world_size())
        if self._rank_states is not None and self._rank_states[0] == runner.iter:
            # the epoch's checkpoint: nothing has drawn since the states were gathered
            checkpoint['supernet']['rng_state_per_rank'] = self._rank_states[1]

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not runner._resume:
            return super().after_load_checkpoint(runner, checkpoint)
        state = checkpoint.get('supernet')
        if not isinstance(state, dict):
            print_log('The checkpoint holds no supernet sampler state (saved without '
                      'SupernetRunStateHook): the resumed run samples other networks than an '
                      'uninterrupted one would', logger='current', level=30)
            return super().after_load_checkpoint(runner, checkpoint)
        theirs, ours = state.get('world_size'), get_world_size()
        if theirs != ours:
            raise SupernetResumeError(
                f'--resume: the supernet checkpoint was trained by {theirs} process(es), this '
                f'run has {ours}: the global batch and each process\'s data would change '
                f'mid-run. Resume with {theirs} process(es) (bash tools/dist_train.sh CONFIG '
                f'{theirs} --resume), or start a new run from its weights with --cfg-options '
                f'load_from=CHECKPOINT (without --resume) in a new --work-dir')
        per_rank = state.get('rng_state_per_rank')
        if per_rank is not None and len(per_rank) == ours:
            checkpoint = dict(checkpoint, rng_state=per_rank[get_rank()])
        super().after_load_checkpoint(runner, checkpoint)
        _supernet(runner).set_sampler_state(state['sampler'])


def _supernet(runner):
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    if not hasattr(model, 'sampler_state'):
        raise TypeError(f'SupernetRunStateHook needs a mmeff.SlimmingSupernet, got '
                        f'{type(model).__name__}')
    return model


__all__ = ['GumbelTemperatureHook', 'SupernetResumeError', 'SupernetRunStateHook']
