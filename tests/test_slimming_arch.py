"""Arch dicts of the slimming search space: MB3D blocks that spill from the last stage
into stage 3 build, run at any size, fuse, export (ONNX, Core ML), go into the classifier and the
Mask R-CNN / Semantic FPN configs, and come back from a state dict."""
import json
import os.path as osp
import random

import pytest
import torch

from mmeff.converters import arch_name, infer_arch
from mmeff.deploy import export_coreml, export_onnx, fuse_model, fusion_report, token_grid
from mmeff.models import EfficientFormer
from mmeff.models.classifiers import EfficientFormerClassifier
from mmeff.models.layers import Meta3D, Meta4D
from mmeff.slimming.space import SearchSpace

from helpers import load_tool, randomise_, rel_err

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
WIDTHS = [32, 64, 96, 128]
# name -> (arch, MB3D blocks per stage)
ARCHS = {
    'spill': (dict(depths=[1, 1, 3, 2], widths=WIDTHS, num_vit=3), [0, 0, 1, 2]),
    'spill_all': (dict(depths=[1, 1, 2, 1], widths=WIDTHS, num_vit=3), [0, 0, 2, 1]),
    'last_full': (dict(depths=[1, 1, 2, 2], widths=WIDTHS, num_vit=2), [0, 0, 0, 2]),
    'no_vit': (dict(depths=[1, 1, 2, 1], widths=WIDTHS, num_vit=0), [0, 0, 0, 0]),
}
SPILL = ARCHS['spill'][0]


def mb3d_per_stage(model):
    return [sum(isinstance(b, Meta3D) for b in s.blocks) for s in model.stages]


# ----------------------------------------------------------------------------- building
@pytest.mark.parametrize('name', sorted(ARCHS))
def test_mb3d_blocks_sit_at_the_end_of_the_network(name):
    arch, per_stage = ARCHS[name]
    model = EfficientFormer(arch)
    assert mb3d_per_stage(model) == per_stage
    assert EfficientFormer.num_vit_per_stage(model.arch) == per_stage
    kinds = [type(b) for s in model.stages for b in s.blocks]
    first_3d = kinds.index(Meta3D) if Meta3D in kinds else len(kinds)
    assert all(k is Meta4D for k in kinds[:first_3d]) and all(k is Meta3D for k in kinds[first_3d:])
    # bias tables are learned on the grids of a 224 input: 14x14 at stride 16, 7x7 at stride 32
    for i, stage in enumerate(model.stages):
        for b in stage.blocks:
            if isinstance(b, Meta3D):
                assert b.token_mixer.resolution == {2: (14, 14), 3: (7, 7)}[i]
                assert b.token_mixer.attention_biases.shape == (8, 196 if i == 2 else 49)


def test_named_archs_keep_their_layout():
    for name, per_stage in (('l1', [0, 0, 0, 1]), ('l3', [0, 0, 0, 4]), ('l7', [0, 0, 0, 8])):
        assert EfficientFormer.num_vit_per_stage(EfficientFormer.arch_settings[name]) == per_stage


@pytest.mark.parametrize('name', sorted(ARCHS))
@pytest.mark.parametrize('size', [(64, 64), (224, 224), (96, 160)])
def test_any_input_size(name, size):
    model = randomise_(EfficientFormer(ARCHS[name][0]), 0).eval()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = model(x)
    assert [tuple(o.shape[1:]) for o in outs] == model.output_shape(*size)
    assert all(torch.isfinite(o).all() for o in outs)
    # per-image results do not depend on the batch (the flatten/reshape keeps images apart)
    with torch.no_grad():
        single = model(x[1:])
    assert all(rel_err(o[1:], s) < 1e-5 for o, s in zip(outs, single))


@pytest.mark.parametrize('num_vit', [-1, 6, 2.0, True, None])
def test_invalid_num_vit_is_a_clear_error(num_vit):
    msg = (r"arch\['num_vit'\] must be an int in \[0, depths\[2\] \+ depths\[3\] = 5\] \(the MB3D "
           r'blocks at the end of the network: up to depths\[3\]=2 in the last stage, the rest '
           rf'at the end of stage 3\), got {num_vit!r}')
    with pytest.raises(ValueError, match=msg):
        EfficientFormer(dict(SPILL, num_vit=num_vit))


