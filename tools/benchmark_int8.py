"""INT8 ONNX Runtime and compressed Core ML: speed, accuracy and size of EfficientFormer.

    python tools/benchmark_int8.py [--archs l1 s1] [--data DIR] [--checkpoint CKPT]
        [--input-size 224] [--reps 30] [--threads N] [--out-dir benchmarks] [--name NAME]
        [--stage-study] [--no-speed] [--no-accuracy] [--no-coreml] [--no-op-study]

1. Data: an ImageFolder with train/ and val/ (--data; default: the demo's generated set, 5
   classes of striped 64x64 images, mmeff.datasets.make_imagefolder_dataset, under --work-dir).
2. Speed (classifier at --input-size, timm's initialisation as tools/benchmark_latency.py):
   timm, the FP32 ONNX model and the INT8 one (mmeff.deploy.quantize, calibrated on train/),
   timed interleaved in one run (mmeff.benchmark.latency.time_interleaved, ONNX Runtime
   sessions that stop spinning after each call); ratios against timm. With --stage-study also
   INT8 models with every stage INT8, or more stages FP32 than the export's default (the stem
   and stage 0; mixed precision, --keep-fp32 of tools/export.py).
3. Accuracy, on a classifier that learned the ImageFolder (--checkpoint of the demo's
   configs/demo/effformer_l1_in1k_synthetic.py, or trained here for --train-steps on train/ at
   the images' size): FP32 and INT8 top-1 on val/ and their agreement; its backbone's stage
   maps, INT8 against FP32 (relative error of each).
4. Why operators stay FP32: the INT8 classifier again with each of mmeff.deploy.quantize.KEEP_FP32
   quantised as well: its error against FP32 and its top-1.
5. Compressed Core ML (unless --no-coreml): the same classifier converted to an FP16
   mlprogram and compressed in each mode (mmeff.deploy.compress): weight bytes against FP16,
   the spec checks, the output error and top-1 of the PyTorch model carrying the compressed
   weights (checked against the package's stored values).

Writes <out-dir>/<name>.json and <name>.md. Timings under load are compared within the run.
"""
import argparse
import json
import os
import os.path as osp
import sys
import tempfile
import time
from typing import Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

def image_size(data_dir: str) -> int:
    """The side of the first image of ``data_dir``'s val/ split (the generated images are
    square)."""
    from PIL import Image

    from mmeff.deploy.quantize import check_calib_data
    with Image.open(check_calib_data(osp.join(data_dir, 'val'))[0]) as img:
        return min(img.size)


def train_classifier(arch, data_dir: str, size: int, steps: int = 40, lr: float = 1e-3,
                     batch_size: int = 16, seed: int = 0, log=print,
                     backbone_type: Optional[str] = None):
    """A classifier trained on ``data_dir``/train for ``steps`` AdamW steps (cross-entropy on
    both heads, images through the evaluation pipeline: no augmentation, enough for the
    generated striped classes). ``arch`` is an arch name or dict; ``backbone_type`` (e.g.
    ``'mmeff.EfficientFormerV2'``) defaults to the family of a named arch. Returns its
    inference module (eval mode)."""
    import numpy as np
    import torch

    import mmeff.models  # noqa: F401  (registers the models)
    from mmeff.benchmark.complexity import backbone_type as complexity_backbone_type
    from mmeff.deploy.quantize import calibration_inputs, check_calib_data
    from mmeff.models.classifiers import EfficientFormerClassifier
    from mmeff.models.classifiers.efficientformer_classifier import EfficientFormerInference
    train = osp.join(data_dir, 'train')
    paths = check_calib_data(train)
    classes = sorted(e.name for e in os.scandir(train) if e.is_dir())
    labels = torch.tensor([classes.index(osp.relpath(p, train).split(os.sep)[0]) for p in paths])
    images = torch.from_numpy(np.concatenate(calibration_inputs(paths, (1, 3, size, size),
                                                                max_images=None)))
    btype = backbone_type or complexity_backbone_type(arch)
    torch.manual_seed(seed)
    clf = EfficientFormerClassifier(backbone=dict(type=btype, arch=arch),
                                    num_classes=len(classes))
    model = EfficientFormerInference(clf.backbone, clf.head)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        idx = torch.randint(len(images), (batch_size,), generator=g)
        cls_logits, dist_logits = model.head(model.backbone(images[idx])[-1])
        loss = (torch.nn.functional.cross_entropy(cls_logits, labels[idx])
                + torch.nn.functional.cross_entropy(dist_logits, labels[idx])) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9 or step == steps - 1:
            log(f'  train {arch} step {step + 1}/{steps}: loss {loss.item():.3f}')
    return model.eval()


