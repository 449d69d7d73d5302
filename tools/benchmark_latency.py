"""Latency/throughput of EfficientFormer: mmeff eager, fused, torch.compile, ONNX Runtime, timm.

    python tools/benchmark_latency.py [--archs l1 l3 l7] [--input-sizes 224 512x512 800x1333]
        [--batch-sizes 1 8] [--device cpu|cuda] [--runtimes timm eager fused compile onnxruntime
        onnxruntime-int8 coreml ...]
        [--task classifier|backbone] [--warmup 10] [--reps 100] [--threads N] [--settle-ms 10]
        [--out-dir benchmarks] [--name NAME] [--plot]
    python tools/benchmark_latency.py --whole-model CONFIG [--checkpoint CKPT]
        [--whole-task detector|segmentor] [--input-sizes 512x512 640x640] [--warmup 5] [--reps 50]
        [--threads N] [--out-dir benchmarks] [--name NAME]

Every runtime runs the same weights on the same input (timm's initialisation, converted with
mmeff.converters.convert_timm), beside timm's own model built in this process. timm supports
224x224 only: at other sizes its rows read "unsupported: <error>". Repetitions are
interleaved across runtimes (ONNX Runtime's threads stop spinning as each call returns,
so no runtime slows down the next); medians and p90 are reported; on CUDA each call is
synchronised.
Writes <out-dir>/<name>.json and <name>.md (and <name>.png with --plot: accuracy vs latency
beside the paper's iPhone 12 points). These figures are of this machine, not of an iPhone:
see docs/deployment.md.

With --whole-model CONFIG (an mmdet RetinaNet or mmseg segmentor config with an mmeff backbone)
it times, in ONNX Runtime, the whole exported model (tools/export.py --task detector|segmentor)
beside the config's backbone alone, at 512x512 and 640x640 unless --input-sizes says otherwise
(mmeff.benchmark.whole_model), and writes <name>.json and <name>.md.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """Each option's default in --help, the description as written. Options whose default is
    None or a switch's False say what happens without them in their own help instead."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None):
    from mmeff.benchmark.latency import DEFAULT_RUNTIMES, RUNTIMES, TASKS
    from mmeff.models.families import FAMILIES, all_archs
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=_HelpFormatter)
    p.add_argument('--archs', nargs='+', default=['l1'], choices=all_archs(),
                   help=', '.join(f"{f.name} {'/'.join(f.archs)}" for f in FAMILIES.values()))
    p.add_argument('--input-sizes', nargs='+',
                   help="sizes as N or HxW, e.g. 224 512x512 800x1333 (default 224; with "
                        "--whole-model 512x512 640x640)")
    p.add_argument('--batch-sizes', nargs='+', type=int, default=[1], help='batch sizes timed')
    p.add_argument('--device', default='cpu', help='cpu or cuda[:N]')
    p.add_argument('--runtimes', nargs='+', default=list(DEFAULT_RUNTIMES), choices=RUNTIMES,
                   help='runtimes timed side by side: timm, eager, fused (channels-last '
                        'eager inference), fastest (mmeff.deploy.fastest: fused + '
                        'torch.compile where it compiles) and every backend of mmeff.runtime '
                        'not bound to one torch device (coreml: macOS only)')
    p.add_argument('--task', default='classifier', choices=TASKS,
                   help='classifier (logits) or backbone (4 stage maps)')
    p.add_argument('--warmup', type=int, default=10, help='untimed calls first, per runtime')
    p.add_argument('--reps', type=int, default=100, help='timed calls per runtime')
    p.add_argument('--threads', type=int, help='CPU threads (torch and ONNX Runtime)')
    p.add_argument('--settle-ms', type=float, default=10.,
                   help='untimed pause before every timed call, so that no runtime\'s '
                        'spinning threads overlap the next one')
    p.add_argument('--out-dir', default='work_dirs/benchmark', help='where the results go')
    p.add_argument('--name', help='file stem (default latency_<task>_<device>)')
    p.add_argument('--plot', action='store_true', help='also draw <name>.png')
    p.add_argument('--whole-model', metavar='CONFIG',
                   help='time the whole exported detector/segmentor of this config beside its '
                        'backbone (ONNX Runtime); the runtime/arch options do not apply')
    p.add_argument('--whole-task', choices=('detector', 'segmentor'),
                   help='with --whole-model: the task (default: from the config\'s model.type)')
    p.add_argument('--checkpoint', help='with --whole-model: the whole model\'s weights')
    args = p.parse_args(argv)
    if not args.whole_model and (args.whole_task or args.checkpoint):
        p.error('--whole-task and --checkpoint go with --whole-model CONFIG')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.whole_model:
        return _whole_model(args)
    args.input_sizes = args.input_sizes or ['224']
    if any(b < 1 for b in args.batch_sizes):
        raise SystemExit(f'error: batch sizes must be >= 1, got {args.batch_sizes}')
    if args.settle_ms < 0:
        raise SystemExit(f'error: --settle-ms must be >= 0, got {args.settle_ms}')

    from mmeff.benchmark.latency import benchmark, save_results, to_markdown
    result = benchmark(args.archs, args.input_sizes, args.batch_sizes, args.runtimes,
                       task=args.task, device=args.device, warmup=args.warmup, reps=args.reps,
                       threads=args.threads, settle_s=args.settle_ms / 1e3)
    stem = args.name or f"latency_{args.task}_{args.device.replace(':', '')}"
    json_path, md_path = save_results(result, args.out_dir, stem)
    print(to_markdown(result))
    print(f'Wrote {json_path} and {md_path}')
    if args.plot:
        from mmeff.benchmark.plot import plot_accuracy_latency
        png = plot_accuracy_latency([json_path], os.path.join(args.out_dir, stem + '.png'))
        print(f'Wrote {png}')
    failed = [r for r in result['results'] if r['status'].startswith('error')]
    if failed:
        print(f'{len(failed)} runtime(s) failed: '
              + '; '.join(f"{r['runtime']} {r['arch']}: {r['status']}" for r in failed),
              file=sys.stderr)
        return 1
    return 0


def _whole_model(args) -> int:
    from mmeff.benchmark.whole_model import DEFAULT_SIZES, save_results, to_markdown
    from mmeff.benchmark.whole_model import whole_model_latency
    if args.settle_ms < 0:
        raise SystemExit(f'error: --settle-ms must be >= 0, got {args.settle_ms}')
    result = whole_model_latency(args.whole_model, args.whole_task,
                                 args.input_sizes or DEFAULT_SIZES, checkpoint=args.checkpoint,
                                 warmup=args.warmup, reps=args.reps, threads=args.threads,
                                 settle_s=args.settle_ms / 1e3)
    config = os.path.splitext(os.path.basename(args.whole_model))[0]
    stem = args.name or f"latency_whole_{result['settings']['task']}_{config}"
    json_path, md_path = save_results(result, args.out_dir, stem)
    print(to_markdown(result))
    print(f'Wrote {json_path} and {md_path}')
    failed = [r for r in result['results'] if r['status'] != 'ok']
    if failed:
        print(f"{len(failed)} measurement(s) failed: {failed[0]['status']}", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
