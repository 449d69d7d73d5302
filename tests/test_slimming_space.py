"""The slimming search space: L1/L3/L7 inside the default space, choice <-> arch round trips,
the single 4D->3D switch rule and its error messages."""
import json
import random

import pytest

from mmeff.models import EfficientFormer
from mmeff.slimming.space import SearchSpace, default_space, get_space


def tiny_space():
    return SearchSpace(name='tiny', widths=[[16, 24], [24, 32], [32, 48], [48, 64]],
                       max_depths=[2, 2, 3, 2])


@pytest.mark.parametrize('name', ['l1', 'l3', 'l7'])
def test_default_space_contains_the_paper_variants(name):
    space = default_space()
    arch = EfficientFormer.arch_settings[name]
    choices = space.choices_for_arch(arch)
    got = space.to_arch(choices)
    assert {k: got[k] for k in ('depths', 'widths', 'num_vit')} == \
        {k: arch[k] for k in ('depths', 'widths', 'num_vit')}


def test_max_network_is_l7():
    space = default_space()
    arch = space.to_arch(space.max_choices())
    assert arch['depths'] == [6, 6, 18, 8] and arch['widths'] == [96, 192, 384, 768]
    assert arch['num_vit'] == 8


def test_random_networks_are_valid_and_round_trip():
    space, rng = tiny_space(), random.Random(0)
    seen_spill = False
    for _ in range(200):
        choices = space.random_choices(rng)
        arch = space.to_arch(choices)
        assert space.to_arch(space.choices_for_arch(arch)) == arch
        seen_spill |= arch['num_vit'] > arch['depths'][3]
    assert seen_spill  # MB3D blocks reach into stage 3 in some networks


def test_json_round_trip_and_fingerprint():
    space = default_space()
    again = SearchSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert again.fingerprint() == space.fingerprint() and again.widths == space.widths
    assert get_space('l7space').fingerprint() == space.fingerprint()
    assert tiny_space().fingerprint() != space.fingerprint()


def test_rule_violations_name_the_rule():
    space = tiny_space()
    choices = space.max_choices(num_mb3d=1)
    bad = json.loads(json.dumps(choices))
    bad['blocks'][2][2] = 'mb3d'  # MB3D in stage 3 while stage 4 starts with MB4D
    with pytest.raises(ValueError, match='single 4D->3D switch'):
        space.validate(bad)
    bad = json.loads(json.dumps(choices))
    bad['blocks'][1][0] = 'mb3d'
    with pytest.raises(ValueError, match="stage 1 position 0: 'mb3d' not allowed"):
        space.validate(bad)
    bad = json.loads(json.dumps(choices))
    bad['blocks'][0] = ['id', 'id']
    with pytest.raises(ValueError, match='stage 0 has no real block left'):
        space.validate(bad)
    bad = json.loads(json.dumps(choices))
    bad['width_idx'][3] = 5
    with pytest.raises(ValueError, match=r'width_idx\[3\]=5 outside 0..1'):
        space.validate(bad)


def test_bad_spaces_and_archs_are_clear_errors():
    with pytest.raises(ValueError, match='increasing distinct ints'):
        SearchSpace(widths=[[32, 16], [24], [32], [48]], max_depths=[1, 1, 1, 1])
    with pytest.raises(ValueError, match='mb3d_stages must be a subset'):
        SearchSpace(widths=[[16], [24], [32], [48]], max_depths=[1, 1, 1, 1], mb3d_stages=[1])
    with pytest.raises(ValueError, match="unknown search space 'l9space'"):
        get_space('l9space')
    with pytest.raises(ValueError, match=r'width 40 is not a candidate \[16, 24\]'):
        tiny_space().choices_for_arch(dict(depths=[1, 1, 1, 1], widths=[40, 24, 32, 48],
                                           num_vit=0))
    assert not default_space().contains_arch(dict(depths=[7, 1, 1, 1], widths=[48, 96, 224, 448],
                                                  num_vit=0))
