"""Print a finished run's metrics beside the paper's (EfficientFormer, NeurIPS 2022, Table 3).

    python tools/compare_results.py WORK_DIR [--arch l1|l3|l7|s0|s1|s2|l]
                                    [--task detection|segmentation] [--json OUT.json]

EfficientFormerV2 (s0/s1/s2/l): the V2 paper reports no dense results for S0/S1 (the row says
"not reported"); its S2/L figures here come from a secondary source and are marked as not yet
checked against the paper (../shared/PAPER-V2.md).

WORK_DIR is the ``--work-dir`` of ``tools/train.py`` or ``tools/test.py``. The metrics are read
from what mmengine wrote there, newest run first:

* ``tools/test.py``: ``WORK_DIR/<timestamp>/<timestamp>.json`` (the test metrics);
* ``tools/train.py``: the last validation record in ``WORK_DIR/<timestamp>/vis_data/scalars.json``.

The variant (l1/l3/l7, s0/s1/s2/l) and the task come from the config mmengine saved in WORK_DIR
(``model.backbone.arch`` and ``default_scope``) unless given. COCO APs are printed in percent
(mmdet's ``coco/bbox_mAP`` x 100); mmseg's mIoU is already in percent.
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys
from typing import Dict, Optional, Tuple

# The paper's Table 3 (backbones initialised from their ImageNet-1K checkpoints): Mask R-CNN 1x
# on COCO val2017 (AP box, AP mask) and Semantic FPN 40k on ADE20K val (mIoU).
PAPER_RESULTS: Dict[str, Dict[str, Dict[str, float]]] = {
    'detection': {
        'l1': {'bbox_mAP': 37.9, 'segm_mAP': 35.4},
        'l3': {'bbox_mAP': 41.4, 'segm_mAP': 38.1},
        'l7': {'bbox_mAP': 42.6, 'segm_mAP': 39.0},
        'ResNet-50': {'bbox_mAP': 38.0, 'segm_mAP': 34.4},
        'PoolFormer-S24': {'bbox_mAP': 40.1, 'segm_mAP': 37.0},
    },
    'segmentation': {
        'l1': {'mIoU': 38.9},
        'l3': {'mIoU': 43.5},
        'l7': {'mIoU': 45.1},
        'ResNet-50': {'mIoU': 36.7},
        'PoolFormer-S24': {'mIoU': 40.3},
    },
}
# EfficientFormerV2 (ICCV 2023): Mask R-CNN 1x and Semantic FPN 40k, S2 and L only, from a
# secondary source (PaddleSeg's README), not yet checked against the paper; S0/S1: none.
PAPER_RESULTS['detection'].update({'s2': {'bbox_mAP': 43.4, 'segm_mAP': 39.5},
                                   'l': {'bbox_mAP': 44.7, 'segm_mAP': 40.4}})
PAPER_RESULTS['segmentation'].update({'s2': {'mIoU': 42.4}, 'l': {'mIoU': 45.2}})
UNCHECKED = {('detection', 's2'), ('detection', 'l'), ('segmentation', 's2'),
             ('segmentation', 'l')}
V1_ARCHS = ('l1', 'l3', 'l7')
V2_ARCHS = ('s0', 's1', 's2', 'l')
# Where each metric is in mmengine's records, and the factor to percent.
METRIC_KEYS = {
    'detection': {'bbox_mAP': ('coco/bbox_mAP', 100.), 'segm_mAP': ('coco/segm_mAP', 100.)},
    'segmentation': {'mIoU': ('mIoU', 1.)},
}
TASK_OF_SCOPE = {'mmdet': 'detection', 'mmseg': 'segmentation'}


def _run_dirs(work_dir: str):
    """Timestamped run folders of a work dir, newest first."""
    dirs = [d for d in glob.glob(osp.join(work_dir, '*')) if osp.isdir(d)
            and osp.basename(d)[:8].isdigit()]
    return sorted(dirs, key=osp.basename, reverse=True)


def read_metrics(work_dir: str, task: str) -> Tuple[Dict[str, float], str]:
    """The newest metrics of ``task`` in ``work_dir`` and the file they came from."""
    wanted = [key for key, _ in METRIC_KEYS[task].values()]
    for run in _run_dirs(work_dir):
        stamp = osp.basename(run)
        test_json = osp.join(run, f'{stamp}.json')
        if osp.isfile(test_json):
            with open(test_json) as f:
                record = json.load(f)
            if all(k in record for k in wanted):
                return record, test_json
        scalars = osp.join(run, 'vis_data', 'scalars.json')
        if osp.isfile(scalars):
            last = None
            with open(scalars) as f:
                for line in f:
                    line = line.strip()
                    if line:
                        record = json.loads(line)
                        if all(k in record for k in wanted):
                            last = record
            if last is not None:
                return last, scalars
    raise FileNotFoundError(
        f'no {task} metrics ({", ".join(wanted)}) found under {work_dir!r}: expected '
        f'<timestamp>/<timestamp>.json from tools/test.py or a validation record in '
        f'<timestamp>/vis_data/scalars.json from tools/train.py')


def read_config(work_dir: str) -> Tuple[Optional[str], Optional[str]]:
    """(arch, task) from the config mmengine dumped into ``work_dir``, if any."""
    from mmengine.config import Config
    for path in sorted(glob.glob(osp.join(work_dir, '*.py')), key=osp.getmtime, reverse=True):
        try:
            cfg = Config.fromfile(path, import_custom_modules=False)
        except Exception:  # not a config (or a broken one): look at the next file
            continue
        arch = cfg.get('model', {}).get('backbone', {}).get('arch')
        return (arch if isinstance(arch, str) else None,
                TASK_OF_SCOPE.get(cfg.get('default_scope')))
    return None, None


def compare(work_dir: str, arch: Optional[str] = None, task: Optional[str] = None) -> dict:
    """Our metrics (percent) beside the paper's for ``arch`` and ``task``."""
    if not osp.isdir(work_dir):
        raise FileNotFoundError(f'work dir {work_dir!r} does not exist')
    cfg_arch, cfg_task = read_config(work_dir)
    arch = (arch or cfg_arch or '').lower() or None
    task = task or cfg_task
    if task not in PAPER_RESULTS:
        raise ValueError(f'cannot tell the task of {work_dir!r} (no saved config with '
                         f'default_scope mmdet/mmseg); pass --task detection|segmentation')
    if arch not in V1_ARCHS + V2_ARCHS:
        raise ValueError(f'cannot tell the EfficientFormer arch of {work_dir!r} (got {arch!r}); '
                         f'pass --arch with one of {", ".join(V1_ARCHS + V2_ARCHS)}')
    record, source = read_metrics(work_dir, task)
    paper_row = PAPER_RESULTS[task].get(arch)  # None: V2-S0/S1, no dense result reported
    rows = []
    for name, (key, scale) in METRIC_KEYS[task].items():
        ours = float(record[key]) * scale
        paper = paper_row[name] if paper_row else None
        rows.append(dict(metric=name, ours=round(ours, 2), paper=paper,
                         diff=None if paper is None else round(ours - paper, 2)))
    note = ('the V2 paper reports no result for this variant' if paper_row is None else
            'paper figure from a secondary source, not yet checked against the V2 paper'
            if (task, arch) in UNCHECKED else None)
    return dict(work_dir=work_dir, source=source, arch=arch, task=task, rows=rows, note=note,
                references={k: v for k, v in PAPER_RESULTS[task].items()
                            if k not in V1_ARCHS + V2_ARCHS})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dir', help='the --work-dir of a finished train or test run')
    parser.add_argument('--arch', choices=V1_ARCHS + V2_ARCHS, help='default: from the config')
    parser.add_argument('--task', choices=sorted(PAPER_RESULTS), help='default: from the config')
    parser.add_argument('--json', help='also write the comparison to this JSON file')
    args = parser.parse_args(argv)
    try:
        result = compare(args.work_dir, args.arch, args.task)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f'error: {exc}')
    family = 'EfficientFormerV2' if result['arch'] in V2_ARCHS else 'EfficientFormer'
    print(f"{family}-{result['arch'].upper()} {result['task']} ({result['source']})")
    print(f"{'metric':<10} {'ours':>7} {'paper':>7} {'diff':>7}")
    for r in result['rows']:
        if r['paper'] is None:
            print(f"{r['metric']:<10} {r['ours']:>7.2f} {'n/a':>7} {'n/a':>7}")
        else:
            print(f"{r['metric']:<10} {r['ours']:>7.2f} {r['paper']:>7.1f} {r['diff']:>+7.2f}")
    if result['note']:
        print(f"note: {result['note']}")
    refs = ', '.join(f"{name} {' / '.join(str(v) for v in m.values())}"
                     for name, m in result['references'].items())
    print(f'paper references: {refs}')
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
        print(f'Wrote {args.json}')
    return result


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
