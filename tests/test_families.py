"""The family registry (``mmeff.models.families``): every registered family builds, runs at a
non-224 size, fuses, exports to ONNX and converts from timm, so that a family that misses one
of these places fails here; a third family registered for the test shows which lookups find it;
``mmeff.checkpoint`` imports without the models (no import cycle); ``register_all_modules``."""
import json
import subprocess
import sys

import pytest
import torch

from mmeff.models import EfficientFormer
from mmeff.models.families import (FAMILIES, Family, all_archs, backbone_types, family_of,
                                   family_of_arch, is_family_type, register_family,
                                   unregister_family)
from mmeff.registry import MODELS

from helpers import randomise_, rel_err

FAMILY_IDS = list(FAMILIES)
# Odd sizes, neither 224 nor a multiple of 32: every attention resizes its bias table.
ODD = (1, 3, 97, 71)


@pytest.fixture(params=FAMILY_IDS)
def family(request) -> Family:
    return FAMILIES[request.param]


def shallow(family: Family) -> dict:
    """The family's default arch with one block per stage (the arch-dict contract every
    family shares: ``depths``, ``widths``, ``num_vit``, ``mlp_ratios``): the same widths and
    every kind of block (one attention block at the end), at a fraction of the cost."""
    parsed = family.cls._parse_arch(family.default_arch)
    return dict(depths=[1] * 4, widths=parsed['widths'], num_vit=1,
                mlp_ratios=[r[0] if isinstance(r, list) else r for r in parsed['mlp_ratios']])


def test_both_families_registered_from_their_classes():
    assert FAMILY_IDS[:2] == ['EfficientFormer', 'EfficientFormerV2']
    for fam in FAMILIES.values():
        assert fam.cls.family is fam and fam.type == f'mmeff.{fam.name}'
        assert fam.archs == tuple(fam.cls.arch_settings)
        assert fam.default_arch in fam.archs
        assert MODELS.get(fam.type) is fam.cls  # the registry type builds the class
        assert set(fam.paper) <= set(fam.archs) and set(fam.timm_names) == set(fam.archs)
    assert all_archs() == ('l1', 'l3', 'l7', 's0', 's1', 's2', 'l')
    assert backbone_types() == ('mmeff.EfficientFormer', 'EfficientFormer',
                                'mmeff.EfficientFormerV2', 'EfficientFormerV2')


def test_lookups_and_their_errors():
    v1, v2 = FAMILIES['EfficientFormer'], FAMILIES['EfficientFormerV2']
    for x in ('s0', 'L', 'mmeff.EfficientFormerV2', 'EfficientFormerV2', v2.cls, v2):
        assert family_of(x) is v2, x
    assert family_of(EfficientFormer('l1')) is v1 and family_of_arch('L7') is v1
    assert is_family_type('mmdet.EfficientFormer') and not is_family_type('ResNet')
    with pytest.raises(ValueError, match=r"'ResNet' is no mmeff model family; valid: families "
                                         r"\['EfficientFormer', 'EfficientFormerV2'\].*'s0'"):
        family_of('ResNet')
    with pytest.raises(ValueError, match=r"'l2' is not a named EfficientFormer arch of any "
                                         r"family; choose one of EfficientFormer \(V1\): "
                                         r"\['l1', 'l3', 'l7'\]; EfficientFormerV2: \['s0'"):
        family_of_arch('l2')
    with pytest.raises(ValueError, match=r"'l1' is not an arch of EfficientFormerV2; choose "
                                         r"one of \['s0', 's1', 's2', 'l'\]"):
        v2.timm_name('l1')
    assert v2.timm_name('S0') == 'efficientformerv2_s0' and v2.display_name('l') == 'V2-L'
    with pytest.raises(ValueError, match=r"EfficientFormerV2 has no 'mmpretrain'-layout "
                                         r"checkpoints; it converts \['authors', 'timm'\]"):
        v2.converter('mmpretrain')


