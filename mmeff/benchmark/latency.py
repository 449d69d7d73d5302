"""Latency and throughput of EfficientFormer (V1 and V2) under several runtimes, beside timm's.

For every (arch, input size, batch size) the same weights run under:

* ``timm``: ``timm.create_model('efficientformer_<arch>')`` for V1 (``l1``/``l3``/``l7``),
  ``'efficientformerv2_<arch>'`` for V2 (``s0``/``s1``/``s2``/``l``), the reference
  implementations; mmeff's models load their weights through
  ``mmeff.converters.convert_timm``. timm's attention biases are fixed to the token grids of
  the 224x224 input its models are built for: at other sizes the row says
  ``unsupported: <timm's error>`` instead of a number.
* ``eager``: mmeff, as trained (BN, layer scales, bias computed per call), run by the
  ``torch-cpu`` / ``torch-cuda`` backend of ``device``.
* ``fused``: :func:`mmeff.deploy.fuse_model` (BN and layer scales folded, bias cached) with
  ``channels_last=True`` (the backbone runs channels-last inside, NCHW in and out: the eager
  inference path), run the same way.
* ``fastest``: :func:`mmeff.deploy.fastest.fastest`, the one-call inference path
  (channels-last fused + ``torch.compile`` where it compiles and matches the unfused model,
  else the fused eager model); its compile time is in ``setup_s``. Not in the default set.
* Every other runtime is a backend of :mod:`mmeff.runtime` running the fused model, under
  the name its rows have always had, from the default (NCHW) fused model, as it is exported:
  ``compile`` (``torch.compile``, inductor; the compile
  time is reported separately, ``setup_s``, and excluded from the timings), ``onnxruntime``
  (exported with :func:`mmeff.runtime.write_onnx` and run by ONNX Runtime, CPU, or the CUDA
  execution provider for ``device='cuda'``, where the timings include the host<->device
  copies of ``session.run``; its worker threads spin only within a call,
  :func:`mmeff.runtime.ort_session`, not on the cores the next runtime needs),
  ``onnxruntime-int8`` and ``coreml`` (macOS), and any backend registered later
  (:data:`RUNTIMES` reads the registry). By default the first five are timed
  (:data:`DEFAULT_RUNTIMES`).

Timing (:mod:`mmeff.runtime.timing`): each runtime is warmed up, then repetitions are
*interleaved* across runtimes (``rep 1 of every runtime, rep 2 of every runtime, ...``), so
that a change in machine load (a shared CPU) affects every runtime alike, and no runtime
leaves threads spinning that would slow down the next one (``tests/test_slimming_lut.py``
checks it); on CUDA every call is followed by ``torch.cuda.synchronize()`` inside the timed
region. Reported: median, p90, mean, min (ms per batch) and throughput (images/s from the
median). Every runtime's output is compared with ``eager``'s (``rel_err_vs_eager``): a fast
but wrong runtime shows. The LUT of latency-driven slimming (:mod:`mmeff.slimming.lut`) times
its pieces with the same functions.

Tasks: ``'classifier'`` (image -> logits; timm's ``forward``) or ``'backbone'`` (the four
stage maps, mmeff without output norms; timm's ``forward_intermediates``).

The papers' iPhone 12 latencies (Core ML, classifier at 224x224) of the archs timed are
reported beside the measurements (``paper_iphone12_ms``): a device of another class, for
orientation only.
"""
import datetime
import json
import os
import os.path as osp
import platform
import tempfile
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mmeff.runtime import (NameView, backends, get_backend, pinned_threads, rel_err,
                           short_error, summarize, time_interleaved)
# Re-exported: the whole-model latency (mmeff.benchmark.whole_model) imports it from here.
from mmeff.runtime import ort_session  # noqa: F401

# Runtimes that are models rather than backends: timm's reference, mmeff eager, fused and
# fastest, run by the torch backend of the benchmark's device.
MODEL_RUNTIMES = ('timm', 'eager', 'fused', 'fastest')
DEFAULT_RUNTIMES = ('timm', 'eager', 'fused', 'compile', 'onnxruntime')
TASKS = ('classifier', 'backbone')
SCHEMA = 'mmeff.benchmark.latency/1'


