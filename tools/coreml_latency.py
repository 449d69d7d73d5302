"""Time an exported EfficientFormer .mlpackage with Core ML (macOS), beside the paper's iPhone 12.

    python tools/coreml_latency.py MODEL.mlpackage [--compute-units ALL [CPU_AND_NE CPU_ONLY]]
        [--warmup 50] [--reps 1000] [--out-json FILE] [--arch l1 --task classifier]
        [--proxy-reps 50] [--proxy-warmup 5] [--threads N]

On macOS 13+ with coremltools: loads the package once per compute-unit setting (ALL = CPU +
GPU + Neural Engine, the paper's setting; CPU_AND_NE; CPU_ONLY ...), warms up, times at least
500 predictions and prints median/p90 beside the paper's iPhone 12 figure (L1 1.6 ms, L3 3.0
ms, L7 7.0 ms). A Mac is not an iPhone: for the iPhone 12 figure, open the package in Xcode
and run a Core ML Performance Report on the phone (docs/deployment.md).

Anywhere else it cannot run Core ML: it says why, prints PROXIES (the fused model in torch and
ONNX Runtime on this machine's CPU; not iPhone figures) and exits with status 3. For a whole
detector or segmentor (tools/export.py --task detector|segmentor) the proxies are the whole
model and its backbone alone in ONNX Runtime, exported from the config recorded in the package
(or --whole-model CONFIG) at the package's input size. On a Mac, time the backbone package and
the whole-model package one after the other to compare them in Core ML.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXIT_NO_COREML = 3  # distinct from argparse usage errors (2)
WHOLE_TASKS = ('detector', 'segmentor')


def _print_whole_model_proxies(args, info) -> None:
    from mmeff.benchmark.latency import device_label
    from mmeff.benchmark.whole_model import whole_model_latency
    config = args.whole_model or info.get('config')
    if not config or not os.path.isfile(config):
        print(f"PROXIES: not measured: the package's config {config!r} is not a file here; "
              f'pass --whole-model CONFIG')
        return
    shape = info['input_shape']
    result = whole_model_latency(config, info['task'], [tuple(shape[2:])],
                                 warmup=args.proxy_warmup, reps=args.proxy_reps,
                                 threads=args.threads, log=lambda msg: None)
    where = device_label(result['machine'])
    print(f"PROXIES for the whole {info['task']} of {config} at {'x'.join(map(str, shape))} -- "
          f'measured on this machine ({where}), ONNX Runtime fp32, {args.proxy_reps} reps: NOT '
          f'iPhone 12 / Core ML figures')
    for row in result['results']:
        name = f"onnxruntime {'whole' if row['part'] == 'whole' else 'backbone'}"
        if row['status'] == 'ok':
            print(f"  PROXY {name:22s} median {row['median_ms']:8.2f} ms, p90 "
                  f"{row['p90_ms']:8.2f} ms ({where})")
        else:
            print(f"  PROXY {name:22s} {row['status']}")


def _print_proxies(args, info) -> None:
    from mmeff.benchmark.coreml import paper_reference, proxy_latency
    from mmeff.benchmark.latency import device_label
    if (args.task or info.get('task')) in WHOLE_TASKS:
        _print_whole_model_proxies(args, dict(info, task=args.task or info.get('task')))
        return
    from mmeff.models.families import all_archs
    arch, task = args.arch or info.get('arch'), args.task or info.get('task')
    if arch not in all_archs():
        print('PROXIES: not measured: the package has no mmeff arch metadata; pass --arch '
              '(and --task) to measure them')
        return
    shape = info['input_shape']
    result = proxy_latency(arch, task, shape, warmup=args.proxy_warmup, reps=args.proxy_reps,
                           threads=args.threads)
    where = device_label(result['machine'])
    from mmeff.benchmark.complexity import display_name
    print(f"PROXIES for {display_name(arch)} {task} at {'x'.join(map(str, shape))} -- measured on "
          f'this machine ({where}), fp32, {args.proxy_reps} reps: NOT iPhone 12 / Core ML '
          f'figures')
    for row in result['results']:
        if row['status'] == 'ok':
            print(f"  PROXY {row['runtime']:12s} median {row['median_ms']:8.2f} ms, p90 "
                  f"{row['p90_ms']:8.2f} ms ({where})")
        else:
            print(f"  PROXY {row['runtime']:12s} {row['status']}")
    _, ref = paper_reference(dict(info, arch=arch, task=task))
    print(f'  for reference, {ref}')


def main(argv=None) -> int:
    from mmeff.models.families import all_archs
    from mmeff.runtime import COMPUTE_UNITS
    from mmeff.benchmark.coreml import MIN_REPS
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('package', help='.mlpackage written by tools/export.py --format coreml')
    p.add_argument('--compute-units', nargs='+', default=['ALL'], choices=COMPUTE_UNITS,
                   help='one run per setting (default ALL = CPU+GPU+Neural Engine)')
    p.add_argument('--warmup', type=int, default=50)
    p.add_argument('--reps', type=int, default=1000, help=f'timed predictions (>= {MIN_REPS})')
    p.add_argument('--out-json', help='write the timings as a latency results file '
                                      '(for tools/plot_latency.py)')
    p.add_argument('--arch', choices=all_archs(),
                   help='override the arch read from the package metadata')
    p.add_argument('--task', choices=('classifier', 'backbone') + WHOLE_TASKS,
                   help='override the task read from the package metadata')
    p.add_argument('--whole-model', metavar='CONFIG',
                   help='config of a whole detector/segmentor package, for its proxies '
                        '(default: the config recorded in the package)')
    p.add_argument('--proxy-reps', type=int, default=50, help='reps of the proxies (non-macOS)')
    p.add_argument('--proxy-warmup', type=int, default=5)
    p.add_argument('--threads', type=int, help='CPU threads of the proxies')
    args = p.parse_args(argv)
    if args.reps < MIN_REPS:
        p.error(f'--reps must be at least {MIN_REPS}, got {args.reps}')
    if not os.path.isdir(args.package):
        p.error(f'{args.package} is not an .mlpackage directory (export one with '
                f'tools/export.py MODEL --format coreml)')

    from mmeff.benchmark.coreml import (coreml_results, coreml_runtime_status, package_info,
                                        paper_reference, time_coreml)
    info = package_info(args.package)
    from mmeff.deploy import inspect_coreml
    info['config'] = inspect_coreml(args.package)['metadata'].get('mmeff.config')
    if args.arch:
        info['arch'] = args.arch
    if args.task:
        info['task'] = args.task
    ok, why = coreml_runtime_status()
    if not ok:
        print(f'error: cannot time Core ML predictions here: {why}.', file=sys.stderr)
        print('For the iPhone 12 figure, run a Core ML Performance Report in Xcode on the '
              'phone (docs/deployment.md, "Latency on an iPhone 12").', file=sys.stderr)
        sys.stderr.flush()
        _print_proxies(args, info)
        return EXIT_NO_COREML

    rows = {}
    _, ref = paper_reference(info)
    shape = 'x'.join(map(str, info['input_shape']))
    print(f"Core ML latency of {args.package} ({info.get('arch')}, {info.get('task')}, "
          f'{shape}), {args.reps} predictions after {args.warmup} warm-up, on this Mac')
    for cu in args.compute_units:
        row = time_coreml(args.package, cu, args.warmup, args.reps)
        rows[cu] = row
        print(f"  {cu:11s} median {row['median_ms']:.3f} ms, p90 {row['p90_ms']:.3f} ms "
              f"(load {row['load_s']} s)")
    print(f'  {ref}')
    print('  (a Mac is not an iPhone 12: see docs/deployment.md for the on-device report)')
    if args.out_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.out_json)), exist_ok=True)
        with open(args.out_json, 'w') as f:
            json.dump(coreml_results(args.package, rows, args.warmup, args.reps), f, indent=2)
        print(f'Wrote {args.out_json}')
    return 0


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