def test_registration_refuses_what_would_make_lookups_ambiguous():
    common = dict(key='x', label='X', timm_names={}, converters={}, block_keys=('x', 'x'),
                  stem_keys=('x', 'x'), infer_arch='m:f', cls_head='H', config_token='x')

    class Clash(EfficientFormer):
        arch_settings = {'l1': EfficientFormer.arch_settings['l1']}

    with pytest.raises(ValueError, match=r"Clash: arch names \['l1'\] are EfficientFormer's "
                                         r"already; arch names must name one family"):
        register_family(**common)(Clash)
    with pytest.raises(ValueError, match="family key 'v2' is EfficientFormerV2's already"):
        register_family(**dict(common, key='v2'))(Clash)
    with pytest.raises(ValueError, match="model family 'EfficientFormer' is registered already"):
        register_family(**common)(EfficientFormer)
    assert list(FAMILIES) == FAMILY_IDS  # nothing was registered


# ---------------------------------------------------------------- every family, every place
def test_builds_and_runs_at_a_non_224_size(family):
    model = family.cls(family.default_arch).eval()
    with torch.no_grad():
        outs = model(torch.rand(*ODD))
    assert [tuple(o.shape[1:]) for o in outs] == model.output_shape(*ODD[2:])
    assert all(torch.isfinite(o).all() for o in outs)


def test_fuses_exactly(family):
    from mmeff.deploy.fuse import fuse_model
    model = randomise_(family.cls(shallow(family), out_norm_cfg=None)).eval()
    x = torch.rand(*ODD)
    fused = fuse_model(model, input_size=ODD[2:])
    with torch.no_grad():
        for a, b in zip(fused(x), model(x)):
            assert rel_err(a, b) < 1e-5


def test_exports_to_onnx(family, tmp_path):
    from mmeff.deploy import export_onnx
    model = family.cls(shallow(family), out_indices=(3,)).eval()
    # TorchScript's exporter: a few seconds where dynamo's takes 15 (the default 'auto' path,
    # dynamo first, is exported for the default archs in tests/test_deploy*.py)
    report = export_onnx(model, str(tmp_path / 'model.onnx'), (1, 3, 64, 64),
                         method='torchscript')
    assert report['problems'] == [] and report['onnxruntime']['rel_err'] < 1e-4


def test_converts_from_timm(family):
    """timm's model of the default arch (random weights) -> the family's converter -> the
    classifier, strictly, with timm's logits."""
    import timm

    from mmeff.converters import arch_name, convert_state_dict, detect_family
    from mmeff.models.classifiers import EfficientFormerClassifier
    ref = randomise_(timm.create_model(family.timm_name(family.default_arch))).eval()
    sd, layout = convert_state_dict(ref.state_dict())
    assert layout == 'timm' and detect_family(sd) == family.key
    assert arch_name(sd) == family.default_arch
    model = EfficientFormerClassifier(backbone=dict(arch=family.default_arch)).eval()
    assert type(model.backbone) is family.cls and type(model.head).__name__ == family.cls_head
    model.load_state_dict(sd, strict=True)
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert rel_err(model(x, mode='tensor'), ref(x)) < 1e-5


# ---------------------------------------------------------------- a third family
class TinyFormer(EfficientFormer):
    """A third family for the test: V1's blocks, its own archs."""

    arch_settings = {'t0': dict(depths=[1, 1, 2, 2], widths=[16, 24, 32, 48], num_vit=1,
                                mlp_ratios=2)}

    def __init__(self, arch='t0', **kwargs):
        super().__init__(arch, **kwargs)


FUSED = []


def fuse_tiny(backbone, grids):
    """TinyFormer's fusion rule: records the call (its layers are V1's)."""
    FUSED.append((type(backbone).__name__, len(grids)))


@pytest.fixture
def tiny_family():
    register_family(
        key='tiny', label='TinyFormer', timm_names={},
        converters={'timm': 'mmeff.converters:convert_timm'},
        block_keys=(r'\.tiny_only\.', 'tiny blocks (tiny_only.*)'),
        stem_keys=(r'^tiny_stem\.', 'stem.tiny_stem.*'), infer_arch='mmeff.converters:'
        'infer_arch_v1', cls_head='EfficientFormerClsHead', config_token='tinyformer',
        export_prefix='tiny_', display_prefix='T-', fuse=fuse_tiny,
        paper={'t0': dict(params_m=1.0, gmacs=0.1, top1=50.0, iphone12_ms=0.5)})(TinyFormer)
    MODELS.register_module(module=TinyFormer, force=True)
    try:
        yield TinyFormer.family
    finally:
        unregister_family('TinyFormer')
        MODELS._module_dict.pop('TinyFormer', None)  # mmengine has no public unregister


