"""Latency of a whole exported detector or segmentor beside its backbone alone (ONNX Runtime).

What a user ships is the whole model: an mmdet RetinaNet (:func:`mmeff.deploy.detector.
export_detector`: backbone, FPN, head, box decoding, NMS), an mmdet Mask R-CNN (the same
function, :mod:`mmeff.deploy.mask_rcnn`: backbone, FPN, RPN and its NMS, RoIAlign, box head,
NMS, mask head) or an mmseg segmentor
(:func:`mmeff.deploy.segmentor.export_segmentor`: backbone, neck, head, resize, argmax). For a
config and each input size (default the deployment sizes 512x512 and 640x640) this exports

* ``backbone``: the config's ``model.backbone``, fused, to ONNX (its stage maps), and
* ``whole``: the whole model, exactly as ``tools/export.py --task detector|segmentor`` does,

and times both in ONNX Runtime on this machine's CPU with the discipline of
:mod:`mmeff.benchmark.latency`: sessions whose workers stop spinning after each call
(:func:`~mmeff.benchmark.latency.ort_session`), warm-up, repetitions interleaved between the
two with an untimed pause before each call (:func:`~mmeff.benchmark.latency.time_interleaved`).
The row ``whole`` minus the row ``backbone`` is what the neck, head and post-processing cost.
Inputs: the backbone takes a normalised image (standard normal values), the whole model an RGB
image with pixel values 0-255 (uniform): the same pixels before and after the normalisation in
its graph.

A detector's NMS time depends on how many candidates pass the score threshold, hence on the
weights: with random weights (no checkpoint) the figure is that of random scores. A Mask R-CNN
export always runs its RoI heads on a fixed count of rows (the RPN's ``max_per_img`` proposals,
``max_dets`` boxes for the mask head, padding included), so its time depends on the weights
through the two NMS steps only.
"""
import os.path as osp
import tempfile
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .latency import (_load_avg, _load_note, device_label, machine_info, ort_session,
                      summarize, time_interleaved)

SCHEMA = 'mmeff.benchmark.whole_model/1'
TASKS = ('detector', 'segmentor')
PARTS = ('backbone', 'whole')
DEFAULT_SIZES = ((512, 512), (640, 640))


def infer_task(config: str) -> str:
    """``'segmentor'`` for an mmseg ``EncoderDecoder`` config, ``'detector'`` otherwise."""
    from mmengine.config import Config
    if not osp.isfile(str(config)):
        raise FileNotFoundError(f'config file {config!r} does not exist')
    mtype = str(Config.fromfile(config).model.get('type', '')).split('.')[-1]
    return 'segmentor' if mtype in ('EncoderDecoder', 'CascadeEncoderDecoder') else 'detector'


def export_parts(config: str, task: str, size, work_dir: str,
                 checkpoint: Optional[str] = None) -> dict:
    """Export the backbone and the whole model of ``config`` at ``size`` to ONNX under
    ``work_dir``; returns ``{'backbone': path, 'whole': path, 'whole_report': report}``."""
    from mmeff.deploy import build_model, export_onnx
    h, w = size
    backbone, _ = build_model(config, task='backbone', checkpoint=checkpoint)
    bb_path = osp.join(work_dir, f'backbone_{h}x{w}.onnx')
    export_onnx(backbone, bb_path, (1, 3, h, w), fuse=True, check=False)
    whole_path = osp.join(work_dir, f'{task}_{h}x{w}.onnx')
    if task == 'detector':
        from mmeff.deploy.detector import export_detector
        report = export_detector(config, checkpoint, fmt='onnx', input_size=(h, w),
                                 out=whole_path)
    else:
        from mmeff.deploy.segmentor import export_segmentor
        report = export_segmentor(config, checkpoint, fmt='onnx', input_size=(h, w),
                                  out=whole_path, output='labels')
    return dict(backbone=bb_path, whole=whole_path, whole_report=report)


