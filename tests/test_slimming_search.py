"""The greedy slimming search (mmeff.slimming.search) and its outputs (mmeff.slimming.report) on
hand-built cases: a tiny space, a fake linear latency table and a fake accuracy table."""
import copy
import json
import os
import os.path as osp

import pytest

from mmeff.slimming.search import (budget_name, candidate_actions, greedy_slim, load_trajectory,
                                   minimal_networks, smallest_latency)
from mmeff.slimming.space import SearchSpace

# Per-stage cost of a block per channel, and the extra cost of an MB3D block: a linear table.
COEF = [0.1, 0.625, 5 / 32, 0.05]
MB3D_EXTRA = 1.0


def tiny_space():
    return SearchSpace(name='tiny', widths=[[16], [16], [16, 32], [16, 32]],
                       max_depths=[1, 2, 2, 2])


def fake_latency(arch):
    return (sum(c * d * w for c, d, w in zip(COEF, arch['depths'], arch['widths']))
            + MB3D_EXTRA * arch['num_vit'])


def fake_accuracy(space):
    """80 - 3 per identity position - 0.2 per MB3D block made MB4D - 0.5 per width step lost:
    a 'table' over every network of the space, linear in the three actions."""
    full = space.max_choices(num_mb3d=1)

    def accuracy(choices):
        n_id = sum(c == 'id' for b in choices['blocks'] for c in b)
        lost_mb3d = 1 - sum(c == 'mb3d' for b in choices['blocks'] for c in b)
        steps = sum(f - c for f, c in zip(full['width_idx'], choices['width_idx']))
        return 80 - 3 * n_id - 0.2 * lost_mb3d - 0.5 * steps
    return accuracy


IMPORTANCE = dict(blocks=[[1.0], [1.0, 0.1], [0.9, 0.7], [0.8, 0.95]])


def test_candidate_actions_are_the_papers_three():
    space = tiny_space()
    start = space.max_choices(num_mb3d=1)
    assert start == dict(blocks=[['mb4d'], ['mb4d', 'mb4d'], ['mb4d', 'mb4d'], ['mb4d', 'mb3d']],
                         width_idx=[0, 0, 1, 1])
    before = copy.deepcopy(start)
    acts = candidate_actions(space, start, IMPORTANCE)
    assert start == before  # arguments are not modified
    assert [a['action'] for a in acts] == ['to_identity', 'mb3d_to_mb4d', 'shrink_width']
    ident, mb4d, shrink = acts
    assert ident['target'] == dict(stage=1, position=1, was='mb4d', importance=0.1)
    assert ident['choices']['blocks'][1] == ['mb4d', 'id']
    assert mb4d['choices']['blocks'][3] == ['mb4d', 'mb4d']
    # stage importance = sum over the stage's remaining positions: 1.6 (stage 3) < 1.75
    assert shrink['target']['stage'] == 2 and shrink['target']['width_to'] == 16
    assert shrink['choices']['width_idx'] == [0, 0, 0, 1]
    for a in acts:
        space.validate(a['choices'])


def test_invalid_actions_are_skipped():
    space = tiny_space()
    # stages 1, 2 have one block: even the least important position there may not go
    importance = dict(blocks=[[0.0], [0.0, 0.9], [0.9, 0.5], [0.8, 0.95]])
    choices = dict(blocks=[['mb4d'], ['mb4d', 'id'], ['mb4d', 'mb4d'], ['mb4d', 'mb4d']],
                   width_idx=[0, 0, 0, 1])
    acts = {a['action']: a for a in candidate_actions(space, choices, importance)}
    assert (acts['to_identity']['target']['stage'],
            acts['to_identity']['target']['position']) == (2, 1)
    assert 'mb3d_to_mb4d' not in acts  # no MB3D left
    # stage importance 0.0 for stages 1, 2, but they are at their smallest width already
    assert acts['shrink_width']['target']['stage'] == 3
    # the minimal network: nothing left to do
    minimal = dict(blocks=[['mb4d'], ['id', 'mb4d'], ['mb4d', 'id'], ['id', 'mb4d']],
                   width_idx=[0, 0, 0, 0])
    assert candidate_actions(space, minimal, importance) == []


