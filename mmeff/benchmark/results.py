"""A finished run's metrics beside the papers' (EfficientFormer, NeurIPS 2022, Table 3).

The metrics are read from what mmengine wrote in the ``--work-dir`` of ``tools/train.py`` or
``tools/test.py``, newest run first:

* ``tools/test.py``: ``WORK_DIR/<timestamp>/<timestamp>.json`` (the test metrics);
* ``tools/train.py``: the last validation record in ``WORK_DIR/<timestamp>/vis_data/scalars.json``.

The variant and the task come from the config mmengine saved in the work dir
(``model.backbone.arch`` and ``default_scope``) unless given. COCO APs are in percent (mmdet's
``coco/bbox_mAP`` x 100); mmseg's mIoU is already in percent.

The paper figures of the EfficientFormer variants are their families' (``Family.paper[arch]
['dense']`` in :mod:`mmeff.models.families`, with ``Family.paper_ref``): V1 from its paper's
Table 3 (Mask R-CNN 1x on COCO val2017, Semantic FPN 40k on ADE20K val, backbones initialised
from their ImageNet-1K checkpoints); V2's S2/L from a secondary source, marked as not yet
checked against the V2 paper; S0/S1: none reported. The baselines of the V1 paper's Table 3
(ResNet-50, PoolFormer-S24) are :data:`BASELINES`.
"""
import glob
import json
import os.path as osp
from typing import Dict, List, Optional, Tuple

# The other backbones of the V1 paper's Table 3 (https://arxiv.org/abs/2206.01191), printed as
# references: Mask R-CNN 1x (AP box, AP mask) and Semantic FPN 40k (mIoU).
BASELINES: Dict[str, Dict[str, Dict[str, float]]] = {
    'detection': {'ResNet-50': {'bbox_mAP': 38.0, 'segm_mAP': 34.4},
                  'PoolFormer-S24': {'bbox_mAP': 40.1, 'segm_mAP': 37.0}},
    'segmentation': {'ResNet-50': {'mIoU': 36.7}, 'PoolFormer-S24': {'mIoU': 40.3}},
}
# Where each metric is in mmengine's records, and the factor to percent.
METRIC_KEYS = {
    'detection': {'bbox_mAP': ('coco/bbox_mAP', 100.), 'segm_mAP': ('coco/segm_mAP', 100.)},
    'segmentation': {'mIoU': ('mIoU', 1.)},
}
TASKS = tuple(sorted(METRIC_KEYS))
TASK_OF_SCOPE = {'mmdet': 'detection', 'mmseg': 'segmentation'}


def archs() -> Tuple[str, ...]:
    """Every named arch of every registered family (``l1``... ``s0``...), in registry order."""
    from mmeff.models.families import all_archs
    return tuple(all_archs())


def paper_figures(task: str, arch: str) -> Tuple[Optional[Dict[str, float]], Optional[str]]:
    """The paper's ``task`` figures of ``arch`` (``None`` where none is reported) and a note
    saying why one is missing or unchecked (else ``None``), from its family's record."""
    from mmeff.models.families import family_of_arch
    family = family_of_arch(arch)
    dense = family.paper.get(arch, {}).get('dense')
    if not dense or task not in dense:
        return None, f'the {family.label} paper reports no result for this variant'
    note = None if dense.get('checked', True) else (
        f'paper figure from a secondary source, not yet checked against the {family.label} '
        f'paper')
    return dict(dense[task]), note


def _run_dirs(work_dir: str) -> List[str]:
    """Timestamped run folders of a work dir, newest first."""
    dirs = [d for d in glob.glob(osp.join(work_dir, '*')) if osp.isdir(d)
            and osp.basename(d)[:8].isdigit()]
    return sorted(dirs, key=osp.basename, reverse=True)


def read_metrics(work_dir: str, task: str) -> Tuple[Dict[str, float], str]:
    """The newest metrics of ``task`` in ``work_dir`` and the file they came from.

    Raises:
        FileNotFoundError: no record with the task's metrics, naming the files looked for.
    """
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
    """Our metrics (percent) beside the paper's for ``arch`` and ``task``.

    Args:
        work_dir (str): the ``--work-dir`` of a finished train or test run.
        arch (str, optional): a named arch (``l1``, ``s2``...); default: the saved config's.
        task (str, optional): ``'detection'`` or ``'segmentation'``; default: from the saved
            config's ``default_scope``.

    Returns:
        dict: ``work_dir``, ``source`` (the metrics file), ``arch``, ``family`` (its family's
        name), ``task``, ``rows`` (``metric``, ``ours``, ``paper``, ``diff``; ``paper`` and
        ``diff`` are None where the paper reports nothing), ``note`` (why a figure is missing
        or unchecked, else None) and ``references`` (the paper's baselines).

    Raises:
        FileNotFoundError: no work dir, or no metrics in it.
        ValueError: the task or the arch cannot be told, with the option that gives it.
    """
    from mmeff.models.families import family_of_arch
    if not osp.isdir(work_dir):
        raise FileNotFoundError(f'work dir {work_dir!r} does not exist')
    cfg_arch, cfg_task = read_config(work_dir)
    arch = (arch or cfg_arch or '').lower() or None
    task = task or cfg_task
    if task not in METRIC_KEYS:
        raise ValueError(f'cannot tell the task of {work_dir!r} (no saved config with '
                         f'default_scope mmdet/mmseg); pass --task detection|segmentation')
    known = archs()
    if arch not in known:
        raise ValueError(f'cannot tell the EfficientFormer arch of {work_dir!r} (got {arch!r}); '
                         f'pass --arch with one of {", ".join(known)}')
    record, source = read_metrics(work_dir, task)
    paper_row, note = paper_figures(task, arch)
    rows = []
    for name, (key, scale) in METRIC_KEYS[task].items():
        ours = float(record[key]) * scale
        paper = paper_row[name] if paper_row else None
        rows.append(dict(metric=name, ours=round(ours, 2), paper=paper,
                         diff=None if paper is None else round(ours - paper, 2)))
    return dict(work_dir=work_dir, source=source, arch=arch, family=family_of_arch(arch).name,
                task=task, rows=rows, note=note, references=dict(BASELINES[task]))


def format_comparison(result: dict) -> List[str]:
    """The lines ``tools/compare_results.py`` prints for :func:`compare`'s result."""
    lines = [f"{result['family']}-{result['arch'].upper()} {result['task']} "
             f"({result['source']})",
             f"{'metric':<10} {'ours':>7} {'paper':>7} {'diff':>7}"]
    for r in result['rows']:
        if r['paper'] is None:
            lines.append(f"{r['metric']:<10} {r['ours']:>7.2f} {'n/a':>7} {'n/a':>7}")
        else:
            lines.append(f"{r['metric']:<10} {r['ours']:>7.2f} {r['paper']:>7.1f} "
                         f"{r['diff']:>+7.2f}")
    if result['note']:
        lines.append(f"note: {result['note']}")
    refs = ', '.join(f"{name} {' / '.join(str(v) for v in m.values())}"
                     for name, m in result['references'].items())
    lines.append(f'paper references: {refs}')
    return lines


__all__ = ['BASELINES', 'METRIC_KEYS', 'TASKS', 'archs', 'paper_figures', 'read_metrics',
           'read_config', 'compare', 'format_comparison']