ALL_TYPES = '(all ONNX Runtime types)'


def study_op_types(row: str):
    """The operator types quantised in a row of the op study: the defaults (``'(none)'``),
    the defaults plus one type, or every type ONNX Runtime's QDQ quantiser knows
    (:data:`ALL_TYPES`, its own default)."""
    from mmeff.deploy.quantize import INT8_OP_TYPES, PASS_THROUGH_OP_TYPES
    base = list(INT8_OP_TYPES + PASS_THROUGH_OP_TYPES)
    if row == ALL_TYPES:
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
        return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))
    return base + ([] if row == '(none)' else [row])


def stage_backbone(model):
    """The backbone of a classifier's inference module returning its four stage maps (the
    same weights, no output norm), as a detector or segmentor uses it."""
    import copy
    bb = model.backbone
    net = type(bb)(arch=copy.deepcopy(bb.arch), out_indices=(0, 1, 2, 3), out_norm_cfg=None)
    net.load_state_dict(bb.state_dict(), strict=True)
    return net.eval()


# Mixed-precision rows of the speed study (--stage-study), beside the INT8 model as exported
# (the stem and stage 0 FP32, mmeff.deploy.quantize.DEFAULT_KEEP_FP32): every stage INT8,
# and stages 1 and 2 kept FP32 as well.
STAGE_STUDY = {
    'onnxruntime-int8, every stage INT8': (),
    'onnxruntime-int8, stem-stage 1 FP32': ('backbone.stem', 'backbone.stages.0',
                                            'backbone.stages.1'),
    'onnxruntime-int8, stem-stage 2 FP32': ('backbone.stem', 'backbone.stages.0',
                                            'backbone.stages.1', 'backbone.stages.2'),
}


def speed(arch: str, size: int, train_dir: str, work: str, warmup: int, reps: int,
          threads: int, calib_images: int, log=print, stage_study: bool = False) -> dict:
    """timm, FP32 ONNX Runtime and INT8 ONNX Runtime on the same weights, interleaved; with
    ``stage_study`` also the INT8 models of :data:`STAGE_STUDY`."""
    import torch

    from mmeff.benchmark.latency import build_models
    from mmeff.deploy import export_onnx
    from mmeff.deploy.quantize import quantize_onnx_file
    from mmeff.runtime import ort_session, summarize, time_interleaved
    model, _, timm_fn = build_models(arch, 'classifier')
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    fp32 = osp.join(work, f'{arch}_{size}_fp32.onnx')
    int8 = osp.join(work, f'{arch}_{size}_int8.onnx')
    export_onnx(model, fp32, (1, 3, size, size))
    q = quantize_onnx_file(fp32, int8, train_dir, max_images=calib_images)
    paths = {'onnxruntime': fp32, 'onnxruntime-int8': int8}
    for row, modules in (STAGE_STUDY.items() if stage_study else ()):
        paths[row] = osp.join(work, f'{arch}_{size}_{len(modules)}_int8.onnx')
        quantize_onnx_file(fp32, paths[row], train_dir, max_images=calib_images,
                           keep_fp32=list(modules))
    sessions = {name: ort_session(p, threads) for name, p in paths.items()}
    feed = x.numpy()
    fns = {'timm': lambda: timm_fn(x)}
    for name, sess in sessions.items():
        fns[name] = (lambda s: lambda: s.run(None, {s.get_inputs()[0].name: feed}))(sess)
    with torch.no_grad():
        times = time_interleaved(fns, warmup, reps, settle_s=0.01)
    rows = {name: summarize(t, 1) for name, t in times.items()}
    for name, row in rows.items():
        row['vs_timm'] = round(rows['timm']['median_ms'] / row['median_ms'], 3)
        log(f"  {arch} {size}x{size} {name}: median {row['median_ms']:.2f} ms, "
            f"{row['vs_timm']:.2f}x timm")
    return dict(arch=arch, input_size=size, runtimes=rows,
                int8_vs_fp32_ort=round(rows['onnxruntime']['median_ms']
                                       / rows['onnxruntime-int8']['median_ms'], 3),
                int8_ops=q['int8_ops'], fp32_ops=q['fp32_ops'],
                file_size_bytes=dict(fp32=q['fp32_file_size_bytes'],
                                     int8=q['file_size_bytes']))


