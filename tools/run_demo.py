"""The built-in end-to-end demo: pretrain -> detect -> segment -> export -> report.

    python tools/run_demo.py [--out work_dirs/demo] [--epochs 6]

1. generates three small datasets: an ImageFolder (5 classes of striped images), a COCO-format
   set (shapes on noise, real JPEGs + instances JSON) and an ADE20K-format set (coloured
   rectangles, PNG label maps with the ADE convention);
2. pretrains the EfficientFormer-L1 classifier with the ImageNet recipe
   (configs/demo/effformer_l1_in1k_synthetic.py) through tools/train.py and evaluates top-1
   with tools/test.py;
3. trains Mask R-CNN + L1 (configs/demo/mask_rcnn_effformer_l1_synthetic.py, the real detection
   config on tiny images) from that checkpoint (`pretrained=`, prefix `backbone.`), evaluates it
   with tools/test.py (mmdet's CocoMetric, bbox + segm), draws predictions with tools/demo.py
   and prints them beside the paper with tools/compare_results.py; then exports the whole
   trained Mask R-CNN to ONNX (tools/export.py --task detector: RPN, RoIAlign, box head, NMS
   and mask head in the graph), runs it with ONNX Runtime on the generated validation images
   (mmeff.deploy.detector.evaluate_onnx_detector: masks pasted with
   mmeff.deploy.mask_rcnn.paste_masks, detections into mmdet's CocoMetric);
4. the same for Semantic FPN + L1 (configs/demo/fpn_effformer_l1_synthetic.py; mmseg's
   IoUMetric, a coloured overlay); then exports the whole trained segmentor to ONNX
   (tools/export.py --task segmentor, argmax in the graph), runs it with ONNX Runtime on the
   generated validation images (mmeff.deploy.evaluate_onnx_segmentor: mmeff.deploy.preprocess,
   labels into mmseg's IoUMetric) and draws its labels next to the PyTorch model's;
5. exports the trained detection backbone, fused, to ONNX (checked with onnxruntime) and Core ML
   (mlprogram FP16, spec checks) with tools/export.py;
6. writes OUT/REPORT.md with the metrics, the paper comparisons, the pictures, the export
   checks and the commands that made them.

Every step runs the same command-line tool a user would run (the ONNX Runtime evaluations of the
detector and the segmentor run in this process); logs go to OUT/logs/. The report embeds the
pictures and ends with the commands of the evaluation, drawing and export steps, to run again
on these outputs.
"""
import argparse
import contextlib
import json
import os
import os.path as osp
import shlex
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
CONFIG = 'configs/demo/mask_rcnn_effformer_l1_synthetic.py'
CLS_CONFIG = 'configs/demo/effformer_l1_in1k_synthetic.py'
SEG_CONFIG = 'configs/demo/fpn_effformer_l1_synthetic.py'


def shell_command(args):
    """``args`` (a tool and its arguments, run with this interpreter from the repository root)
    as a command to paste: the interpreter and paths inside the repository relative to it
    (also in ``key=/path`` options), everything quoted for the shell."""
    def rel(path):
        if osp.isabs(path) and (path == ROOT or path.startswith(ROOT + os.sep)):
            return osp.relpath(path, ROOT)
        return path

    def arg(a):
        key, sep, value = a.partition('=')
        if sep and not a.startswith('-') and osp.isabs(value):
            return f'{key}={rel(value)}'
        return rel(a)

    python = rel(sys.executable) if sys.executable.startswith(ROOT + os.sep) else 'python'
    return shlex.join([python] + [arg(a) for a in args])


