"""Latency budgets (mmeff.slimming.budgets): absolute ms or fractions of a reference network's
predicted latency, and how the search names and reports them."""
import pytest

from mmeff.slimming.budgets import (parse_budget, parse_budgets, reference_arch,
                                    reference_names, resolve_budgets)
from mmeff.slimming.search import check_budgets, greedy_slim
from mmeff.slimming.space import SearchSpace, default_space


def tiny_space():
    return SearchSpace(name='tiny', widths=[[16], [16], [16, 32], [16, 32]],
                       max_depths=[1, 2, 2, 2])


def fake_latency(arch):
    """1 ms per block per 16 channels: the full tiny network is 1+2+4+4 = 11 ms."""
    return float(sum(d * w / 16 for d, w in zip(arch['depths'], arch['widths'])))


@pytest.mark.parametrize('text, value, relative, canonical', [
    ('2.5', 2.5, False, '2.5'), ('2.5ms', 2.5, False, '2.5'), (' 3MS ', 3., False, '3'),
    ('0.8x', 0.8, True, '0.8x'), ('.5X', 0.5, True, '0.5x'), ('1e-1x', 0.1, True, '0.1x'),
    (1.25, 1.25, False, '1.25'),
])
def test_budget_spellings(text, value, relative, canonical):
    b = parse_budget(text)
    assert (b.value, b.relative, b.text) == (value, relative, canonical)


@pytest.mark.parametrize('text, message', [
    ('-1', 'positive finite numbers of milliseconds'),
    ('0', 'positive finite numbers of milliseconds'),
    ('nan', 'positive finite numbers of milliseconds'),
    ('inf', 'positive finite numbers of milliseconds'),
    ('0x', r'positive finite fractions \(such as 0.8x\)'),
    ('-0.5x', r'positive finite fractions'),
    ('2 s', r"'2 s' is neither milliseconds"),
    ('x0.8', r"'x0.8' is neither milliseconds"),
    (True, 'is not a number of milliseconds'),
])
def test_bad_budgets_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_budget(text)


def test_budget_list():
    assert [b.text for b in parse_budgets(['0.8x', '2', '2ms', '0.80x'])] == ['0.8x', '2']
    with pytest.raises(ValueError, match='give at least one latency budget'):
        parse_budgets([])


def test_reference_networks_are_those_of_the_space():
    assert reference_names(default_space()) == ['supernet', 'l1', 'l3', 'l7']
    assert reference_names(tiny_space()) == ['supernet']
    l1 = reference_arch(default_space(), 'l1')
    assert (l1['depths'], l1['widths'], l1['num_vit']) == ([3, 2, 6, 4], [48, 96, 224, 448], 1)
    assert reference_arch(default_space(), 'supernet') == default_space().to_arch(
        default_space().max_choices())
    with pytest.raises(ValueError, match=r"EfficientFormer-L1 is not a network of the search "
                                         r"space 'tiny': .* one of \['supernet'\]"):
        reference_arch(tiny_space(), 'l1')
    with pytest.raises(ValueError, match=r"unknown reference network 'big'"):
        reference_arch(default_space(), 'big')


def test_relative_budgets_resolve_against_the_reference():
    space = tiny_space()
    ms, labels, reference = resolve_budgets(['0.5x', '7', '7ms'], space, fake_latency)
    assert reference['name'] == 'supernet' and reference['latency_ms'] == 11.
    assert ms == [5.5, 7.] and labels == {'5.5': '0.5x', '7.0': '7'}
    # absolute budgets only: no reference needed (nor predicted)
    ms, labels, reference = resolve_budgets(['3'], space, lambda arch: 1 / 0)
    assert (ms, reference) == ([3.], None)
    # relative to L1 in the default space
    space = default_space()
    ms, _, reference = resolve_budgets(['0.5x'], space, lambda a: float(sum(a['depths'])),
                                       relative_to='l1')
    assert reference['latency_ms'] == 15. and ms == [7.5]


def test_relative_budgets_name_the_results():
    space = tiny_space()
    ms, labels, _ = resolve_budgets(['0.8x', '0.5x', '4'], space, fake_latency)
    traj = greedy_slim(space, space.max_choices(num_mb3d=1), dict(
        blocks=[[1.0], [1.0, 0.1], [0.9, 0.7], [0.8, 0.95]]), fake_latency,
        lambda choices: 50., ms, labels)
    assert [(r['budget'], r['name']) for r in traj['results']] == [
        ('0.8x', 'tiny_0p8x'), ('0.5x', 'tiny_0p5x'), ('4', 'tiny_4ms')]
    assert [r['budget_ms'] for r in traj['results']] == [8.8, 5.5, 4.]


def test_impossible_relative_budget_names_itself_and_the_table():
    space = tiny_space()
    ms, labels, _ = resolve_budgets(['0.01x'], space, fake_latency)
    with pytest.raises(ValueError, match=r'latency budget 0\.01x \(0\.11 ms\) is below the '
                                         r"smallest latency the search space 'tiny' reaches, 4 "
                                         r'ms .*, as predicted by the latency table lut\.json '
                                         r'\(kept\); use budgets >= 4 ms$'):
        check_budgets(space, fake_latency, ms, labels, table='lut.json (kept)')
