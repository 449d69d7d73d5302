"""Print a finished run's metrics beside the paper's (EfficientFormer, NeurIPS 2022, Table 3).

    python tools/compare_results.py WORK_DIR [--arch l1|l3|l7|s0|s1|s2|l]
                                    [--task detection|segmentation] [--json OUT.json]

EfficientFormerV2 (s0/s1/s2/l): the V2 paper reports no dense results for S0/S1 (the row says
"not reported"); its S2/L figures here come from a secondary source and are marked as not yet
checked against the paper (https://arxiv.org/abs/2212.08059).

WORK_DIR is the ``--work-dir`` of ``tools/train.py`` or ``tools/test.py``. The metrics are read
from what mmengine wrote there, newest run first:

* ``tools/test.py``: ``WORK_DIR/<timestamp>/<timestamp>.json`` (the test metrics);
* ``tools/train.py``: the last validation record in ``WORK_DIR/<timestamp>/vis_data/scalars.json``.

The variant (l1/l3/l7, s0/s1/s2/l) and the task come from the config mmengine saved in WORK_DIR
(``model.backbone.arch`` and ``default_scope``) unless given. COCO APs are printed in percent
(mmdet's ``coco/bbox_mAP`` x 100); mmseg's mIoU is already in percent. The reading and the
comparison are :mod:`mmeff.benchmark.results`.
"""
import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmeff.benchmark.results import TASKS, archs, compare, format_comparison  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dir', help='the --work-dir of a finished train or test run')
    parser.add_argument('--arch', choices=archs(), help='default: from the config')
    parser.add_argument('--task', choices=TASKS, help='default: from the config')
    parser.add_argument('--json', help='also write the comparison to this JSON file')
    args = parser.parse_args(argv)
    try:
        result = compare(args.work_dir, args.arch, args.task)
    except (FileNotFoundError, ValueError) as exc:
        sys.exit(f'error: {exc}')
    for line in format_comparison(result):
        print(line)
    if args.json:
        from mmeff.engine.checkpointing import write_text_atomic
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        write_text_atomic(args.json, json.dumps(result, indent=2))
        print(f'Wrote {args.json}')
    return result


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
