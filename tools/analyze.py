"""Params and MACs of EfficientFormer (V1, V2) variants, beside the papers' and timm's figures.

    .venv/bin/python tools/analyze.py [--archs ARCH ...] [--shape 224 224] [--no-head]
        [--count-timm] [--out FILE.json]
    .venv/bin/python tools/analyze.py --archs "$ARCH"
        with e.g. ARCH='{"depths": [1, 1, 3, 2], "widths": [32, 64, 96, 128], "num_vit": 3}'

An ``--archs`` entry is a name of a registered family's arch (V1: l1, l3, l7; V2: s0, s1, s2, l;
default: all of them) or a V1 arch dict as JSON (e.g. one that ``tools/slim.py`` found).

With the classification head (default) at 224x224 the figures agree with timm's (V1:
12.29M/1.30G, 31.41M/3.93G, 82.23M/10.17G; V2 with both heads: 3.60/6.19/12.71/26.32M,
0.41/0.67/1.27/2.59G) and the papers' (V1: 12.3M/1.3G, 31.3M/3.9G, 82.1M/10.2G; V2:
3.5/6.1/12.6/26.1M, the paper's params with one head, and 0.40/0.65/1.25/2.56G, 1-3 % below
what these counting rules give for timm's model and ours). ``--count-timm`` also builds timm's
models and counts them here the same way (timm's models only run at the size they are built
for; they are built for ``--shape``). MACs are counted by mmengine's FlopAnalyzer (one
multiply-add = 1). For whole detectors or segmentors use tools/analyze_dense.py.
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
    parser.add_argument('--archs', nargs='+', type=parse_arch,
                        help='names (V1: l1, l3, l7; V2: s0, s1, s2, l; default: every arch of '
                             'every family) or V1 arch dicts as JSON')
    parser.add_argument('--shape', nargs=2, type=int, default=[224, 224], metavar=('H', 'W'))
    parser.add_argument('--no-head', action='store_true', help='backbone only')
    parser.add_argument('--count-timm', action='store_true',
                        help="also count timm's model of every named arch here (with heads)")
    parser.add_argument('--out', help='also write the table as JSON')
    args = parser.parse_args(argv)
    from mmeff.benchmark.complexity import PAPER, TIMM, complexity_table, timm_complexity
    from mmeff.models.families import FAMILIES, all_archs, family_of, family_of_arch
    archs = args.archs or list(all_archs())
    rows = complexity_table(archs, tuple(args.shape), with_head=not args.no_head)
    counted = {}
    if args.count_timm:
        counted = {a: timm_complexity(a, tuple(args.shape)) for a in rows if a in all_archs()}
        for a, c in counted.items():
            rows[a]['timm_counted'] = c
    what = 'backbone only' if args.no_head else 'with classification head'
    families = ' and '.join(f"{f.name} ({f.key.upper()}: {'/'.join(f.archs)})"
                            for f in FAMILIES.values())
    print(f'{families}, {what}, input {args.shape[0]}x{args.shape[1]}')
    extra = ' timm counted here: params (M) / GMACs |' if counted else ''
    print('| arch | params (M) | GMACs | paper params (M) | paper GMACs | '
          f'timm params (M) | timm GMACs | family |{extra}')
    print('|---|---|---|---|---|---|---|---|' + ('---|' if counted else ''))
    for arch, r in rows.items():
        p, t = PAPER.get(arch, {}), TIMM.get(arch, {})
        # a named arch's family; arch dicts are V1's (the slimming search space)
        family = (family_of_arch(arch) if arch in all_archs()
                  else family_of('EfficientFormer')).key.upper()
        line = (f"| {arch} | {r['params_m']:.2f} | {r['gmacs']:.2f} | "
                f"{p.get('params_m', '-')} | {p.get('gmacs', '-')} | {t.get('params_m', '-')} | "
                f"{t.get('gmacs', '-')} | {family} |")
        if counted:
            c = counted.get(arch)
            line += f" {c['params_m']:.2f} / {c['gmacs']:.2f} |" if c else ' - |'
        print(line)
    if args.no_head:
        print("(paper and timm figures include the classification head; this table does not)")
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(input=args.shape, with_head=not args.no_head, rows=rows), f, indent=2)
        print(f'Wrote {args.out}')
    return rows


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
