"""The weight-sharing supernet of latency-driven slimming (paper, section 4).

One network holds every network of a :class:`~mmeff.slimming.space.SearchSpace`:

* the stem and every stage at the stage's largest width; a narrower network uses the first
  ``C`` channels of every conv/linear/norm weight, BN running statistic and layer scale
  (slimmable widths). In MB3D blocks the qkv input and the projection output are sliced; the
  attention itself (``key_dim``, heads, value dim) is fixed, as in the backbone;
* per stage ``max_depths[s]`` block positions, each a :class:`MetaPath` holding an MB4D block
  and, in ``space.mb3d_stages``, an MB3D block, built from ``mmeff.models.layers`` with the
  backbone's parameter names so that a subnet's weights are sliced out by key
  (:func:`extract_subnet`) and load into :class:`~mmeff.models.EfficientFormerClassifier`.

Architecture parameters: one logit per position and per choice of ``space.positions(s)``
(``'mb4d'``, ``'mb3d'``, ``'id'``), stored in ``arch_logits.<stage>`` (shape ``(positions,
choices)``), trained jointly with the weights by their own optimiser.

Sampling (training). Every position draws a hard Gumbel-softmax sample (straight-through) from
its logits at ``temperature``. The dimension-consistent rule (one 4D -> 3D switch: no MB4D
after an MB3D; every stage keeps a real block) is enforced *by masking, in reverse network
order*: once a later position holds an MB4D, the MB3D logits of every earlier position are
masked out, and a stage's first position cannot be identity when no later position of the
stage is real. Why this choice: the samples are always valid networks, every logit keeps its
own meaning (the importance read from it needs no mask), and sampling from the end puts the
MB3D blocks at the end of the network, where L1/L3/L7 have them; sampling front to back
would instead switch to MB3D within the first few stage-3 positions almost always (with
uniform logits the chance of no MB3D among ``k`` positions is ``(2/3)^k``), i.e. train
mostly attention-heavy networks the search never keeps.

Gradient of the logits. The output of a position is ``sum_k g_k * out_k`` over its allowed
choices, ``g`` the straight-through one-hot sample: the sampled branch carries the weight
gradient, the other allowed branches are evaluated without autograd (their ``g_k`` is 0 in
value) so that every logit learns how the loss would change with its branch
(``<dL/dout, out_k>``), not only the sampled one as in GDAS. Identity is ``out = x``.

Widths (sandwich rule, BigNAS/slimmable networks): every training step runs the largest, the
smallest and one random width per stage, each with freshly sampled blocks, and accumulates
the three gradients before one step of each optimiser. BN running statistics are shared
between widths; recalibrate them for a subnet before evaluating it (:func:`recalibrate_bn`).

Random streams. The Gumbel noise and the random width come from the supernet's own generator
(``SlimmingSupernet.sampler``, seeded from the run's seed, saved in every checkpoint by
``mmeff.SupernetRunStateHook``), not from the global ones that data augmentation and mixup
also draw from. Under DDP (``mmeff.SupernetDDP``, :mod:`mmeff.slimming.wrapper`) the
generator starts from rank 0's state on every rank, so *every process samples the same
networks and widths at every pass*, each on its own images. Why shared: the step is then the
one-process step on the global batch (what the learning rate is scaled for, and what the
importance is compared against); every process runs the same network, so none waits for a
slower sample at the gradient all-reduce; and the architecture logits, which are DDP
parameters whose averaged gradients keep them identical on every rank, are trained on one
coherent sample per pass. The cost is fewer distinct networks per step than independent
samples would give (3 instead of 3 x processes); 100 epochs of ImageNet give ~375 k passes
either way.

Recipe (DeiT, as the EfficientFormer classifiers were trained): ``mixup`` (timm's ``Mixup``,
mixup/cutmix on the batch) and ``distillation`` (hard distillation from a frozen timm teacher)
as :class:`~mmeff.models.EfficientFormerClassifier` takes them. The batch is mixed once and
the teacher runs once per step, on the mixed images; the three sandwich passes share both.

Mixed precision (``tools/train.py --amp``): on a GPU, fp16 autocast with *one* dynamic loss
scaler, the ``weights`` wrapper's (``AmpOptimWrapper``): every sandwich pass is
back-propagated scaled, then both optimisers' gradients are unscaled by that scaler and
stepped through it (torch's recipe for several optimisers: each step is skipped when its
gradients hold inf/NaN) and the scale is updated once, from both. The ``arch`` wrapper is a
plain ``OptimWrapper`` without a scaler of its own.
On a CPU, bf16 autocast (``mmeff.BF16AutocastOptimWrapper``; bf16 needs no loss scaling).
"""
import copy
import json
from contextlib import nullcontext
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel, is_model_wrapper
from mmengine.optim import (AmpOptimWrapper, DefaultOptimWrapperConstructor, OptimWrapper,
                            OptimWrapperDict)
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.structures import BaseDataElement
from timm.loss import SoftTargetCrossEntropy

from mmeff.engine.optim_wrappers import BF16AutocastOptimWrapper
from mmeff.models.backbones.efficientformer import Downsample, Stem
from mmeff.models.classifiers.distillation import TeacherRef, build_teacher, distillation_loss
from mmeff.models.classifiers.efficientformer_classifier import (EfficientFormerClassifier,
                                                                 EfficientFormerClsHead,
                                                                 gt_labels, mix_batch)
from mmeff.models.layers import Meta3D, Meta4D
from mmeff.registry import MODELS
from .space import SearchSpace, get_space

