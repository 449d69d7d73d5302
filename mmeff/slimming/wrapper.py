"""Distributed supernet training on mmengine's own engine: the model wrapper ``SupernetDDP``.

mmengine's DDP wrapper (``MMDistributedDataParallel.train_step``) runs one forward in
``mode='loss'`` and one ``update_params`` on one optimiser wrapper; the supernet's sandwich
step needs three passes and two optimisers (weights and architecture logits). As mmengine's
``MMSeparateDistributedDataParallel`` does for GANs, this wrapper hands ``train_step`` to the
model (:meth:`SlimmingSupernet.train_step`), passing itself, so that

* every sandwich pass runs through DDP's ``forward`` (the reducer sees the pass and finds the
  parameters the sampled network did not use: ``find_unused_parameters=True``);
* the first two passes run under ``no_sync``: their gradients accumulate locally and all three
  are all-reduced once, in the backward of the last pass (DDP keeps a parameter used in any
  of the passes as used);
* the architecture logits are DDP parameters: their gradients are averaged like the weights',
  so the two optimisers take the same step on every rank and the logits stay identical.

The architecture sampler (:attr:`SlimmingSupernet.sampler`) starts from rank 0's state on
every rank (broadcast here, after DDP's own broadcast of the parameters): every process
samples the same networks and widths (see the "Random streams" part of
:mod:`mmeff.slimming.supernet` for why).

Config (configs/slimming/ set it)::

    model_wrapper_cfg = dict(type='SupernetDDP')

``tools/dist_train.sh``, ``tools/slurm_train.sh`` and ``tools/slim.py --launcher pytorch`` then
train on N processes; on CPU the tools run it over gloo.
"""
import inspect
from typing import Dict, Union

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from mmengine.model import MMDistributedDataParallel
from mmengine.optim import OptimWrapperDict
from mmengine.registry import MODEL_WRAPPERS

from .supernet import SlimmingSupernet


@MODEL_WRAPPERS.register_module()
class SupernetDDP(MMDistributedDataParallel):
    """DDP for :class:`~mmeff.slimming.supernet.SlimmingSupernet` (see the module docstring).

    Args:
        module (SlimmingSupernet): The supernet.
        find_unused_parameters (bool): Must be True: a sampled network leaves most MB3D and
            some MB4D blocks unused. Defaults to True.
        broadcast_buffers (bool): Broadcast rank 0's BN statistics before every pass.
            Defaults to True: one set of statistics on every rank, the one checkpoints hold
            and validation uses on every rank, so a resumed run continues them exactly
            (the buffers are small beside the gradients all-reduced each step).
        **kwargs: Other ``DistributedDataParallel`` arguments (``device_ids``...).
    """

    def __init__(self, module, find_unused_parameters: bool = True,
                 broadcast_buffers: bool = True, **kwargs):
        if not isinstance(module, SlimmingSupernet):
            raise TypeError(f'SupernetDDP wraps a SlimmingSupernet, got {type(module).__name__}: '
                            f"use model_wrapper_cfg=dict(type='MMDistributedDataParallel') for "
                            f'other models')
        if not find_unused_parameters:
            raise ValueError('SupernetDDP needs find_unused_parameters=True: every pass '
                             'samples a network that leaves some blocks unused')
        # torch >= 2.14 renamed the forward-time half of broadcast_buffers (and warns on it)
        key = ('forward_sync_buffers' if 'forward_sync_buffers' in
               inspect.signature(DistributedDataParallel.__init__).parameters
               else 'broadcast_buffers')
        kwargs[key] = broadcast_buffers
        super().__init__(module=module, find_unused_parameters=True, **kwargs)
        self.sync_sampler()

    def sync_sampler(self) -> None:
        """Give every rank rank 0's architecture sampler state."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        state = self.module.sampler_state()
        # NCCL communicates CUDA tensors only; gloo CPU ones.
        device = (torch.device('cuda', torch.cuda.current_device())
                  if dist.get_backend(self.process_group) == 'nccl' else torch.device('cpu'))
        buf = state.to(device)
        dist.broadcast(buf, src=0, group=self.process_group)
        self.module.set_sampler_state(buf.cpu())

    def broadcast_buffers_from_rank0(self) -> None:
        """Give every rank rank 0's buffers (BN statistics). With ``broadcast_buffers`` DDP does
        so before every pass; after the last pass of an epoch each rank has updated its own
        again. ``mmeff.SupernetRunStateHook`` calls this at the end of every epoch, before
        validation and the checkpoint."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        for buf in self.module.buffers():
            dist.broadcast(buf, src=0, group=self.process_group)

    def train_step(self, data: Union[dict, tuple, list],
                   optim_wrapper: OptimWrapperDict) -> Dict[str, torch.Tensor]:
        """The supernet's sandwich step, each pass through this wrapper (module docstring)."""
        return self.module.train_step(data, optim_wrapper, wrapper=self)


__all__ = ['SupernetDDP']
