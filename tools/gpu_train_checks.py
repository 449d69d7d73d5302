"""GPU checks of the main job: mmcv's CUDA ops against their CPU results, and a few training
iterations of each task with ``--amp`` through tools/train.py, checkpointed and resumed.

Usage (on a machine with a CUDA GPU and mmcv built with its CUDA ops)::

    python tools/gpu_train_checks.py [--out-dir benchmarks] [--runs NAME ...] [--name NAME]

1. mmcv ops, CUDA vs CPU on random inputs: ``RoIAlign`` (``aligned=True``, ``sampling_ratio``
   0 and 2, as mmdet's RoI extractors use it), ``nms`` and ``batched_nms`` (kept indices equal,
   scores equal), ``sigmoid_focal_loss`` (RetinaNet's loss; CUDA only, checked against its
   closed form in PyTorch).
2. Training runs, all at once (the GPU has room for them): Mask R-CNN with an L1 and a V2-S0
   backbone, RetinaNet-L1, Semantic FPN-L1 and the tiny slimming supernet, each on data
   generated here (COCO-format, ADE-format, ImageFolder), ``--amp``, from random weights.
   Each run trains one epoch (the iteration-based Semantic FPN: a few iterations), writes a
   checkpoint, then ``--resume`` continues for another one. Checked: both phases exit 0, the
   losses are finite, the checkpoint of each phase exists, the resumed run starts at the
   iteration the first stopped at and ends past it.

Writes ``OUT_DIR/NAME.json`` and ``OUT_DIR/NAME.md`` (default NAME: gpu_train_checks_<gpu>) and
the runs' logs under ``--work-dir``. Exit status 1 if any check failed.
"""
import argparse
import json
import math
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

RUNS = ('mask_rcnn_l1', 'mask_rcnn_v2_s0', 'retinanet_l1', 'fpn_l1', 'supernet_tiny')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out-dir', default='benchmarks', help='where the JSON/Markdown go')
    p.add_argument('--work-dir', default='work_dirs/gpu_train_checks',
                   help='generated data, configs, checkpoints and logs')
    p.add_argument('--runs', nargs='+', choices=RUNS, default=list(RUNS))
    p.add_argument('--name', help='result file name (default gpu_train_checks_<gpu>)')
    p.add_argument('--no-ops', action='store_true', help='skip the mmcv ops checks')
    p.add_argument('--timeout', type=int, default=400, help='seconds per training phase')
    p.add_argument('--cpu-dry-run', action='store_true',
                   help='no GPU: run the training phases on the CPU without --amp and skip the '
                        'ops checks (to check the generated configs before a GPU run)')
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- mmcv ops
def check_ops() -> dict:
    """mmcv's CUDA RoIAlign/NMS/focal loss against the CPU (or closed-form) results."""
    import torch
    from mmcv.ops import RoIAlign, batched_nms, nms, sigmoid_focal_loss

    # Not mmcv.ops.get_compiling_cuda_version(): on the H200 build (torch 2.11, CUDA 13.0,
    # -std=c++20) that call segfaulted while every op worked (benchmarks/gpu_path_h200.md).
    # The ops below run on CUDA tensors, which fails clearly if no CUDA kernels were built.
    g = torch.Generator().manual_seed(0)
    res = {'torch_cuda': torch.version.cuda}

    feats = torch.randn(2, 16, 40, 56, generator=g)
    n = 300
    xy = torch.rand(n, 2, generator=g) * torch.tensor([56 * 8., 40 * 8.])
    wh = torch.rand(n, 2, generator=g) * 120 + 1
    rois = torch.cat([torch.randint(0, 2, (n, 1), generator=g).float(), xy, xy + wh], 1)
    for sr in (0, 2):
        op = RoIAlign((7, 7), spatial_scale=1 / 8., sampling_ratio=sr, aligned=True)
        cpu = op(feats, rois)
        feats_cuda = feats.cuda().requires_grad_()
        gpu = op(feats_cuda, rois.cuda())
        gpu.sum().backward()
        feats_cpu = feats.clone().requires_grad_()
        op(feats_cpu, rois).sum().backward()
        res[f'roi_align_sr{sr}_max_abs_diff'] = float((gpu.detach().cpu() - cpu).abs().max())
        res[f'roi_align_sr{sr}_grad_max_abs_diff'] = float(
            (feats_cuda.grad.cpu() - feats_cpu.grad).abs().max())

    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(n, generator=g)
    dets_c, keep_c = nms(boxes, scores, 0.5)
    dets_g, keep_g = nms(boxes.cuda(), scores.cuda(), 0.5)
    res['nms_kept_cpu'] = int(keep_c.numel())
    res['nms_kept_equal'] = bool(torch.equal(keep_c, keep_g.cpu()))
    idxs = torch.randint(0, 5, (n,), generator=g)
    bd_c, bk_c = batched_nms(boxes, scores, idxs, dict(type='nms', iou_threshold=0.5))
    bd_g, bk_g = batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(),
                             dict(type='nms', iou_threshold=0.5))
    res['batched_nms_kept_cpu'] = int(bk_c.numel())
    res['batched_nms_kept_equal'] = bool(torch.equal(bk_c, bk_g.cpu()))
    res['batched_nms_dets_max_abs_diff'] = float((bd_c - bd_g.cpu()).abs().max())

    logits = torch.randn(64, 10, generator=g)
    labels = torch.randint(0, 10, (64,), generator=g)
    fl = sigmoid_focal_loss(logits.cuda(), labels.cuda(), 2.0, 0.25, None, 'none').cpu()
    t = torch.nn.functional.one_hot(labels, 10).float()
    p = logits.sigmoid()
    pt = (1 - p) * t + p * (1 - t)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, t, reduction='none') * \
        (0.25 * t + 0.75 * (1 - t)) * pt.pow(2)
    res['sigmoid_focal_loss_max_abs_diff'] = float((fl - ref).abs().max())

    res['passed'] = (res['roi_align_sr0_max_abs_diff'] < 1e-4
                     and res['roi_align_sr2_max_abs_diff'] < 1e-4
                     and res['roi_align_sr0_grad_max_abs_diff'] < 1e-3
                     and res['roi_align_sr2_grad_max_abs_diff'] < 1e-3
                     and res['nms_kept_equal'] and res['batched_nms_kept_equal']
                     and res['batched_nms_dets_max_abs_diff'] < 1e-5
                     and res['sigmoid_focal_loss_max_abs_diff'] < 1e-5)
    return res