def test_first_mb3d_becomes_mb4d_keeping_the_single_switch():
    space = tiny_space()
    choices = dict(blocks=[['mb4d'], ['mb4d', 'id'], ['mb4d', 'mb3d'], ['mb3d', 'mb3d']],
                   width_idx=[0, 0, 1, 1])
    act = next(a for a in candidate_actions(space, choices, IMPORTANCE)
               if a['action'] == 'mb3d_to_mb4d')
    assert act['target'] == dict(stage=2, position=1)
    assert act['choices']['blocks'][2:] == [['mb4d', 'mb4d'], ['mb3d', 'mb3d']]


def test_importance_as_the_supernet_writes_it():
    """mmeff.slimming.supernet.importance names the per-position scores 'positions'; its
    'stages' (sums over every position, removed ones too) are not used: a stage's importance is
    the sum over its remaining blocks."""
    space = tiny_space()
    start = space.max_choices(num_mb3d=1)
    theirs = dict(space='tiny', probs=[], positions=IMPORTANCE['blocks'],
                  stages=[5.0, 5.0, 5.0, 0.5])
    acts = {a['action']: a for a in candidate_actions(space, start, theirs)}
    assert acts['to_identity']['target']['importance'] == 0.1
    assert acts['shrink_width']['target']['stage'] == 2  # 0.9 + 0.7 < 0.8 + 0.95
    # stage 4 down to its first block (0.8): now less important than stage 3 (1.6)
    fewer = copy.deepcopy(start)
    fewer['blocks'][3] = ['mb4d', 'id']
    acts = {a['action']: a for a in candidate_actions(space, fewer, theirs)}
    assert acts['shrink_width']['target']['stage'] == 3


def test_bad_importance_is_a_clear_error():
    space = tiny_space()
    with pytest.raises(ValueError,
                       match=r'importance must be dict\(blocks=.*positions \[1, 2, 2, 2\]'):
        candidate_actions(space, space.max_choices(), dict(blocks=[[1.0]] * 4))


def test_greedy_step_picks_the_best_accuracy_per_latency_ratio():
    """From the start: identity saves 10 ms for 3 points (0.3/ms, the largest saving), MB3D->MB4D
    saves 1 ms for 0.2 (0.2/ms, the smallest drop), shrinking stage 3 saves 5 ms for 0.5
    (0.1/ms, the best ratio): the step shrinks stage 3."""
    space = tiny_space()
    start = space.max_choices(num_mb3d=1)
    start_ms = fake_latency(space.to_arch(start))
    traj = greedy_slim(space, start, IMPORTANCE, fake_latency, fake_accuracy(space),
                       budgets=[start_ms - 1])
    first = traj['steps'][0]
    cands = {c['action']: c for c in first['candidates']}
    assert cands['to_identity']['saving_ms'] == pytest.approx(10)
    assert cands['to_identity']['accuracy_drop'] == pytest.approx(3)
    assert cands['mb3d_to_mb4d']['saving_ms'] == pytest.approx(1)
    assert cands['mb3d_to_mb4d']['accuracy_drop'] == pytest.approx(0.2)
    assert cands['shrink_width']['saving_ms'] == pytest.approx(5)
    assert cands['shrink_width']['accuracy_drop'] == pytest.approx(0.5)
    assert first['action'] == 'shrink_width'
    assert first['ratio'] == pytest.approx(0.1)
    assert first['latency_ms'] == pytest.approx(start_ms - 5)
    assert first['accuracy'] == pytest.approx(79.5)
    assert len(traj['steps']) == 1
    assert traj['results'][0]['step'] == 1 and not traj['results'][0]['met_by_start']


