"""Latency budgets of a slimming search: absolute, or relative to a reference network.

An absolute budget (``2.5`` or ``2.5ms``) is milliseconds on the machine the latency table was
measured on: it does not travel to another machine, nor to the same machine under other load.
A relative budget (``0.8x``) is that fraction of the latency the table predicts for a
reference network, the full supernet by default or a named network of the space (``l1``,
``l3``, ``l7`` where the space contains them): the same command then asks for networks of the
same relative speed on any machine. Relative budgets are resolved with the same table the
search predicts with, so a budget and the latencies it is compared with come from one table.
"""
import math
import re
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from .space import get_space

SUPERNET = 'supernet'
_BUDGET_RE = re.compile(r'^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)\s*(ms|x)?\s*$',
                        re.IGNORECASE)


class Budget(NamedTuple):
    """One budget as given: ``value`` ms (``relative`` False) or ``value`` times the reference
    network's latency (``relative`` True); ``text`` is the canonical spelling (``'2.5'``,
    ``'0.8x'``)."""
    value: float
    relative: bool
    text: str


def parse_budget(text) -> Budget:
    """A :class:`Budget` from ``'2.5'``, ``'2.5ms'``, ``'0.8x'`` or a number (milliseconds).

    Raises:
        ValueError: not such a spelling, or not a positive finite number.
    """
    if isinstance(text, bool):
        raise ValueError(f'latency budget {text!r} is not a number of milliseconds or a '
                         f"fraction such as '0.8x'")
    if isinstance(text, (int, float)):
        value, relative = float(text), False
    else:
        m = _BUDGET_RE.match(str(text))
        if m is None:
            raise ValueError(f"latency budget {text!r} is neither milliseconds ('2.5', "
                             f"'2.5ms') nor a fraction of a reference network's latency "
                             f"('0.8x')")
        value, relative = float(m.group(1)), (m.group(2) or '').lower() == 'x'
    if not math.isfinite(value) or value <= 0:
        kind = 'fractions (such as 0.8x)' if relative else 'numbers of milliseconds'
        raise ValueError(f'latency budgets must be positive finite {kind}, got {text!r}')
    return Budget(value, relative, f'{value:g}x' if relative else f'{value:g}')


def parse_budgets(texts: Sequence) -> List[Budget]:
    """:func:`parse_budget` of each, duplicates (same spelling) dropped, order kept.

    Raises:
        ValueError: no budget, or a bad one (named).
    """
    if not texts:
        raise ValueError("give at least one latency budget: milliseconds ('2.5') or a "
                         "fraction of a reference network's latency ('0.8x')")
    out: List[Budget] = []
    for text in texts:
        budget = parse_budget(text)
        if budget.text not in [b.text for b in out]:
            out.append(budget)
    return out


def reference_names(space) -> List[str]:
    """The networks relative budgets may refer to in ``space``: ``'supernet'`` and each
    EfficientFormer (V1) variant the space contains."""
    from mmeff.models.backbones.efficientformer import EfficientFormer
    space = get_space(space)
    names = [SUPERNET]
    for name, setting in EfficientFormer.arch_settings.items():
        if space.contains_arch(_variant_arch(setting, space)):
            names.append(name)
    return names


def _variant_arch(setting: dict, space) -> dict:
    arch = {k: setting[k] for k in ('depths', 'widths', 'num_vit') if k in setting}
    arch['mlp_ratios'] = list(space.mlp_ratios)
    return arch


def reference_arch(space, name: str) -> dict:
    """The arch dict of the reference network ``name`` (see :func:`reference_names`).

    Raises:
        ValueError: ``name`` is not a network of the space (the valid names are listed).
    """
    space = get_space(space)
    if name == SUPERNET:
        return space.to_arch(space.max_choices())
    from mmeff.models.backbones.efficientformer import EfficientFormer
    valid = reference_names(space)
    if name not in valid:
        known = name in EfficientFormer.arch_settings
        why = (f'EfficientFormer-{name.upper()} is not a network of the search space '
               f'{space.name!r}' if known else f'unknown reference network {name!r}')
        raise ValueError(f'{why}: relative budgets (such as 0.8x) refer to one of {valid} '
                         f'(--relative-to)')
    return space.to_arch(space.choices_for_arch(
        _variant_arch(EfficientFormer.arch_settings[name], space)))


def resolve_budgets(budgets: Sequence, space, predict_latency: Callable[[dict], float],
                    relative_to: str = SUPERNET
                    ) -> Tuple[List[float], Dict[str, str], Optional[dict]]:
    """Milliseconds of every budget, relative ones from ``predict_latency`` of the reference.

    Args:
        budgets (Sequence): :class:`Budget` objects or their spellings.
        space (SearchSpace | dict | str): The search space.
        predict_latency (callable): ``arch dict -> ms`` (the latency table's prediction).
        relative_to (str): The reference network of relative budgets (:func:`reference_names`).

    Returns:
        tuple: ``(ms, labels, reference)``: the budgets in ms (order kept), ``labels`` mapping
        the ``repr`` of each ms value to its spelling, and ``dict(name, arch, latency_ms)`` of the
        reference (``None`` when every budget is absolute).
    """
    budgets = [b if isinstance(b, Budget) else parse_budget(b) for b in budgets]
    reference = None
    if any(b.relative for b in budgets):
        arch = reference_arch(space, relative_to)
        reference = dict(name=relative_to, arch=arch, latency_ms=float(predict_latency(arch)))
    ms, labels = [], {}
    for b in budgets:
        value = b.value * reference['latency_ms'] if b.relative else b.value
        # 4 significant digits: the value is shown in reports and configs; the search compares
        # predictions with it, and a table is not more precise than that
        value = float(f'{value:.4g}')
        if repr(value) not in labels:
            ms.append(value)
            labels[repr(value)] = b.text
    return ms, labels, reference


def budget_label(budget_ms: float, labels: Optional[Dict[str, str]]) -> str:
    """How a budget of ``budget_ms`` was given (``'0.8x'``, ``'2.5'``)."""
    return (labels or {}).get(repr(float(budget_ms)), f'{budget_ms:g}')


__all__ = ['Budget', 'SUPERNET', 'parse_budget', 'parse_budgets', 'reference_names',
           'reference_arch', 'resolve_budgets', 'budget_label']