def test_every_network_of_a_small_space_builds_and_runs():
    space = SearchSpace(widths=[[16, 24], [32, 48], [48, 64], [64, 96]], max_depths=[1, 1, 3, 2],
                        name='tiny')
    rng = random.Random(0)
    archs = [space.to_arch(space.random_choices(rng)) for _ in range(12)]
    archs.append(space.to_arch(space.max_choices(num_mb3d=5)))  # stages 3 and 4 all MB3D
    assert any(a['num_vit'] > a['depths'][3] for a in archs)
    x = torch.randn(1, 3, 64, 64)
    for arch in archs:
        model = EfficientFormer(arch).eval()
        assert sum(mb3d_per_stage(model)) == arch['num_vit']
        with torch.no_grad():
            assert [tuple(o.shape[1:]) for o in model(x)] == model.output_shape(64, 64)


# ----------------------------------------------------------------------------- training state
def test_with_cp_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    model = EfficientFormer(SPILL, drop_path_rate=0.)
    cp_model = EfficientFormer(SPILL, with_cp=True)
    cp_model.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for m in (model, cp_model):
        m.train()
        sum(o.square().mean() for o in m(x)).backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    assert set(grads[0]) == set(grads[1])
    # stage 3's MB3D block is trained through the checkpointed path too
    assert 'stages.2.blocks.2.token_mixer.qkv.weight' in grads[1]
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6), k


def test_frozen_stages_and_drop_path():
    model = EfficientFormer(SPILL, frozen_stages=3, drop_path_rate=0.3).train()
    frozen = [k for k, p in model.named_parameters() if not p.requires_grad]
    assert any(k.startswith('stages.2.blocks.2.token_mixer') for k in frozen)  # a frozen MB3D
    assert not any(k.startswith('stages.3.') for k in frozen)
    assert not any(m.training for m in model.stages[2].modules())
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0.
             for s in model.stages for b in s.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.3, 7).tolist())


def test_out_indices_stop_after_the_last_stage_needed():
    model = EfficientFormer(SPILL, out_indices=(2,)).eval()
    with torch.no_grad():
        (out,) = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 96, 4, 4) and model.out_channels == [96]


# ----------------------------------------------------------------------------- deploy
@pytest.mark.parametrize('name', ['spill', 'spill_all'])
def test_fused_equals_unfused(name):
    arch, per_stage = ARCHS[name]
    model = randomise_(EfficientFormer(arch), 0).eval()
    size = (96, 128)
    fused = fuse_model(model, size)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, outs = model(x), fused(x)
    for o, e in zip(outs, expected):
        assert rel_err(o, e) <= 1e-5
    report = fusion_report(fused)
    assert report['batchnorms'] == 0 and report['attention'] == arch['num_vit']
    # each MHSA caches the bias of its own stage's grid (stride 16 in stage 3, 32 in stage 4)
    assert report['cached_bias_grids'] == sorted({token_grid(*size, 4), token_grid(*size)})
    for i, stage in enumerate(fused.stages):
        for b in stage.blocks:
            if isinstance(b, Meta3D):
                assert b.token_mixer._cached_grid == token_grid(*size, 2 + i)
    with torch.no_grad():  # the fused model still runs at another size (biases on the fly)
        other = torch.randn(1, 3, 64, 64)
        assert all(rel_err(a, b) <= 1e-5 for a, b in zip(fused(other), model(other)))


def test_onnx_runtime_matches_torch(tmp_path):
    pytest.importorskip('onnxruntime')
    model = randomise_(EfficientFormer(SPILL), 0).eval()
    report = export_onnx(model, str(tmp_path / 'spill.onnx'), (1, 3, 64, 96))
    assert report['gather_ops'] == 0
    assert report['onnxruntime']['rel_err'] < 1e-4
    assert 'BatchNormalization' not in report['op_histogram']


def test_coreml_export(tmp_path):
    pytest.importorskip('coremltools')
    clf = EfficientFormerClassifier(backbone=dict(arch=SPILL), num_classes=10)
    report = export_coreml(clf.as_inference_module(), str(tmp_path / 'spill.mlpackage'), 64)
    assert report['problems'] == [] and report['method'] == 'torch.export'
    assert report['gather_ops'] == 0 and 'batch_norm' not in report['op_histogram']
    assert report['outputs'][0]['shape'] == [1, 10]