def accuracy(arch: str, model, size: int, data_dir: str, work: str, calib_images: int,
             op_study: bool, log=print, study_timing: Optional[dict] = None) -> dict:
    """FP32 vs INT8 ONNX top-1 on val/, the backbone's stage maps, the FP32-op study (error
    at ``size``; with ``study_timing`` = dict(size, warmup, reps, threads) also the time of
    each variant, the same weights exported at that size)."""
    from mmeff.deploy import export_onnx
    from mmeff.deploy.quantize import (KEEP_FP32, calibration_inputs, compare_onnx,
                                       export_onnx_int8, onnx_top1, quantize_onnx_file)
    train, val = osp.join(data_dir, 'train'), osp.join(data_dir, 'val')
    fp32 = osp.join(work, f'{arch}_cls_fp32.onnx')
    export_onnx(model, fp32, (1, 3, size, size))
    int8 = osp.join(work, f'{arch}_cls_int8.onnx')
    rep = export_onnx_int8(model, int8, (1, 3, size, size), train, task='classifier',
                           max_images=calib_images, speed=False)  # timed in speed()
    top_fp32, top_int8 = onnx_top1(fp32, val), onnx_top1(int8, val)
    agree = sum(a == b for a, b in zip(top_fp32['predictions'], top_int8['predictions']))
    result = dict(arch=arch, input_size=size, val_images=top_fp32['images'],
                  top1_fp32=top_fp32['top1'], top1_int8=top_int8['top1'],
                  top1_agreement_val=agree / top_fp32['images'],
                  int8_vs_fp32_calib=rep['int8_vs_fp32'], problems=rep['problems'],
                  int8_ops=rep['int8_ops'], kept_fp32=rep['fp32_ops'])
    log(f"  {arch} classifier {size}x{size}: top-1 FP32 {top_fp32['top1']:.3f}, INT8 "
        f"{top_int8['top1']:.3f}, agreement {result['top1_agreement_val']:.3f}")
    brep = export_onnx_int8(stage_backbone(model), osp.join(work, f'{arch}_backbone_int8.onnx'),
                            (1, 3, size, size), train, task='backbone', max_images=calib_images,
                            speed=False)
    result['backbone_stage_rel_err'] = brep['int8_vs_fp32']['rel_err_per_output']
    result['backbone_problems'] = brep['problems']
    log(f"  {arch} backbone stage maps, INT8 vs FP32 relative error: "
        f"{brep['int8_vs_fp32']['rel_err_per_output']}")
    if op_study:
        inputs = calibration_inputs(val, (1, 3, size, size), max_images=None)
        study = {}
        for op in ['(none)'] + list(KEEP_FP32) + [ALL_TYPES]:
            path = osp.join(work, f'{arch}_study_{op.strip("()").split()[0]}.onnx')
            quantize_onnx_file(fp32, path, train, max_images=calib_images,
                               op_types=study_op_types(op))
            err = compare_onnx(path, fp32, inputs, task='classifier')
            study[op] = dict(rel_err=err['rel_err'], top1_agreement=err['top1_agreement'],
                             top1=onnx_top1(path, val)['top1'])
            log(f'  {arch} also quantising {op}: relative error {err["rel_err"]:.3e}, '
                f'top-1 agreement {err["top1_agreement"]:.3f}')
        if study_timing:
            _time_op_study(arch, model, study, data_dir, work, calib_images, log=log,
                           **study_timing)
        result['fp32_op_study'] = study
    return result


