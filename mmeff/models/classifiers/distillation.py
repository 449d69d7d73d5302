"""DeiT-style knowledge distillation for the EfficientFormer classifier.

The authors trained every EfficientFormer with DeiT's hard distillation from a RegNetY-16GF
teacher (timm's ``regnety_160``, DeiT's checkpoint ``regnety_160-a5fe301d.pth``): the class head
learns the (mixed, smoothed) labels, the distillation head learns the teacher's argmax, and the
two losses are weighted ``1 - alpha`` and ``alpha`` (DeiT ``DistillationLoss``).

The teacher is built with ``timm.create_model(name, pretrained=False)`` and loaded from a local
file only; it is frozen, kept in eval mode, and deliberately *not* a registered submodule of the
student, so it is not in the student's ``state_dict`` (checkpoints stay loadable by the dense
backbones and by converted weights), not in ``parameters()`` (optimizer, DDP, EMA) and not
switched to train mode by ``model.train()``.
"""
import os.path as osp
from typing import Optional

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log

DISTILLATION_TYPES = ('hard', 'soft')


def build_teacher(model_name: str, checkpoint: Optional[str], num_classes: int,
                  **model_kwargs) -> nn.Module:
    """Build a frozen timm teacher in eval mode and load its weights from a local checkpoint.

    Args:
        model_name (str): timm model name, e.g. ``'regnety_160'``.
        checkpoint (str): Local checkpoint path (a bare state dict or one stored under
            ``state_dict``/``model``, as DeiT's ``regnety_160-a5fe301d.pth``).
        num_classes (int): Classes of the teacher's classifier; must match the student's.
        **model_kwargs: Extra arguments of ``timm.create_model``.

    Raises:
        FileNotFoundError: ``checkpoint`` is not given or does not exist.
        ValueError: the checkpoint does not fit the teacher (other model or class count).
    """
    if not checkpoint or not osp.isfile(osp.expanduser(str(checkpoint))):
        raise FileNotFoundError(
            f'Distillation teacher checkpoint {checkpoint!r} does not exist. Download the '
            f'teacher weights (DeiT: https://dl.fbaipublicfiles.com/deit/regnety_160-a5fe301d.pth '
            f'for regnety_160) and set its path, e.g. '
            f'--cfg-options model.distillation.teacher.checkpoint=/path/regnety_160.pth, or '
            f'train without distillation: --cfg-options model.distillation=None')
    from mmeff.converters import load_checkpoint_file
    try:
        teacher = timm.create_model(model_name, pretrained=False, num_classes=num_classes,
                                    **model_kwargs)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise ValueError(f'Cannot build the distillation teacher {model_name!r} with timm: '
                         f'{exc}; set model.distillation.teacher.model_name to a timm model '
                         f'name such as "regnety_160"') from exc
    state_dict = load_checkpoint_file(checkpoint)
    own = teacher.state_dict()
    bad = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
           for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if bad or missing or unexpected:
        details = '; '.join(
            f'{name} ({len(items)}): {items[:3]}'
            for name, items in (('shape mismatches', bad), ('missing keys', missing),
                                ('unexpected keys', unexpected)) if items)
        raise ValueError(
            f'Teacher checkpoint {checkpoint!r} does not fit timm {model_name!r} with '
            f'num_classes={num_classes}: {details}. Use the checkpoint of this teacher trained '
            f'on the same classes as the student (model.num_classes), or change '
            f'model.distillation.teacher.model_name')
    teacher.load_state_dict(state_dict, strict=True)
    teacher.requires_grad_(False)
    print_log(f'Distillation teacher {model_name} loaded from {checkpoint}', logger='current')
    return teacher.eval()


class TeacherRef:
    """Holds the teacher outside the student's module tree (see the module docstring).

    ``copy.deepcopy`` of the student (mmengine's EMA model is one) shares the teacher instead
    of copying tens of millions of frozen parameters.
    """

    def __init__(self, module: nn.Module):
        self.module = module

    def __deepcopy__(self, memo):
        return self

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        param = next(self.module.parameters(), None)
        if param is not None and param.device != x.device:
            self.module.to(x.device)  # follows the student to its device on first use
        self.module.eval()
        return self.module(x)


def distillation_loss(dist_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      distill_type: str = 'hard', tau: float = 1.0) -> torch.Tensor:
    """DeiT's distillation term (``DistillationLoss`` without the base criterion).

    ``hard``: cross-entropy against the teacher's argmax. ``soft``: KL divergence of the
    temperature-``tau`` distributions, scaled by ``tau**2``.
    """
    if distill_type == 'hard':
        return F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
    if distill_type == 'soft':
        return F.kl_div(F.log_softmax(dist_logits / tau, dim=1),
                        F.log_softmax(teacher_logits / tau, dim=1),
                        reduction='sum', log_target=True) * (tau * tau) / dist_logits.numel()
    raise ValueError(f'distillation type must be one of {DISTILLATION_TYPES}, got {distill_type!r}')