# ----------------------------------------------------------------------------- runs
def make_data(work: str) -> dict:
    from mmeff.datasets import make_ade_dataset, make_imagefolder_dataset
    from mmeff.datasets.synthetic_coco import make_coco_dataset
    coco = osp.join(work, 'data', 'coco') + '/'
    make_coco_dataset(coco, num_images=(8, 4), size=(128, 160),
                      classes=('rectangle', 'ellipse', 'triangle'), seed=0)
    ade = osp.join(work, 'data', 'ade', 'ADEChallengeData2016')
    make_ade_dataset(ade, num_images=(16, 4), size=(96, 128))
    in1k = osp.join(work, 'data', 'imagenet') + '/'
    make_imagefolder_dataset(in1k, num_classes=5, per_class=(16, 4), size=64)
    return dict(coco=coco, ade=ade, in1k=in1k)


def run_configs(work: str, data: dict) -> dict:
    """One config file per run: the shipped config it tests, data and sizes overridden."""
    c = lambda p: osp.join(ROOT, p)  # noqa: E731
    no_val = 'train_cfg = dict(max_epochs=1, val_interval=100)\n'
    det_ckpt = ('default_hooks = dict(logger=dict(interval=1), '
                'checkpoint=dict(interval=1, max_keep_ckpts=3))\n')
    texts = {
        'mask_rcnn_l1': (
            f"_base_ = {c('configs/demo/mask_rcnn_effformer_l1_synthetic.py')!r}\n"
            "model = dict(backbone=dict(init_cfg=None))\n" + no_val + det_ckpt),
        'mask_rcnn_v2_s0': (
            f"_base_ = {c('configs/demo/mask_rcnn_effformer_l1_synthetic.py')!r}\n"
            "model = dict(backbone=dict(_delete_=True, type='mmeff.EfficientFormerV2', "
            "arch='s0', out_indices=(0, 1, 2, 3), norm_cfg=dict(type='SyncBN', "
            "requires_grad=True), norm_eval=False, init_cfg=None),\n"
            "             neck=dict(in_channels=[32, 48, 96, 176]))\n" + no_val + det_ckpt),
        'retinanet_l1': (
            f"_base_ = {c('configs/detection/retinanet_effformer_l1.py')!r}\n"
            "metainfo = dict(classes=('rectangle', 'ellipse', 'triangle'))\n"
            "model = dict(backbone=dict(init_cfg=None), bbox_head=dict(num_classes=3))\n"
            "_pipe = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', "
            "with_bbox=True), dict(type='Resize', scale=(160, 128), keep_ratio=True), "
            "dict(type='RandomFlip', prob=0.5), dict(type='PackDetInputs')]\n"
            "train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False, "
            "dataset=dict(metainfo=metainfo, pipeline=_pipe))\n"
            "_test = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(160, 128), "
            "keep_ratio=True), dict(type='LoadAnnotations', with_bbox=True), "
            "dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', "
            "'img_shape', 'scale_factor'))]\n"
            "val_dataloader = dict(num_workers=0, persistent_workers=False, "
            "dataset=dict(metainfo=metainfo, pipeline=_test))\n"
            "test_dataloader = val_dataloader\n"
            + no_val + det_ckpt),
        'fpn_l1': (
            f"_base_ = {c('configs/demo/fpn_effformer_l1_synthetic.py')!r}\n"
            "model = dict(backbone=dict(init_cfg=None))\n"
            "train_cfg = dict(max_iters=6, val_interval=100)\n"
            "default_hooks = dict(logger=dict(interval=1), "
            "checkpoint=dict(interval=6, max_keep_ckpts=3))\n"),
        'supernet_tiny': (
            f"_base_ = {c('configs/slimming/supernet_tiny_synthetic.py')!r}\n"
            "train_cfg = dict(max_epochs=1, val_interval=100)\n"),
    }
    # --cfg-options of both phases (the tools carry data_root into the datasets and the
    # evaluators), and of the resumed phase: one more epoch (or 6 more iterations).
    roots = dict(mask_rcnn_l1='coco', mask_rcnn_v2_s0='coco', retinanet_l1='coco',
                 fpn_l1='ade', supernet_tiny='in1k')
    first = {k: [f'data_root={data[v]}'] for k, v in roots.items()}
    more = {k: first[k] + ['train_cfg.max_epochs=2'] for k in texts}
    more['fpn_l1'] = first['fpn_l1'] + ['train_cfg.max_iters=12']
    paths = {}
    for name, text in texts.items():
        path = osp.join(work, 'configs', f'{name}.py')
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.write(text)
        paths[name] = (path, first[name], more[name])
    return paths