def test_every_budget_is_met_along_one_monotone_trajectory():
    space = tiny_space()
    start = space.max_choices(num_mb3d=1)
    start_ms = fake_latency(space.to_arch(start))
    smallest = smallest_latency(space, fake_latency)['latency_ms']
    budgets = [smallest, start_ms + 5, 30.0, 20.0]
    traj = greedy_slim(space, start, IMPORTANCE, fake_latency, fake_accuracy(space), budgets)
    json.dumps(traj)  # plain data
    assert traj['budgets_ms'] == sorted(budgets, reverse=True)
    lat = [traj['start']['latency_ms']] + [s['latency_ms'] for s in traj['steps']]
    assert all(b < a for a, b in zip(lat, lat[1:]))
    res = traj['results']
    assert [r['budget_ms'] for r in res] == sorted(budgets, reverse=True)
    for r in res:
        assert r['latency_ms'] <= r['budget_ms']
        assert r['latency_ms'] == pytest.approx(fake_latency(r['arch']))
        assert r['arch'] == space.to_arch(r['choices'])
        assert r['name'] == budget_name('tiny', r['budget_ms'])
    assert [r['latency_ms'] for r in res] == sorted((r['latency_ms'] for r in res), reverse=True)
    # the budget above the start is met by the start network
    assert res[0]['met_by_start'] and res[0]['step'] == 0 and res[0]['choices'] == start
    # it goes on until the smallest budget is met, and stops there
    assert res[-1]['latency_ms'] == pytest.approx(smallest)
    assert res[-1]['step'] == len(traj['steps'])
    assert res[-1]['arch'] == dict(depths=[1, 1, 1, 1], widths=[16, 16, 16, 16], num_vit=0,
                                   mlp_ratios=[4, 4, 4, 4])


def test_impossible_budget_names_the_smallest_latency():
    space = tiny_space()
    calls = []

    def accuracy(choices):
        calls.append(choices)
        return 0.

    smallest = smallest_latency(space, fake_latency)
    # one block per stage, smallest widths, MB4D (cheaper than MB3D in this table)
    assert smallest['arch']['num_vit'] == 0 and smallest['arch']['depths'] == [1, 1, 1, 1]
    assert len(minimal_networks(space)) == 3  # no MB3D, MB3D in stage 4, in stages 3 and 4
    ms = smallest['latency_ms']
    with pytest.raises(ValueError, match=rf"budget 1 ms is below the smallest latency the "
                                         rf"search space 'tiny' reaches, {ms:.4g} ms"):
        greedy_slim(space, space.max_choices(), IMPORTANCE, fake_latency, accuracy, [30, 1])
    assert calls == []  # refused before any (expensive) accuracy estimate


def test_cheaper_mb3d_counts_in_the_smallest_latency():
    space = tiny_space()
    smallest = smallest_latency(space, lambda a: fake_latency(a) - 2 * a['num_vit'])
    assert smallest['arch']['num_vit'] == 2


@pytest.mark.parametrize('budgets', [[], [0], [-1.0], [float('nan')], ['3']])
def test_bad_budgets(budgets):
    space = tiny_space()
    with pytest.raises(ValueError, match='budget'):
        greedy_slim(space, space.max_choices(), IMPORTANCE, fake_latency, lambda c: 0., budgets)


def test_search_is_deterministic_and_breaks_ties_in_order():
    space = tiny_space()
    flat = dict(blocks=[[0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])

    def run():
        return greedy_slim(space, space.max_choices(), flat, fake_latency, lambda c: 70.,
                           budgets=[smallest_latency(space, fake_latency)['latency_ms']])
    a, b = run(), run()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    # equal importance: the earliest removable position (stage 2, position 0)
    first_id = next(s for s in a['steps'] if s['action'] == 'to_identity')
    assert (first_id['target']['stage'], first_id['target']['position']) == (1, 0)


def test_no_saving_actions_are_skipped():
    """An action that saves nothing (here: MB3D costs as much as MB4D) is never taken while
    another saves something."""
    space = tiny_space()
    traj = greedy_slim(space, space.max_choices(), IMPORTANCE,
                       lambda a: fake_latency(a) - MB3D_EXTRA * a['num_vit'],
                       lambda c: 80. - 0.001 * sum(x == 'mb4d' for b in c['blocks'] for x in b),
                       budgets=[20.0])
    for step in traj['steps']:
        skipped = [c for c in step['candidates'] if c['skipped']]
        assert all(c['saving_ms'] <= 0 and c['ratio'] is None for c in skipped)
        assert step['action'] != 'mb3d_to_mb4d' and not step['no_saving']


def test_trajectory_file_round_trip_and_errors(tmp_path):
    space = tiny_space()
    traj = greedy_slim(space, space.max_choices(num_mb3d=1), IMPORTANCE, fake_latency,
                       fake_accuracy(space), budgets=[30.0])
    path = tmp_path / 'trajectory.json'
    path.write_text(json.dumps(traj))
    assert load_trajectory(str(path)) == traj
    path.write_text(json.dumps(traj)[:50])
    with pytest.raises(ValueError, match='corrupt or truncated'):
        load_trajectory(str(path))
    path.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match='is not a slimming trajectory'):
        load_trajectory(str(path))
    assert osp.isfile(str(path))


