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
"""
import copy
import json
import random
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModel, is_model_wrapper
from mmengine.optim import (DefaultOptimWrapperConstructor, OptimWrapper, OptimWrapperDict)
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.structures import BaseDataElement

from mmeff.models.backbones.efficientformer import Downsample, Stem
from mmeff.models.classifiers.efficientformer_classifier import EfficientFormerClsHead, gt_labels
from mmeff.models.layers import Meta3D, Meta4D
from mmeff.registry import MODELS
from .space import SearchSpace, get_space

# Token grid the MB3D bias tables are learned on: a 224 input at stride 16 (stage 3) and 32
# (stage 4), as the backbone builds them, so that extracted tables load unchanged.
ATTN_RESOLUTIONS = {2: 14, 3: 7}
SANDWICH = ('max', 'min', 'random')


class SpaceMismatchError(ValueError):
    """A supernet checkpoint made for another search space."""


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

    # ------------------------------------------------------------------ state
    def get_extra_state(self) -> dict:
        # The space travels with every checkpoint (plain JSON text): loading into a supernet
        # of another space is refused by name (set_extra_state, load_supernet).
        return dict(space=self.space.fingerprint())

    def set_extra_state(self, state) -> None:
        theirs = state.get('space') if isinstance(state, dict) else None
        check_space(theirs, self.space, 'the checkpoint')

    def set_eval_choices(self, choices: dict) -> None:
        """The network that inference (``mode='tensor'``/``'predict'``) runs."""
        self.space.validate(choices)
        self.eval_choices = copy.deepcopy(choices)

    def widths_of(self, width_idx: Sequence[int]) -> List[int]:
        return [self.space.widths[s][i] for s, i in enumerate(width_idx)]

    # ------------------------------------------------------------------ sampling
    def sample_blocks(self):
        """Hard Gumbel-softmax samples of every position under the single-switch rule (masked
        in reverse network order, see the module docstring). Returns ``(blocks, gates)``."""
        space = self.space
        blocks = [[None] * d for d in space.max_depths]
        gates = [[None] * d for d in space.max_depths]
        later_mb4d = False
        for s in reversed(range(space.num_stages)):
            names = space.positions(s)
            real_later = False
            for j in reversed(range(space.max_depths[s])):
                allowed = [not (n == 'mb3d' and later_mb4d) and
                           not (n == 'id' and j == 0 and not real_later) for n in names]
                mask = torch.tensor(allowed, device=self.arch_logits[s].device)
                logits = self.arch_logits[s][j].masked_fill(~mask, float('-inf'))
                gate = F.gumbel_softmax(logits, tau=self.temperature, hard=True)
                name = names[int(gate.argmax())]
                blocks[s][j], gates[s][j] = name, (gate, allowed)
                later_mb4d |= name == 'mb4d'
                real_later |= name != 'id'
        return blocks, gates

    def sandwich_widths(self) -> Dict[str, List[int]]:
        """Width indices of the three sandwich passes: largest, smallest, random (python's
        ``random``, which mmengine seeds)."""
        return dict(max=[len(w) - 1 for w in self.space.widths],
                    min=[0] * self.space.num_stages,
                    random=[random.randrange(len(w)) for w in self.space.widths])

    # ------------------------------------------------------------------ forward
    def forward_choices(self, inputs: torch.Tensor, choices: dict) -> torch.Tensor:
        """Eval logits (average of the two heads) of the fixed network ``choices``."""
        self.space.validate(choices)
        x = self.backbone(inputs, self.widths_of(choices['width_idx']), choices['blocks'])
        return self._logits(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        head = self.head
        t = _ln(head.norm, x.flatten(2).transpose(1, 2)).mean(dim=1)
        t = head.drop(t)
        return (_linear(head.head, t) + _linear(head.dist_head, t)) / 2

    def forward_sampled(self, inputs: torch.Tensor, width_idx: Sequence[int]) -> torch.Tensor:
        """Logits of a Gumbel-sampled network at the widths ``width_idx`` (training)."""
        blocks, gates = self.sample_blocks()
        return self._logits(self.backbone(inputs, self.widths_of(width_idx), blocks, gates))

    def forward(self, inputs: torch.Tensor, data_samples: Optional[List[BaseDataElement]] = None,
                mode: str = 'tensor'):
        """``'tensor'``: logits of ``eval_choices``; ``'loss'``: the sandwich losses (one graph;
        training uses :meth:`train_step`); ``'predict'``: data samples with scores."""
        if mode == 'tensor':
            return self.forward_choices(inputs, self.eval_choices)
        if mode == 'loss':
            if torch.distributed.is_available() and torch.distributed.is_initialized() and \
                    torch.distributed.get_world_size() > 1:
                # mmengine's DDP wrapper would call this and then one optimiser step on the
                # pair of optimisers; the sandwich step (train_step) needs the model itself.
                raise NotImplementedError(
                    'multi-process (DDP) supernet training is not supported yet: train with '
                    'tools/train.py (one process, one GPU)')
            labels = gt_labels(data_samples, inputs.device)
            return {f'loss_{name}': self._ce(self.forward_sampled(inputs, idx), labels)
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

    def _ce(self, logits, labels):
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)

    def train_step(self, data, optim_wrapper: OptimWrapperDict) -> Dict[str, torch.Tensor]:
        """One sandwich step: the largest, smallest and a random width, each with sampled
        blocks; their gradients add up, then the weights and the architecture parameters
        take one step each. Each pass is back-propagated at once (one graph in memory)."""
        if not isinstance(optim_wrapper, OptimWrapperDict) or \
                set(optim_wrapper.keys()) != {'weights', 'arch'}:
            raise TypeError("SlimmingSupernet needs two optimisers: optim_wrapper=dict("
                            "constructor='SupernetOptimWrapperConstructor', weights=dict("
                            "optimizer=...), arch=dict(optimizer=...))")
        for wrapper in optim_wrapper.values():
            if type(wrapper) is not OptimWrapper:
                # The two wrappers would scale and unscale one backward pass each by their
                # own loss scale.
                raise TypeError(f'supernet training supports plain OptimWrapper only (no '
                                f'--amp), got {type(wrapper).__name__}')
        weights, arch = optim_wrapper['weights'], optim_wrapper['arch']
        data = self.data_preprocessor(data, True)
        inputs = data['inputs']
        labels = gt_labels(data['data_samples'], inputs.device)
        log_vars = {}
        with weights.optim_context(self):
            for name, idx in self.sandwich_widths().items():
                loss = self._ce(self.forward_sampled(inputs, idx), labels)
                weights.backward(loss)
                log_vars[f'loss_{name}'] = loss.detach()
        weights.step()
        arch.step()
        weights.zero_grad()
        arch.zero_grad()
        log_vars['loss'] = sum(log_vars.values())
        log_vars['temperature'] = torch.tensor(self.temperature)
        return log_vars


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
        if 'Amp' in str(optim_wrapper_cfg.get('type', '')):
            raise ValueError('supernet training does not support --amp / AmpOptimWrapper: the '
                             'weights and the architecture logits have separate optimisers '
                             'that one loss scale cannot serve; train in fp32')
        keys = set(optim_wrapper_cfg)
        if keys != {'weights', 'arch'}:
            raise ValueError(f'SupernetOptimWrapperConstructor needs optim_wrapper keys '
                             f"'weights' and 'arch' (each a dict with 'optimizer'), got "
                             f'{sorted(keys)}')
        if paramwise_cfg is not None:
            raise ValueError('put paramwise_cfg inside optim_wrapper.weights (or .arch)')
        self.cfg = copy.deepcopy(dict(optim_wrapper_cfg))

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
    extra = sd.get('_extra_state')
    check_space(extra.get('space') if isinstance(extra, dict) else None, space, source)
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
           'load_supernet', 'recalibrate_bn']
