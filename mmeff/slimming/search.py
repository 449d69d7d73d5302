"""The greedy slimming search of latency-driven slimming (paper, section 4.3): pure functions over
plain data.

From the full supernet, every step looks at the paper's three actions:

* ``'to_identity'``: the least important remaining MetaPath (a position whose choice is not
  ``'id'``) becomes identity;
* ``'mb3d_to_mb4d'``: the first MB3D block of the network becomes MB4D (the single 4D->3D
  switch moves one block later, so the rule still holds);
* ``'shrink_width'``: the least important stage loses one width step (``width_idx - 1``).

Each action's latency saving comes from ``predict_latency`` (the latency lookup table) and its
accuracy drop from ``estimate_accuracy`` (the supernet's subnet with inherited weights); the
action with the smallest accuracy drop per millisecond saved is applied. The search goes on
until the predicted latency meets every budget, largest first: one trajectory yields the
whole family. Nothing here measures, trains or reads files: the callables are injected, the
space, choices, importance and trajectory are plain (JSON-able) data.

Importance (from the supernet, :func:`mmeff.slimming.supernet.importance`) is
``dict(blocks=[[score per position] per stage])`` (the trained probability of the position's
non-identity choices; the key may also be ``positions``, as the supernet writes it). A stage's
importance is the sum of the scores of its *remaining* (non-identity) positions in the current
network, so that a stage loses importance as its blocks go; other keys (such as the supernet's
``stages``, sums over every position) are ignored.
"""
import copy
import itertools
import json
import math
from typing import Callable, Dict, List, Optional, Sequence, Union

from .space import SearchSpace, get_space

ACTIONS = ('to_identity', 'mb3d_to_mb4d', 'shrink_width')
TRAJECTORY_FORMAT = 'mmeff-slimming-trajectory'
TRAJECTORY_VERSION = 1


def _position_scores(importance: dict) -> List[List[float]]:
    """``importance['blocks']``, or ``importance['positions']`` as
    :func:`mmeff.slimming.supernet.importance` names it."""
    if not isinstance(importance, dict):
        return None
    blocks = importance.get('blocks')
    return importance.get('positions') if blocks is None else blocks


def _check_importance(space: SearchSpace, importance: dict) -> None:
    blocks = _position_scores(importance)
    if blocks is None or len(blocks) != space.num_stages or any(
            len(b) != d for b, d in zip(blocks, space.max_depths)):
        raise ValueError(f'importance must be dict(blocks=[[score per position] per stage]) '
                         f'shaped like the space (positions {space.max_depths}), got '
                         f'{importance!r}')


def stage_importance(space: SearchSpace, choices: dict, importance: dict) -> List[float]:
    """Per-stage importance: the sum of the scores of each stage's remaining (non-identity)
    positions in ``choices``."""
    _check_importance(space, importance)
    return [float(sum(score for score, c in zip(_position_scores(importance)[s],
                                                choices['blocks'][s])
                      if c != 'id')) for s in range(space.num_stages)]


def _valid(space: SearchSpace, choices: dict) -> bool:
    try:
        space.validate(choices)
        return True
    except ValueError:
        return False


