"""Parameters and MACs (multiply-accumulates) of EfficientFormer (V1) and EfficientFormerV2.

MACs are counted by mmengine's ``FlopAnalyzer`` (fvcore's rules: one multiply-add counts
once, so its "flops" are MACs, the unit of the paper's GMACs column), by tracing the model.
"""
import json
from typing import Dict, Sequence, Tuple, Union

import torch
import torch.nn as nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, inputs) -> int:
    """MACs of one forward pass of ``model`` on ``inputs`` (a tensor or a tuple of them)."""
    from mmengine.analysis import FlopAnalyzer
    was_training = model.training
    model.eval()
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    total = analyzer.total()
    model.train(was_training)
    return int(total)


V1_ARCHS = ('l1', 'l3', 'l7')
V2_ARCHS = ('s0', 's1', 's2', 'l')

# The papers' figures for the ImageNet classifiers at 224x224 (V1: Li et al., NeurIPS 2022;
# V2: Li et al., ICCV 2023 and the authors' README, see ../shared/PAPER-V2.md). V2's top-1 is
# the 300-epoch figure (``top1_450``: 450 epochs); iPhone 12 = Core ML, iOS 16, all units.
PAPER = {
    'l1': dict(params_m=12.3, gmacs=1.3, top1=79.2, iphone12_ms=1.6),
    'l3': dict(params_m=31.3, gmacs=3.9, top1=82.4, iphone12_ms=3.0),
    'l7': dict(params_m=82.1, gmacs=10.2, top1=83.3, iphone12_ms=7.0),
    's0': dict(params_m=3.5, gmacs=0.40, top1=75.7, top1_450=76.2, iphone12_ms=0.9),
    's1': dict(params_m=6.1, gmacs=0.65, top1=79.0, top1_450=79.7, iphone12_ms=1.1),
    's2': dict(params_m=12.6, gmacs=1.25, top1=81.6, top1_450=82.0, iphone12_ms=1.6),
    'l': dict(params_m=26.1, gmacs=2.56, top1=83.3, top1_450=83.5, iphone12_ms=2.7),
}
# timm's figures (its results csv; V2 params counted with both heads).
TIMM = {'l1': dict(params_m=12.29, gmacs=1.30), 'l3': dict(params_m=31.41, gmacs=3.93),
        'l7': dict(params_m=82.23, gmacs=10.17),
        's0': dict(params_m=3.60, gmacs=0.41), 's1': dict(params_m=6.19, gmacs=0.67),
        's2': dict(params_m=12.71, gmacs=1.27), 'l': dict(params_m=26.32, gmacs=2.59)}


def timm_name(arch: str) -> str:
    """timm's model name of a named arch: ``efficientformer_l1``, ``efficientformerv2_s0``."""
    arch = str(arch).lower()
    if arch in V2_ARCHS:
        return f'efficientformerv2_{arch}'
    if arch in V1_ARCHS:
        return f'efficientformer_{arch}'
    raise ValueError(f'{arch!r} is not a named EfficientFormer arch; choose from '
                     f'{V1_ARCHS + V2_ARCHS}')


def display_name(arch: str) -> str:
    """How the papers name a variant: ``'L1'``, ``'V2-S0'``, ``'V2-L'`` (V2's L is not V1's)."""
    return f'V2-{arch.upper()}' if str(arch).lower() in V2_ARCHS else str(arch).upper()


def backbone_type(arch: Union[str, dict]) -> str:
    """``'mmeff.EfficientFormerV2'`` for the V2 names (s0, s1, s2, l), else
    ``'mmeff.EfficientFormer'`` (V1 names and arch dicts, e.g. a slimmed network's)."""
    return ('mmeff.EfficientFormerV2' if isinstance(arch, str) and arch.lower() in V2_ARCHS
            else 'mmeff.EfficientFormer')


def arch_label(arch: Union[str, dict]) -> str:
    """A row label: the name of a named arch, the compact JSON of an arch dict."""
    return arch if isinstance(arch, str) else json.dumps(arch, separators=(',', ':'))


def timm_complexity(arch: str, input_size: Tuple[int, int] = (224, 224)) -> dict:
    """Params (M, both heads) and GMACs of timm's model of ``arch``, counted here the same way
    (timm builds a model for one input size: it is built for ``input_size``)."""
    import timm
    model = timm.create_model(timm_name(arch), pretrained=False, img_size=tuple(input_size))
    x = torch.zeros(1, 3, *input_size)
    return dict(params_m=count_params(model) / 1e6, gmacs=count_macs(model, x) / 1e9)


def complexity_table(archs: Sequence[Union[str, dict]] = V1_ARCHS,
                     input_size: Tuple[int, int] = (224, 224),
                     with_head: bool = True) -> Dict[str, dict]:
    """Params (M) and GMACs of each arch (a name, V1 or V2, or a V1 arch dict, e.g. a
    slimmed network's), with the classification head by default; rows are keyed by
    :func:`arch_label`."""
    from mmeff.models import EfficientFormer, EfficientFormerV2
    rows = {}
    for arch in archs:
        if isinstance(arch, str):
            arch = arch.lower()
            timm_name(arch)  # a name no family has: ValueError listing both families' names
        btype = backbone_type(arch)
        if with_head:
            from mmeff.models.classifiers import EfficientFormerClassifier
            model = EfficientFormerClassifier(backbone=dict(type=btype, arch=arch),
                                              num_classes=1000)
            model = model.as_inference_module()
        else:
            cls = EfficientFormerV2 if btype.endswith('V2') else EfficientFormer
            model = cls(arch, out_indices=(3,), out_norm_cfg=None)
        x = torch.zeros(1, 3, *input_size)
        rows[arch_label(arch)] = dict(params_m=count_params(model) / 1e6,
                                      gmacs=count_macs(model, x) / 1e9)
    return rows