def test_a_third_family_is_found_by_every_lookup(tiny_family, tmp_path):
    from mmeff.benchmark.complexity import PAPER, backbone_type, display_name, timm_name
    from mmeff.checkpoint import _config_arch_pattern
    from mmeff.deploy.build import build_model
    from mmeff.engine.launch import _efficientformer_out_channels
    from mmeff.models.classifiers import EfficientFormerClassifier
    import mmeff.converters as converters

    assert list(FAMILIES)[-1] == 'TinyFormer' and family_of('t0') is tiny_family
    assert family_of('mmeff.TinyFormer') is family_of(TinyFormer()) is tiny_family
    assert 't0' in all_archs() and 'mmeff.TinyFormer' in backbone_types()
    assert 'tiny' in converters.FAMILIES
    # benchmark tables and names
    assert PAPER['t0']['top1'] == 50.0 and display_name('t0') == 'T-T0'
    assert backbone_type('t0') == 'mmeff.TinyFormer'
    with pytest.raises(ValueError, match="timm has no model for TinyFormer arch 't0'"):
        timm_name('t0')
    # export/benchmark builder, classifier, training launcher, checkpoint messages
    net, meta = build_model('t0')
    assert type(net) is TinyFormer and meta['name'] == 'tiny_t0'
    clf = EfficientFormerClassifier(backbone=dict(arch='t0'), num_classes=3)
    assert type(clf.backbone) is TinyFormer
    assert _efficientformer_out_channels(dict(type='mmeff.TinyFormer', arch='t0',
                                              out_indices=(1, 3))) == [24, 48]
    assert _config_arch_pattern().search('mask_rcnn_tinyformer_t0.py').group(0) == 'tinyformer_t0'
    # deploy: fuse_model calls the family's own fusion rule on its backbone
    from mmeff.deploy.fuse import fuse_model
    FUSED.clear()
    fuse_model(TinyFormer(), input_size=64)
    assert FUSED == [('TinyFormer', 1)]  # one attention, its grid cached
    # a state dict is told by the key patterns each family declares
    sd = {f'backbone.{k}': v for k, v in TinyFormer().state_dict().items()}
    assert converters.detect_family(sd) == 'v1'  # V1's blocks and stem: V1 to the converters
    sd = {k.replace('stem.norm1.', 'stem.tiny_stem.'): v for k, v in sd.items()}
    sd['backbone.stages.0.blocks.0.tiny_only.weight'] = torch.zeros(1)
    assert converters.detect_family(sd) == 'tiny'
    assert converters.infer_arch(sd)['widths'] == [16, 24, 32, 48]


# ---------------------------------------------------------------- import order, entry point
def _run(code: str) -> dict:
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_import_order_and_register_all_modules():
    """Reading checkpoints imports no model (the old cycle checkpoint -> converters ->
    backbones -> checkpoint); the converters read the registry only when a function needs
    it; the registry is complete whichever module is imported first; ``register_all_modules``
    registers every kind of module and makes ``mmeff`` the default scope."""
    out = _run('''
import json, sys
import mmeff.checkpoint
first = sorted(m for m in sys.modules if m.startswith('mmeff.'))
import mmeff.converters
second = sorted(m for m in sys.modules if m.startswith('mmeff.'))
import mmeff.models.backbones.efficientformer_v2
from mmeff.models.families import FAMILIES
families = list(FAMILIES)
from mmengine.registry import DefaultScope
from mmeff.utils import register_all_modules
register_all_modules()
from mmeff.registry import HOOKS, METRICS, MODELS
print(json.dumps(dict(first=first, second=second, families=families,
                      scope=DefaultScope.get_current_instance().scope_name,
                      model=MODELS.get('EfficientFormerV2').__name__,
                      hook=HOOKS.get('RNGStateHook').__name__,
                      metric=METRICS.get('Accuracy').__module__)))
''')
    first, second = out.pop('first'), out.pop('second')
    assert 'mmeff.checkpoint' in first and not any(
        m.startswith(('mmeff.models', 'mmeff.converters', 'mmeff.compat')) for m in first), first
    assert 'mmeff.converters' in second and not any(
        m.startswith(('mmeff.models', 'mmeff.compat')) for m in second), second
    assert out == dict(families=['EfficientFormer', 'EfficientFormerV2'], scope='mmeff',
                       model='EfficientFormerV2', hook='RNGStateHook',
                       metric='mmeff.evaluation.accuracy')