# ---------------------------------------------------------------------------- report
def small_trajectory():
    space = tiny_space()
    traj = greedy_slim(space, space.max_choices(num_mb3d=1), IMPORTANCE, fake_latency,
                       fake_accuracy(space), budgets=[40.0, 30.0, 20.0])
    traj['meta'] = dict(backend='torch-cpu', lut='lut.json')
    traj['steps'][0]['measured_ms'] = 31.0
    traj['results'][1]['measured_ms'] = 29.5
    return traj


def test_report_lists_every_step_and_budget(tmp_path):
    from mmeff.slimming.report import write_report
    traj = small_trajectory()
    paths = write_report(traj, str(tmp_path / 'out'))
    assert load_trajectory(paths['json']) == traj
    md = open(paths['markdown']).read()
    assert 'backend: torch-cpu' in md
    for s in traj['steps']:
        assert f"| {s['step']} | {s['description']}" in md
    for r in traj['results']:
        assert f"| {r['budget_ms']:g} | {r['name']} |" in md and json.dumps(r['arch']) in md
    assert '| 31.000 |' in md and '| 29.500 |' in md  # measured latencies where taken
    assert 'met by the start network' in md  # 40 ms > the start's 35.8 ms
    with open(paths['plot'], 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def _result(arch, name='l7space_3ms'):
    return dict(budget_ms=3.0, name=name, step=4, met_by_start=False, arch=arch,
                choices=None, latency_ms=2.9, accuracy=71.2)


# One block per stage at l7space's smallest widths, two MB3D blocks: one spills into stage 3.
SMALL_ARCH = dict(depths=[1, 1, 2, 1], widths=[32, 64, 160, 320], num_vit=2,
                  mlp_ratios=[4, 4, 4, 4])


def test_generated_configs_load_and_build(tmp_path):
    import torch
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from mmeff.registry import MODELS
    from mmeff.slimming.report import write_configs
    from mmeff.slimming.space import default_space
    default_space().choices_for_arch(SMALL_ARCH)  # a network of the default space
    paths = write_configs(_result(SMALL_ARCH), str(tmp_path / 'configs'), 'work/subnet.pth',
                          meta=dict(backend='onnxruntime'))
    assert sorted(paths) == ['fpn', 'in1k', 'mask_rcnn']
    assert paths['in1k'].endswith('l7space_3ms_in1k.py')
    for kind, path in paths.items():
        cfg = Config.fromfile(path)
        bb = cfg.model.backbone
        assert bb.arch == SMALL_ARCH, kind
        assert bb.init_cfg == dict(type='Pretrained', checkpoint='work/subnet.pth',
                                   prefix='backbone.')
        assert cfg.pretrained == 'work/subnet.pth'
        if kind != 'in1k':
            assert cfg.model.neck.in_channels == SMALL_ARCH['widths'] == cfg.widths
            assert bb.type == 'mmeff.EfficientFormer'
    assert 'onnxruntime' in open(paths['in1k']).read()

    # classification: the classifier (without DeiT's teacher, not downloaded here); detection:
    # the whole Mask R-CNN
    cls_cfg = Config.fromfile(paths['in1k'])
    cls_cfg.model.distillation = None
    with DefaultScope.overwrite_default_scope('mmeff'):
        classifier = MODELS.build(cls_cfg.model).eval()
    with torch.no_grad():
        logits = classifier(torch.rand(1, 3, 64, 64), mode='tensor')
    assert logits.shape == (1, 1000)
    assert classifier.backbone.out_channels[-1] == SMALL_ARCH['widths'][-1]

    from mmdet.registry import MODELS as DET_MODELS
    from mmdet.structures import DetDataSample
    det_cfg = Config.fromfile(paths['mask_rcnn'])
    with DefaultScope.overwrite_default_scope('mmdet'):
        detector = DET_MODELS.build(det_cfg.model).eval()
    image = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                         scale_factor=(1., 1.)))
    with torch.no_grad():
        pred = detector.test_step(dict(inputs=[image], data_samples=[sample]))
    assert pred[0].pred_instances.bboxes.shape[1] == 4