def candidate_actions(space, choices: dict, importance: dict) -> List[dict]:
    """The paper's slimming actions from ``choices``, each with the choice dict it leads to.

    Only actions giving a valid network are returned (:meth:`SearchSpace.validate`): the
    MetaPath made identity is the least important one whose removal keeps a real block in its
    stage, the stage that shrinks is the least important one not already at its smallest width.
    Ties go to the earliest stage and position.

    Args:
        space (SearchSpace | dict | str): The search space.
        choices (dict): The current network, ``dict(blocks=..., width_idx=...)`` (not modified).
        importance (dict): ``dict(blocks=[[score per position] per stage])`` (see the module
            docstring).

    Returns:
        list[dict]: In the order of ``ACTIONS`` (at most one of each): ``dict(action=...,
        target=dict(...), description=str, choices=new choice dict)``.
    """
    space = get_space(space)
    space.validate(choices)
    _check_importance(space, importance)
    blocks, width_idx = choices['blocks'], choices['width_idx']
    actions = []

    # (a) the least important removable MetaPath becomes identity
    best = None
    for s in range(space.num_stages):
        for j, c in enumerate(blocks[s]):
            if c == 'id':
                continue
            new = copy.deepcopy(choices)
            new['blocks'][s][j] = 'id'
            if not _valid(space, new):
                continue
            score = float(_position_scores(importance)[s][j])
            if best is None or score < best[0]:
                best = (score, s, j, c, new)
    if best is not None:
        score, s, j, c, new = best
        actions.append(dict(
            action='to_identity', target=dict(stage=s, position=j, was=c, importance=score),
            description=f'stage {s + 1} position {j}: {c} -> identity (importance {score:.4g})',
            choices=new))

    # (b) the first MB3D block becomes MB4D
    first = next(((s, j) for s in range(space.num_stages) for j, c in enumerate(blocks[s])
                  if c == 'mb3d'), None)
    if first is not None:
        s, j = first
        new = copy.deepcopy(choices)
        new['blocks'][s][j] = 'mb4d'
        if _valid(space, new):
            actions.append(dict(action='mb3d_to_mb4d', target=dict(stage=s, position=j),
                                description=f'stage {s + 1} position {j}: first mb3d -> mb4d',
                                choices=new))

    # (c) the least important stage that can shrink loses one width step
    scores = stage_importance(space, choices, importance)
    shrinkable = [s for s in range(space.num_stages) if width_idx[s] > 0]
    if shrinkable:
        s = min(shrinkable, key=lambda i: (scores[i], i))
        new = copy.deepcopy(choices)
        new['width_idx'][s] -= 1
        old_w, new_w = space.widths[s][width_idx[s]], space.widths[s][width_idx[s] - 1]
        actions.append(dict(
            action='shrink_width',
            target=dict(stage=s, width_from=old_w, width_to=new_w, importance=scores[s]),
            description=f'stage {s + 1}: width {old_w} -> {new_w} (importance {scores[s]:.4g})',
            choices=new))
    return actions


def minimal_networks(space) -> List[dict]:
    """The smallest networks of the space: one real block per stage at the smallest widths,
    every allowed MB4D/MB3D combination of those blocks (which is cheapest depends on the
    backend). Choice dicts, each valid."""
    space = get_space(space)
    options = [[c for c in space.positions(s) if c != 'id'] for s in range(space.num_stages)]
    nets = []
    for combo in itertools.product(*options):
        blocks = [[c] + ['id'] * (space.max_depths[s] - 1) for s, c in enumerate(combo)]
        choices = dict(blocks=blocks, width_idx=[0] * space.num_stages)
        if _valid(space, choices):
            nets.append(choices)
    return nets


def smallest_latency(space, predict_latency: Callable[[dict], float]) -> dict:
    """The smallest predicted latency the space reaches: ``dict(latency_ms, choices, arch)``
    of the cheapest of :func:`minimal_networks`."""
    space = get_space(space)
    best = None
    for choices in minimal_networks(space):
        arch = space.to_arch(choices)
        ms = float(predict_latency(arch))
        if best is None or ms < best['latency_ms']:
            best = dict(latency_ms=ms, choices=choices, arch=arch)
    return best


def budget_name(space_name: str, budget: Union[float, str]) -> str:
    """A file-name-safe label for a budget's network: ``l7space_1p6ms`` for a budget in ms
    (a number, or its spelling ``'1.6'``), ``l7space_0p8x`` for a relative one (``'0.8x'``)."""
    if isinstance(budget, str) and budget.lower().endswith('x'):
        label = budget.lower()
    else:
        label = f'{float(budget):g}ms'
    return f'{space_name}_{label}'.replace('.', 'p').replace('-', 'm').replace('+', '')


def _check_budgets(budgets: Sequence[float]) -> List[float]:
    if not budgets:
        raise ValueError('give at least one latency budget (ms)')
    out = []
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) \
                or b <= 0:
            raise ValueError(f'latency budgets must be positive numbers of milliseconds, got '
                             f'{b!r}')
        out.append(float(b))
    return sorted(set(out), reverse=True)


