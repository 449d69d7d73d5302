"""EfficientFormerV2 classifier: logits parity with timm (all four variants, every parameter and
buffer randomised), the V2 head chosen from the backbone, one training step, the inference
module."""
import pytest
import torch
from mmengine.optim import OptimWrapper
from mmengine.structures import BaseDataElement

from mmeff.models import EfficientFormerV2
from mmeff.models.classifiers import (EfficientFormerClassifier, EfficientFormerClsHead,
                                      EfficientFormerV2ClsHead)

from helpers import rel_err
from test_backbone_v2 import ARCHS, _timm_v2, timm_reference

NUM_CLASSES = 1000  # timm's default head, randomised with the rest


def classifier_state_dict(ref) -> dict:
    """timm's V2 classifier -> mmeff's: ``backbone.`` + stem/stages, ``norm`` -> ``head.norm``,
    ``head`` -> ``head.head``, ``head_dist`` -> ``head.dist_head`` (the documented layout)."""
    out = {}
    for k, v in ref.state_dict().items():
        if k.startswith(('stem.', 'stages.')):
            out['backbone.' + k] = v
        elif k.startswith('norm.'):
            out['head.' + k] = v
        elif k.startswith('head_dist.'):
            out['head.dist_head.' + k[len('head_dist.'):]] = v
        elif k.startswith('head.'):
            out['head.' + k] = v
        else:
            raise KeyError(k)
    return out


@pytest.mark.parametrize('arch', ARCHS)
def test_logits_parity_with_timm(arch):
    model = EfficientFormerClassifier(backbone=dict(type='mmeff.EfficientFormerV2', arch=arch),
                                      num_classes=NUM_CLASSES).eval()
    model.load_state_dict(classifier_state_dict(_timm_v2(arch)), strict=True)
    x, _, expected = timm_reference(arch)  # computed once per session with the backbone tests
    with torch.no_grad():
        logits = model(x)
    assert expected.std() > 1e-2
    assert rel_err(logits, expected) <= 1e-5, rel_err(logits, expected)
    if arch == 's0':  # the export/benchmark module computes the same logits
        with torch.no_grad():
            assert rel_err(model.as_inference_module()(x), expected) <= 1e-5


def test_head_follows_the_backbone_family():
    v2 = EfficientFormerClassifier(backbone=dict(arch='s0'), num_classes=7)  # type inferred
    assert isinstance(v2.backbone, EfficientFormerV2)
    assert isinstance(v2.head, EfficientFormerV2ClsHead)
    assert isinstance(v2.head.norm, torch.nn.BatchNorm2d)
    assert {k for k in v2.state_dict() if k.startswith('head.')} == {
        'head.norm.weight', 'head.norm.bias', 'head.norm.running_mean', 'head.norm.running_var',
        'head.norm.num_batches_tracked', 'head.head.weight', 'head.head.bias',
        'head.dist_head.weight', 'head.dist_head.bias'}
    v1 = EfficientFormerClassifier(backbone=dict(arch='l1'), num_classes=7)
    assert type(v1.head) is EfficientFormerClsHead
    with pytest.raises(ValueError, match='leave backbone.out_norm_cfg unset'):
        EfficientFormerClassifier(backbone=dict(arch='s0', out_norm_cfg=dict(type='BN')))


def test_one_training_step_and_any_size_eval():
    torch.manual_seed(0)
    model = EfficientFormerClassifier(
        backbone=dict(type='mmeff.EfficientFormerV2', arch='s0', drop_path_rate=0.1),
        num_classes=5, label_smoothing=0.1)
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.025),
                         clip_grad=dict(max_norm=0.01))
    data = dict(inputs=torch.randn(2, 3, 64, 64),
                data_samples=[BaseDataElement(gt_label=torch.tensor(i)) for i in (1, 3)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    losses = model.train_step(data, optim)
    assert set(losses) == {'loss', 'loss_cls'} and torch.isfinite(losses['loss'])
    after = model.state_dict()
    for key in ('backbone.stem.conv1.conv.weight',
                'backbone.stages.3.downsample.attn.attention_biases',
                'backbone.stages.2.blocks.5.token_mixer.attention_biases',
                'head.dist_head.weight', 'head.norm.running_mean'):
        assert not torch.equal(before[key], after[key]), key
    model.eval()
    preds = model.val_step(dict(inputs=torch.randn(1, 3, 97, 129)))  # any size in eval
    assert preds[0].pred_score.shape == (5,)
