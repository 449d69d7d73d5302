"""Runner hooks (registered in ``mmeff.registry.HOOKS``; use them as ``type='mmeff.<Name>'``)."""
import random
from typing import Optional

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop

from mmeff.registry import HOOKS


def get_rng_state() -> dict:
    """The states of Python's, NumPy's and torch's (CPU and, if present, CUDA) global generators."""
    state = dict(python=random.getstate(), numpy=np.random.get_state(),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['torch_cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    # A resumed checkpoint is loaded onto the GPU when there is one (mmengine's default
    # map_location): the saved generator states arrive as CUDA tensors, and torch only takes
    # CPU ByteTensors ('RNG state must be a torch.ByteTensor' on the first GPU resume).
    torch.set_rng_state(state['torch'].cpu())
    cuda = state.get('torch_cuda')
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


class _RestoreBeforeBatch:
    """Stands in for ``loop.dataloader_iterator``: passes ``skip`` batches through, then
    restores ``state`` before fetching the next one and puts the loop's iterator back."""

    def __init__(self, loop, skip: int, state: dict) -> None:
        self._loop, self._inner = loop, loop.dataloader_iterator
        self._skip, self._state = skip, state

    def __iter__(self):
        return self

    def __next__(self):
        if self._skip > 0:
            self._skip -= 1
            return next(self._inner)
        set_rng_state(self._state)
        self._loop.dataloader_iterator = self._inner
        return next(self._inner)


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Make ``--resume`` continue the random streams of the interrupted run.

    mmengine re-seeds the global generators when a resumed run starts, so everything random that
    follows (RPN/RoI sampling, data augmentation in the main process, dropout, the seed of the
    next dataloader iterator) differs from an uninterrupted run, and so do the final weights.
    This hook stores the generators' states in every checkpoint (``checkpoint['rng_state']``)
    and restores them after the checkpoint is loaded for resuming. It also saves and restores
    the states around validation, so that validating (or not, or how often) does not change
    the training's random streams.

    With ``IterBasedTrainLoop`` the states are restored after the loop has advanced its
    dataloader past the iterations already trained (mmengine runs the data pipeline for each of
    them), right before the first new batch is fetched.

    Exact for single-process runs resumed from epoch (or, with ``IterBasedTrainLoop``,
    iteration) checkpoints, with a fixed ``randomness.seed`` (the sampler's shuffling and the
    data workers' seeds come from it, not from these states), when the data pipeline runs in
    the main process (``num_workers=0``), in workers that are re-created each epoch
    (``persistent_workers=False``), or, with ``IterBasedTrainLoop`` and an infinite sampler,
    in workers of the one dataloader iterator the run uses. Under DDP only rank 0 saves a
    checkpoint: every rank restores rank 0's states, so the resumed run is reproducible but not
    bit-identical to an uninterrupted one.
    """

    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self._state_before_val: Optional[dict] = None
        self._resumed_state: Optional[dict] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # A checkpoint saved during validation (the best one, ``save_best``, which mmeff's
        # CheckpointHook ordering may also write as the step's checkpoint) gets the training
        # streams' states from before validation: validation's draws are undone after it.
        state = self._state_before_val
        checkpoint['rng_state'] = get_rng_state() if state is None else state

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # ``load_from`` without resume goes through here too: only a resumed run continues the
        # old random streams.
        if not runner._resume:
            return
        state = checkpoint.get('rng_state')
        if state is None:
            print_log('The checkpoint holds no random states (saved without RNGStateHook): '
                      'the resumed run re-seeds and will not match an uninterrupted one',
                      logger='current', level=30)
            return
        # Applied in before_train: Runner.resume re-seeds after this hook when the config's
        # seed differs from the checkpoint's (e.g. randomness.seed=None).
        self._resumed_state = state

    def before_train(self, runner) -> None:
        if self._resumed_state is None:
            return
        state, self._resumed_state = self._resumed_state, None
        loop = runner.train_loop
        skipped = getattr(loop, 'iter', 0) if isinstance(loop, IterBasedTrainLoop) else 0
        if skipped > 0 and hasattr(loop, 'dataloader_iterator'):
            # IterBasedTrainLoop.run advances its dataloader past the iterations already
            # trained after this hook; with num_workers=0 that runs the data pipeline (random
            # resizes, crops, flips) in this process, which would consume the restored states.
            # They are restored right before the first batch that is trained on instead.
            loop.dataloader_iterator = _RestoreBeforeBatch(loop, skipped, state)
        else:
            set_rng_state(state)

    def before_val(self, runner) -> None:
        self._state_before_val = get_rng_state()

    def after_val(self, runner) -> None:
        if self._state_before_val is not None:
            set_rng_state(self._state_before_val)
            self._state_before_val = None