def check_budgets(space, predict_latency: Callable[[dict], float],
                  budgets: Sequence[float], labels: Optional[Dict[str, str]] = None,
                  table: Optional[str] = None) -> tuple:
    """Check ``budgets`` against the space before any search (cheap: latencies only).

    Args:
        labels (dict | None): How each budget was given (``repr(ms) -> '0.8x'``, see
            :func:`mmeff.slimming.budgets.resolve_budgets`), shown in the message.
        table (str | None): The latency table ``predict_latency`` reads (its file, where it
            was measured, how to measure it again), named in the message.

    Returns:
        tuple: The budgets, unique and sorted largest first, and :func:`smallest_latency`.

    Raises:
        ValueError: A budget that is not a positive number, or one below the smallest
            latency the space reaches (the message names that latency, its network and the
            table).
    """
    space = get_space(space)
    budgets = _check_budgets(budgets)
    smallest = smallest_latency(space, predict_latency)
    if budgets[-1] < smallest['latency_ms']:
        given = (labels or {}).get(repr(budgets[-1]))
        relative = given is not None and given.endswith('x')
        what = f'{given} ({budgets[-1]:.4g} ms)' if relative else f'{budgets[-1]:g} ms'
        source = f', as predicted by the latency table {table}' if table else ''
        other = '' if relative else ', or budgets relative to the full supernet (e.g. 0.6x)'
        raise ValueError(
            f'latency budget {what} is below the smallest latency the search space '
            f'{space.name!r} reaches, {smallest["latency_ms"]:.4g} ms (its minimal network '
            f'{smallest["arch"]}){source}; use budgets >= {smallest["latency_ms"]:.4g} ms'
            f'{other}')
    return budgets, smallest


