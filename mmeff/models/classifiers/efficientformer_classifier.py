"""EfficientFormer (V1 and V2) ImageNet classifier (mmengine ``BaseModel``) for pretraining
with the authors' DeiT recipe.

Structure as the authors' and timm's ``EfficientFormer``: backbone (last stage only, no output
norm) -> LayerNorm over the tokens -> token mean -> ``head`` and ``dist_head``; in eval the
logits are the average of the two heads. V2 (``EfficientFormerV2``) as the authors' and timm's
``EfficientFormerV2``: BatchNorm2d -> global average pool -> the same two heads. The state
dict is mmeff's checkpoint layout (``mmeff.converters``): ``backbone.*``, ``head.norm.*``,
``head.head.*``, ``head.dist_head.*`` (V2: timm's ``norm``, ``head``, ``head_dist``), so
converted authors'/timm/mmpretrain checkpoints load with no missing key and the ``backbone.*``
part initialises detection/segmentation backbones (``prefix='backbone.'``).

Training follows DeiT/the authors' ``main.py``: timm's ``Mixup`` (mixup + cutmix, with the
label smoothing folded into the soft targets) on the batch, timm's ``SoftTargetCrossEntropy``
(or ``LabelSmoothingCrossEntropy`` without mixup) on ``head``, and hard distillation of
``dist_head`` from a frozen timm teacher on the same mixed images (``distillation.py``).
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel, BaseModule
from mmengine.structures import BaseDataElement
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from mmeff.registry import MODELS
from ..families import FAMILIES, Family, family_of, family_of_arch
from ..layers.blocks import build_norm
from .distillation import DISTILLATION_TYPES, TeacherRef, build_teacher, distillation_loss

# Mixup/CutMix arguments the config may set; ``num_classes`` and ``label_smoothing`` come
# from the classifier so that they cannot disagree with the head and the loss.
_MIXUP_KEYS = ('mixup_alpha', 'cutmix_alpha', 'cutmix_minmax', 'prob', 'switch_prob', 'mode',
               'correct_lam')


def _family_of_arch_arg(arch) -> Family:
    """The family of a named arch; the first registered family (V1, whose arch check names
    its valid archs) for an arch dict or an unknown name."""
    try:
        return family_of_arch(arch)
    except ValueError:
        return next(iter(FAMILIES.values()))


def mix_batch(mixup: Optional[Mixup], inputs: torch.Tensor, labels: torch.Tensor):
    """``(inputs, targets)`` after timm's mixup/cutmix (``labels`` unchanged without it); timm
    mixes a batch with its flipped self, so the batch size must be even."""
    if mixup is None:
        return inputs, labels
    if inputs.shape[0] % 2:
        raise ValueError(f'mixup/cutmix needs an even batch size, got {inputs.shape[0]}: '
                         f'use an even train_dataloader.batch_size with drop_last=True')
    return mixup(inputs, labels)


@MODELS.register_module()
class EfficientFormerClsHead(BaseModule):
    """LayerNorm over the last stage's tokens, token mean, ``head`` and ``dist_head``.

    Args:
        in_channels (int): Channels of the last backbone stage.
        num_classes (int): Number of classes.
        dropout (float): Dropout before the linear heads (timm's ``drop_rate``). Defaults to 0.
        init_cfg (dict | list[dict] | None): Defaults to truncated-normal linear layers
            (std 0.02, zero bias), as the authors and timm.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.,
                 init_cfg=dict(type='TruncNormal', layer='Linear', std=.02, bias=0.)):
        super().__init__(init_cfg=copy.deepcopy(init_cfg))
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.norm = nn.LayerNorm(in_channels)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(in_channels, num_classes)
        self.dist_head = nn.Linear(in_channels, num_classes)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) last-stage map -> (B, C) normalised mean token."""
        return self.drop(self.norm(x.flatten(2).transpose(1, 2)).mean(dim=1))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(head logits, dist_head logits)``."""
        x = self.pre_logits(x)
        return self.head(x), self.dist_head(x)