def _time_op_study(arch, model, study: dict, data_dir: str, work: str, calib_images: int,
                   size: int, warmup: int, reps: int, threads: int, log=print) -> None:
    """Add ``median_ms`` and ``vs_int8`` (time against the INT8 model as exported) to every
    row of ``study``, timed interleaved at ``size`` with FP32 ONNX Runtime beside them."""
    import numpy as np

    from mmeff.deploy import export_onnx
    from mmeff.deploy.quantize import quantize_onnx_file
    from mmeff.runtime import ort_session, summarize, time_interleaved
    fp32 = osp.join(work, f'{arch}_study_fp32_{size}.onnx')
    export_onnx(model, fp32, (1, 3, size, size))
    paths = {'FP32': fp32}
    for op in study:
        paths[op] = osp.join(work, f'{arch}_study_{op.strip("()").split()[0]}_{size}.onnx')
        quantize_onnx_file(fp32, paths[op], osp.join(data_dir, 'train'), max_images=calib_images,
                           op_types=study_op_types(op))
    feed = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    sessions = {k: ort_session(p, threads) for k, p in paths.items()}
    fns = {k: (lambda s: lambda: s.run(None, {s.get_inputs()[0].name: feed}))(sess)
           for k, sess in sessions.items()}
    times = {k: summarize(t, 1)['median_ms']
             for k, t in time_interleaved(fns, warmup, reps, settle_s=0.01).items()}
    for op, row in study.items():
        row.update(median_ms=times[op], vs_int8=round(times[op] / times['(none)'], 3),
                   timed_at=size)
        log(f"  {arch} also quantising {op}, {size}x{size}: {times[op]:.1f} ms "
            f"({row['vs_int8']:.2f}x the INT8 model's time; FP32 {times['FP32']:.1f} ms)")
    study['(none)']['fp32_median_ms'] = times['FP32']


def coreml(arch: str, model, size: int, data_dir: str, work: str, log=print) -> dict:
    """FP16 Core ML, then each compression mode: bytes, checks, torch-measured error."""
    import coremltools as ct
    import numpy as np
    import torch

    from mmeff.deploy import coreml_problems, export_coreml, inspect_coreml
    from mmeff.deploy.compress import COMPRESS_MODES, compress_mlmodel, compressed_torch_error
    from mmeff.deploy.quantize import calibration_inputs
    # the val images, one batch (the weights do not depend on the batch size)
    x = torch.from_numpy(np.concatenate(calibration_inputs(osp.join(data_dir, 'val'),
                                                           (1, 3, size, size), max_images=None)))
    path = osp.join(work, f'{arch}_fp16.mlpackage')
    export_coreml(model, path, (1, 3, size, size))
    fp16 = ct.models.MLModel(path, skip_model_load=True)
    rows = {}
    for mode in COMPRESS_MODES:
        t0 = time.perf_counter()
        compressed, info = compress_mlmodel(fp16, mode)
        compress_s = time.perf_counter() - t0
        out = osp.join(work, f'{arch}_{mode}.mlpackage')
        compressed.save(out)
        problems = coreml_problems(inspect_coreml(out))
        err = compressed_torch_error(model, mode, x,
                                     mlmodel=ct.models.MLModel(out, skip_model_load=True))
        rows[mode] = dict(info, problems=problems, compress_s=round(compress_s, 1),
                          images=len(x), rel_err=err['rel_err'],
                          fp16_weights_rel_err=err['fp16_weights']['rel_err'],
                          top1_agreement=err.get('top1_agreement'),
                          package_check=err['package_check'])
        pc = err['package_check']
        log(f"  {arch} Core ML {mode}: weights {info['weight_bytes'] / 2**20:.2f} MiB "
            f"({info['ratio_vs_fp16']:.3f}x FP16), relative error {err['rel_err']:.2e}, checks "
            f"{'passed' if not problems else problems}, package weights in the torch model "
            f"{pc['mapped']}/{pc['package_tensors']}, reproduction equal: "
            f"{pc['reproduction_equal']}")
    return dict(arch=arch, input_size=size, modes=rows)


