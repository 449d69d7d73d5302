"""mmeff.benchmark.results (a finished run's metrics beside the paper's) over every registered
family's archs, and mmeff.benchmark.dense's table, on generated work dirs and rows."""
import json

import pytest

from mmeff.benchmark.dense import format_rows
from mmeff.benchmark.results import BASELINES, compare, format_comparison, paper_figures
from mmeff.models.families import FAMILIES

ARCHS = [(family, arch) for family in FAMILIES.values() for arch in family.archs]
TASKS = {'detection': ('mmdet', {'coco/bbox_mAP': 0.401, 'coco/segm_mAP': 0.372}),
         'segmentation': ('mmseg', {'mIoU': 40.25})}


def _work_dir(root, family, arch, task, how='test'):
    """A work dir as mmengine leaves it: the dumped config, and the metrics of tools/test.py
    (``<stamp>/<stamp>.json``) or the validations of tools/train.py (``scalars.json``)."""
    scope, metrics = TASKS[task]
    (root / 'cfg.py').write_text(f"default_scope = '{scope}'\n"
                                 f"model = dict(backbone=dict(type='{family.type}', "
                                 f"arch='{arch}'))\n")
    run = root / '20261204_120000'
    if how == 'test':
        run.mkdir()
        (run / '20261204_120000.json').write_text(json.dumps(metrics))
    else:  # two validations: the last one counts
        (run / 'vis_data').mkdir(parents=True)
        first = {k: v / 2 for k, v in metrics.items()}
        (run / 'vis_data' / 'scalars.json').write_text(
            json.dumps(dict(first, step=1)) + '\n' + json.dumps(dict(metrics, step=2)) + '\n')
    return str(root)


@pytest.mark.parametrize('task', sorted(TASKS))
@pytest.mark.parametrize('family,arch', ARCHS, ids=[a for _, a in ARCHS])
def test_every_registered_arch_is_compared_with_its_familys_figures(family, arch, task,
                                                                    tmp_path):
    how = 'test' if task == 'detection' else 'train'
    result = compare(_work_dir(tmp_path, family, arch, task, how))
    assert (result['arch'], result['task'], result['family']) == (arch, task, family.name)
    assert result['source'].endswith('.json') and result['references'] == BASELINES[task]
    dense = family.paper.get(arch, {}).get('dense')
    ours = {r['metric']: r for r in result['rows']}
    expected = {'detection': {'bbox_mAP': 40.1, 'segm_mAP': 37.2},
                'segmentation': {'mIoU': 40.25}}[task]
    assert {m: r['ours'] for m, r in ours.items()} == expected
    if dense:
        for metric, row in ours.items():
            assert row['paper'] == dense[task][metric]
            assert row['diff'] == pytest.approx(expected[metric] - dense[task][metric])
        assert (result['note'] is None) == dense['checked']
    else:
        assert all(r['paper'] is None and r['diff'] is None for r in ours.values())
        assert 'reports no result' in result['note']
    lines = format_comparison(result)
    assert lines[0] == f"{family.name}-{arch.upper()} {task} ({result['source']})"
    assert lines[-1].startswith('paper references: ResNet-50 ')


def test_the_arguments_given_win_over_the_saved_config(tmp_path):
    v1 = FAMILIES['EfficientFormer']
    work = _work_dir(tmp_path, v1, 'l1', 'segmentation')
    assert compare(work, arch='l7')['rows'][0]['paper'] == paper_figures(
        'segmentation', 'l7')[0]['mIoU']
    with pytest.raises(FileNotFoundError, match=r"no detection metrics \(coco/bbox_mAP, "
                                                r"coco/segm_mAP\) found under"):
        compare(work, task='detection')


def test_a_run_that_cannot_be_told_is_refused_with_the_option(tmp_path):
    with pytest.raises(ValueError, match=r'cannot tell the task .* pass --task '
                                         r'detection\|segmentation'):
        compare(str(tmp_path))
    (tmp_path / 'cfg.py').write_text("default_scope = 'mmseg'\nmodel = dict(backbone=dict("
                                     "arch=dict(layers=[1, 1, 1, 1])))\n")
    archs = ', '.join(a for _, a in ARCHS)
    with pytest.raises(ValueError, match=rf'got None\); pass --arch with one of {archs}$'):
        compare(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"work dir '.*nowhere' does not exist"):
        compare(str(tmp_path / 'nowhere'))


def test_dense_rows_as_text_and_markdown():
    rows = [dict(config='configs/detection/mask_rcnn_effformer_l1.py', shape=(800, 1333),
                 params=31.6e6, macs=193.4e9, backbone_params=11.4e6, backbone_macs=26.2e9,
                 neck_macs=60.5e9, num_proposals=1000),
            dict(config='configs/segmentation/fpn_effformer_l1_ade20k_40k.py', shape=(800, 1333),
                 params=15.6e6, macs=50.1e9, backbone_params=11.4e6, backbone_macs=26.2e9,
                 neck_macs=40.0e9, num_proposals=None)]
    assert format_rows(rows) == [
        'mask_rcnn_effformer_l1 @ 1333x800: 31.60 M params, 193.40 GMACs (backbone 11.40 M, '
        '26.20 GMACs; backbone+neck 60.50 GMACs; RoI heads on 1000 proposals)',
        'fpn_effformer_l1_ade20k_40k @ 1333x800: 15.60 M params, 50.10 GMACs (backbone '
        '11.40 M, 26.20 GMACs; backbone+neck 40.00 GMACs)']
    table = format_rows(rows, markdown=True)
    assert table[0].startswith('| config | params (M) | GMACs @1333x800 |')
    assert table[2] == '| mask_rcnn_effformer_l1 | 31.6 | 193.4 | 11.4 | 26.2 | 60.5 | 1000 |'
    assert table[3].endswith('| 40.0 | - |')