def test_generated_segmentation_config_builds(tmp_path):
    import torch
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS as SEG_MODELS

    from mmeff.slimming.report import write_configs
    paths = write_configs(_result(SMALL_ARCH), str(tmp_path), 'subnet.pth')
    cfg = Config.fromfile(paths['fpn'])
    cfg.model.decode_head.norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs CUDA
    with DefaultScope.overwrite_default_scope('mmseg'):
        segmentor = SEG_MODELS.build(cfg.model).eval()
    with torch.no_grad():
        logits = segmentor(torch.rand(1, 3, 64, 64), mode='tensor')
    assert logits.shape[:2] == (1, 150)


def test_generated_configs_inherit_relatively_inside_the_project(tmp_path, repo_root):
    from mmengine.config import Config

    from mmeff.slimming.report import write_configs
    inside = tmp_path / 'project'
    (inside / 'configs' / 'classification').mkdir(parents=True)
    for kind in ('classification/effformer_l1_in1k.py', 'detection/mask_rcnn_effformer_l1.py',
                 'segmentation/fpn_effformer_l1_ade20k_40k.py'):
        (inside / 'configs' / kind).parent.mkdir(parents=True, exist_ok=True)
        (inside / 'configs' / kind).write_text("arch = 'l1'\nmodel = dict(backbone=dict("
                                              "arch=arch), neck=dict(in_channels=[1]))\n")
    paths = write_configs(_result(SMALL_ARCH), str(inside / 'work_dirs' / 'slim' / 'configs'),
                          'x.pth', configs_root=str(inside / 'configs'))
    text = open(paths['fpn']).read()
    assert "_base_ = '../../../configs/segmentation/fpn_effformer_l1_ade20k_40k.py'" in text
    assert Config.fromfile(paths['fpn']).model.backbone.arch == SMALL_ARCH
    outside = write_configs(_result(SMALL_ARCH), str(tmp_path / 'elsewhere'), 'x.pth')
    assert f"_base_ = '{repo_root}/configs/classification/" in open(outside['in1k']).read()


def test_search_goes_on_when_no_action_saves_latency():
    """A table where removing one block costs more (a noisy piece) and MB3D costs as much as
    MB4D: no action saves anything from the start, so the largest saving is taken (marked
    no_saving) and the search still reaches the budget at the minimal network."""
    space = SearchSpace(name='flat', widths=[[16], [16], [16], [16]], max_depths=[1, 2, 2, 2])

    def latency(arch):
        depth = sum(arch['depths'])
        return 10. + depth + (5. if depth == 6 else 0.)
    traj = greedy_slim(space, space.max_choices(num_mb3d=1), IMPORTANCE, latency,
                       lambda c: 70., budgets=[14.0])
    first, second = traj['steps'][:2]
    assert (first['action'], first['saving_ms'], first['no_saving']) == ('mb3d_to_mb4d', 0., True)
    assert (second['action'], second['saving_ms'], second['no_saving']) == ('to_identity', -4.,
                                                                             True)
    assert not any(s['no_saving'] for s in traj['steps'][2:])
    assert traj['results'][0]['latency_ms'] == 14.0
    assert traj['results'][0]['arch']['depths'] == [1, 1, 1, 1]


