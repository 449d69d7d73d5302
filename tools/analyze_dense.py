"""Parameters and MACs of a whole detection (mmdet) or segmentation (mmseg) model.

    python tools/analyze_dense.py CONFIG [CONFIG ...] [--shape H W] [--cfg-options k=v ...]
                                  [--markdown]

Builds the model of each config with random weights (no checkpoint is read) and prints its
params and MACs on one ``1 x 3 x H x W`` input (default 800 x 1333, the COCO test scale; use
512 512 for ADE20K), with backbone and backbone+neck rows. What is counted and how (the RPN's
NMS switched off for a fixed proposal count) is said in :mod:`mmeff.benchmark.dense`.
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