# Token grid the MB3D bias tables are learned on: a 224 input at stride 16 (stage 3) and 32
# (stage 4), as the backbone builds them, so that extracted tables load unchanged.
ATTN_RESOLUTIONS = {2: 14, 3: 7}
SANDWICH = ('max', 'min', 'random')


class SpaceMismatchError(ValueError):
    """A supernet checkpoint made for another search space."""


def type_name(obj) -> str:
    return type(obj).__name__


def space_fingerprint_of(extra) -> Optional[str]:
    """The search space recorded in a supernet state dict's ``_extra_state``: a uint8 tensor of
    the space's JSON (current), or a dict ``{'space': json}`` (checkpoints written before the
    supernet could train under DDP); ``None`` when there is none."""
    if isinstance(extra, torch.Tensor) and extra.dtype == torch.uint8 and extra.dim() == 1:
        try:
            return bytes(extra.cpu().tolist()).decode('utf-8')
        except UnicodeDecodeError:
            return None
    if isinstance(extra, dict):
        return extra.get('space')
    return None


# ---------------------------------------------------------------------------- sliced ops
def _conv(conv: nn.Conv2d, x: torch.Tensor, c_out: int) -> torch.Tensor:
    w = conv.weight[:c_out, :x.shape[1]]
    b = conv.bias[:c_out] if conv.bias is not None else None
    return F.conv2d(x, w, b, conv.stride, conv.padding)


def _linear(fc: nn.Linear, x: torch.Tensor, c_out: Optional[int] = None) -> torch.Tensor:
    c_out = fc.out_features if c_out is None else c_out
    return F.linear(x, fc.weight[:c_out, :x.shape[-1]], fc.bias[:c_out])