@contextlib.contextmanager
def output_to(log):
    """Send everything this process writes to stdout and stderr (Python's, and C/C++ libraries'
    such as ONNX Runtime's) to the file ``log`` inside the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log, 'w') as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            try:
                yield log
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


def picture_link(report_dir, path, title):
    """Markdown that shows the picture ``path`` in a report written in ``report_dir``."""
    return f'![{title}]({osp.relpath(path, report_dir)})'


def commands_section(commands, config_copies):
    """The report's last section: each step's command as run (``commands``: (what, args)),
    and where the configs were saved with the run's options (``config_copies``).

    The README's own commands name full-size runs (work_dirs/fpn_l1/iter_40000.pth ...); these
    are the same tools on what the demo left."""
    lines = ['## The same commands on these outputs', '',
             'Each step above, as run (from the repository root). A model is used with the '
             'config it was trained with: the demo configs in `configs/demo/` (3 detection '
             'classes, not COCO\'s 80), also saved with the cfg-options applied in each work '
             f"dir ({', '.join(f'`{p}`' for p in config_copies)}).", '', '```shell']
    for what, step in commands:
        lines += [f'# {what}', shell_command(step)]
    return lines + ['```', '']


def run_step(step, args, log_dir):
    log = osp.join(log_dir, f'{step}.log')
    print(f'[demo] {step}: {" ".join(args)}', flush=True)
    t0 = time.time()
    with open(log, 'w') as f:
        res = subprocess.run([sys.executable] + args, cwd=ROOT, stdout=f,
                             stderr=subprocess.STDOUT, text=True)
    with open(log) as f:
        out = f.read()
    if res.returncode != 0:
        print(out[-4000:])
        raise SystemExit(f'[demo] step {step!r} failed (exit {res.returncode}); full log: {log}')
    print(f'[demo] {step}: done in {time.time() - t0:.0f} s (log: {log})', flush=True)
    return out


def last_checkpoint(work_dir):
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def metrics_of(log):
    lines = [ln for ln in log.splitlines() if ln.startswith('Metrics:')]
    return lines or ['(no metrics line found, see the step\'s log)']


def test_metrics(test_dir):
    """The metrics tools/test.py wrote (WORK_DIR/<timestamp>/<timestamp>.json), latest run."""
    import glob
    paths = sorted(glob.glob(osp.join(test_dir, '*', '*.json')))
    if not paths:
        raise FileNotFoundError(f'no metrics JSON under {test_dir}')
    with open(paths[-1]) as f:
        return json.load(f)


def compare_segmentor_runtimes(onnx_path, config, checkpoint, data_root, torch_preds_pkl,
                               torch_miou, picture):
    """The exported segmentor with ONNX Runtime on the validation images against the PyTorch
    model's predictions (tools/test.py --out): mIoU through mmseg's IoUMetric, per-pixel
    agreement, and the first image's two predictions side by side in ``picture``."""
    import cv2
    import numpy as np
    import torch
    from mmengine.fileio import load
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    from mmeff.checkpoint import read_checkpoint
    from mmeff.deploy import evaluate_onnx_segmentor
    from mmeff.visualization.seg import ReadableSegLocalVisualizer
    onnx = evaluate_onnx_segmentor(onnx_path, config, data_root=data_root)
    torch_preds = {d['img_path']: np.asarray(d['pred_sem_seg']['data'])[0]
                   for d in load(torch_preds_pkl)}
    same = sum(int((onnx['labels'][p] == t).sum()) for p, t in torch_preds.items())
    total = sum(t.size for t in torch_preds.values())
    first = sorted(torch_preds)[0]
    meta = read_checkpoint(checkpoint)['meta']['dataset_meta']
    vis = ReadableSegLocalVisualizer(name=f'demo_onnx_{time.time()}', alpha=0.5)
    vis.dataset_meta = dict(classes=meta['classes'], palette=meta['palette'])
    image = cv2.imread(first)[:, :, ::-1]
    zoom = 4  # the generated images are 96x128: drawn 4x larger, so the names stay readable
    big = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    panels = []
    onnx_miou = float(onnx['metrics']['mIoU'])
    for title, labels in ((f'PyTorch (val mIoU {torch_miou:.2f})', torch_preds[first]),
                          (f'ONNX Runtime (val mIoU {onnx_miou:.2f})', onnx['labels'][first])):
        sample = SegDataSample()
        labels = np.kron(labels, np.ones((zoom, zoom), labels.dtype))
        sample.pred_sem_seg = PixelData(data=torch.from_numpy(labels.astype(np.int64))[None])
        vis.add_datasample(title, big, sample, draw_gt=False)
        panel = np.ascontiguousarray(vis.get_image()[:, :, ::-1])
        header = np.full((28, panel.shape[1], 3), 255, np.uint8)
        cv2.putText(header, title, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1,
                    cv2.LINE_AA)
        panels.append(np.vstack([header, panel]))
    os.makedirs(osp.dirname(picture), exist_ok=True)
    cv2.imwrite(picture, np.hstack([panels[0], np.full((panels[0].shape[0], 8, 3), 255,
                                                       np.uint8), panels[1]]))
    return dict(onnx_miou=onnx_miou, torch_miou=float(torch_miou),
                agreement=same / total, pixels=total, images=len(torch_preds),
                input_size=onnx['input_size'], picture=picture, image=first)