def to_markdown(result: dict) -> str:
    m = result['machine']
    lines = ['# INT8 ONNX Runtime and compressed Core ML', '',
             f"- Machine: {m['cpu']} ({m['logical_cores']} logical cores), {m['torch_threads']} "
             f"thread(s); onnxruntime {m.get('onnxruntime')}, torch {m['torch']}, coremltools "
             f"{result.get('coremltools')}; ONNX opset {result.get('onnx_opset')}",
             f"- Load: 1-min load average {m.get('load_avg_1m')} at the start, "
             f"{result.get('load_avg_1m_end')} at the end: other processes shared the CPU, so "
             f"only the ratios within a row group mean something",
             f"- Data: {result['data']}", f"- Date: {m['date']}", '']
    if result.get('speed'):
        lines += ['## Speed (classifier, batch 1, timm initialisation, one interleaved run)', '',
                  '| arch | input | runtime | median ms | p90 ms | vs timm |',
                  '|---|---|---|---|---|---|']
        for s in result['speed']:
            for name, r in s['runtimes'].items():
                lines.append(f"| {s['arch']} | {s['input_size']} | {name} | {r['median_ms']:.2f}"
                             f" | {r['p90_ms']:.2f} | {r['vs_timm']:.2f}x |")
        lines += ['', 'INT8 operators / kept FP32 (counts): ' + '; '.join(
            f"{s['arch']}: {s['int8_ops']} / {s['fp32_ops']}" for s in result['speed']), '']
    if result.get('accuracy'):
        lines += ['## Accuracy (trained classifier, val split)', '',
                  '| arch | input | val images | top-1 FP32 | top-1 INT8 | agreement | '
                  'largest stage-map rel. err (backbone) |', '|---|---|---|---|---|---|---|']
        for a in result['accuracy']:
            lines.append(f"| {a['arch']} | {a['input_size']} | {a['val_images']} | "
                         f"{a['top1_fp32']:.3f} | {a['top1_int8']:.3f} | "
                         f"{a['top1_agreement_val']:.3f} | "
                         f"{max(a['backbone_stage_rel_err'].values()):.3e} |")
        lines.append('')
        for a in result['accuracy']:
            if a.get('fp32_op_study'):
                study = a['fp32_op_study']
                timed = study['(none)'].get('timed_at')
                lines += [f"### {a['arch']}: operators kept in FP32, quantised as well", '',
                          f"Error of the INT8 classifier against FP32 on the val images "
                          f"({a['input_size']}x{a['input_size']}, the size it was trained at)"
                          + (f"; time at {timed}x{timed} (the same weights), interleaved, "
                             f"FP32 ONNX Runtime {study['(none)']['fp32_median_ms']:.1f} ms"
                             if timed else '') + '.', '',
                          '| also quantised | rel. err vs FP32 | top-1 agreement | top-1 |'
                          + (' median ms | vs INT8 as exported |' if timed else ''),
                          '|---|---|---|---|' + ('---|---|' if timed else '')]
                for op, r in study.items():
                    lines.append(f"| {op} | {r['rel_err']:.3e} | {r['top1_agreement']:.3f} | "
                                 f"{r['top1']:.3f} |"
                                 + (f" {r['median_ms']:.1f} | {r['vs_int8']:.2f}x |"
                                    if timed else ''))
                lines.append('')
    if result.get('coreml'):
        lines += ['## Compressed Core ML (error measured with PyTorch carrying the same '
                  'weights)', '',
                  '| arch | mode | weight MiB | vs FP16 | spec checks | rel. err (val images) '
                  '| FP16-weights rel. err | top-1 agreement | package weights in torch |',
                  '|---|---|---|---|---|---|---|---|---|']
        for c in result['coreml']:
            for mode, r in c['modes'].items():
                pc = r['package_check']
                lines.append(f"| {c['arch']} | {mode} | {r['weight_bytes'] / 2**20:.2f} | "
                             f"{r['ratio_vs_fp16']:.3f}x | "
                             f"{'pass' if not r['problems'] else 'FAIL'} | "
                             f"{r['rel_err']:.2e} | {r['fp16_weights_rel_err']:.2e} | "
                             f"{r['top1_agreement']:.3f} | {pc['mapped']}/{pc['package_tensors']}"
                             f"{'' if pc['reproduction_equal'] else ' (reproduction differs)'} |")
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    from mmeff.models.families import all_archs
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--archs', nargs='+', default=['l1', 's1'], choices=all_archs(),
                   help='archs of every registered family (mmeff.models.families)')
    p.add_argument('--data', help='ImageFolder root with train/ and val/ (default: generate the '
                                  "demo's set under --work-dir)")
    p.add_argument('--checkpoint', help="the demo's pretrained classifier (configs/demo/"
                                        'effformer_l1_in1k_synthetic.py) for l1, instead of '
                                        'training one here')
    p.add_argument('--train-steps', type=int, default=40)
    p.add_argument('--input-size', type=int, default=224, help='input side for the speed rows')
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--reps', type=int, default=30)
    p.add_argument('--threads', type=int, help='CPU threads (torch and ONNX Runtime)')
    p.add_argument('--calib-images', type=int, default=32)
    p.add_argument('--no-speed', action='store_true', help='skip the speed rows')
    p.add_argument('--no-accuracy', action='store_true',
                   help='speed rows only (no trained classifier: no accuracy, op study or '
                        'Core ML)')
    p.add_argument('--stage-study', action='store_true',
                   help='speed rows of INT8 models with every stage INT8, or the stem and '
                        'stages 0-1 or 0-2 FP32 (export --keep-fp32; the default keeps the stem '
                        'and stage 0)')
    p.add_argument('--no-coreml', action='store_true', help='skip compressed Core ML')
    p.add_argument('--no-op-study', action='store_true',
                   help='skip the study of the operators kept in FP32')
    p.add_argument('--work-dir', default='work_dirs/benchmark_int8')
    p.add_argument('--out-dir', default='work_dirs/benchmark')
    p.add_argument('--name', default='int8_cpu')
    args = p.parse_args(argv)
    import torch

    from mmeff.benchmark.latency import _load_avg, machine_info
    from mmeff.engine.checkpointing import write_text_atomic
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    os.makedirs(args.work_dir, exist_ok=True)
    data = args.data
    if data is None:
        from mmeff.datasets import make_imagefolder_dataset
        data = osp.join(args.work_dir, 'data', 'imagenet')
        make_imagefolder_dataset(data, num_classes=5, per_class=(16, 4), size=64)
        described = ("the demo's generated ImageFolder (5 classes of striped 64x64 images, "
                     '16 train / 4 val per class)')
    else:
        described = data
    for split in ('train', 'val'):
        from mmeff.deploy.quantize import check_calib_data
        check_calib_data(osp.join(data, split))
    from mmeff.runtime.onnx import ONNX_OPSET
    result = dict(machine=machine_info('cpu', threads), data=described, settings=vars(args),
                  onnx_opset=ONNX_OPSET)
    try:
        import coremltools
        result['coremltools'] = coremltools.__version__
    except ImportError:
        pass
    print(f"[int8] {result['machine']['cpu']}, {threads} threads, load "
          f"{result['machine']['load_avg_1m']}")
    size = image_size(data)
    with tempfile.TemporaryDirectory(prefix='mmeff_int8_bench_') as work:
        if not args.no_speed:
            result['speed'] = [speed(a, args.input_size, osp.join(data, 'train'), work,
                                     args.warmup, args.reps, threads, args.calib_images,
                                     stage_study=args.stage_study)
                               for a in args.archs]
        result['accuracy'], result['coreml'] = [], []
        for arch in ([] if args.no_accuracy else args.archs):
            if arch == 'l1' and args.checkpoint:
                from mmeff.deploy.build import build_model
                model, _ = build_model(
                    osp.join(ROOT, 'configs', 'demo', 'effformer_l1_in1k_synthetic.py'),
                    'classifier', args.checkpoint)
            else:
                model = train_classifier(arch, data, size, args.train_steps)
            timing = dict(size=args.input_size, warmup=args.warmup, reps=args.reps,
                          threads=threads)
            result['accuracy'].append(accuracy(arch, model, size, data, work,
                                               args.calib_images, not args.no_op_study,
                                               study_timing=timing))
            if not args.no_coreml:
                result['coreml'].append(coreml(arch, model, size, data, work))
    result['load_avg_1m_end'] = _load_avg()
    os.makedirs(args.out_dir, exist_ok=True)
    stem = osp.join(args.out_dir, args.name)
    write_text_atomic(stem + '.json', json.dumps(result, indent=1, default=str) + '\n')
    write_text_atomic(stem + '.md', to_markdown(result))
    print(f'[int8] wrote {stem}.json and {stem}.md')
    return 0


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