@torch.no_grad()
def whole_model_latency(config: str,
                        task: Optional[str] = None,
                        input_sizes: Sequence = DEFAULT_SIZES,
                        checkpoint: Optional[str] = None,
                        warmup: int = 5,
                        reps: int = 50,
                        threads: Optional[int] = None,
                        settle_s: float = 0.01,
                        seed: int = 0,
                        log: Callable[[str], None] = print) -> dict:
    """Time the backbone alone and the whole model of ``config`` in ONNX Runtime.

    Args:
        config (str): mmdet (RetinaNet, Mask R-CNN) or mmseg config with an mmeff backbone.
        task (str | None): ``'detector'`` or ``'segmentor'``; ``None`` infers it
            (:func:`infer_task`).
        input_sizes (Sequence): Sizes as ``(H, W)``, ``512`` or ``'640x640'``. Defaults to
            512x512 and 640x640.
        checkpoint (str | None): The whole model's weights; ``None``: random.
        warmup (int): Untimed calls of each. Defaults to 5.
        reps (int): Timed calls of each, interleaved. Defaults to 50.
        threads (int | None): ONNX Runtime intra-op threads (and torch's, for the exports);
            ``None`` keeps torch's count.
        settle_s (float): Untimed pause before every timed call. Defaults to 0.01.
        seed (int): Seed of the inputs. Defaults to 0.
        log (callable): Progress messages. Defaults to ``print``.

    Returns:
        dict: ``schema``, ``machine``, ``settings`` and ``results``: one row per (size, part)
        with ``status``, the :func:`~mmeff.benchmark.latency.summarize` figures, ``setup_s``
        (export time) and, for ``whole``, ``over_backbone`` (the ratio of the medians).
    """
    from mmeff.deploy import parse_input_size
    task = task or infer_task(config)
    if task not in TASKS:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    if reps < 1 or warmup < 0:
        raise ValueError(f'need reps >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}')
    sizes = [parse_input_size(s) for s in input_sizes]
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    machine = machine_info('cpu', threads)
    log(f'Whole-model latency of {config} ({task}) on {device_label(machine)}, ONNX Runtime '
        f"(1-min load average {machine['load_avg_1m']}{_load_note(machine)})")
    rows, detector = [], None
    with tempfile.TemporaryDirectory(prefix='mmeff_whole_') as work_dir:
        for h, w in sizes:
            rng = np.random.default_rng(seed)
            feeds = dict(backbone=rng.standard_normal((1, 3, h, w)).astype(np.float32),
                         whole=rng.uniform(0, 255, (1, 3, h, w)).astype(np.float32))
            t0 = time.perf_counter()
            try:
                paths = export_parts(config, task, (h, w), work_dir, checkpoint)
            except Exception as exc:  # recorded in the results, not fatal
                msg = f'error: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}'
                log(f'  {h}x{w}: {msg}')
                rows += [dict(input_size=[h, w], part=p, runtime='onnxruntime', status=msg)
                         for p in PARTS]
                continue
            setup_s = round(time.perf_counter() - t0, 2)
            detector = paths['whole_report'].get('detector', detector)
            fns = {}
            for part in PARTS:
                sess = ort_session(paths[part], threads)
                feed = {sess.get_inputs()[0].name: feeds[part]}
                fns[part] = (lambda s=sess, f=feed: s.run(None, f))
            times = time_interleaved(fns, warmup, reps, settle_s=settle_s)
            size_rows = {}
            for part in PARTS:
                row = dict(input_size=[h, w], part=part, runtime='onnxruntime', status='ok',
                           setup_s=setup_s, **summarize(times[part], 1))
                size_rows[part] = row
                rows.append(row)
            whole = size_rows['whole']
            whole['over_backbone'] = round(whole['median_ms']
                                           / size_rows['backbone']['median_ms'], 3)
            log(f"  {h}x{w}: backbone median {size_rows['backbone']['median_ms']:.2f} ms, "
                f"whole {task} {whole['median_ms']:.2f} ms ({whole['over_backbone']:.2f}x)")
    machine['load_avg_1m_end'] = _load_avg()
    settings = dict(config=str(config), task=task, checkpoint=checkpoint,
                    input_sizes=[list(s) for s in sizes], warmup=warmup, reps=reps,
                    threads=threads, settle_s=settle_s, seed=seed, runtime='onnxruntime (CPU)',
                    weights=checkpoint or 'random (no checkpoint)')
    if detector:  # RetinaNet, MaskRCNN
        settings['detector'] = detector
    return dict(schema=SCHEMA, machine=machine, settings=settings, results=rows)


def to_markdown(result: dict) -> str:
    """A Markdown report of :func:`whole_model_latency`: where it ran, one row per size/part."""
    m, s = result['machine'], result['settings']
    lines = [f"# Whole {s['task']} vs backbone latency ({device_label(m)}, ONNX Runtime)", '',
             f"- Config: `{s['config']}`"
             + (f" ({s['detector']})" if s.get('detector') else '')
             + f"; weights: {s['weights']}",
             f"- Machine: {m['cpu']} ({m['logical_cores']} logical cores), {m['platform']}; "
             f"{m['torch_threads']} ONNX Runtime thread(s), no spinning between calls",
             f"- Software: onnxruntime {m.get('onnxruntime')}, torch {m['torch']}",
             f"- Load: 1-min load average {m.get('load_avg_1m')} at the start, "
             f"{m.get('load_avg_1m_end')} at the end{_load_note(m)}",
             f"- Method: {s['warmup']} warm-up calls, {s['reps']} timed calls of each, "
             f"interleaved ({s['settle_s'] * 1e3:g} ms untimed pause before each); fp32; "
             f"batch 1",
             f"- Date: {m['date']}. CPU figures of this machine, not iPhone / Core ML figures.",
             '', '| input | part | median ms | p90 ms | whole / backbone |',
             '|---|---|---|---|---|']
    for r in result['results']:
        size = f"{r['input_size'][0]}x{r['input_size'][1]}"
        part = s['task'] if r['part'] == 'whole' else 'backbone'
        if r['status'] != 'ok':
            lines.append(f"| {size} | {part} | {r['status']} | | |")
            continue
        ratio = f"{r['over_backbone']:.2f}x" if 'over_backbone' in r else ''
        lines.append(f"| {size} | {part} | {r['median_ms']:.2f} | {r['p90_ms']:.2f} | "
                     f'{ratio} |')
    return '\n'.join(lines) + '\n'


def save_results(result: dict, out_dir: str, stem: str):
    """Write ``<stem>.json`` and ``<stem>.md`` under ``out_dir`` (each atomically: a killed
    run leaves the previous file whole); returns both paths."""
    import json
    import os

    from mmeff.engine.checkpointing import write_text_atomic
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = osp.join(out_dir, stem + '.json'), osp.join(out_dir, stem + '.md')
    write_text_atomic(json_path, json.dumps(result, indent=2) + '\n')
    write_text_atomic(md_path, to_markdown(result))
    return json_path, md_path


__all__ = ['SCHEMA', 'TASKS', 'PARTS', 'DEFAULT_SIZES', 'infer_task', 'export_parts',
           'whole_model_latency', 'to_markdown', 'save_results']
