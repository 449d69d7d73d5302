"""Export an EfficientFormer model (backbone, classifier, whole segmentor or detector) to ONNX
or Core ML, fused, and check it.

    python tools/export.py MODEL --format onnx|coreml [--input-size 224|HxW] [--batch-size 1]
        [--task backbone|classifier|segmentor|detector] [--checkpoint CKPT] [--out PATH]
        [--no-fuse] [--precision fp16|fp32] [--compute-units ALL|CPU_AND_NE|CPU_AND_GPU|CPU_ONLY]
        [--image-input] [--method auto|export|trace] [--opset 18] [--dynamic-batch]
        [--output labels|logits] [--no-normalize] [--max-dets N] [--score-thr T] [--iou-thr T]
        [--report-json FILE]

MODEL is an arch (V1 ``l1``/``l3``/``l7``, V2 ``s0``/``s1``/``s2``/``l`` where mmeff has
EfficientFormerV2) or a config (``.py``: a classification config, or a detection /
segmentation config whose ``model.backbone`` is an mmeff EfficientFormer). Without
``--checkpoint`` the weights are random: fine for latency, not for accuracy.

``--task segmentor`` exports the whole mmseg segmentor of a segmentation config (Semantic FPN,
UPerNet): image (pixels 0-255, the config's mean/std in the graph) -> labels (argmax in the
graph, int32) or logits at the input size (``mmeff.deploy.export_segmentor``).
``--task detector`` exports the whole detector of a detection config, with box decoding and
NMS in the graph (``mmeff.deploy.detector.export_detector``).

ONNX: exported with torch.onnx, checked with onnx.checker and with ONNX Runtime against torch.
Every output is written beside --out and checked there: --out is replaced only by a model that
passed its checks (a failed one is kept as <name>.failed.onnx / .failed.mlpackage), so a
failed or killed export never destroys the previous file.
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


# Whole models exported from a config, beside build_model's backbone and classifier.
WHOLE_MODEL_TASKS = ('segmentor', 'detector')
DEFAULT_SIZES = dict(backbone='224', classifier='224', segmentor='512x512')


def parse_args(argv=None):
    from mmeff.deploy import COMPUTE_UNITS, TASKS
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help="arch (V1 'l1', 'l3', 'l7'; V2 's0', 's1', 's2', 'l') or "
                                 'config file (.py)')
    p.add_argument('--format', required=True, choices=('onnx', 'coreml'))
    p.add_argument('--task', default='backbone', choices=TASKS + WHOLE_MODEL_TASKS,
                   help='backbone (stage maps), classifier (logits), segmentor (the whole '
                        'mmseg model of a segmentation config: labels or logits) or detector '
                        '(the whole mmdet model of a detection config: boxes, scores, labels); '
                        'default backbone')
    p.add_argument('--checkpoint', help='weights (mmeff, authors, timm or mmpretrain layout; '
                                        'for segmentor/detector the checkpoint tools/train.py '
                                        'saved with the config)')
    p.add_argument('--input-size',
                   help="image size: '224' or 'HxW' such as '800x1333' (default 224; "
                        "segmentor 512x512; detector: export_detector's default)")
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
                   help='Core ML only: ImageType input (8-bit RGB pixels) instead of a float '
                        'tensor, normalised in the graph (backbone/classifier: /255 and the '
                        "ImageNet mean/std; segmentor/detector: the config's data_preprocessor)")
    p.add_argument('--method', default='auto', choices=('auto', 'export', 'trace'),
                   help='Core ML only: torch.export (auto falls back to torch.jit.trace)')
    p.add_argument('--opset', type=int, default=18, help='ONNX only')
    p.add_argument('--dynamic-batch', action='store_true', help='ONNX only')
    p.add_argument('--output', choices=('labels', 'logits'),
                   help='segmentor only: labels (argmax in the graph, int32; default) or logits')
    p.add_argument('--no-normalize', action='store_true',
                   help="segmentor only: no mean/std in the graph (the input is normalised "
                        "already); the default input is pixel values 0-255")
    p.add_argument('--max-dets', type=int, help='detector only: detections kept per image')
    p.add_argument('--score-thr', type=float, help='detector only: score threshold')
    p.add_argument('--iou-thr', type=float, help='detector only: NMS IoU threshold')
    p.add_argument('--report-json', help='also write the export report as JSON here')
    args = p.parse_args(argv)
    misplaced = [f"{flag} (only for --task {' or '.join(tasks)})" for flag, value, tasks in (
        ('--output', args.output, ('segmentor',)),
        ('--no-normalize', args.no_normalize, ('segmentor',)),
        ('--max-dets', args.max_dets, ('detector',)),
        ('--score-thr', args.score_thr, ('detector',)),
        ('--iou-thr', args.iou_thr, ('detector',)),
        ('--out-indices', args.out_indices, ('backbone', 'classifier')))
        if value not in (None, False) and args.task not in tasks]
    if misplaced:
        p.error(f"not an option of --task {args.task}: {', '.join(misplaced)}")
    if args.task in WHOLE_MODEL_TASKS and not args.model.endswith('.py'):
        p.error(f'--task {args.task} exports the whole model of a config: MODEL must be a '
                f'config file (.py), got {args.model!r}')
    if args.input_size is None:
        args.input_size = DEFAULT_SIZES.get(args.task)
    return args


def backbone_of(model: str):
    """``(backbone type, arch)`` that MODEL (an arch name or a config) builds, or None."""
    from mmeff.models import EfficientFormer, EfficientFormerV2
    if not model.endswith('.py'):
        name = model.lower()
        if name in EfficientFormerV2.arch_settings:
            return 'EfficientFormerV2', name
        return ('EfficientFormer', name) if name in EfficientFormer.arch_settings else None
    from mmengine.config import Config
    cfg = Config.fromfile(model).get('model')
    if not isinstance(cfg, dict):
        return None
    backbone = cfg if str(cfg.get('type', '')).split('.')[-1].startswith('EfficientFormer') \
        else cfg.get('backbone')
    if not isinstance(backbone, dict):
        return None
    btype = str(backbone.get('type', '')).split('.')[-1]
    default = 's0' if btype == 'EfficientFormerV2' else 'l1'
    return btype, backbone.get('arch', default)


def check_fit_first(args) -> None:
    """The checkpoint's family and arch against what MODEL builds, before building it."""
    from mmeff.checkpoint import check_checkpoint_matches, read_checkpoint
    built = backbone_of(args.model)
    if built is None:
        return
    check_checkpoint_matches(read_checkpoint(args.checkpoint), built[0], built[1],
                             str(args.checkpoint),
                             config=args.model if args.model.endswith('.py') else None)