# ----------------------------------------------------------------------------- downstream
def test_classifier_forward_and_loss():
    from mmengine.structures import BaseDataElement
    model = EfficientFormerClassifier(backbone=dict(arch=SPILL), num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    samples = [BaseDataElement(gt_label=torch.tensor(i)) for i in (1, 7)]
    loss = model(x, samples, mode='loss')['loss_cls']
    loss.backward()
    assert torch.isfinite(loss)
    assert model.backbone.stages[2].blocks[2].token_mixer.qkv.weight.grad is not None
    assert model.eval()(x).shape == (2, 10)


def _with_spill_backbone(cfg):
    cfg.model.backbone.arch = dict(SPILL)
    cfg.model.backbone.init_cfg = None
    cfg.model.neck.in_channels = list(WIDTHS)
    return cfg


def test_mask_rcnn_config_with_a_searched_arch():
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    cfg = _with_spill_backbone(Config.fromfile(
        osp.join(ROOT, 'configs', 'detection', 'mask_rcnn_effformer_l1.py')))
    # fewer proposals and sampled RoIs: the CPU cost of the heads, not the backbone under test
    cfg.model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=50)
    cfg.model.train_cfg.rcnn.sampler.num = 32
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    assert model.backbone.arch['num_vit'] == 3 and mb3d_per_stage(model.backbone) == [0, 0, 1, 2]
    data = model.data_preprocessor(
        demo_mm_inputs(batch_size=1, image_shapes=[(3, 64, 96)], num_items=[2], num_classes=80,
                       with_mask=True), True)
    model.train()
    losses = model.loss(data['inputs'], data['data_samples'])
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items()
                if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.stages[2].blocks[2].token_mixer.qkv.weight.grad is not None


def test_semantic_fpn_config_with_a_searched_arch():
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    cfg = _with_spill_backbone(Config.fromfile(
        osp.join(ROOT, 'configs', 'segmentation', 'fpn_effformer_l1_ade20k_40k.py')))
    cfg.model.decode_head.norm_cfg = dict(type='BN', requires_grad=True)  # no SyncBN on CPU
    cfg.model.data_preprocessor.size = (64, 64)  # the training crop: 64 instead of 512
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    assert mb3d_per_stage(model.backbone) == [0, 0, 1, 2]
    image = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)

    def sample(with_label):
        s = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64)))
        if with_label:
            s.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, 64, 64)))
        return s

    data = model.data_preprocessor(dict(inputs=[image], data_samples=[sample(True)]), True)
    model.train()
    losses = model.loss(data['inputs'], data['data_samples'])
    assert torch.isfinite(losses['decode.loss_ce'])
    model.eval()
    with torch.no_grad():
        pred = model.test_step(dict(inputs=[image], data_samples=[sample(False)]))
    assert pred[0].pred_sem_seg.data.shape[-2:] == (64, 64)


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize('name', sorted(ARCHS))
def test_infer_arch_round_trip(name):
    arch = ARCHS[name][0]
    model = EfficientFormerClassifier(backbone=dict(arch=arch), num_classes=10)
    sd = model.state_dict()
    assert infer_arch(sd) == arch and arch_name(sd) == arch
    rebuilt = EfficientFormerClassifier(backbone=dict(arch=infer_arch(sd)), num_classes=10)
    rebuilt.load_state_dict(sd)  # strict


def test_infer_arch_keeps_mlp_ratios_other_than_4():
    arch = dict(SPILL, mlp_ratios=[4, 3, 2, 4])
    sd = {'backbone.' + k: v for k, v in EfficientFormer(arch).state_dict().items()}
    assert infer_arch(sd) == arch and arch_name(sd) == arch
    assert infer_arch(sd) != EfficientFormer.arch_settings['l1']


# ----------------------------------------------------------------------------- analyze
def test_analyze_takes_an_arch_dict(repo_root, capsys):
    analyze = load_tool(repo_root, 'analyze')
    rows = analyze.main(['--archs', json.dumps(SPILL), '--no-head', '--shape', '64', '64'])
    (label,) = rows
    assert json.loads(label) == SPILL and 0 < rows[label]['params_m'] < 2
    with pytest.raises(SystemExit):
        analyze.main(['--archs', '{"depths": [1'])
    assert "'{\"depths\": [1' is not valid JSON" in capsys.readouterr().err
