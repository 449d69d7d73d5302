"""Accuracy vs latency plot (cf. the paper's Figure 1) from latency results files.

    python tools/plot_latency.py RESULTS.json [RESULTS.json ...] --out FIG.png
        [--input-size 224] [--batch-size 1]

Draws the paper's iPhone 12 points (EfficientFormer L1/L3/L7, MobileNetV2) and every measured
series of the results files (from tools/benchmark_latency.py or tools/coreml_latency.py) at
the given input and batch size, each labelled with its device and runtime. Measured points sit
at the paper's top-1 of their arch (the benchmarks time random weights).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('results', nargs='*', help='results JSON files (none: paper points only)')
    p.add_argument('--out', required=True, help='PNG to write')
    p.add_argument('--input-size', default='224', help='N or HxW (default 224)')
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--title')
    args = p.parse_args(argv)
    from mmeff.benchmark.plot import measured_series, plot_accuracy_latency
    from mmeff.benchmark.latency import load_results
    from mmeff.deploy import parse_input_size
    size = parse_input_size(args.input_size)
    series = measured_series([load_results(r) for r in args.results], size, args.batch_size)
    if args.results and not series:
        print(f'warning: no successful measurement at {size[0]}x{size[1]}, batch '
              f'{args.batch_size} in {args.results}: only the paper points are drawn',
              file=sys.stderr)
    out = plot_accuracy_latency(args.results, args.out, size, args.batch_size, args.title)
    for label, points in series.items():
        print(f'{label}: ' + ', '.join(f'{a} {ms:.2f} ms' for a, ms in points))
    print(f'Wrote {out}')
    return 0


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