def export_whole_model(args) -> dict:
    """``--task segmentor|detector``: the report of mmeff.deploy's export function."""
    from mmeff.deploy.fuse import parse_input_size
    size = parse_input_size(args.input_size) if args.input_size else None
    if args.task == 'segmentor':
        from mmeff.deploy.segmentor import export_segmentor
        return export_segmentor(
            args.model, checkpoint=args.checkpoint, fmt=args.format, input_size=size,
            out=args.out, output=args.output or 'labels', batch_size=args.batch_size,
            normalize=not args.no_normalize, fuse=not args.no_fuse, precision=args.precision,
            image_input=args.image_input, compute_units=args.compute_units,
            method=args.method, opset=args.opset, dynamic_batch=args.dynamic_batch)
    try:
        from mmeff.deploy.detector import export_detector
    except ImportError as exc:
        raise ImportError(f'--task detector needs mmeff.deploy.detector.export_detector, which '
                          f'could not be imported ({exc})') from exc
    options = dict(input_size=size, max_dets=args.max_dets, score_thr=args.score_thr,
                   iou_thr=args.iou_thr)
    report = export_detector(args.model, checkpoint=args.checkpoint, fmt=args.format,
                             out=args.out, precision=args.precision,
                             image_input=args.image_input,
                             **{k: v for k, v in options.items() if v is not None})
    report.setdefault('task', 'detector')
    return report


def describe(report: dict) -> str:
    """The printed summary of an export report."""
    from mmeff.deploy import format_report
    if report.get('task') == 'segmentor':
        from mmeff.deploy.segmentor import format_segmentor_report
        return format_segmentor_report(report)
    if report.get('task') == 'detector':
        from mmeff.deploy import detector
        if hasattr(detector, 'format_detector_report'):
            return detector.format_detector_report(report)
        try:
            return format_report(report)
        except KeyError:  # a report without the backbone export's keys
            return json.dumps(report, indent=2, default=str)
    return format_report(report)


def problems_of(report: dict) -> list:
    """Failed checks: the report's ``problems`` (the spec checks of Core ML, the gather and
    bicubic checks of ONNX); a report without them fails on gather ops left in an ONNX graph."""
    if 'problems' in report:
        return list(report['problems'])
    return [f"{report['gather_ops']} gather ops"] if report.get('gather_ops') else []


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.batch_size < 1:
        raise SystemExit(f'error: --batch-size must be >= 1, got {args.batch_size}')
    if args.checkpoint:  # before any model is built: a missing or unreadable file at once
        from mmeff.checkpoint import check_checkpoint_file
        check_checkpoint_file(args.checkpoint)
        check_fit_first(args)
    from mmeff.deploy import build_model, export_coreml, export_onnx, parse_input_shape
    if args.task in WHOLE_MODEL_TASKS:
        print(f'Exporting the whole {args.task} of {args.model} (weights: '
              f"{args.checkpoint or 'random, no --checkpoint given'}) at "
              f"{args.input_size or 'the default size'} to {args.format}")
        return _finish(export_whole_model(args), args)
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
    else:
        report = export_coreml(
            model, out, shape, fuse=not args.no_fuse, precision=args.precision,
            compute_units=args.compute_units, image_input=args.image_input, method=args.method,
            metadata={'mmeff.arch': meta['arch'], 'mmeff.task': args.task,
                      'mmeff.source': meta['source'], 'mmeff.weights': meta['weights']})
    report['model'] = meta
    return _finish(report, args)


def _finish(report: dict, args) -> int:
    """Print the report, write it as JSON if asked, and turn failed checks into exit 1.

    The exporters put a model at its path only when its checks pass; one that fails them is
    kept beside it under another name (``report['rejected']`` names the path left as it was).
    """
    from mmeff.engine.checkpointing import write_text_atomic
    problems = problems_of(report)
    print(describe(report))
    if args.report_json:
        path = os.path.abspath(args.report_json)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_text_atomic(path, json.dumps(report, indent=2, default=str))
        print(f'Report written to {args.report_json}')
    if report.get('rejected'):
        print(f'Export checks FAILED: {"; ".join(problems)}. {report["rejected"]} was not '
              f'replaced; the rejected model is at {report["path"]}', file=sys.stderr)
        return 1
    print(f'Wrote {report["path"]}')
    if problems:
        print('Export checks FAILED: ' + '; '.join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