def _bn(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``bn`` on the first ``x.shape[1]`` channels (torch's BatchNorm logic, sliced); the running
    statistics of those channels are updated in place."""
    c = x.shape[1]
    momentum = 0. if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            momentum = 1. / float(bn.num_batches_tracked)
    use_batch = bn.training or bn.running_mean is None
    return F.batch_norm(x, bn.running_mean[:c] if bn.running_mean is not None else None,
                        bn.running_var[:c] if bn.running_var is not None else None,
                        bn.weight[:c], bn.bias[:c], use_batch, momentum, bn.eps)


def _ln(ln: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    c = x.shape[-1]
    return F.layer_norm(x, (c,), ln.weight[:c], ln.bias[:c], ln.eps)


def _stem(stem: Stem, x: torch.Tensor, c: int) -> torch.Tensor:
    x = stem.act1(_bn(stem.norm1, _conv(stem.conv1, x, c // 2)))
    return stem.act2(_bn(stem.norm2, _conv(stem.conv2, x, c)))


def _meta4d(block: Meta4D, x: torch.Tensor, hidden: int) -> torch.Tensor:
    c = x.shape[1]
    x = x + block.token_mixer(x) * block.ls1.gamma[:c].view(1, -1, 1, 1)
    mlp = block.mlp
    y = mlp.drop(mlp.act(_bn(mlp.norm1, _conv(mlp.fc1, x, hidden))))
    y = mlp.drop(_bn(mlp.norm2, _conv(mlp.fc2, y, c)))
    return x + y * block.ls2.gamma[:c].view(1, -1, 1, 1)


def _attention(attn, x: torch.Tensor, hw_shape) -> torch.Tensor:
    """The backbone's ``Attention.forward`` with the qkv input and proj output sliced."""
    B, N, c = x.shape
    qkv = _linear(attn.qkv, x).reshape(B, N, attn.num_heads, -1).permute(0, 2, 1, 3)
    q, k, v = qkv.split([attn.key_dim, attn.key_dim, attn.val_dim], dim=3)
    a = (q @ k.transpose(-2, -1)) * attn.scale
    a = a + attn.get_bias(*hw_shape).to(a.dtype)
    a = a.softmax(dim=-1)
    y = (a @ v).transpose(1, 2).reshape(B, N, attn.val_attn_dim)
    return _linear(attn.proj, y, c)


def _meta3d(block: Meta3D, x: torch.Tensor, hidden: int, hw_shape) -> torch.Tensor:
    c = x.shape[-1]
    x = x + _attention(block.token_mixer, _ln(block.norm1, x), hw_shape) * block.ls1.gamma[:c]
    mlp = block.mlp
    y = mlp.drop(mlp.act(_linear(mlp.fc1, _ln(block.norm2, x), hidden)))
    y = mlp.drop(_linear(mlp.fc2, y, c))
    return x + y * block.ls2.gamma[:c]


# ---------------------------------------------------------------------------- modules
class MetaPath(nn.Module):
    """One block position: an MB4D block and (if ``'mb3d'`` is a choice) an MB3D block at the
    stage's largest width; identity needs no weights. Works on (B, C, H, W) maps throughout
    (an MB3D branch flattens to tokens and back, value-preserving reshapes)."""

    def __init__(self, dim: int, choices: Sequence[str], mlp_ratio: float, resolution: int,
                 act_cfg: dict, layer_scale_init_value: float):
        super().__init__()
        self.choices = tuple(choices)
        self.mlp_ratio = mlp_ratio
        self.mb4d = Meta4D(dim, mlp_ratio, act_cfg=act_cfg,
                           layer_scale_init_value=layer_scale_init_value)
        if 'mb3d' in self.choices:
            self.mb3d = Meta3D(dim, mlp_ratio, act_cfg=act_cfg, resolution=resolution,
                               layer_scale_init_value=layer_scale_init_value)

    def run(self, choice: str, x: torch.Tensor) -> torch.Tensor:
        """The fixed ``choice`` at the width of ``x``."""
        if choice == 'id':
            return x
        hidden = int(x.shape[1] * self.mlp_ratio)
        if choice == 'mb4d':
            return _meta4d(self.mb4d, x, hidden)
        B, C, H, W = x.shape
        t = _meta3d(self.mb3d, x.flatten(2).transpose(1, 2), hidden, (H, W))
        return t.transpose(1, 2).reshape(B, C, H, W)

    def mixed(self, x: torch.Tensor, gate: torch.Tensor, choice: str,
              allowed: Sequence[bool]) -> torch.Tensor:
        """``sum_k gate[k] * out_k`` over the allowed choices; only ``choice`` (where the
        straight-through ``gate`` is 1) is differentiated through the weights."""
        out = 0.
        for k, name in enumerate(self.choices):
            if not allowed[k]:
                continue
            if name == choice:
                y = self.run(name, x)
            else:
                with torch.no_grad():
                    y = self.run(name, x)
            out = out + gate[k] * y
        return out


class SupernetStage(nn.Module):
    def __init__(self, downsample: Optional[nn.Module], positions: List[MetaPath]):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.positions = nn.ModuleList(positions)


class SupernetBackbone(nn.Module):
    """Stem, downsamples and MetaPaths of a space, at the largest widths (parameter names of
    :class:`~mmeff.models.EfficientFormer`, with ``blocks.<j>`` replaced by
    ``positions.<j>.<choice>``)."""

    def __init__(self, space: SearchSpace, act_cfg: dict, layer_scale_init_value: float,
                 in_channels: int = 3):
        super().__init__()
        widths = [w[-1] for w in space.widths]
        norm_cfg = dict(type='BN')
        self.stem = Stem(in_channels, widths[0], norm_cfg)
        self.stages = nn.ModuleList()
        for s, depth in enumerate(space.max_depths):
            down = Downsample(widths[s - 1], widths[s], norm_cfg) if s > 0 else None
            paths = [MetaPath(widths[s], space.positions(s), space.mlp_ratios[s],
                              ATTN_RESOLUTIONS.get(s, 7), act_cfg, layer_scale_init_value)
                     for _ in range(depth)]
            self.stages.append(SupernetStage(down, paths))

    def forward(self, x: torch.Tensor, widths: Sequence[int], blocks: Sequence[Sequence[str]],
                gates=None) -> torch.Tensor:
        """Last-stage map of the network ``(widths, blocks)``; with ``gates`` (per position a
        ``(gate, allowed)`` pair) every position is a gated mixture (training)."""
        x = _stem(self.stem, x, widths[0])
        for s, stage in enumerate(self.stages):
            if s > 0:
                x = _bn(stage.downsample.norm, _conv(stage.downsample.conv, x, widths[s]))
            for j, path in enumerate(stage.positions):
                if gates is None:
                    x = path.run(blocks[s][j], x)
                else:
                    gate, allowed = gates[s][j]
                    x = path.mixed(x, gate, blocks[s][j], allowed)
        return x


@MODELS.register_module()
class SlimmingSupernet(BaseModel):
    """The supernet of a search space, trained through mmengine's Runner.

    Needs two optimisers, built by ``optim_wrapper=dict(constructor=
    'SupernetOptimWrapperConstructor', weights=dict(optimizer=...), arch=dict(optimizer=...))``
    (see :class:`SupernetOptimWrapperConstructor`); :meth:`train_step` runs the sandwich.

    Args:
        space (str | dict | SearchSpace): The search space (``'l7space'``: the default space
            that contains L1, L3 and L7). Defaults to ``'l7space'``.
        num_classes (int): Number of classes. Defaults to 1000.
        label_smoothing (float): Label smoothing of the cross-entropy. Defaults to 0.
        temperature (float): Initial Gumbel-softmax temperature (annealed by
            ``mmeff.GumbelTemperatureHook``). Defaults to 5.
        layer_scale_init_value (float): Initial layer scale of every block. Defaults to 1e-5.
        act_cfg (dict): Activation of the MLPs. Defaults to GELU.
        mixup (dict | None): timm ``Mixup`` arguments (``mixup_alpha``, ``cutmix_alpha``,
            ``prob``, ``switch_prob``, ``mode``...), as the classifier's; the label smoothing
            goes into the mixed targets. ``None``: no mixing. Defaults to None.
        distillation (dict | None): DeiT distillation as the classifier's, e.g.
            ``dict(type='hard', alpha=0.5, teacher=dict(model_name='regnety_160',
            checkpoint='regnety_160.pth'))`` (a timm model and its local weights): ``head``
            learns the labels, ``dist_head`` the teacher's argmax, weighted ``1 - alpha`` and
            ``alpha``. The teacher is built by :meth:`init_weights` (training only) and runs
            once per step. ``None``: both heads learn the labels through their average.
            Defaults to None.
        eval_choices (dict | None): The network that ``mode='tensor'``/``'predict'`` (and so
            validation) runs; ``None``: the largest one (``space.max_choices()``).
        data_preprocessor (dict | None): As the classifier's (default: move to device).
        init_cfg (dict | list[dict] | None): Defaults to the backbone's (truncated-normal
            linear layers, unit norms).
    """

    def __init__(self,
                 space: Union[str, dict, SearchSpace] = 'l7space',
                 num_classes: int = 1000,
                 label_smoothing: float = 0.,
                 temperature: float = 5.,
                 layer_scale_init_value: float = 1e-5,
                 act_cfg: dict = dict(type='GELU'),
                 mixup: Optional[dict] = None,
                 distillation: Optional[dict] = None,
                 eval_choices: Optional[dict] = None,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg=[
                     dict(type='TruncNormal', layer='Linear', std=.02, bias=0.),
                     dict(type='Constant', layer=['LayerNorm'], val=1., bias=0.),
                 ]):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=copy.deepcopy(init_cfg))
        self.space = get_space(copy.deepcopy(space) if isinstance(space, dict) else space)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
        if not 0. <= label_smoothing < 1.:
            raise ValueError(f'label_smoothing must be in [0, 1), got {label_smoothing}')
        if not temperature > 0:
            raise ValueError(f'temperature must be > 0, got {temperature}')
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.temperature = float(temperature)
        self.backbone = SupernetBackbone(self.space, act_cfg, layer_scale_init_value)
        self.head = EfficientFormerClsHead(self.space.widths[-1][-1], num_classes)
        self.arch_logits = nn.ParameterList([
            nn.Parameter(torch.zeros(d, len(self.space.positions(s))))
            for s, d in enumerate(self.space.max_depths)])
        self.eval_choices = None
        self.set_eval_choices(eval_choices or self.space.max_choices())
        # The classifier's parsing of the same two arguments (same keys, same checks).
        self.mixup = EfficientFormerClassifier._build_mixup(self, mixup)
        self.distillation = EfficientFormerClassifier._parse_distillation(distillation)
        self._teacher: Optional[TeacherRef] = None
        # The architecture sampler's own generator (module docstring, "Random streams"); CPU,
        # whatever the model's device: the few numbers of a pass are moved in one copy.
        self.sampler = torch.Generator().manual_seed(torch.initial_seed())

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> torch.Tensor:
        # The space travels with every checkpoint: loading into a supernet of another space is
        # refused by name (set_extra_state, load_supernet). Its JSON as a uint8 tensor, not a
        # dict: mmengine's Runner broadcasts every state_dict() value as a tensor under DDP.
        return torch.tensor(list(self.space.fingerprint().encode('utf-8')), dtype=torch.uint8)

    def set_extra_state(self, state) -> None:
        check_space(space_fingerprint_of(state), self.space, 'the checkpoint')

    def __deepcopy__(self, memo):
        # torch.Generator cannot be deep-copied; a copy (mmengine's EMA model) samples from a
        # generator in the same state.
        cls = self.__class__
        new = cls.__new__(cls)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            if key == 'sampler':
                new.sampler = torch.Generator().manual_seed(0)
                new.sampler.set_state(value.get_state())
            else:
                setattr(new, key, copy.deepcopy(value, memo))
        return new

    def sampler_state(self) -> torch.Tensor:
        """The state of the architecture sampler's generator (a CPU uint8 tensor)."""
        return self.sampler.get_state()

    def set_sampler_state(self, state: torch.Tensor) -> None:
        self.sampler.set_state(state.detach().to('cpu', torch.uint8))

    def teacher(self) -> Optional[TeacherRef]:
        """The frozen distillation teacher (built and loaded on the first call), or ``None``."""
        if self.distillation is not None and self._teacher is None:
            kwargs = dict(self.distillation['teacher'])
            self._teacher = TeacherRef(build_teacher(
                kwargs.pop('model_name'), kwargs.pop('checkpoint', None), self.num_classes,
                **kwargs))
        return self._teacher

    def set_teacher(self, teacher: nn.Module, type: str = 'hard', alpha: float = 0.5,
                    tau: float = 1.0) -> None:
        """Distil from an already built ``teacher`` (frozen here, kept in eval mode and outside
        the module tree, as a configured one), instead of ``distillation.teacher``."""
        cfg = EfficientFormerClassifier._parse_distillation(dict(
            type=type, alpha=alpha, tau=tau, teacher=dict(model_name=type_name(teacher))))
        teacher.requires_grad_(False)
        self.distillation, self._teacher = cfg, TeacherRef(teacher.eval())

    def init_weights(self):
        super().init_weights()
        # The Runner calls this before training only: a missing teacher fails before the
        # first iteration, and validation/search never need it.
        self.teacher()

    def set_eval_choices(self, choices: dict) -> None:
        """The network that inference (``mode='tensor'``/``'predict'``) runs."""
        self.space.validate(choices)
        self.eval_choices = copy.deepcopy(choices)

    def widths_of(self, width_idx: Sequence[int]) -> List[int]:
        return [self.space.widths[s][i] for s, i in enumerate(width_idx)]

    # ------------------------------------------------------------------ sampling
    def sample_blocks(self):
        """Hard Gumbel-softmax samples of every position under the single-switch rule (masked
        in reverse network order, see the module docstring), with noise from
        :attr:`sampler`. Returns ``(blocks, gates)``."""
        space, tau = self.space, self.temperature
        blocks = [[None] * d for d in space.max_depths]
        allowed = [[None] * d for d in space.max_depths]
        # The Gumbel noise of every position at once (torch's gumbel_softmax: -log(Exp(1))).
        sizes = [p.numel() for p in self.arch_logits]
        noise = -torch.empty(sum(sizes)).exponential_(generator=self.sampler).log()
        onehot = torch.zeros(sum(sizes))
        # The choices are made on the CPU from a copy of the logits: one transfer each way per
        # pass, where deciding on the GPU would synchronise with it at every position. The
        # masked noise and the one-hot choices then travel to the device together.
        logits = torch.cat([p.detach().reshape(-1) for p in self.arch_logits]).float().cpu()
        shapes = [p.shape for p in self.arch_logits]
        z, g, h = (list(t.split(sizes)) for t in (logits, noise, onehot))
        later_mb4d = False
        for s in reversed(range(space.num_stages)):
            names = space.positions(s)
            zs, gs, hs = (t[s].view(shapes[s]) for t in (z, g, h))
            real_later = False
            for j in reversed(range(space.max_depths[s])):
                ok = [not (n == 'mb3d' and later_mb4d) and
                      not (n == 'id' and j == 0 and not real_later) for n in names]
                gs[j][~torch.tensor(ok)] = float('-inf')  # masked: the logit becomes -inf
                k = int(((zs[j] + gs[j]) / tau).argmax())
                hs[j, k] = 1.
                name = names[k]
                blocks[s][j], allowed[s][j] = name, ok
                later_mb4d |= name == 'mb4d'
                real_later |= name != 'id'
        device = self.arch_logits[0].device
        noise, onehot = torch.cat([noise, onehot]).to(device).split([noise.numel()] * 2)
        gates = []
        for s, (param, n, h) in enumerate(zip(self.arch_logits, noise.split(sizes),
                                              onehot.split(sizes))):
            soft = ((param + n.view(shapes[s])) / tau).softmax(dim=-1)
            # straight-through: the value is one-hot, the gradient is the soft sample's
            gate = h.view(shapes[s]) - soft.detach() + soft
            gates.append([(gate[j], allowed[s][j]) for j in range(space.max_depths[s])])
        return blocks, gates

    def sandwich_widths(self) -> Dict[str, List[int]]:
        """Width indices of the three sandwich passes: largest, smallest, random (from
        :attr:`sampler`)."""
        return dict(max=[len(w) - 1 for w in self.space.widths],
                    min=[0] * self.space.num_stages,
                    random=[int(torch.randint(len(w), (1,), generator=self.sampler))
                            for w in self.space.widths])

    # ------------------------------------------------------------------ forward
    def forward_choices(self, inputs: torch.Tensor, choices: dict) -> torch.Tensor:
        """Eval logits (average of the two heads) of the fixed network ``choices``."""
        self.space.validate(choices)
        x = self.backbone(inputs, self.widths_of(choices['width_idx']), choices['blocks'])
        return self._logits(x)

    def _heads(self, x: torch.Tensor):
        """``(head logits, dist_head logits)`` of a last-stage map."""
        head = self.head
        t = _ln(head.norm, x.flatten(2).transpose(1, 2)).mean(dim=1)
        t = head.drop(t)
        return _linear(head.head, t), _linear(head.dist_head, t)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        cls_logits, dist_logits = self._heads(x)
        return (cls_logits + dist_logits) / 2

    def forward_sampled(self, inputs: torch.Tensor, width_idx: Sequence[int]):
        """``(head logits, dist_head logits)`` of a Gumbel-sampled network at the widths
        ``width_idx`` (one sandwich pass)."""
        blocks, gates = self.sample_blocks()
        return self._heads(self.backbone(inputs, self.widths_of(width_idx), blocks, gates))

    def forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor', width_idx: Optional[Sequence[int]] = None):
        """``'tensor'``: logits of ``eval_choices``; ``'sampled'``: the two heads' logits of a
        sampled network at ``width_idx`` (one sandwich pass; :meth:`train_step` runs it
        through the DDP wrapper this way); ``'loss'``: the sandwich losses (one graph;
        training uses :meth:`train_step`); ``'predict'``: data samples with scores."""
        if mode == 'tensor':
            return self.forward_choices(inputs, self.eval_choices)
        if mode == 'sampled':
            if width_idx is None:
                raise ValueError("mode='sampled' needs width_idx (one width index per stage)")
            return self.forward_sampled(inputs, width_idx)
        if mode == 'loss':
            if torch.distributed.is_available() and torch.distributed.is_initialized() and \
                    torch.distributed.get_world_size() > 1:
                # mmengine's plain DDP wrapper calls this, then one update of the pair of
                # optimisers (which OptimWrapperDict refuses): the sandwich needs SupernetDDP.
                raise TypeError(
                    "multi-process supernet training needs the supernet's model wrapper: set "
                    "model_wrapper_cfg=dict(type='SupernetDDP') (configs/slimming/ do)")
            inputs, targets, teacher_logits = self._prepare_batch(
                inputs, gt_labels(data_samples, inputs.device))
            return {f'loss_{name}': self._pass_loss(self.forward_sampled(inputs, idx), targets,
                                                    teacher_logits)
                    for name, idx in self.sandwich_widths().items()}
        if mode == 'predict':
            scores = F.softmax(self.forward(inputs, mode='tensor'), dim=1)
            if data_samples is None:
                data_samples = [BaseDataElement() for _ in range(inputs.shape[0])]
            for ds, score in zip(data_samples, scores):
                ds.pred_score = score
                ds.pred_label = score.argmax()
            return data_samples
        raise ValueError(f'Invalid mode {mode!r}: use "tensor", "loss" or "predict"')

    def _ce(self, logits, targets):
        if targets.dim() == 2:  # mixed soft targets (the smoothing is already in them)
            return SoftTargetCrossEntropy()(logits, targets)
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def _prepare_batch(self, inputs: torch.Tensor, labels: torch.Tensor):
        """Mix the batch (once per step) and run the teacher on it (once per step): the three
        sandwich passes share ``(inputs, targets, teacher_logits)``."""
        inputs, targets = mix_batch(self.mixup, inputs, labels)
        teacher = self.teacher()
        teacher_logits = teacher(inputs) if teacher is not None else None
        return inputs, targets, teacher_logits

    def _pass_loss(self, heads, targets, teacher_logits) -> torch.Tensor:
        cls_logits, dist_logits = heads
        if teacher_logits is None:
            return self._ce((cls_logits + dist_logits) / 2, targets)
        alpha = self.distillation['alpha']
        return (1 - alpha) * self._ce(cls_logits, targets) + alpha * distillation_loss(
            dist_logits, teacher_logits, self.distillation['type'], self.distillation['tau'])

    def train_step(self, data, optim_wrapper: OptimWrapperDict, wrapper: Optional[nn.Module] = None
                   ) -> Dict[str, torch.Tensor]:
        """One sandwich step: the largest, smallest and a random width, each with sampled
        blocks; their gradients add up, then the weights and the architecture parameters
        take one step each. Each pass is back-propagated at once (one graph in memory).

        Args:
            data: The data loader's batch.
            optim_wrapper (OptimWrapperDict): ``weights`` and ``arch`` (see
                :class:`SupernetOptimWrapperConstructor`).
            wrapper (nn.Module | None): The DDP wrapper around this model
                (:class:`~mmeff.slimming.wrapper.SupernetDDP` passes itself): every pass runs
                through it, so that its reducer sees the pass, and all but the last under its
                ``no_sync``: the gradients of the three passes are all-reduced once, in the
                last backward.
        """
        if not isinstance(optim_wrapper, OptimWrapperDict) or \
                set(optim_wrapper.keys()) != {'weights', 'arch'}:
            raise TypeError("SlimmingSupernet needs two optimisers: optim_wrapper=dict("
                            "constructor='SupernetOptimWrapperConstructor', weights=dict("
                            "optimizer=...), arch=dict(optimizer=...))")
        weights, arch = optim_wrapper['weights'], optim_wrapper['arch']
        scaler = _check_wrappers(weights, arch)
        forward = self if wrapper is None else wrapper
        data = self.data_preprocessor(data, True)
        inputs = data['inputs']
        log_vars = {}
        with weights.optim_context(self):
            inputs, targets, teacher_logits = self._prepare_batch(
                inputs, gt_labels(data['data_samples'], inputs.device))
        passes = list(self.sandwich_widths().items())
        for i, (name, idx) in enumerate(passes):
            sync = wrapper is None or i == len(passes) - 1
            with (nullcontext() if sync else wrapper.no_sync()):
                with weights.optim_context(self):
                    heads = forward(inputs, mode='sampled', width_idx=idx)
                    loss = self._pass_loss(heads, targets, teacher_logits)
                weights.backward(loss)  # scaled by the one loss scaler under fp16 AMP
            log_vars[f'loss_{name}'] = loss.detach()
        if scaler is None:
            weights.step()
            arch.step()
        else:
            # One scaler for both optimisers (torch's recipe for several optimisers): unscale
            # each, step each through it (skipped when its gradients hold inf/NaN), update once.
            for w in (weights, arch):
                scaler.unscale_(w.optimizer)
                if w.clip_grad_kwargs:
                    w._clip_grad()
            scaler.step(weights.optimizer)
            scaler.step(arch.optimizer)
            scaler.update(weights._scale_update_param)
        weights.zero_grad()
        arch.zero_grad()
        log_vars['loss'] = sum(log_vars.values())
        log_vars['temperature'] = torch.tensor(self.temperature)
        return log_vars


def _check_wrappers(weights: OptimWrapper, arch: OptimWrapper):
    """The loss scaler serving both optimisers (the weights wrapper's under fp16 AMP) or None;
    refuses pairs this step cannot drive correctly."""
    for name, w in (('weights', weights), ('arch', arch)):
        if type(w) not in (OptimWrapper, AmpOptimWrapper, BF16AutocastOptimWrapper):
            raise TypeError(f'supernet training supports OptimWrapper, AmpOptimWrapper (--amp '
                            f'on a GPU) and mmeff.BF16AutocastOptimWrapper (--amp on a CPU), '
                            f'got {type(w).__name__} for {name!r}')
    if type(arch) is AmpOptimWrapper:
        # Its own scaler would unscale the arch gradients by a factor they were not scaled by.
        raise TypeError("the 'arch' optimiser is stepped through the weights' loss scaler: "
                        "build it as a plain OptimWrapper (SupernetOptimWrapperConstructor "
                        "does under --amp)")
    if type(weights) is AmpOptimWrapper:
        if weights._accumulative_counts != 1 or arch._accumulative_counts != 1:
            raise ValueError('supernet training does not accumulate gradients over steps '
                             '(accumulative_counts must be 1)')
        return weights.loss_scaler
    return None


# ---------------------------------------------------------------------------- optimisers
@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class SupernetOptimWrapperConstructor:
    """Two optim wrappers for :class:`SlimmingSupernet`: ``weights`` over the backbone and the
    head (parameter names as in the model, so ``paramwise_cfg`` works as usual) and ``arch``
    over ``arch_logits``.

    Config::

        optim_wrapper = dict(
            constructor='SupernetOptimWrapperConstructor',
            weights=dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.025),
                         paramwise_cfg=dict(flat_decay_mult=0.)),
            arch=dict(optimizer=dict(type='Adam', lr=3e-4, betas=(0.5, 0.999))))
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        cfg = copy.deepcopy(dict(optim_wrapper_cfg))
        # Mixed precision (tools/train.py --amp sets the top-level type): the weights wrapper
        # gets it, with its loss scaler serving both optimisers (SlimmingSupernet.train_step);
        # the arch wrapper stays a plain OptimWrapper.
        amp = {k: cfg.pop(k) for k in ('type', 'loss_scale', 'dtype') if k in cfg}
        amp_type = amp.pop('type', 'OptimWrapper')
        if amp_type not in self.TOP_LEVEL_TYPES:
            raise ValueError(f'SupernetOptimWrapperConstructor: optim_wrapper.type must be one '
                             f'of {sorted(self.TOP_LEVEL_TYPES)} (set by --amp), got '
                             f'{amp_type!r}; put other settings inside optim_wrapper.weights')
        if amp and amp_type != 'AmpOptimWrapper':
            raise ValueError(f'optim_wrapper {sorted(amp)} only go with AmpOptimWrapper, '
                             f'the type is {amp_type!r}')
        keys = set(cfg)
        if keys != {'weights', 'arch'}:
            raise ValueError(f'SupernetOptimWrapperConstructor needs optim_wrapper keys '
                             f"'weights' and 'arch' (each a dict with 'optimizer'), got "
                             f'{sorted(keys)}')
        if paramwise_cfg is not None:
            raise ValueError('put paramwise_cfg inside optim_wrapper.weights (or .arch)')
        for name in ('weights', 'arch'):
            own = cfg[name].get('type', 'OptimWrapper')
            if own != 'OptimWrapper':
                raise ValueError(f'optim_wrapper.{name}.type must be OptimWrapper (or unset), '
                                 f'got {own!r}: mixed precision is chosen by --amp for both')
        if amp_type != 'OptimWrapper':
            cfg['weights'].update(type=amp_type, **amp)
        self.cfg = cfg

    TOP_LEVEL_TYPES = ('OptimWrapper', 'AmpOptimWrapper', 'mmeff.BF16AutocastOptimWrapper',
                       'BF16AutocastOptimWrapper')

    def _build(self, name: str, module: nn.Module) -> OptimWrapper:
        cfg = copy.deepcopy(dict(self.cfg[name]))
        paramwise = cfg.pop('paramwise_cfg', None)
        return DefaultOptimWrapperConstructor(cfg, paramwise)(module)

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        if is_model_wrapper(model):
            model = model.module
        if not isinstance(model, SlimmingSupernet):
            raise TypeError(f'SupernetOptimWrapperConstructor is for SlimmingSupernet, got '
                            f'{type(model).__name__}')
        weights = nn.ModuleDict(dict(backbone=model.backbone, head=model.head))
        return OptimWrapperDict(weights=self._build('weights', weights),
                                arch=self._build('arch', model.arch_logits))


# ---------------------------------------------------------------------------- functions
def _unwrap(model: nn.Module) -> SlimmingSupernet:
    if is_model_wrapper(model):
        model = model.module
    if not isinstance(model, SlimmingSupernet):
        raise TypeError(f'expected a SlimmingSupernet, got {type(model).__name__}')
    return model


def check_space(fingerprint: Optional[str], space: SearchSpace, source: str) -> None:
    """Raise :class:`SpaceMismatchError` unless ``fingerprint`` is ``space``'s."""
    if fingerprint is None:
        raise SpaceMismatchError(
            f'{source} records no search space: it is not a SlimmingSupernet checkpoint '
            f'(train one with tools/train.py configs/slimming/supernet_*.py)')
    if fingerprint == space.fingerprint():
        return
    try:
        theirs = json.loads(fingerprint)
    except (TypeError, ValueError):
        theirs = {}
    ours = space.to_dict()
    diff = [f'{k}: {theirs.get(k)!r} vs {ours.get(k)!r}' for k in sorted(ours)
            if theirs.get(k) != ours.get(k)]
    raise SpaceMismatchError(
        f'{source} is a supernet of another search space ({theirs.get("name", "?")!r}, asked '
        f'for {space.name!r}); differences (checkpoint vs asked): {"; ".join(diff)}. Use the '
        f'space the supernet was trained on, or train a supernet for this space')


def check_checkpoint_space(model: nn.Module, checkpoint: dict, source: str) -> None:
    """Raise :class:`SpaceMismatchError` when ``model`` is a supernet and ``checkpoint`` (a
    loaded file) is not one of its space; nothing for other models. Checked before the
    generic key/shape comparison, which would only list mismatched tensors."""
    model = model.module if is_model_wrapper(model) else model
    if not isinstance(model, SlimmingSupernet):
        return
    from mmeff.checkpoint import mmengine_state_dict
    check_space(space_fingerprint_of(mmengine_state_dict(checkpoint).get('_extra_state')),
                model.space, repr(source))


def load_supernet(checkpoint: Union[str, dict], space: Union[str, dict, SearchSpace],
                  **kwargs) -> SlimmingSupernet:
    """A :class:`SlimmingSupernet` of ``space`` with the weights of a supernet checkpoint (a file
    saved by tools/train.py, or its loaded dict).

    Args:
        checkpoint (str | dict): The checkpoint.
        space (str | dict | SearchSpace): The space it must have been trained on.
        **kwargs: Other :class:`SlimmingSupernet` arguments (``num_classes`` is read from the
            checkpoint).

    Raises:
        SpaceMismatchError: the checkpoint is from another space, or not a supernet's.
    """
    from mmeff.checkpoint import mmengine_state_dict, read_checkpoint
    source = repr(checkpoint) if isinstance(checkpoint, str) else 'the checkpoint'
    ckpt = read_checkpoint(checkpoint) if isinstance(checkpoint, str) else checkpoint
    sd = mmengine_state_dict(ckpt)
    space = get_space(space)
    check_space(space_fingerprint_of(sd.get('_extra_state')), space, source)
    kwargs.setdefault('num_classes', int(sd['head.head.weight'].shape[0]))
    model = SlimmingSupernet(space=space, init_cfg=None, **kwargs)
    model.load_state_dict(sd, strict=True)
    return model


@torch.no_grad()
def importance(model: nn.Module) -> dict:
    """Trained importance of every MetaPath and stage.

    Returns:
        dict: ``probs`` (per stage, per position, ``{choice: probability}``, the softmax of
        the logits), ``positions`` (per stage, per position, the probability of a real block,
        ``1 - p(id)``) and ``stages`` (per stage, the sum over its positions).
    """
    model = _unwrap(model)
    probs, positions, stages = [], [], []
    for s, logits in enumerate(model.arch_logits):
        names = model.space.positions(s)
        p = logits.detach().float().softmax(dim=-1).cpu()
        probs.append([{n: float(row[k]) for k, n in enumerate(names)} for row in p])
        positions.append([1. - d['id'] for d in probs[-1]])
        stages.append(float(sum(positions[-1])))
    return dict(space=model.space.name, probs=probs, positions=positions, stages=stages)


def extract_subnet(model: nn.Module, choices: dict) -> Dict[str, torch.Tensor]:
    """The weights of the network ``choices``, sliced out of the supernet, as an
    :class:`~mmeff.models.EfficientFormerClassifier` state dict (``backbone.stem...``,
    ``backbone.stages.<i>.downsample...``, ``backbone.stages.<i>.blocks.<k>...`` over the real
    blocks, ``head.norm/head/dist_head``), for
    ``EfficientFormerClassifier(backbone=dict(arch=space.to_arch(choices)), num_classes=N)``
    with ``strict=True``. Tensors are copies."""
    model = _unwrap(model)
    space = model.space
    space.validate(choices)
    widths = model.widths_of(choices['width_idx'])
    sd = model.state_dict()
    out: Dict[str, torch.Tensor] = {}

    def take(src: str, dst: str, c_out: Optional[int], c_in: Optional[int] = None):
        """Every tensor under ``src`` sliced to (c_out, c_in) on its first two dims."""
        for key, t in sd.items():
            if not key.startswith(src + '.') or not isinstance(t, torch.Tensor):
                continue
            name = key[len(src) + 1:]
            if t.dim() >= 1 and c_out is not None and not name.endswith('num_batches_tracked'):
                t = t[:c_out]
                if t.dim() >= 2 and c_in is not None:
                    t = t[:, :c_in]
            out[f'{dst}.{name}'] = t.clone()

    c0 = widths[0]
    take('backbone.stem.conv1', 'backbone.stem.conv1', c0 // 2)
    take('backbone.stem.norm1', 'backbone.stem.norm1', c0 // 2)
    take('backbone.stem.conv2', 'backbone.stem.conv2', c0, c0 // 2)
    take('backbone.stem.norm2', 'backbone.stem.norm2', c0)
    for s, c in enumerate(widths):
        pre, dst = f'backbone.stages.{s}', f'backbone.stages.{s}'
        if s > 0:
            take(f'{pre}.downsample.conv', f'{dst}.downsample.conv', c, widths[s - 1])
            take(f'{pre}.downsample.norm', f'{dst}.downsample.norm', c)
        hidden = int(c * space.mlp_ratios[s])
        k = 0
        for j, choice in enumerate(choices['blocks'][s]):
            if choice == 'id':
                continue
            src, blk = f'{pre}.positions.{j}.{choice}', f'{dst}.blocks.{k}'
            k += 1
            for name in ('ls1', 'ls2'):
                take(f'{src}.{name}', f'{blk}.{name}', c)
            take(f'{src}.mlp.fc1', f'{blk}.mlp.fc1', hidden, c)
            take(f'{src}.mlp.fc2', f'{blk}.mlp.fc2', c, hidden)
            if choice == 'mb4d':
                take(f'{src}.mlp.norm1', f'{blk}.mlp.norm1', hidden)
                take(f'{src}.mlp.norm2', f'{blk}.mlp.norm2', c)
            else:
                take(f'{src}.norm1', f'{blk}.norm1', c)
                take(f'{src}.norm2', f'{blk}.norm2', c)
                attn, dattn = f'{src}.token_mixer', f'{blk}.token_mixer'
                out[f'{dattn}.qkv.weight'] = sd[f'{attn}.qkv.weight'][:, :c].clone()
                out[f'{dattn}.qkv.bias'] = sd[f'{attn}.qkv.bias'].clone()
                take(f'{attn}.proj', f'{dattn}.proj', c)
                out[f'{dattn}.attention_biases'] = sd[f'{attn}.attention_biases'].clone()
    c = widths[-1]
    take('head.norm', 'head.norm', c)
    for name in ('head', 'dist_head'):
        out[f'head.{name}.weight'] = sd[f'head.{name}.weight'][:, :c].clone()
        out[f'head.{name}.bias'] = sd[f'head.{name}.bias'].clone()
    return out


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, choices: Optional[dict] = None
                   ) -> nn.Module:
    """Re-estimate the BN running statistics for the network ``choices`` (default: the model's
    ``eval_choices``) from ``batches`` (image tensors or the data loader's dicts): the
    statistics are shared between widths and blocks during training, so they fit no single
    subnet. Resets them, averages over all batches (cumulative average), and leaves the
    model in eval mode.
    """
    model = _unwrap(model)
    choices = model.eval_choices if choices is None else choices
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    seen = 0
    try:
        for batch in batches:
            if isinstance(batch, dict):
                batch = model.data_preprocessor(batch, False)['inputs']
            model.forward_choices(batch, choices)
            seen += 1
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.eval()
    if not seen:
        raise ValueError('recalibrate_bn got no batches')
    return model


__all__ = ['ATTN_RESOLUTIONS', 'MetaPath', 'SlimmingSupernet', 'SpaceMismatchError',
           'SupernetOptimWrapperConstructor', 'check_space', 'extract_subnet', 'importance',
           'load_supernet', 'recalibrate_bn', 'space_fingerprint_of', 'check_checkpoint_space']
