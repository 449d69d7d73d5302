"""Export an EfficientFormer (backbone or classifier) to ONNX or Core ML, fused, and check it.

    python tools/export.py MODEL --format onnx|coreml [--input-size 224|HxW] [--batch-size 1]
        [--task backbone|classifier] [--checkpoint CKPT] [--out PATH] [--no-fuse]
        [--precision fp16|fp32] [--compute-units ALL|CPU_AND_NE|CPU_AND_GPU|CPU_ONLY]
        [--image-input] [--method auto|export|trace] [--opset 18] [--dynamic-batch]
        [--report-json FILE]

MODEL is ``l1``/``l3``/``l7`` or a config (``.py``: a classification config, or a detection /
segmentation config whose ``model.backbone`` is an EfficientFormer). Without ``--checkpoint``
the weights are random: fine for latency, not for accuracy.

ONNX: exported with torch.onnx, checked with onnx.checker and with ONNX Runtime against torch.
Core ML: mlprogram (.mlpackage), iOS 16+, FP16, FP32 I/O; converted from torch.export (+
run_decompositions) with torch.jit.trace as the fallback; the spec is reloaded and checked (op
histogram, no gather, FP16 tensors apart from I/O casts, shapes, size). Compute units are
chosen when the model is loaded (ALL = CPU + GPU + Neural Engine, as the paper measured);
``--compute-units`` is recorded in the model's metadata. See docs/deployment.md.

Exits non-zero if a check fails.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    from mmeff.deploy import COMPUTE_UNITS, TASKS
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help="arch ('l1', 'l3', 'l7') or config file (.py)")
    p.add_argument('--format', required=True, choices=('onnx', 'coreml'))
    p.add_argument('--task', default='backbone', choices=TASKS,
                   help='backbone (stage maps) or classifier (logits); default backbone')
    p.add_argument('--checkpoint', help='weights (mmeff, authors, timm or mmpretrain layout)')
    p.add_argument('--input-size', default='224',
                   help="image size: '224' or 'HxW' such as '800x1333' (default 224)")
    p.add_argument('--batch-size', type=int, default=1)
    p.add_argument('--out-indices', type=int, nargs='+',
                   help='backbone stages to output (default: the config/backbone default)')
    p.add_argument('--out', help='output path (default work_dirs/export/<name>_<size>.<ext>)')
    p.add_argument('--no-fuse', action='store_true',
                   help='export without folding BN/layer scales (biases are still cached)')
    p.add_argument('--precision', default='fp16', choices=('fp16', 'fp32'), help='Core ML only')
    p.add_argument('--compute-units', default='ALL', choices=COMPUTE_UNITS,
                   help='Core ML only: intended compute units, stored in the metadata '
                        '(default ALL = CPU+GPU+Neural Engine)')
    p.add_argument('--image-input', action='store_true',
                   help='Core ML only: ImageType input (RGB pixels, /255 and ImageNet mean/std '
                        'in the graph) instead of a float tensor')
    p.add_argument('--method', default='auto', choices=('auto', 'export', 'trace'),
                   help='Core ML only: torch.export (auto falls back to torch.jit.trace)')
    p.add_argument('--opset', type=int, default=18, help='ONNX only')
    p.add_argument('--dynamic-batch', action='store_true', help='ONNX only')
    p.add_argument('--report-json', help='also write the export report as JSON here')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmeff.deploy import (build_model, export_coreml, export_onnx, format_report,
                              parse_input_shape)
    if args.batch_size < 1:
        raise SystemExit(f'error: --batch-size must be >= 1, got {args.batch_size}')
    shape = (args.batch_size,) + parse_input_shape(args.input_size)[1:]
    model, meta = build_model(args.model, task=args.task, checkpoint=args.checkpoint,
                              out_indices=args.out_indices)
    shape = (shape[0], getattr(model, 'in_channels', 3)) + shape[2:]
    size = f'{shape[2]}x{shape[3]}'
    ext = '.onnx' if args.format == 'onnx' else '.mlpackage'
    out = args.out or os.path.join('work_dirs', 'export',
                                   f"{meta['name']}_{args.task}_{size}{ext}")
    print(f"Exporting {meta['source']} ({args.task}, weights: {meta['weights']}) at "
          f"{'x'.join(map(str, shape))} to {args.format}, "
          f"{'unfused' if args.no_fuse else 'fused'}")
    if args.format == 'onnx':
        report = export_onnx(model, out, shape, fuse=not args.no_fuse, opset=args.opset,
                             dynamic_batch=args.dynamic_batch)
        problems = [f"{report['gather_ops']} gather ops"] if report['gather_ops'] else []
    else:
        report = export_coreml(
            model, out, shape, fuse=not args.no_fuse, precision=args.precision,
            compute_units=args.compute_units, image_input=args.image_input, method=args.method,
            metadata={'mmeff.arch': meta['arch'], 'mmeff.task': args.task,
                      'mmeff.source': meta['source'], 'mmeff.weights': meta['weights']})
        problems = report['problems']
    report['model'] = meta
    print(format_report(report))
    if args.report_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.report_json)), exist_ok=True)
        with open(args.report_json, 'w') as f:
            json.dump(report, f, indent=2)
        print(f'Report written to {args.report_json}')
    print(f'Wrote {report["path"]}')
    if problems:
        print('Export checks FAILED: ' + '; '.join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