def test_report_flags_a_network_measured_over_its_budget(tmp_path):
    from mmeff.slimming.report import write_report
    traj = small_trajectory()
    over, within = traj['results'][1], traj['results'][2]
    over.update(measured_ms=31.25, over_budget=True,  # a 30 ms budget
                exported_accuracy=over['accuracy'])
    within.update(measured_ms=19.0, over_budget=False)
    md = open(write_report(traj, str(tmp_path))['markdown']).read()
    assert '| **31.250 (over budget)** |' in md and '| 19.000 |' in md
    assert f"| {over['accuracy']:.4g} (exported: {over['accuracy']:.4g}) |" in md
    assert (f"**Measured over budget**: {over['name']} measured 31.250 ms for a 30 ms budget "
            f"(predicted {over['latency_ms']:.3f} ms)") in md
    assert within['name'] + ' measured' not in md


def test_report_keeps_the_previous_files_when_a_write_fails(tmp_path, monkeypatch):
    from mmeff.slimming import report
    traj = small_trajectory()
    paths = report.write_report(traj, str(tmp_path))
    before = {k: open(p, 'rb').read() for k, p in paths.items()}
    changed = dict(traj, meta=dict(backend='onnxruntime'))

    def broken(trajectory, out_path, title=None):
        raise OSError('disk full')
    monkeypatch.setattr(report, 'plot_trajectory', broken)
    with pytest.raises(OSError, match='disk full'):
        report.write_report(changed, str(tmp_path))
    assert {k: open(p, 'rb').read() for k, p in paths.items()} == before
    monkeypatch.undo()
    # an interrupted JSON write leaves the old file and no temporary file
    monkeypatch.setattr(report.json, 'dumps', lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        report.write_json(changed, paths['json'])
    assert open(paths['json'], 'rb').read() == before['json']
    assert sorted(os.listdir(tmp_path)) == ['trajectory.json', 'trajectory.md',
                                            'trajectory.png']


def test_generated_eval_config_builds_the_whole_subnet(tmp_path):
    from mmengine.config import Config

    from mmeff.registry import MODELS
    from mmeff.slimming.report import write_eval_config
    arch = dict(depths=[1, 1, 1, 1], widths=[16, 24, 32, 48], num_vit=1, mlp_ratios=[4] * 4)
    result = dict(_result(arch, 'tiny_0p8x'), budget='0.8x')
    loader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                  sampler=dict(type='DefaultSampler', shuffle=False),
                  dataset=dict(type='ImageFolderDataset', data_root='/data/x/',
                               data_prefix=dict(img_path='val'),
                               pipeline=[dict(type='LoadPILImage'),
                                         dict(type='PackClsInputs')]))
    path = write_eval_config(result, str(tmp_path / 'configs'), 'subnets/tiny_0p8x.pth', 5,
                             loader, dict(type='Accuracy', topk=(1, 5)), eval_batches=2,
                             images=8)
    text = open(path).read()
    assert 'budget 0.8x\n# (3 ms)' in text and '(8 images) the search estimated' in text
    assert '(71.2 top-1)' in text
    assert '#   python tools/test.py <this file> subnets/tiny_0p8x.pth' in text
    cfg = Config.fromfile(path)
    assert cfg.test_dataloader.dataset.data_root == '/data/x/'
    assert cfg.test_dataloader.num_batch_per_epoch == 2  # the search's images only
    assert cfg.test_dataloader.batch_size == 4 and 'drop_last' not in cfg.test_dataloader
    assert cfg.test_evaluator.topk == (1, 5) and cfg.load_from == 'subnets/tiny_0p8x.pth'
    assert [h.type for h in cfg.custom_hooks] == ['ClassNumCheckHook']
    import mmeff.models  # noqa: F401
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmeff'):
        model = MODELS.build(cfg.model)
    assert model.num_classes == 5 and model.backbone.out_channels[-1] == 48
    assert model.distillation is None and model.mixup is None