# ----------------------------------------------------------------------------- machine
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``sysctl`` on macOS)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.lower().startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    if platform.system() == 'Darwin':
        import subprocess
        try:
            return subprocess.run(['sysctl', '-n', 'machdep.cpu.brand_string'],
                                  capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    return platform.processor() or platform.machine()


def _load_avg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not available on Windows
        return None


def machine_info(device: str = 'cpu', threads: Optional[int] = None) -> dict:
    """Where the numbers come from: CPU, cores, threads, GPU, library versions, date."""
    import timm
    info = dict(cpu=cpu_name(), logical_cores=os.cpu_count(), platform=platform.platform(),
                python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                torch_threads=threads or torch.get_num_threads(), device=device,
                date=datetime.datetime.now().isoformat(timespec='seconds'),
                load_avg_1m=_load_avg())
    try:
        import onnxruntime
        info['onnxruntime'] = onnxruntime.__version__
    except ImportError:
        info['onnxruntime'] = None
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(torch.device(device))
        info['cuda'] = torch.version.cuda
    return info


def _load_note(machine: dict) -> str:
    loads = [v for v in (machine.get('load_avg_1m'), machine.get('load_avg_1m_end')) if v]
    if loads and max(loads) > (machine.get('torch_threads') or 1) + 0.5:  # beyond our own use
        return (' (other processes were using the CPU: every figure is inflated, the '
                'comparison between runtimes still holds as repetitions are interleaved)')
    return ''


def device_label(machine: dict) -> str:
    """``'CPU: <name>, N threads'`` or ``'GPU: <name>'``."""
    if machine.get('gpu'):
        return f"GPU: {machine['gpu']}"
    n = machine['torch_threads']
    return f"CPU: {machine['cpu']}, {n} thread{'' if n == 1 else 's'}"


# ----------------------------------------------------------------------------- models
def build_models(arch: str, task: str = 'classifier', seed: int = 0
                 ) -> Tuple[nn.Module, nn.Module, Callable]:
    """``(mmeff_model, timm_model, timm_forward)`` with identical weights, in eval mode.

    ``arch`` is an arch of a registered family (:mod:`mmeff.models.families`: V1 ``l1``,
    ``l3``, ``l7``; V2 ``s0``, ``s1``, ``s2``, ``l``), timm's model of it the reference. The
    weights are timm's own initialisation (``pretrained=False``, seeded), converted to mmeff's
    layout with ``convert_timm`` and loaded strictly.
    """
    import timm
    from mmeff.converters import convert_timm
    from mmeff.models.families import family_of_arch
    if task not in TASKS:
        raise ValueError(f'task must be one of {TASKS}, got {task!r}')
    family = family_of_arch(arch)  # ValueError naming every family's archs
    name = family.timm_name(arch)
    torch.manual_seed(seed)
    ref = timm.create_model(name, pretrained=False).eval()
    sd = convert_timm(ref.state_dict())
    if task == 'classifier':
        from mmeff.models.classifiers import EfficientFormerClassifier
        cls = EfficientFormerClassifier(backbone=dict(type=family.type, arch=arch),
                                        num_classes=ref.num_classes)
        cls.load_state_dict(sd, strict=True)
        model = cls.as_inference_module()
        return model.eval(), ref, ref
    model = family.cls(arch, out_norm_cfg=None)
    model.load_state_dict({k[len('backbone.'):]: v for k, v in sd.items()
                           if k.startswith('backbone.')}, strict=True)

    def timm_backbone(x):
        return ref.forward_intermediates(x, intermediates_only=True)

    return model.eval(), ref, timm_backbone


def _runtime_names() -> Tuple[str, ...]:
    return MODEL_RUNTIMES + tuple(b.runtime_name for b in backends() if b.device is None)


# Every runtime the benchmark offers: MODEL_RUNTIMES, then every registered backend not bound
# to one torch device (``torch-cpu``/``torch-cuda`` are how MODEL_RUNTIMES run), by its
# ``runtime_name``; read from the registry on each use.
RUNTIMES = NameView(_runtime_names)


def backend_of_runtime(name: str):
    """The :mod:`mmeff.runtime` backend a runtime name of :data:`RUNTIMES` stands for."""
    for b in backends():
        if b.device is None and name in (b.runtime_name, b.name):
            return b
    raise ValueError(f'unknown runtime {name!r}; choose from {tuple(RUNTIMES)}')


def _make_runtime(name: str, model: nn.Module, ref_fn: Callable, x: torch.Tensor,
                  device: str, threads: int, work_dir: str) -> Callable[[], object]:
    """A zero-argument callable running one inference with runtime ``name`` (may raise)."""
    from mmeff.deploy import fuse_model
    hw = tuple(x.shape[2:])
    if name == 'timm':
        return lambda: ref_fn(x)
    torch_backend = get_backend('torch-cuda' if device.startswith('cuda') else 'torch-cpu')
    if name == 'eager':
        return torch_backend.runner(model, x, device=device)
    if name == 'fused':
        return torch_backend.runner(fuse_model(model, hw, channels_last=True), x, device=device)
    if name == 'fastest':
        from mmeff.deploy.fastest import fastest
        from mmeff.runtime import Runner
        run = fastest(model, hw, device, batch_size=x.shape[0])
        runner = Runner(lambda: run(x), backend='fastest',
                        sync=torch.cuda.synchronize if device.startswith('cuda') else None)
        runner.chosen = run.record['chosen']  # 'compile' or 'fused', in the row
        return runner
    backend = backend_of_runtime(name)
    fused = fuse_model(model, hw)
    return backend.runner(fused, x, threads=threads, device=device, work_dir=work_dir,
                          tag=f'{name}_{x.shape[0]}x{hw[0]}x{hw[1]}')


@torch.no_grad()
def benchmark(archs: Sequence[str] = ('l1',),
              input_sizes: Sequence = ((224, 224),),
              batch_sizes: Sequence[int] = (1,),
              runtimes: Sequence[str] = DEFAULT_RUNTIMES,
              task: str = 'classifier',
              device: str = 'cpu',
              warmup: int = 10,
              reps: int = 100,
              threads: Optional[int] = None,
              seed: int = 0,
              settle_s: float = 0.01,
              log: Callable[[str], None] = print) -> dict:
    """Time every runtime on every (arch, input size, batch size); see the module docstring.

    Args:
        archs (Sequence[str]): Archs of the registered families (V1 ``'l1'``, ``'l3'``,
            ``'l7'``; V2 ``'s0'``, ``'s1'``, ``'s2'``, ``'l'``), in any mix.
        input_sizes (Sequence): Sizes as accepted by :func:`mmeff.deploy.parse_input_size`
            (``224``, ``(800, 1333)``, ``'512x512'``).
        batch_sizes (Sequence[int]): Batch sizes.
        runtimes (Sequence[str]): Subset of ``RUNTIMES``. Defaults to ``DEFAULT_RUNTIMES``.
        task (str): ``'classifier'`` or ``'backbone'``.
        device (str): ``'cpu'`` or ``'cuda'`` (``'cuda:N'``).
        warmup (int): Untimed calls per runtime. Defaults to 10.
        reps (int): Timed calls per runtime. Defaults to 100.
        threads (int | None): CPU threads for torch and ONNX Runtime during the run (the
            caller's torch setting is restored afterwards); ``None`` keeps torch's.
        seed (int): Seed of the weights and of the input. Defaults to 0.
        settle_s (float): Untimed pause before every timed call (:func:`time_interleaved`):
            no runtime's spinning threads overlap the next one's timing. Defaults to 0.01.
        log (callable): Progress messages. Defaults to ``print``.

    Returns:
        dict: ``schema``, ``machine`` (:func:`machine_info`), ``settings``, ``results``: one
        row per (arch, size, batch, runtime) with ``status`` (``'ok'``, ``'unsupported: ...'``
        or ``'error: ...'``), timings (:func:`summarize`), ``setup_s`` and
        ``rel_err_vs_eager``; and ``paper_iphone12_ms`` (arch -> the paper's iPhone 12
        latency of its classifier at 224x224, for the archs that have one).
    """
    from mmeff.deploy import parse_input_size
    from mmeff.models.families import family_of_arch
    for arch in archs:
        family_of_arch(arch)  # an unknown arch fails now, not after the first arch's timings
    unknown = set(runtimes) - set(RUNTIMES)
    if unknown:
        raise ValueError(f'unknown runtimes {sorted(unknown)}; choose from {RUNTIMES}')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'--device {device!r}: this machine has no usable CUDA device '
                         f'(torch.cuda.is_available() is False); use --device cpu')
    with pinned_threads(threads) as threads:  # the caller's setting is restored after
        sizes = [parse_input_size(s) for s in input_sizes]
        sync = torch.cuda.synchronize if device.startswith('cuda') else None
        machine = machine_info(device, threads)
        rows = []
        log(f'Benchmarking on {device_label(machine)} (1-min load average '
            f"{machine['load_avg_1m']}{_load_note(machine)})")
        with tempfile.TemporaryDirectory(prefix='mmeff_bench_') as work_dir:
            for arch in archs:
                model, ref, ref_fn = build_models(arch, task, seed)
                model, ref = model.to(device), ref.to(device)
                for (h, w) in sizes:
                    for bs in batch_sizes:
                        x = torch.randn(bs, 3, h, w, generator=torch.Generator().manual_seed(seed)
                                        ).to(device)
                        expected = model(x)
                        fns, meta = {}, {}
                        for name in runtimes:
                            row = dict(arch=arch, task=task, input_size=[h, w], batch_size=bs,
                                       runtime=name, device=device)
                            t0 = time.perf_counter()
                            try:
                                fn = _make_runtime(name, model, ref_fn, x, device, threads,
                                                   work_dir)
                                err = rel_err(fn(), expected)
                            except Exception as exc:  # recorded in the results, not fatal
                                kind = 'unsupported' if name == 'timm' else 'error'
                                row.update(status=f'{kind}: {short_error(exc)}')
                                log(f'  {arch} {h}x{w} b{bs} {name}: {row["status"]}')
                                rows.append(row)
                                continue
                            row.update(status='ok', setup_s=round(time.perf_counter() - t0, 2),
                                       rel_err_vs_eager=float(f'{err:.3g}'))
                            if getattr(fn, 'chosen', None):
                                row['chosen'] = fn.chosen
                            fns[name], meta[name] = fn, row
                        if fns:
                            times = time_interleaved(fns, warmup, reps, sync, settle_s)
                            for name, row in meta.items():
                                row.update(summarize(times[name], bs))
                                rows.append(row)
                                log(f"  {arch} {h}x{w} b{bs} {name}: median {row['median_ms']:.2f} "
                                    f"ms, p90 {row['p90_ms']:.2f} ms, "
                                    f"{row['throughput_img_s']:.1f} img/s, rel. err vs eager "
                                    f"{row['rel_err_vs_eager']:.1e}")
    order = {n: i for i, n in enumerate(RUNTIMES)}
    rows.sort(key=lambda r: (archs.index(r['arch']) if r['arch'] in archs else 0,
                             r['input_size'][0] * r['input_size'][1], r['batch_size'],
                             order[r['runtime']]))
    settings = dict(task=task, device=device, archs=list(archs),
                    input_sizes=[list(s) for s in sizes], batch_sizes=list(batch_sizes),
                    runtimes=list(runtimes), warmup=warmup, reps=reps, threads=threads,
                    seed=seed, settle_s=settle_s,
                    weights='timm initialisation (pretrained=False), the same weights in every '
                            'runtime via convert_timm')
    machine['load_avg_1m_end'] = _load_avg()
    return dict(schema=SCHEMA, machine=machine, settings=settings, results=rows,
                paper_iphone12_ms=paper_iphone12_ms(archs))


