"""Export an EfficientFormer model (backbone, classifier, whole segmentor or detector) to ONNX
or Core ML, fused, and check it.

    python tools/export.py MODEL --format onnx|coreml [--input-size 224|HxW] [--batch-size 1]
        [--task backbone|classifier|segmentor|detector] [--checkpoint CKPT] [--out PATH]
        [--cfg-options KEY=VALUE ...] [--no-fuse] [--report-json FILE]
        ONNX:    [--opset 20] [--dynamic-batch] [--quantize int8 --calib-data DIR
                  [--keep-fp32 MODULE ...]]
        Core ML: [--precision fp16|fp32] [--compute-units ALL|CPU_AND_NE|CPU_AND_GPU|CPU_ONLY]
                 [--image-input] [--method auto|export|trace]
                 [--compress palettize4|palettize8|int8]
        backbone: [--out-indices I ...]; segmentor: [--output labels|logits] [--no-normalize];
        detector: [--max-dets N] [--score-thr T] [--iou-thr T]

MODEL is an arch (V1 ``l1``/``l3``/``l7``, V2 ``s0``/``s1``/``s2``/``l``) or a config (``.py``:
a classification config, or a detection / segmentation config whose ``model.backbone`` is an
mmeff EfficientFormer). Without ``--checkpoint`` the weights are random: fine for latency, not
for accuracy. ``--cfg-options`` changes the config before anything is built, as on mmdet's and
mmseg's own tools (e.g. ``model.decode_head.num_classes=19``).

Each ``--task`` is an adapter of ``mmeff.deploy.tasks``: it loads the model (the checkpoint
checked against the family and arch the model builds before anything is built, then loaded with
the fit check), exports it and compares the exported outputs with PyTorch's. An option the task
does not honour for the format is refused, naming the flag and the task.
``--task segmentor`` exports the whole mmseg segmentor of a segmentation config (Semantic FPN,
UPerNet): image (pixels 0-255, the config's mean/std in the graph) -> labels (argmax in the
graph, int32) or logits at the input size (``mmeff.deploy.export_segmentor``).
``--task detector`` exports the whole detector of a detection config, with box decoding and
NMS in the graph (``mmeff.deploy.detector.export_detector``); it honours the options that
function takes.

ONNX: exported with torch.onnx, checked with onnx.checker and with ONNX Runtime against torch.
``--quantize int8 --calib-data DIR`` (backbone, classifier) quantises it statically with ONNX
Runtime (QDQ, per-channel weights), calibrated on the images of an ImageFolder, and times it
against the FP32 graph on this CPU. The stem and the first stage stay FP32 by default (faster
so); ``--keep-fp32 MODULE ...`` names the modules kept FP32 instead, ``--keep-fp32 none`` none.
Every output is written beside --out and checked there: --out is replaced only by a model that
passed its checks (a failed one is kept as <name>.failed.onnx / .failed.mlpackage), so a
failed or killed export never destroys the previous file.
Core ML: mlprogram (.mlpackage), iOS 16+, FP16, FP32 I/O; converted from torch.export (+
run_decompositions) with torch.jit.trace as the fallback; the spec is reloaded and checked (op
histogram, no gather, FP16 tensors apart from I/O casts, shapes, size). ``--compress`` (backbone,
classifier) compresses the weights with coremltools' optimisation API. Compute units are
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
    from mmengine.config import DictAction

    from mmeff.runtime import COMPUTE_UNITS
    from mmeff.deploy.tasks import (EXPORT_TASKS, export_formats, format_refusal, given_options,
                                    refused_options)
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help="arch (V1 'l1', 'l3', 'l7'; V2 's0', 's1', 's2', 'l') or "
                                 'config file (.py)')
    p.add_argument('--format', required=True, choices=export_formats())
    p.add_argument('--task', default='backbone', choices=tuple(EXPORT_TASKS),
                   help='backbone (stage maps), classifier (logits), segmentor (the whole '
                        'mmseg model of a segmentation config: labels or logits) or detector '
                        '(the whole mmdet model of a detection config: boxes, scores, labels); '
                        'default backbone')
    p.add_argument('--checkpoint', help='weights (mmeff, authors, timm or mmpretrain layout; '
                                        'for segmentor/detector the checkpoint tools/train.py '
                                        'saved with the config)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override some settings in the used config, the key-value pair in '
                        'xxx=yyy format will be merged into config file. If the value to be '
                        'overwritten is a list, it should be like key="[a,b]" or key=a,b It '
                        'also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" Note '
                        'that the quotation marks are necessary and that no white space is '
                        'allowed.')
    p.add_argument('--input-size',
                   help="image size: '224' or 'HxW' such as '800x1333' (default 224; "
                        "segmentor 512x512; detector: export_detector's default)")
    p.add_argument('--batch-size', type=int, help='default 1')
    p.add_argument('--out-indices', type=int, nargs='+',
                   help='backbone only: stages to output (default: the config/backbone '
                        'default)')
    p.add_argument('--out', help='output path (default work_dirs/export/<name>_<size>.<ext>)')
    p.add_argument('--no-fuse', action='store_true',
                   help='export without folding BN/layer scales (biases are still cached)')
    p.add_argument('--precision', choices=('fp16', 'fp32'), help='Core ML only; default fp16')
    p.add_argument('--compute-units', choices=COMPUTE_UNITS,
                   help='Core ML only: intended compute units, stored in the metadata '
                        '(default ALL = CPU+GPU+Neural Engine)')
    p.add_argument('--image-input', action='store_true',
                   help='Core ML only: ImageType input (8-bit RGB pixels) instead of a float '
                        'tensor, normalised in the graph (backbone/classifier: /255 and the '
                        "ImageNet mean/std; segmentor/detector: the config's data_preprocessor)")
    p.add_argument('--method', choices=('auto', 'export', 'trace'),
                   help='Core ML only: torch.export (default auto: falls back to '
                        'torch.jit.trace)')
    p.add_argument('--compress', metavar='{palettize4,palettize8,int8}',
                   help='Core ML only (backbone, classifier): compress the weights with '
                        "coremltools' optimisation API (k-means palettes of 16 or 256 values, "
                        'or int8 linear quantisation)')
    p.add_argument('--opset', type=int,
                   help='ONNX only; default 20 (mmeff.runtime.ONNX_OPSET; latency-table pieces '
                        'keep 18)')
    p.add_argument('--dynamic-batch', action='store_true', help='ONNX only')
    p.add_argument('--quantize', choices=('int8',),
                   help='ONNX only (backbone, classifier): static INT8 quantisation with ONNX '
                        'Runtime (QDQ, per-channel weights); needs --calib-data')
    p.add_argument('--calib-data', metavar='DIR',
                   help='with --quantize: an ImageFolder (one folder per class) whose images '
                        'calibrate the activation ranges')
    p.add_argument('--keep-fp32', nargs='+', metavar='MODULE',
                   help='with --quantize: modules whose operators stay FP32 (mixed precision), '
                        "by the model's module paths, e.g. stem stages.0 stages.1 (a "
                        "classifier's as its backbone's, or backbone.stages.0); none: every "
                        'module INT8. Default: the stem and the first stage (faster so on the '
                        'CPUs measured)')
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
    adapter = EXPORT_TASKS[args.task]
    if args.cfg_options and not args.model.endswith('.py'):
        p.error(f'--cfg-options changes a config: MODEL must be a config file (.py), got '
                f'{args.model!r}')
    refused = format_refusal(args.task, args.format) or refused_options(
        args.task, args.format, given_options(args))
    if refused:
        p.error(refused)
    if adapter.needs_config and not args.model.endswith('.py'):
        p.error(f'--task {args.task} exports the whole model of a config: MODEL must be a '
                f'config file (.py), got {args.model!r}')
    if (args.quantize is None) != (args.calib_data is None):
        p.error('--quantize int8 needs --calib-data DIR (an ImageFolder of calibration '
                'images), and --calib-data needs --quantize int8')
    if args.keep_fp32 and args.quantize is None:
        p.error('--keep-fp32 chooses modules that stay FP32 in an INT8 model: use it with '
                '--quantize int8 --calib-data DIR')
    if args.keep_fp32 and 'none' in args.keep_fp32:
        if len(args.keep_fp32) > 1:
            p.error(f"--keep-fp32 none (every module INT8) cannot be combined with modules, got "
                    f"{' '.join(args.keep_fp32)}")
        args.keep_fp32 = []
    if args.input_size is None:
        args.input_size = adapter.default_size
    return args


def problems_of(report: dict) -> list:
    """Failed checks: the report's ``problems`` (the spec checks of Core ML, the gather and
    bicubic checks of ONNX); a report without them fails on gather ops left in an ONNX graph."""
    if 'problems' in report:
        return list(report['problems'])
    return [f"{report['gather_ops']} gather ops"] if report.get('gather_ops') else []


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        raise SystemExit(f'error: --batch-size must be >= 1, got {args.batch_size}')
    from mmeff.deploy.tasks import get_task, given_options
    adapter = get_task(args.task)
    report = adapter.export(args.model, args.format, out=args.out, input_size=args.input_size,
                            checkpoint=args.checkpoint, log=print, **given_options(args))
    return _finish(report, args, adapter.describe(report))


def _finish(report: dict, args, summary: str) -> int:
    """Print the report, write it as JSON if asked, and turn failed checks into exit 1.

    The exporters put a model at its path only when its checks pass; one that fails them is
    kept beside it under another name (``report['rejected']`` names the path left as it was).
    """
    from mmeff.engine.checkpointing import write_text_atomic
    problems = problems_of(report)
    print(summary)
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
