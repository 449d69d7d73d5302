"""Parameters and MACs of a whole detection (mmdet) or segmentation (mmseg) model.

    python tools/analyze_dense.py CONFIG [CONFIG ...] [--shape H W] [--cfg-options k=v ...]
                                  [--markdown]

Builds the model of each config with random weights (no checkpoint is read) and counts, on one
``1 x 3 x H x W`` input (default 800 x 1333, the COCO test scale; use 512 512 for ADE20K):

* params: every parameter of the model (backbone, neck, heads);
* MACs: mmengine's ``FlopAnalyzer`` (fvcore's counting rules, one multiply-add = 1; the number
  mmdet's ``get_flops.py`` and most papers print as "FLOPs") of the model's ``mode='tensor'``
  forward: backbone, neck and heads without post-processing. For two-stage detectors this
  includes the RoI heads on the RPN's test-time proposals and the mask head on the first 100
  RoIs, as in mmdet's ``_forward``. How many proposals survive the RPN's NMS depends on the
  (here random) weights, so the count would change from run to run; the RPN's NMS is switched
  off for the count (IoU threshold 1.0), which keeps ``test_cfg.rpn.max_per_img`` proposals, as
  a trained RPN does on a busy image (the count is printed).

Backbone and backbone+neck rows are printed too, since they do not depend on the proposals.
The counting is :func:`mmeff.benchmark.dense.analyze`.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402

from mmeff.benchmark.dense import analyze, format_rows  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description='Params and MACs of detection/segmentation '
                                     'models')
    parser.add_argument('configs', nargs='+', help='config file(s)')
    parser.add_argument('--shape', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'),
                        help='input height and width (default: 800 1333)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries')
    parser.add_argument('--markdown', action='store_true', help='print a Markdown table')
    args = parser.parse_args(argv)
    rows = [analyze(c, tuple(args.shape), args.cfg_options) for c in args.configs]
    for line in format_rows(rows, markdown=args.markdown):
        print(line)
    return rows


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
