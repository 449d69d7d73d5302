"""Parameters and MACs (multiply-accumulates) of EfficientFormer models.

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


# The paper's (and timm's) figures for the ImageNet classifiers at 224x224.
PAPER = {
    'l1': dict(params_m=12.3, gmacs=1.3, top1=79.2, iphone12_ms=1.6),
    'l3': dict(params_m=31.3, gmacs=3.9, top1=82.4, iphone12_ms=3.0),
    'l7': dict(params_m=82.1, gmacs=10.2, top1=83.3, iphone12_ms=7.0),
}
TIMM = {'l1': dict(params_m=12.29, gmacs=1.30), 'l3': dict(params_m=31.41, gmacs=3.93),
        'l7': dict(params_m=82.23, gmacs=10.17)}


def arch_label(arch: Union[str, dict]) -> str:
    """A row label: the name of a named arch, the compact JSON of an arch dict."""
    return arch if isinstance(arch, str) else json.dumps(arch, separators=(',', ':'))


def complexity_table(archs: Sequence[Union[str, dict]] = ('l1', 'l3', 'l7'),
                     input_size: Tuple[int, int] = (224, 224),
                     with_head: bool = True) -> Dict[str, dict]:
    """Params (M) and GMACs of each arch (a name or an arch dict, e.g. a slimmed network's),
    with the classification head by default; rows are keyed by :func:`arch_label`."""
    from mmeff.models import EfficientFormer
    rows = {}
    for arch in archs:
        if with_head:
            from mmeff.models.classifiers import EfficientFormerClassifier
            model = EfficientFormerClassifier(backbone=dict(arch=arch), num_classes=1000)
            model = model.as_inference_module()
        else:
            model = EfficientFormer(arch, out_indices=(3,), out_norm_cfg=None)
        x = torch.zeros(1, 3, *input_size)
        rows[arch_label(arch)] = dict(params_m=count_params(model) / 1e6,
                          gmacs=count_macs(model, x) / 1e9)
    return rows
