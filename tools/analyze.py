"""Params and MACs of EfficientFormer variants, beside the paper's and timm's figures.

    python tools/analyze.py [--archs l1 l3 l7] [--shape 224 224] [--no-head] [--out FILE.json]
    python tools/analyze.py --archs '{"depths": [1, 1, 3, 2], "widths": [32, 64, 96, 128], "num_vit": 3}'

An ``--archs`` entry is a name or an arch dict as JSON (e.g. one that ``tools/slim.py`` found).

With the classification head (default) at 224x224 the figures must agree with the paper
(12.3M/1.3G, 31.3M/3.9G, 82.1M/10.2G) and timm (12.29M/1.30G, 31.41M/3.93G, 82.23M/10.17G).
MACs are counted by mmengine's FlopAnalyzer (one multiply-add = 1). For whole detectors or
segmentors use tools/analyze_dense.py.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_arch(text: str):
    """An ``--archs`` entry: a name, or an arch dict written as JSON."""
    if not text.lstrip().startswith('{'):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f'{text!r} is not valid JSON ({exc}); write an arch dict as '
            f'\'{{"depths": [...], "widths": [...], "num_vit": N}}\'') from None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--archs', nargs='+', default=['l1', 'l3', 'l7'], type=parse_arch,
                        help='names (l1, l3, l7) or arch dicts as JSON')
    parser.add_argument('--shape', nargs=2, type=int, default=[224, 224], metavar=('H', 'W'))
    parser.add_argument('--no-head', action='store_true', help='backbone only')
    parser.add_argument('--out', help='also write the table as JSON')
    args = parser.parse_args(argv)
    from mmeff.benchmark.complexity import PAPER, TIMM, complexity_table
    rows = complexity_table(args.archs, tuple(args.shape), with_head=not args.no_head)
    what = 'backbone only' if args.no_head else 'with classification head'
    print(f'EfficientFormer, {what}, input {args.shape[0]}x{args.shape[1]}')
    print('| arch | params (M) | GMACs | paper params (M) | paper GMACs | timm params (M) | timm GMACs |')
    print('|---|---|---|---|---|---|---|')
    for arch, r in rows.items():
        p, t = PAPER.get(arch, {}), TIMM.get(arch, {})
        print(f"| {arch} | {r['params_m']:.2f} | {r['gmacs']:.2f} | {p.get('params_m', '-')} | "
              f"{p.get('gmacs', '-')} | {t.get('params_m', '-')} | {t.get('gmacs', '-')} |")
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(input=args.shape, with_head=not args.no_head, rows=rows), f, indent=2)
        print(f'Wrote {args.out}')
    return rows


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