def greedy_slim(space, start_choices: dict, importance: dict,
                predict_latency: Callable[[dict], float],
                estimate_accuracy: Callable[[dict], float],
                budgets: Sequence[float], labels: Optional[Dict[str, str]] = None) -> dict:
    """Slim ``start_choices`` greedily until the predicted latency meets every budget.

    At each step every action of :func:`candidate_actions` is evaluated: its latency saving
    (``predict_latency`` of the current arch minus that of the new one) and its accuracy drop
    (``estimate_accuracy`` of the current choices minus that of the new ones). Actions saving
    nothing (<= 0 ms) are skipped; of the others the one with the smallest drop per millisecond
    saved is applied, ties going to the larger saving, then to the order of ``ACTIONS``. Should
    no action save anything (a latency table where a smaller piece measured slower), the one
    with the largest saving is applied, marked ``no_saving`` in the step, so that the search
    still ends at a minimal network. When the predicted latency first meets a budget (largest
    first), that budget's network is recorded; a budget at or above the start network's latency
    is met by the start network.

    Args:
        space (SearchSpace | dict | str): The search space.
        start_choices (dict): Where to start (usually ``space.max_choices()``: the supernet).
        importance (dict): See :func:`candidate_actions`.
        predict_latency (callable): ``arch dict -> ms`` (the latency table's prediction).
        estimate_accuracy (callable): ``choice dict -> accuracy`` (e.g. top-1 of the subnet
            with inherited weights on a held-out split). Each distinct network is evaluated once.
        budgets (Sequence[float]): Latency budgets in ms.
        labels (dict | None): How each budget was given, ``repr(ms) -> spelling`` (``'0.8x'``
            for a relative one, see :func:`mmeff.slimming.budgets.resolve_budgets`): a
            result's ``budget`` and ``name`` (``l7space_0p8x``). Default: the ms values.

    Returns:
        dict: The trajectory, plain JSON-able data::

            dict(format='mmeff-slimming-trajectory', version=1, space=space.to_dict(),
                 budgets_ms=[descending], smallest=dict(latency_ms, choices, arch),
                 start=dict(choices, arch, latency_ms, accuracy),
                 steps=[dict(step, action, target, description, latency_ms, saving_ms,
                             accuracy, accuracy_drop, ratio, no_saving, choices, arch,
                             candidates=[dict(action, target, latency_ms, saving_ms, accuracy,
                                              accuracy_drop, ratio, skipped)])],
                 results=[dict(budget_ms, budget, name, step, met_by_start, choices,
                               arch, latency_ms, accuracy)])

        ``step`` 0 in a result is the start network; ``ratio`` is accuracy drop per ms saved
        (``None`` for skipped candidates).

    Raises:
        ValueError: A budget below the smallest latency the space reaches (the message names
            it), bad budgets, choices or importance.
        RuntimeError: The search ran out of actions above a budget (only possible when the
            table says an MB3D block is cheaper than an MB4D one).
    """
    space = get_space(space)
    space.validate(start_choices)
    _check_importance(space, importance)
    budgets, smallest = check_budgets(space, predict_latency, budgets, labels)

    accuracy_cache: Dict[str, float] = {}

    def accuracy(choices):
        key = json.dumps(choices, sort_keys=True)
        if key not in accuracy_cache:
            accuracy_cache[key] = float(estimate_accuracy(copy.deepcopy(choices)))
        return accuracy_cache[key]

    def latency(choices):
        return float(predict_latency(space.to_arch(choices)))

    current = copy.deepcopy(start_choices)
    cur_ms = latency(current)
    cur_acc = accuracy(current)
    start = dict(choices=copy.deepcopy(current), arch=space.to_arch(current),
                 latency_ms=cur_ms, accuracy=cur_acc)
    steps: List[dict] = []
    results: List[dict] = []
    pending = list(budgets)

    def record_met(step_no: int):
        while pending and cur_ms <= pending[0]:
            budget = pending.pop(0)
            given = (labels or {}).get(repr(budget), f'{budget:g}')
            results.append(dict(budget_ms=budget, budget=given,
                                name=budget_name(space.name, given),
                                step=step_no, met_by_start=step_no == 0,
                                choices=copy.deepcopy(current), arch=space.to_arch(current),
                                latency_ms=cur_ms, accuracy=cur_acc))

    record_met(0)
    while pending:
        evaluated = []
        for order, act in enumerate(candidate_actions(space, current, importance)):
            ms = latency(act['choices'])
            acc = accuracy(act['choices'])
            saving, drop = cur_ms - ms, cur_acc - acc
            evaluated.append(dict(order=order, act=act, latency_ms=ms, saving_ms=saving,
                                  accuracy=acc, accuracy_drop=drop,
                                  ratio=drop / saving if saving > 0 else None))
        if not evaluated:
            raise RuntimeError(
                f'the search ran out of actions at {cur_ms:.4g} ms, above the budget '
                f'{pending[0]:g} ms (network {space.to_arch(current)}); the latency table '
                f'predicts the smallest network of the space at {smallest["latency_ms"]:.4g} ms '
                f'({smallest["arch"]}), which the actions cannot reach from here')
        saving_ones = [e for e in evaluated if e['saving_ms'] > 0]
        if saving_ones:
            chosen = min(saving_ones, key=lambda e: (e['ratio'], -e['saving_ms'], e['order']))
        else:
            chosen = min(evaluated, key=lambda e: (-e['saving_ms'], e['order']))
        current = chosen['act']['choices']
        cur_ms, cur_acc = chosen['latency_ms'], chosen['accuracy']
        steps.append(dict(
            step=len(steps) + 1, action=chosen['act']['action'], target=chosen['act']['target'],
            description=chosen['act']['description'], latency_ms=cur_ms,
            saving_ms=chosen['saving_ms'], accuracy=cur_acc,
            accuracy_drop=chosen['accuracy_drop'], ratio=chosen['ratio'],
            no_saving=not saving_ones, choices=copy.deepcopy(current),
            arch=space.to_arch(current),
            candidates=[dict(action=e['act']['action'], target=e['act']['target'],
                             latency_ms=e['latency_ms'], saving_ms=e['saving_ms'],
                             accuracy=e['accuracy'], accuracy_drop=e['accuracy_drop'],
                             ratio=e['ratio'], skipped=e['saving_ms'] <= 0)
                        for e in evaluated]))
        record_met(len(steps))

    return dict(format=TRAJECTORY_FORMAT, version=TRAJECTORY_VERSION, space=space.to_dict(),
                budgets_ms=budgets, smallest=smallest, start=start, steps=steps,
                results=results)


def load_trajectory(path: str) -> dict:
    """Read a trajectory JSON written by :func:`mmeff.slimming.report.write_report`, checking
    its format."""
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f'{path} is not a readable slimming trajectory (corrupt or truncated '
                         f'JSON: {exc}); run the search phase again') from exc
    if not isinstance(data, dict) or data.get('format') != TRAJECTORY_FORMAT:
        raise ValueError(f'{path} is not a slimming trajectory (format '
                         f'{TRAJECTORY_FORMAT!r} expected)')
    if data.get('version') != TRAJECTORY_VERSION:
        raise ValueError(f'{path} is a version {data.get("version")!r} trajectory; this mmeff '
                         f'reads version {TRAJECTORY_VERSION}')
    return data


__all__ = ['ACTIONS', 'candidate_actions', 'stage_importance', 'minimal_networks',
           'smallest_latency', 'budget_name', 'check_budgets', 'greedy_slim', 'load_trajectory']
