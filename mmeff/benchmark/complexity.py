"""Parameters and MACs (multiply-accumulates) of EfficientFormer (V1) and EfficientFormerV2,
beside the papers' and timm's figures (``PAPER``, ``TIMM``: read from the family registry,
``mmeff.models.families``, where each family's paper is cited).

MACs are counted by mmengine's ``FlopAnalyzer`` (fvcore's rules: one multiply-add counts
once, so its "flops" are MACs, the unit of the paper's GMACs column), by tracing the model.
"""
import json
from typing import Dict, Optional, Sequence, Tuple, Union

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


def _families():
    from mmeff.models.families import FAMILIES
    return FAMILIES


def __getattr__(name: str):
    # The figures live in the family registry (``mmeff.models.families``: ``paper`` and
    # ``timm_figures`` of each family); these tables are read from it when first asked for,
    # so that importing this module does not import the models.
    if name == 'PAPER':  # the papers' figures at 224x224, every family's archs
        return {a: dict(f) for fam in _families().values() for a, f in fam.paper.items()}
    if name == 'TIMM':  # timm's figures (its results list; V2 params with both heads)
        return {a: dict(f) for fam in _families().values() for a, f in fam.timm_figures.items()}
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def _family_of_arch(arch: str):
    from mmeff.models.families import family_of_arch
    return family_of_arch(arch)


def timm_name(arch: str) -> str:
    """timm's model name of a named arch: ``efficientformer_l1``, ``efficientformerv2_s0``;
    ``ValueError`` listing every family's archs for another name."""
    return _family_of_arch(arch).timm_name(arch)


def display_name(arch: str) -> str:
    """How the papers name a variant: ``'L1'``, ``'V2-S0'``, ``'V2-L'`` (V2's L is not V1's);
    an unknown name in upper case."""
    try:
        return _family_of_arch(arch).display_name(arch)
    except ValueError:
        return str(arch).upper()


def backbone_type(arch: Union[str, dict]) -> str:
    """The registry type of the family of a named arch (``'mmeff.EfficientFormerV2'`` for
    s0, s1, s2, l), else ``'mmeff.EfficientFormer'`` (unknown names and arch dicts, e.g. a
    slimmed network's: the slimming search space is V1's)."""
    if isinstance(arch, str):
        try:
            return _family_of_arch(arch).type
        except ValueError:
            pass
    return _families()['EfficientFormer'].type


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


def complexity_table(archs: Optional[Sequence[Union[str, dict]]] = None,
                     input_size: Tuple[int, int] = (224, 224),
                     with_head: bool = True) -> Dict[str, dict]:
    """Params (M) and GMACs of each arch (a name of any family, or a V1 arch dict, e.g. a
    slimmed network's; default: V1's named archs), with the classification head by default;
    rows are keyed by :func:`arch_label`."""
    if archs is None:
        archs = _families()['EfficientFormer'].archs
    from mmeff.models.families import family_of
    rows = {}
    for arch in archs:
        if isinstance(arch, str):
            arch = arch.lower()
            _family_of_arch(arch)  # a name no family has: ValueError listing every family's
        btype = backbone_type(arch)
        if with_head:
            from mmeff.models.classifiers import EfficientFormerClassifier
            model = EfficientFormerClassifier(backbone=dict(type=btype, arch=arch),
                                              num_classes=1000)
            model = model.as_inference_module()
        else:
            model = family_of(btype).cls(arch, out_indices=(3,), out_norm_cfg=None)
        x = torch.zeros(1, 3, *input_size)
        rows[arch_label(arch)] = dict(params_m=count_params(model) / 1e6,
                                      gmacs=count_macs(model, x) / 1e9)
    return rows