def paper_iphone12_ms(archs: Sequence[str]) -> Dict[str, float]:
    """The papers' iPhone 12 latency (ms; Core ML, classifier, 1x3x224x224) of each arch that
    has one (:data:`mmeff.benchmark.complexity.PAPER`)."""
    from .complexity import PAPER
    return {a: PAPER[a]['iphone12_ms'] for a in archs if a in PAPER}


# ----------------------------------------------------------------------------- reports
def to_markdown(result: dict) -> str:
    """A Markdown report: where it ran, then one row per (arch, size, batch, runtime)."""
    m, s = result['machine'], result['settings']
    lines = [f"# EfficientFormer latency ({s['task']}, {device_label(m)})", '',
             f"- Machine: {m['cpu']} ({m['logical_cores']} logical cores), {m['platform']}"
             + (f", GPU {m['gpu']} (CUDA {m.get('cuda')})" if m.get('gpu') else ''),
             f"- Software: torch {m['torch']}, timm {m['timm']}, onnxruntime "
             f"{m.get('onnxruntime')}, Python {m['python']}; {m['torch_threads']} CPU "
             f"thread(s) for torch and ONNX Runtime",
             f"- Load: 1-min load average {m.get('load_avg_1m')} at the start, "
             f"{m.get('load_avg_1m_end')} at the end{_load_note(m)}",
             f"- Method: {s['warmup']} warm-up calls, {s['reps']} timed calls per runtime "
             f"interleaved across runtimes"
             + (f" ({s['settle_s'] * 1e3:g} ms untimed pause before each)"
                if s.get('settle_s') else '')
             + f"; median and p90 per batch; fp32; {s['weights']}",
             f"- Date: {m['date']}. These are {'GPU' if m.get('gpu') else 'CPU'} figures of "
             f"this machine, not iPhone 12 / Core ML figures (see docs/deployment.md).", '',
             '| arch | input | batch | runtime | median ms | p90 ms | img/s | vs timm | '
             'rel. err vs eager |',
             '|---|---|---|---|---|---|---|---|---|']
    timm_ms = {(r['arch'], tuple(r['input_size']), r['batch_size']): r['median_ms']
               for r in result['results'] if r['runtime'] == 'timm' and r['status'] == 'ok'}
    for r in result['results']:
        size = f"{r['input_size'][0]}x{r['input_size'][1]}"
        key = (r['arch'], tuple(r['input_size']), r['batch_size'])
        if r['status'] != 'ok':
            lines.append(f"| {r['arch']} | {size} | {r['batch_size']} | {r['runtime']} | "
                         f"{r['status']} | | | | |")
            continue
        speedup = f"{timm_ms[key] / r['median_ms']:.2f}x" if key in timm_ms else 'n/a'
        extra = f" (setup {r['setup_s']:.0f} s)" if r['runtime'] == 'compile' else ''
        if r['runtime'] == 'fastest':
            extra = f" ({r.get('chosen', '?')}, setup {r['setup_s']:.0f} s)"
        lines.append(f"| {r['arch']} | {size} | {r['batch_size']} | {r['runtime']}{extra} | "
                     f"{r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['throughput_img_s']:.1f} | "
                     f"{speedup} | {r['rel_err_vs_eager']:.1e} |")
    paper = result.get('paper_iphone12_ms') or {}
    if paper:
        from .complexity import display_name
        lines += ['', "Papers' iPhone 12 latency (Core ML, iOS 16, all compute units; "
                      'classifier at 1x3x224x224; another device, for orientation only): '
                  + ', '.join(f'{display_name(a)} {ms} ms' for a, ms in paper.items()) + '.']
    return '\n'.join(lines) + '\n'


def save_results(result: dict, out_dir: str, stem: str) -> Tuple[str, str]:
    """Write ``<stem>.json`` and ``<stem>.md`` under ``out_dir``; returns both paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = osp.join(out_dir, stem + '.json'), osp.join(out_dir, stem + '.md')
    with open(json_path, 'w') as f:
        json.dump(result, f, indent=2)
        f.write('\n')
    with open(md_path, 'w') as f:
        f.write(to_markdown(result))
    return json_path, md_path


def load_results(path: str) -> dict:
    """Read a results JSON written by :func:`save_results` (or ``tools/coreml_latency.py``)."""
    with open(path) as f:
        result = json.load(f)
    if not isinstance(result, dict) or result.get('schema') != SCHEMA:
        raise ValueError(f'{path} is not an mmeff latency results file (schema {SCHEMA!r})')
    return result

