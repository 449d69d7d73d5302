"""Core ML latency of an exported ``.mlpackage`` (macOS), and clearly labelled proxies elsewhere.

Core ML runs only on Apple platforms: coremltools converts and inspects models on Linux but
cannot predict there. :func:`coreml_runtime_status` says whether this machine can;
:func:`time_coreml` times predictions (macOS); :func:`proxy_latency` measures what can be
measured anywhere (the fused model in torch and in ONNX Runtime on this machine's CPU), which
is a *proxy*, never an iPhone 12 figure.

Compute units (``coremltools.ComputeUnit``), chosen when the model is loaded:
``ALL`` = CPU + GPU + Neural Engine (the paper's setting), ``CPU_AND_NE``, ``CPU_AND_GPU``,
``CPU_ONLY``. A Mac's figures are not an iPhone's either: the on-device number comes from
Xcode's Core ML Performance Report on an iPhone 12 (docs/deployment.md).
"""
import platform
import time
from typing import Optional, Tuple

import numpy as np

from mmeff.runtime import (check_compute_units, coreml_runtime_status, get_backend,
                           inspect_coreml, summarize, time_interleaved)
from .complexity import PAPER, display_name
from .latency import SCHEMA, machine_info

MIN_REPS = 500


def package_info(path: str) -> dict:
    """Arch, task, input shape, compute units of an mmeff ``.mlpackage`` (from its spec)."""
    report = inspect_coreml(path)
    meta = report['metadata']
    inp = report['inputs'][0]
    return dict(arch=meta.get('mmeff.arch'), task=meta.get('mmeff.task'),
                input_name=inp['name'], input_kind=inp['kind'],
                input_shape=[int(s) for s in inp['shape']],
                compute_units=meta.get('mmeff.compute_units', 'ALL'),
                precision=meta.get('mmeff.precision'))


def paper_reference(info: dict) -> Tuple[Optional[float], str]:
    """The paper's iPhone 12 latency for this model, and whether it is comparable."""
    arch = info.get('arch')
    if arch not in PAPER:
        return None, ('no paper figure (not an L1/L3/L7 or V2 S0/S1/S2/L model exported by '
                      'mmeff)')
    ms = PAPER[arch]['iphone12_ms']
    name = display_name(arch)
    same = info.get('task') == 'classifier' and info['input_shape'] == [1, 3, 224, 224]
    if same:
        return ms, f'paper, iPhone 12, Core ML, ALL compute units: {ms} ms ({name})'
    return ms, (f'paper, iPhone 12: {ms} ms for the {name} classifier at 1x3x224x224 '
                f'(this model is the {info.get("task")} at '
                f"{'x'.join(map(str, info['input_shape']))}: not directly comparable)")


def time_coreml(path: str, compute_units: str = 'ALL', warmup: int = 50,
                reps: int = 1000, seed: int = 0) -> dict:
    """Load ``path`` with ``compute_units``, warm up, time ``reps`` predictions (macOS only).

    Returns the :func:`mmeff.runtime.summarize` figures plus ``load_s`` (timed by
    :func:`mmeff.runtime.time_interleaved`).
    """
    ok, why = coreml_runtime_status()
    if not ok:
        raise RuntimeError(why)
    if reps < MIN_REPS:
        raise ValueError(f'time at least {MIN_REPS} predictions for a stable median, got {reps}')
    check_compute_units(compute_units)
    info = package_info(path)
    t0 = time.perf_counter()
    model = get_backend('coreml').open(path, compute_units=compute_units)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    shape = info['input_shape']
    if info['input_kind'] == 'image':
        from PIL import Image
        pixels = rng.integers(0, 256, size=(shape[2], shape[3], 3), dtype=np.uint8)
        feed = {info['input_name']: Image.fromarray(pixels, 'RGB')}
    else:
        feed = {info['input_name']: rng.standard_normal(shape).astype(np.float32)}
    times = time_interleaved({'coreml': lambda: model.predict(feed)}, warmup, reps)['coreml']
    row = summarize(times, shape[0])
    row.update(load_s=round(load_s, 2), warmup=warmup)
    return row


def coreml_results(path: str, rows: dict, warmup: int, reps: int) -> dict:
    """A latency results dict (the benchmark's schema) of :func:`time_coreml` rows keyed by
    compute units, so that ``tools/plot_latency.py`` can draw them."""
    info = package_info(path)
    shape = info['input_shape']
    results = [dict(arch=info['arch'], task=info['task'], input_size=shape[2:],
                    batch_size=shape[0], runtime=f'coreml-{cu}', device='coreml', status='ok',
                    **row) for cu, row in rows.items()]
    machine = machine_info('cpu')
    machine['macos'] = platform.mac_ver()[0]
    settings = dict(task=info['task'], device='coreml', archs=[info['arch']],
                    input_sizes=[shape[2:]], batch_sizes=[shape[0]],
                    runtimes=[f'coreml-{cu}' for cu in rows], warmup=warmup, reps=reps,
                    threads=None, seed=0, weights=f'as exported in {path}')
    return dict(schema=SCHEMA, machine=machine, settings=settings, results=results)


def proxy_latency(arch: str, task: str, input_shape, warmup: int = 5, reps: int = 50,
                  threads: Optional[int] = None) -> dict:
    """Proxies measurable on any machine: the fused model in torch and ONNX Runtime on this
    CPU (:func:`mmeff.benchmark.latency.benchmark`), same arch/task/shape as the package."""
    from .latency import benchmark
    b, _, h, w = input_shape
    return benchmark([arch], [(h, w)], [b], runtimes=('fused', 'onnxruntime'),
                     task=task or 'classifier', device='cpu', warmup=warmup, reps=reps,
                     threads=threads, log=lambda msg: None)