@MODELS.register_module()
class EfficientFormerV2ClsHead(BaseModule):
    """EfficientFormerV2's head: BatchNorm2d on the last stage's map, global average pool,
    ``head`` and ``dist_head`` (timm's ``norm``/``head``/``head_dist``, the authors' ``norm``/
    ``head``/``dist_head``).

    Args:
        in_channels (int): Channels of the last backbone stage.
        num_classes (int): Number of classes.
        dropout (float): Dropout before the linear heads. Defaults to 0.
        norm_cfg (dict): The norm before pooling. Defaults to BN.
        init_cfg (dict | list[dict] | None): Defaults to truncated-normal linear layers
            (std 0.02, zero bias), as the authors and timm.
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.,
                 norm_cfg: dict = dict(type='BN'),
                 init_cfg=dict(type='TruncNormal', layer='Linear', std=.02, bias=0.)):
        super().__init__(init_cfg=copy.deepcopy(init_cfg))
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.norm = build_norm(norm_cfg, in_channels)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(in_channels, num_classes)
        self.dist_head = nn.Linear(in_channels, num_classes)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) last-stage map -> (B, C) pooled normalised features."""
        return self.drop(self.norm(x).mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(head logits, dist_head logits)``."""
        x = self.pre_logits(x)
        return self.head(x), self.dist_head(x)


class EfficientFormerInference(nn.Module):
    """Plain, traceable image batch -> eval logits (average of the two heads).

    Args:
        backbone (nn.Module): EfficientFormer returning the last stage map.
        head (EfficientFormerClsHead): The classification head.
        mean, std (Sequence[float] | None): If given, the module takes raw pixels (e.g. 0-255)
            and normalises them itself (``(x - mean) / std``); otherwise it takes normalised
            images, as timm models do.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        if (mean is None) != (std is None):
            raise ValueError('give both mean and std (raw-pixel input) or neither '
                             '(normalised input)')
        self.normalize = mean is not None
        if self.normalize:
            if len(mean) != 3 or len(std) != 3:
                raise ValueError(f'mean and std need 3 values (RGB), got {mean!r}, {std!r}')
            self.register_buffer('mean', torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer('std', torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = (x - self.mean) / self.std
        cls_logits, dist_logits = self.head(self.backbone(x)[-1])
        return (cls_logits + dist_logits) / 2


def gt_labels(data_samples, device) -> torch.Tensor:
    """The ``gt_label`` of each packed sample as one long tensor (for a classification loss)."""
    if not data_samples:
        raise ValueError('training needs data_samples with gt_label (pack them with '
                         "the 'PackClsInputs' transform)")
    return torch.stack([torch.as_tensor(ds.gt_label).reshape(()) for ds in data_samples]
                       ).to(device=device, dtype=torch.long)


@MODELS.register_module()
class EfficientFormerClassifier(BaseModel):
    """EfficientFormer ImageNet classifier with a DeiT distillation head.

    Args:
        backbone (dict): ``EfficientFormer`` or ``EfficientFormerV2`` arguments (``arch``,
            ``drop_path_rate``, ...); ``type`` defaults to the type of the family that has
            the named arch (``mmeff.models.families``: ``'mmeff.EfficientFormerV2'`` for
            ``'s0'``, ``'s1'``, ``'s2'``, ``'l'``), else to ``'mmeff.EfficientFormer'``. The
            classifier uses the last stage only, without output norm (``out_indices=(3,)``,
            ``out_norm_cfg=None``). The head is the one the family declares (``cls_head``):
            :class:`EfficientFormerClsHead` (LayerNorm, token mean) for V1,
            :class:`EfficientFormerV2ClsHead` (BatchNorm, average pool) for V2.
        num_classes (int): Number of classes. Defaults to 1000.
        dropout (float): Dropout before the heads. Defaults to 0.
        label_smoothing (float): Label smoothing (DeiT: 0.1). With ``mixup`` it is applied to
            the mixed soft targets by timm's ``Mixup``; without, by timm's
            ``LabelSmoothingCrossEntropy``. Defaults to 0.
        mixup (dict | None): timm ``Mixup`` arguments (``mixup_alpha``, ``cutmix_alpha``,
            ``cutmix_minmax``, ``prob``, ``switch_prob``, ``mode``, ``correct_lam``), applied to
            every training batch (which must have an even size). ``None``: no mixing.
        distillation (dict | None): DeiT distillation, e.g. ``dict(type='hard', alpha=0.5,
            tau=1.0, teacher=dict(model_name='regnety_160', checkpoint='regnety_160.pth'))``;
            extra keys of ``teacher`` go to ``timm.create_model``. The teacher is built and
            loaded at the start of training (``init_weights``) or at the first ``loss`` call,
            never for testing. ``None``: no teacher; both heads then learn the labels through
            their average (timm's non-distilled training), so eval logits stay meaningful.
        data_preprocessor (dict | None): Defaults to ``BaseDataPreprocessor`` (moves the
            batch to the device; images are normalised by the data pipeline, before random
            erasing, as in DeiT).
        init_cfg (dict | list[dict] | None): Init config of the whole classifier.

    Example:
        >>> import torch
        >>> from mmeff.models.classifiers import EfficientFormerClassifier
        >>> model = EfficientFormerClassifier(backbone=dict(arch='l1'), num_classes=10).eval()
        >>> model(torch.rand(2, 3, 224, 224)).shape
        torch.Size([2, 10])
    """

    def __init__(self,
                 backbone: dict = dict(arch='l1'),
                 num_classes: int = 1000,
                 dropout: float = 0.,
                 label_smoothing: float = 0.,
                 mixup: Optional[dict] = None,
                 distillation: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
        if not 0. <= label_smoothing < 1.:
            raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}')
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing

        backbone = copy.deepcopy(dict(backbone))
        for key, required in (('out_indices', (3,)), ('out_norm_cfg', None)):
            if key in backbone and backbone[key] not in (required, list(required or [])):
                raise ValueError(f'the classifier uses the last backbone stage without output '
                                 f'norm: leave backbone.{key} unset (it is {required!r}), got '
                                 f'{backbone[key]!r}')
            backbone[key] = required
        if 'type' not in backbone:
            backbone['type'] = _family_of_arch_arg(backbone.get('arch')).type
        self.backbone = MODELS.build(backbone)
        # The head the backbone's family declares (V1: LayerNorm + token mean, V2: BN + pool).
        head_cls = MODELS.get(family_of(self.backbone).cls_head)
        self.head = head_cls(self.backbone.out_channels[-1], num_classes, dropout)

        self.mixup = self._build_mixup(mixup)
        self.distillation = self._parse_distillation(distillation)
        self._teacher: Optional[TeacherRef] = None

    # ------------------------------------------------------------------ config parsing
    def _build_mixup(self, mixup: Optional[dict]) -> Optional[Mixup]:
        if mixup is None:
            return None
        if not isinstance(mixup, dict):
            raise TypeError(f'mixup must be a dict of timm Mixup arguments or None, got '
                            f'{type(mixup).__name__}')
        unknown = set(mixup) - set(_MIXUP_KEYS)
        if unknown:
            raise ValueError(f'unknown mixup keys {sorted(unknown)}; allowed: {list(_MIXUP_KEYS)} '
                             f'(num_classes and label_smoothing are the classifier\'s own '
                             f'arguments)')
        cfg = dict(mixup_alpha=0., cutmix_alpha=0.)
        cfg.update(mixup)
        if cfg['mixup_alpha'] <= 0 and cfg['cutmix_alpha'] <= 0 \
                and cfg.get('cutmix_minmax') is None:
            raise ValueError('mixup is set but mixup_alpha and cutmix_alpha are both 0: set one '
                             'of them > 0, or mixup=None to train without mixing')
        return Mixup(label_smoothing=self.label_smoothing, num_classes=self.num_classes, **cfg)

    @staticmethod
    def _parse_distillation(distillation: Optional[dict]) -> Optional[dict]:
        if distillation is None:
            return None
        if not isinstance(distillation, dict):
            raise TypeError(f'distillation must be a dict or None, got '
                            f'{type(distillation).__name__}')
        cfg = dict(type='hard', alpha=0.5, tau=1.0)
        cfg.update(copy.deepcopy(dict(distillation)))
        unknown = set(cfg) - {'type', 'alpha', 'tau', 'teacher'}
        if unknown:
            raise ValueError(f'unknown distillation keys {sorted(unknown)}; allowed: type, '
                             f'alpha, tau, teacher')
        if cfg['type'] not in DISTILLATION_TYPES:
            raise ValueError(f'distillation.type must be one of {DISTILLATION_TYPES} (or '
                             f'distillation=None to turn it off), got {cfg["type"]!r}')
        if not 0. <= cfg['alpha'] <= 1.:
            raise ValueError(f'distillation.alpha must be in [0, 1], got {cfg["alpha"]}')
        teacher = cfg.get('teacher')
        if not isinstance(teacher, dict) or 'model_name' not in teacher:
            raise ValueError("distillation.teacher must be a dict with 'model_name' (a timm "
                             "name such as 'regnety_160') and 'checkpoint' (a local path)")
        cfg['teacher'] = dict(teacher)
        return cfg

    # ------------------------------------------------------------------ teacher
    def teacher(self) -> Optional[TeacherRef]:
        """The frozen teacher (built and loaded on the first call), or ``None`` without
        distillation."""
        if self.distillation is not None and self._teacher is None:
            kwargs = dict(self.distillation['teacher'])
            self._teacher = TeacherRef(build_teacher(
                kwargs.pop('model_name'), kwargs.pop('checkpoint', None), self.num_classes,
                **kwargs))
        return self._teacher

    def init_weights(self):
        super().init_weights()
        # The Runner calls this before training only: a missing or wrong teacher fails here,
        # before the first iteration, while tools/test.py never needs the teacher.
        self.teacher()

    # ------------------------------------------------------------------ forward
    def extract_feat(self, inputs: torch.Tensor) -> torch.Tensor:
        """Last-stage map (B, C, H/32, W/32)."""
        return self.backbone(inputs)[-1]

    def forward_heads(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(head logits, dist_head logits)``."""
        return self.head(self.extract_feat(inputs))

    def forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor'):
        """``mode='tensor'``: eval logits (average of the two heads); ``'loss'``: a dict of
        losses; ``'predict'``: data samples with ``pred_score``/``pred_label``."""
        if mode == 'tensor':
            cls_logits, dist_logits = self.forward_heads(inputs)
            return (cls_logits + dist_logits) / 2
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode == 'predict':
            return self.predict(inputs, data_samples)
        raise ValueError(f'Invalid mode {mode!r}: use "tensor", "loss" or "predict"')

    def _base_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.dim() == 2:  # mixed soft targets (smoothing already in them)
            return SoftTargetCrossEntropy()(logits, targets)
        if self.label_smoothing > 0:
            return LabelSmoothingCrossEntropy(self.label_smoothing)(logits, targets)
        return F.cross_entropy(logits, targets)

    def loss(self, inputs: torch.Tensor, data_samples: List[BaseDataElement]
             ) -> Dict[str, torch.Tensor]:
        labels = gt_labels(data_samples, inputs.device)
        inputs, targets = mix_batch(self.mixup, inputs, labels)
        cls_logits, dist_logits = self.forward_heads(inputs)
        if self.distillation is None:
            return dict(loss_cls=self._base_loss((cls_logits + dist_logits) / 2, targets))
        teacher_logits = self.teacher()(inputs)  # the same mixed images, as DeiT
        alpha = self.distillation['alpha']
        return dict(
            loss_cls=(1 - alpha) * self._base_loss(cls_logits, targets),
            loss_distill=alpha * distillation_loss(dist_logits, teacher_logits,
                                                   self.distillation['type'],
                                                   self.distillation['tau']))

    def predict(self, inputs: torch.Tensor,
                data_samples: Optional[List[BaseDataElement]] = None) -> List[BaseDataElement]:
        scores = F.softmax(self.forward(inputs, mode='tensor'), dim=1)
        labels = scores.argmax(dim=1)
        if data_samples is None:
            data_samples = [BaseDataElement() for _ in range(inputs.shape[0])]
        for ds, score, label in zip(data_samples, scores, labels):
            ds.pred_score = score
            ds.pred_label = label
        return data_samples

    # ------------------------------------------------------------------ export
    def as_inference_module(self, mean: Optional[Sequence[float]] = None,
                            std: Optional[Sequence[float]] = None) -> EfficientFormerInference:
        """A plain ``nn.Module`` (independent copy, eval mode, no teacher, no data
        preprocessor) mapping an image batch (B, 3, H, W) to eval logits, for export and
        benchmarking. By default it takes normalised images; pass ``mean``/``std`` (e.g.
        ``(123.675, 116.28, 103.53)``/``(58.395, 57.12, 57.375)`` for 0-255 RGB) to put the
        normalisation inside."""
        return EfficientFormerInference(copy.deepcopy(self.backbone), copy.deepcopy(self.head),
                                        mean, std).eval()

    # ------------------------------------------------------------------ checkpoints
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # mmengine's loader (Runner load_from/resume, init_cfg Pretrained) only *warns* on
        # shape mismatches and keeps random weights; a class-count or arch mismatch must
        # stop the run instead, with the fix in the message.
        self._check_checkpoint_shapes(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _check_checkpoint_shapes(self, state_dict: dict, prefix: str) -> None:
        from mmeff.checkpoint import check_model_fit
        own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        check_model_fit(self, own, 'The checkpoint', purpose='shapes')