def scalars(work_dir: str) -> dict:
    """``{run folder: [logged rows]}``: each phase logs into its own timestamped folder."""
    runs = {}
    for dirpath, _, files in os.walk(work_dir):
        if 'scalars.json' in files:
            with open(osp.join(dirpath, 'scalars.json')) as f:
                runs[dirpath] = [json.loads(line) for line in f if line.strip()]
    return runs


def checkpoints(work_dir: str) -> list:
    return sorted(f for f in os.listdir(work_dir) if f.endswith('.pth')) \
        if osp.isdir(work_dir) else []


def start_phase(name, cfg, work_dir, extra, resume, log_path, amp=True):
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), cfg, '--work-dir', work_dir]
    if amp:
        cmd.append('--amp')
    if resume:
        cmd.append('--resume')
    if extra:
        cmd += ['--cfg-options'] + extra
    log = open(log_path, 'w')
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED='1')), log, cmd


def run_all(paths: dict, work: str, timeout: int, amp: bool = True) -> dict:
    """Phase 1 of every run at once, then phase 2 (``--resume``) of every run at once."""
    results = {n: {'phases': []} for n in paths}
    seen = {n: set() for n in paths}  # log folders of earlier phases
    for phase, resume in ((1, False), (2, True)):
        procs = {}
        for name, (cfg, first, more) in paths.items():
            if phase == 2 and results[name]['phases'][0]['rc'] != 0:
                continue
            wd = osp.join(work, 'runs', name)
            log_path = osp.join(work, 'logs', f'{name}_phase{phase}.log')
            os.makedirs(osp.dirname(log_path), exist_ok=True)
            proc, log, cmd = start_phase(name, cfg, wd, more if resume else first, resume,
                                         log_path, amp)
            procs[name] = dict(proc=proc, log=log, cmd=cmd, t0=time.time(), wd=wd,
                               log_path=log_path)
        while any(p['proc'].poll() is None for p in procs.values()):
            time.sleep(0.5)
            for p in procs.values():
                if p['proc'].poll() is not None and 'end' not in p:
                    p['end'] = time.time()
                elif p['proc'].poll() is None and time.time() - p['t0'] > timeout:
                    p['proc'].kill()
                    p['timed_out'] = True
        for name, p in procs.items():
            p['log'].close()
            rc = 'timeout' if p.get('timed_out') else p['proc'].returncode
            logs = scalars(p['wd'])
            new = [d for d in sorted(logs) if d not in seen[name]]
            seen[name].update(logs)
            rows = [r for d in new for r in logs[d] if 'loss' in r]
            with open(p['log_path']) as f:
                tail = f.read()[-1500:]
            results[name]['phases'].append(dict(
                rc=rc, seconds=round(p.get('end', time.time()) - p['t0'], 1),
                cmd=' '.join(p['cmd'][1:]), checkpoints=checkpoints(p['wd']), log=p['log_path'],
                iters=[r.get('iter', r.get('step')) for r in rows],
                losses=[r['loss'] for r in rows], tail=tail if rc != 0 else ''))
    for name, r in results.items():
        ph = r['phases']
        losses = [v for p in ph for v in p['losses']]
        r['logged_losses'] = len(losses)
        r['all_finite'] = bool(losses) and all(math.isfinite(v) for v in losses)
        r['first_loss'] = losses[0] if losses else None
        r['last_loss'] = losses[-1] if losses else None
        ok = len(ph) == 2 and all(p['rc'] == 0 for p in ph)
        if ok:
            r['new_checkpoint_after_resume'] = sorted(set(ph[1]['checkpoints']) -
                                                      set(ph[0]['checkpoints']))
            # The resumed run logs only iterations after the first run's last one.
            r['resumed_after_iter'] = max(ph[0]['iters'], default=None)
            ok = (bool(ph[0]['checkpoints']) and bool(r['new_checkpoint_after_resume'])
                  and bool(ph[0]['iters']) and bool(ph[1]['iters'])
                  and min(ph[1]['iters']) > max(ph[0]['iters']))
        r['passed'] = bool(ok and r['all_finite'])
    return results


