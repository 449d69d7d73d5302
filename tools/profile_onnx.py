"""Where ONNX Runtime spends an EfficientFormer's time, per operator type (its own profiler).

    python tools/profile_onnx.py [--archs l1 l3] [--task classifier] [--input-size 224]
        [--threads 2] [--warmup 10] [--runs 10] [--int8] [--out-dir benchmarks] [--name NAME]

Each arch is built with timm's initialisation (as tools/benchmark_latency.py), exported fused
(mmeff.deploy.export_onnx, the shipped graph) and, with --int8, also quantised
(mmeff.deploy.quantize, calibrated on the timed input: latency only), then profiled
(mmeff.benchmark.ort_profile.profile_onnx): kernel time per operator type over the profiled
calls, and the operator counts of the graph ONNX Runtime runs after its optimisations (its
NCHWc ReorderInput/ReorderOutput nodes among them). Writes <out-dir>/<name>.json and .md.
The profiler adds a little to every node; compare operators within one file.
"""
import argparse
import os
import os.path as osp
import platform
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_args(argv=None):
    from mmeff.models.families import all_archs
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--archs', nargs='+', default=['l1'], choices=all_archs())
    p.add_argument('--task', default='classifier', choices=['classifier', 'backbone'])
    p.add_argument('--input-size', type=int, default=224, help='square input side')
    p.add_argument('--threads', type=int, default=2, help='ONNX Runtime intra-op threads')
    p.add_argument('--warmup', type=int, default=10, help='untimed calls first')
    p.add_argument('--runs', type=int, default=10, help='profiled calls')
    p.add_argument('--int8', action='store_true', help='profile the INT8 model as well')
    p.add_argument('--out-dir', default='benchmarks')
    p.add_argument('--name', default=None,
                   help='file stem (default: ort_profile_<archs>_<size>_cpu_<threads>threads)')
    args = p.parse_args(argv)
    for name in ('input_size', 'threads', 'runs'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be at least 1')
    if args.warmup < 0:
        p.error('--warmup must be at least 0')
    return args


def main(argv=None):
    args = parse_args(argv)
    import numpy as np

    from mmeff.benchmark.latency import build_models, cpu_name
    from mmeff.benchmark.ort_profile import profile_onnx, write_profiles
    from mmeff.deploy.export import export_onnx
    from mmeff.deploy.quantize import quantize_onnx_file
    size = args.input_size
    load_start = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix='mmeff_profile_') as tmp:
        for arch in args.archs:
            model = build_models(arch, args.task)[0]
            fp32 = osp.join(tmp, f'{arch}.onnx')
            export_onnx(model, fp32, (1, 3, size, size))
            paths = [('FP32', fp32)]
            if args.int8:
                int8 = osp.join(tmp, f'{arch}_int8.onnx')
                x = np.random.default_rng(0).standard_normal((1, 3, size, size))
                quantize_onnx_file(fp32, int8, [x.astype(np.float32)])
                paths.append(('INT8', int8))
            for kind, path in paths:
                result = profile_onnx(path, args.threads, args.warmup, args.runs)
                result.update(title=f'{arch} {args.task}, {kind}', arch=arch, kind=kind,
                              path=f'{arch}_{args.task}_{size}{"_int8" if kind == "INT8" else ""}'
                                   f'.onnx (temporary)')
                results.append(result)
                print(f"[profile] {result['title']}: {result['run_ms_median']:.2f} ms per call "
                      f"(profiler on), {result['reorders']} NCHWc reorders; top: " + ', '.join(
                          f"{r['op']} {100 * r['share']:.0f}%" for r in result['ops'][:3]))
    import onnxruntime
    import torch
    name = args.name or (f"ort_profile_{'_'.join(args.archs)}_{size}_cpu_"
                         f"{args.threads}threads")
    header = (f"# ONNX Runtime per-operator profile ({args.task}, {size}x{size}, batch 1)\n\n"
              f"- Command: `python tools/profile_onnx.py --archs {' '.join(args.archs)} "
              f"--task {args.task} --input-size {size} --threads {args.threads} "
              f"--warmup {args.warmup} --runs {args.runs}{' --int8' if args.int8 else ''}`\n"
              f"- Machine: {cpu_name()} "
              f"({os.cpu_count()} logical cores), {platform.platform()}; 1-min load average "
              f"{load_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end\n"
              f"- Software: onnxruntime {onnxruntime.__version__}, torch {torch.__version__}\n"
              f"- Date: {time.strftime('%Y-%m-%dT%H:%M:%S')}. Per operator type: kernel time per "
              f"profiled call; `nodes` is how many nodes of that type ran.")
    stem = osp.join(args.out_dir, name)
    write_profiles(results, header, stem)
    print(f'[profile] wrote {stem}.json and {stem}.md')
    return 0


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