def compare_detector_runtimes(onnx_path, config, data_root, torch_metrics):
    """The exported whole detector with ONNX Runtime on the validation images
    (:func:`mmeff.deploy.detector.evaluate_onnx_detector`: mmdet's CocoMetric, bbox and segm)
    beside the PyTorch model's metrics (tools/test.py's ``torch_metrics``)."""
    from mmeff.deploy.detector import evaluate_onnx_detector
    onnx = evaluate_onnx_detector(onnx_path, config, data_root=data_root)
    rows = {}
    for key in DET_METRICS:
        rows[key] = (float(torch_metrics[f'coco/{key}']), float(onnx['metrics'][f'coco/{key}']))
    detections = sum(len(d['scores']) for d in onnx['predictions'].values())
    return dict(metrics=rows, images=onnx['images'], detections=detections,
                input_size=onnx['input_size'])


# The CocoMetric figures the report shows for PyTorch and ONNX Runtime side by side.
DET_METRICS = ('bbox_mAP', 'bbox_mAP_50', 'segm_mAP', 'segm_mAP_50')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='work_dirs/demo', help='where everything goes')
    parser.add_argument('--epochs', type=int, default=6,
                        help='detection training epochs (8 images each)')
    args = parser.parse_args(argv)
    command = shell_command(['tools/run_demo.py', *(sys.argv[1:] if argv is None else argv)])
    commands = []  # (what, command) of the steps a user can run again on these outputs
    out = osp.abspath(args.out)
    logs = osp.join(out, 'logs')
    os.makedirs(logs, exist_ok=True)
    t_start = time.time()

    def user_step(name, what, step):
        """Run a step and list it in the report as a command the user can run again."""
        commands.append((what, step))
        return run_step(name, step, logs)

    def export_whole(name, what, config, task, checkpoint, size, stem, report):
        """Export the whole model of ``config`` to ONNX at ``size``: (its path, its report)."""
        onnx = osp.join(out, 'export', f'{stem}_{size}.onnx')
        report = osp.join(out, 'export', report)
        user_step(name, what, ['tools/export.py', config, '--task', task, '--checkpoint',
                               checkpoint, '--format', 'onnx', '--input-size', size, '--out',
                               onnx, '--report-json', report])
        return onnx, report

    # 1. Data.
    from mmeff.datasets import make_ade_dataset, make_imagefolder_dataset
    from mmeff.datasets.synthetic_coco import make_coco_dataset
    in1k_root = osp.join(out, 'data', 'imagenet') + '/'
    in1k = make_imagefolder_dataset(in1k_root, num_classes=5, per_class=(16, 4), size=64)
    data_root = osp.join(out, 'data', 'coco') + '/'
    info = make_coco_dataset(data_root, num_images=(8, 4), size=(128, 160),
                             classes=('rectangle', 'ellipse', 'triangle'), seed=0)
    ade_root = osp.join(out, 'data', 'ade', 'ADEChallengeData2016')
    ade = make_ade_dataset(ade_root, num_images=(16, 4), size=(96, 128))
    # What was generated, from the generators' own descriptions (printed and reported).
    datasets = [
        (in1k_root, f"ImageFolder, {in1k['num_classes']} classes, {len(in1k['train'])} train / "
                    f"{len(in1k['val'])} val images (64x64)"),
        (data_root, f"COCO format, {len(info['train2017_images'])} train / "
                    f"{len(info['val2017_images'])} val images (160x128), "
                    f"{info['train2017_num_objects']} / {info['val2017_num_objects']} objects, "
                    f"3 classes"),
        (ade_root, f"ADE20K format, {len(ade['training_images'])} train / "
                   f"{len(ade['validation_images'])} val images (128x96), "
                   f"{ade['num_classes']}-class convention, "
                   f"{ade['classes_in_use']} classes in use"),
    ]
    for root, desc in datasets:
        print(f'[demo] data: {root}: {desc}')

    # 2. ImageNet-recipe pretraining of the backbone.
    cls_dir = osp.join(out, 'effformer_l1_in1k')
    run_step('pretrain', ['tools/train.py', CLS_CONFIG, '--work-dir', cls_dir, '--cfg-options',
                          f'data_root={in1k_root}'], logs)
    cls_ckpt = last_checkpoint(cls_dir)
    cls_metrics = metrics_of(user_step(
        'pretrain_test', 'Evaluate the pretrained classifier',
        ['tools/test.py', CLS_CONFIG, cls_ckpt, '--work-dir', osp.join(out, 'test_in1k'),
         '--cfg-options', f'data_root={in1k_root}']))

    # 3. Mask R-CNN from the pretrained backbone.
    work_dir = osp.join(out, 'mask_rcnn_l1')
    opts = [f'data_root={data_root}', f'pretrained={cls_ckpt}',
            f'train_cfg.max_epochs={args.epochs}', f'train_cfg.val_interval={args.epochs}']
    run_step('train', ['tools/train.py', CONFIG, '--work-dir', work_dir, '--cfg-options'] + opts,
             logs)
    ckpt = last_checkpoint(work_dir)
    test_dir = osp.join(out, 'test')
    det_metrics = metrics_of(user_step(
        'test', 'Evaluate the detector', ['tools/test.py', CONFIG, ckpt, '--work-dir', test_dir,
                                          '--cfg-options', f'data_root={data_root}']))
    pictures = osp.join(out, 'pictures')
    # The generated images hold 1-3 shapes: the 5 best detections show them without burying
    # the 160x128 picture under the low-score boxes a 6-epoch model also gives.
    user_step('draw', 'Draw the detector\'s predictions',
              ['tools/demo.py', CONFIG, ckpt, info['val2017_images'][0], '--out-dir', pictures,
               '--device', 'cpu', '--score-thr', '0.05', '--max-dets', '5', '--cfg-options',
               f'data_root={data_root}'])
    det_picture = osp.join(pictures, 'vis', osp.basename(info['val2017_images'][0]))
    compare = run_step('compare', ['tools/compare_results.py', test_dir, '--arch', 'l1', '--task',
                                   'detection', '--json', osp.join(out, 'compare.json')], logs)

    # The whole Mask R-CNN, exported at the generated images' size (the test pipeline's too:
    # 128x160 stays 128x160, a multiple of 32), run with ONNX Runtime.
    det_onnx, det_onnx_report = export_whole(
        'det_export', 'Export the whole Mask R-CNN to ONNX', CONFIG, 'detector', ckpt, '128x160',
        'mask_rcnn_l1_detector', 'detector_onnx_report.json')
    t0 = time.time()
    det_log = osp.join(logs, 'det_onnxruntime.log')
    print(f'[demo] det_onnxruntime: mmeff.deploy.evaluate_onnx_detector {det_onnx}', flush=True)
    with output_to(det_log):
        det_runtime = compare_detector_runtimes(det_onnx, CONFIG, data_root,
                                                test_metrics(test_dir))
    det_map = det_runtime['metrics']
    print(f"[demo] det_onnxruntime: bbox mAP PyTorch {det_map['bbox_mAP'][0]:.3f}, ONNX "
          f"Runtime {det_map['bbox_mAP'][1]:.3f}; segm mAP PyTorch "
          f"{det_map['segm_mAP'][0]:.3f}, ONNX Runtime {det_map['segm_mAP'][1]:.3f} "
          f"({time.time() - t0:.0f} s, log: {det_log})", flush=True)

    # 4. Semantic FPN from the pretrained backbone.
    seg_dir = osp.join(out, 'fpn_l1')
    run_step('seg_train', ['tools/train.py', SEG_CONFIG, '--work-dir', seg_dir, '--cfg-options',
                           f'data_root={ade_root}', f'pretrained={cls_ckpt}'], logs)
    seg_ckpt = last_checkpoint(seg_dir)
    seg_test_dir = osp.join(out, 'test_seg')
    seg_preds = osp.join(seg_test_dir, 'predictions.pkl')
    seg_metrics = metrics_of(user_step(
        'seg_test', 'Evaluate the segmentor',
        ['tools/test.py', SEG_CONFIG, seg_ckpt, '--work-dir', seg_test_dir, '--out', seg_preds,
         '--cfg-options', f'data_root={ade_root}']))
    user_step('seg_draw', 'Draw the segmentor\'s predictions',
              ['tools/demo.py', SEG_CONFIG, seg_ckpt, ade['validation_images'][0], '--out-dir',
               pictures, '--device', 'cpu', '--cfg-options', f'data_root={ade_root}'])
    seg_picture = osp.join(pictures, 'vis', osp.basename(ade['validation_images'][0]))
    seg_compare = run_step('seg_compare', ['tools/compare_results.py', seg_test_dir, '--arch', 'l1',
                                           '--task', 'segmentation', '--json',
                                           osp.join(out, 'compare_seg.json')], logs)

    # The whole segmentor, exported at the generated images' size (the test pipeline's too:
    # 96x128 stays 96x128), run with ONNX Runtime.
    seg_onnx, seg_onnx_report = export_whole(
        'seg_export', 'Export the whole segmentor to ONNX', SEG_CONFIG, 'segmentor', seg_ckpt,
        '96x128', 'fpn_l1_segmentor', 'segmentor_onnx_report.json')
    t0 = time.time()
    # In this process: ONNX Runtime's warnings and mmseg's per-class table go to the log, as
    # every other step's output does.
    seg_log = osp.join(logs, 'seg_onnxruntime.log')
    print(f'[demo] seg_onnxruntime: mmeff.deploy.evaluate_onnx_segmentor {seg_onnx}', flush=True)
    with output_to(seg_log):
        seg_runtime = compare_segmentor_runtimes(
            seg_onnx, SEG_CONFIG, seg_ckpt, ade_root, seg_preds,
            test_metrics(seg_test_dir)['mIoU'],
            osp.join(pictures, 'seg_pytorch_vs_onnxruntime.png'))
    print(f"[demo] seg_onnxruntime: mIoU PyTorch {seg_runtime['torch_miou']:.2f}, ONNX Runtime "
          f"{seg_runtime['onnx_miou']:.2f}, labels agree on {100 * seg_runtime['agreement']:.3f}% "
          f"of the pixels; {seg_runtime['picture']} ({time.time() - t0:.0f} s, log: {seg_log})",
          flush=True)

    # 5. Export of the detection backbone.
    exports = {}
    for fmt, suffix in (('onnx', 'onnx'), ('coreml', 'mlpackage')):
        path = osp.join(out, 'export', f'effformer_l1_backbone_800x1333.{suffix}')
        report = osp.join(out, 'export', f'{fmt}_report.json')
        user_step(f'export_{fmt}', f'Export the detector\'s backbone, fused, to {fmt}',
                  ['tools/export.py', CONFIG, '--checkpoint', ckpt, '--format', fmt,
                   '--input-size', '800x1333', '--out', path, '--report-json', report])
        exports[fmt] = (path, report)

    # 6. Report.
    tiny = ('Tiny synthetic data and a few CPU epochs: these numbers show the pipeline works, '
            'they are not a reproduction of the paper.')
    lines = ['# mmeff demo report', '',
             f'Generated by `{command}` in {time.time() - t_start:.0f} s on CPU.',
             '', '## Data', '',
             *[f'- `{root}`: {desc}.' for root, desc in datasets],
             '', '## 1. Backbone pretraining (ImageNet recipe, tools/train.py + tools/test.py)',
             '', f'Config `{CLS_CONFIG}` (backbone from random weights), checkpoint '
             f'`{cls_ckpt}`: the `backbone.*` weights that both dense models start from.', '',
             '```', *cls_metrics, '```',
             '', '## 2. Detection: Mask R-CNN (mmdet CocoMetric)', '',
             f'Config `{CONFIG}` ({args.epochs} epochs from the pretrained backbone), '
             f'checkpoint `{ckpt}`.', '', '```', *det_metrics, '```', '', tiny, '',
             '```', compare.strip(), '```', '',
             picture_link(out, det_picture, 'Mask R-CNN predictions (tools/demo.py)'),
             '', '### The whole Mask R-CNN on ONNX Runtime (tools/export.py --task detector)',
             '', f'`{det_onnx}`: fused backbone, FPN, RPN, RoIAlign, box head, NMS and mask '
             f'head in one graph, input {det_runtime["input_size"][0]}x'
             f'{det_runtime["input_size"][1]} RGB pixels (normalisation in the graph), outputs '
             f'boxes, scores, labels and box-coordinate mask probabilities (full report: '
             f'`{det_onnx_report}`). Run with ONNX Runtime on the {det_runtime["images"]} '
             f'validation images (mmeff.deploy.detector.evaluate_onnx_detector, masks pasted '
             f'with mmeff.deploy.mask_rcnn.paste_masks; {det_runtime["detections"]} '
             f"detections), its results fed into mmdet's CocoMetric (log: `{det_log}`):", '',
             '| model | runtime | ' + ' | '.join(DET_METRICS) + ' |',
             '|---|---|' + '---|' * len(DET_METRICS),
             '| PyTorch (tools/test.py) | torch | '
             + ' | '.join(f'{det_map[k][0]:.3f}' for k in DET_METRICS) + ' |',
             '| exported ONNX | ONNX Runtime | '
             + ' | '.join(f'{det_map[k][1]:.3f}' for k in DET_METRICS) + ' |',
             '', '## 3. Segmentation: Semantic FPN (mmseg IoUMetric)', '',
             f'Config `{SEG_CONFIG}` (60 iterations from the pretrained backbone), checkpoint '
             f'`{seg_ckpt}`.', '', '```', *seg_metrics, '```', '',
             '```', seg_compare.strip(), '```', '',
             picture_link(out, seg_picture, 'Semantic FPN predictions (tools/demo.py)'),
             '', '### The whole segmentor on ONNX Runtime (tools/export.py --task segmentor)',
             '', f'`{seg_onnx}`: fused backbone, FPN, head, resize and argmax in one graph, '
             f'input {seg_runtime["input_size"][0]}x{seg_runtime["input_size"][1]} RGB pixels '
             f'(normalisation in the graph), output int32 labels (full report: '
             f'`{seg_onnx_report}`). Run with ONNX Runtime on the {seg_runtime["images"]} '
             f'validation images (mmeff.deploy.evaluate_onnx_segmentor), its labels fed into '
             f"mmseg's IoUMetric:", '',
             '| model | runtime | mIoU |', '|---|---|---|',
             f"| PyTorch (tools/test.py) | torch | {seg_runtime['torch_miou']:.2f} |",
             f"| exported ONNX | ONNX Runtime | {seg_runtime['onnx_miou']:.2f} |", '',
             f"Per-pixel labels agree on {100 * seg_runtime['agreement']:.3f}% of the "
             f"{seg_runtime['pixels']} validation pixels. Both predictions of "
             f"`{seg_runtime['image']}`, side by side (log of this step: `{seg_log}`):", '',
             picture_link(out, seg_runtime['picture'], 'PyTorch vs ONNX Runtime'),
             '', '## Predictions (tools/demo.py)', '',
             f'Pictures (boxes and masks; the segmentation overlay; PyTorch vs ONNX Runtime) '
             f'in `{pictures}`.',
             '', '## 4. Export of the trained detection backbone, fused, 800x1333 '
             '(tools/export.py)', '']
    keys = ('format', 'exporter', 'method', 'inputs', 'outputs', 'op_histogram', 'gather_ops',
            'float_dtypes', 'non_fp16_tensors', 'io_tensors', 'onnxruntime', 'fusion',
            'problems', 'file_size_bytes')
    for fmt, (path, report) in exports.items():
        with open(report) as f:
            data = json.load(f)
        lines += [f'### {fmt}', '', f'`{path}` (full report: `{report}`)', '', '```']
        lines += [f'{k}: {json.dumps(data[k])}' for k in keys if k in data]
        lines += ['```', '']
    lines += commands_section(commands, [osp.join(work_dir, osp.basename(CONFIG)),
                                         osp.join(seg_dir, osp.basename(SEG_CONFIG))])
    report_path = osp.join(out, 'REPORT.md')
    from mmeff.engine.checkpointing import write_file_atomic

    def write(tmp):
        with open(tmp, 'w') as f:
            f.write('\n'.join(lines) + '\n')

    write_file_atomic(report_path, write)
    print('[demo] the same steps on these outputs (also in the report):')
    for what, step in commands:
        print(f'  # {what}\n  {shell_command(step)}')
    print(f'[demo] report: {report_path}')
    return report_path


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