def write(out_dir: str, name: str, report: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(osp.join(out_dir, name + '.json'), 'w') as f:
        json.dump(report, f, indent=1)
    lines = [f"# GPU checks of the main job ({report['device']})", '',
             f"torch {report['torch']}, CUDA {report['cuda']}, mmcv {report.get('mmcv')}, "
             f"{report['date']}. Command: `python tools/gpu_train_checks.py`.", '']
    if 'ops' in report:
        lines += ['## mmcv CUDA ops vs CPU', '', '| check | value |', '|---|---|']
        lines += [f'| {k} | {v} |' for k, v in report['ops'].items()]
        lines.append('')
    if 'runs' in report:
        lines += ['## Training with --amp (tools/train.py), then --resume', '',
                  '| run | phase 1 (s) | phase 2 --resume (s) | losses logged | first -> last '
                  'loss | checkpoints | passed |', '|---|---|---|---|---|---|---|']
        for n, r in report['runs'].items():
            ph = r['phases']
            secs = [str(p['seconds']) + ('' if p['rc'] == 0 else f" (rc {p['rc']})")
                    for p in ph] + ['-'] * (2 - len(ph))
            loss = (f"{r['first_loss']:.3f} -> {r['last_loss']:.3f}"
                    if r['first_loss'] is not None else '-')
            lines.append(f"| {n} | {secs[0]} | {secs[1]} | {r['logged_losses']} | {loss} | "
                         f"{', '.join(ph[-1]['checkpoints']) if ph else '-'} | "
                         f"{'yes' if r['passed'] else 'NO'} |")
    with open(osp.join(out_dir, name + '.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    if not torch.cuda.is_available() and not args.cpu_dry_run:
        print('gpu_train_checks: error: no CUDA device visible to torch; run this on a GPU '
              'machine (the CPU checks are the default pytest run)', file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0) if not args.cpu_dry_run else 'cpu-dry-run'
    name = args.name or 'gpu_train_checks_' + gpu.lower().replace('nvidia ', '').replace(' ', '-')
    report = dict(device=gpu, torch=torch.__version__, cuda=torch.version.cuda,
                  date=time.strftime('%Y-%m-%d'))
    try:
        import mmcv
        report['mmcv'] = mmcv.__version__
    except ImportError as exc:
        report['mmcv'] = f'not importable: {exc}'
    ok = True
    if not args.no_ops and not args.cpu_dry_run:
        try:
            report['ops'] = check_ops()
        except Exception as exc:  # recorded: the training runs still go ahead
            report['ops'] = {'error': f'{type(exc).__name__}: {exc}', 'passed': False}
        ok &= report['ops']['passed']
        print('ops:', json.dumps(report['ops']))
        write(args.out_dir, name, report)
    work = osp.abspath(args.work_dir)
    data = make_data(work)
    paths = {k: v for k, v in run_configs(work, data).items() if k in args.runs}
    t0 = time.time()
    report['runs'] = run_all(paths, work, args.timeout, amp=not args.cpu_dry_run)
    report['runs_wall_s'] = round(time.time() - t0, 1)
    ok &= all(r['passed'] for r in report['runs'].values())
    report['passed'] = bool(ok)
    write(args.out_dir, name, report)
    for n, r in report['runs'].items():
        print(n, 'passed' if r['passed'] else 'FAILED', [p['rc'] for p in r['phases']])
    print(f'gpu_train_checks: {"passed" if ok else "FAILED"}; results in '
          f'{osp.join(args.out_dir, name)}.{{json,md}}')
    return 0 if ok else 1


if __name__ == '__main__':
    from mmeff.cli import run
    sys.exit(run(main))
