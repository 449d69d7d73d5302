"""The latency lookup table of latency-driven slimming (paper, section 4): per-piece latencies
measured on a named backend, stored as plain versioned JSON; a network's predicted latency is
the sum of its pieces.

Pieces of a :class:`~mmeff.slimming.space.SearchSpace` at an input size ``H x W`` (stage ``s``
in 0..3 runs at stride ``4 * 2**s``; the token grid of an MB3D block in stage 2 is
``H/16 x W/16``, in stage 3 ``H/32 x W/32``):

=========================  ===============================================================
``stem.w{w}``              the stem (two stride-2 convs) to stage-0 width ``w``
``down.s{s}.w{a}-{b}``     the downsample into stage ``s`` (1..3) from width ``a`` to ``b``
``mb4d.s{s}.w{w}``         one MB4D block of stage ``s`` at width ``w``
``mb3d.s{s}.w{w}``         one MB3D block (MHSA with its bias cached for the stage's grid)
``to3d.s{s}.w{w}``         the 4D -> 3D flatten and the 3D -> 4D reshape of a stage that holds
                           MB3D blocks (once per such stage)
``head.w{w}``              the classifier (final LayerNorm, token mean, two linear heads
                           averaged) on the last stage's width ``w``; in tables built with
                           ``with_head=True``
``call``                   the backend's cost of one call (a one-element ReLU): every piece's
                           time includes it, a network pays it once
=========================  ===============================================================

:func:`predict` is ``scale * (sum(count * median of piece) - (number of pieces - 1) * call)``,
where ``scale`` is the table's calibration (:func:`calibrate`; 1 for a table without one): the
median ratio of whole-network latency to that sum (its pieces timed again beside each network,
so that the machine's drift stays out) over :data:`CALIB_NETWORKS` random networks of the space,
which the accuracy check then leaves out. It corrects what a sum of separately
timed pieces misses as a whole: on ONNX Runtime on an Intel Xeon the sum came out 4-18 % above
every one of 20 networks, the same with the pieces re-timed beside each network (so not drift
but a cost of running pieces as separate session calls); with the scale all 20 were within
+-10 % (benchmarks/lut_accuracy_l7space_224.md). Where the sum is right it is close to 1.

Every piece is cut from a fused (:func:`mmeff.deploy.fuse_model`) EfficientFormer of depth 1
per stage that holds it, so it is exactly the module a network of the space runs, BN and layer
scales folded and the attention bias cached for its grid; whole networks
(:func:`measure_network`) are fused the same way. Timing is the benchmark's
(:func:`mmeff.runtime.time_interleaved`, :mod:`mmeff.runtime.timing`): repetitions are
interleaved across the pieces measured together, medians are stored.

Building is lazy and resumable: :func:`build_lut` measures only the pieces asked for (or
those of given archs) that a table given to it lacks, and with ``save_to`` saves the table
after every chunk of pieces. A table is one method: it is extended only on the machine, with
the runtime versions and with the settings (threads, warm-up, repetitions...) it was measured
with, and :func:`load` checks every entry. Every table names the device it was measured on
(:func:`device_of`: CPU model or GPU name, backend, threads); :func:`check_compatible` warns
when a table of another device is used here.

:func:`lut_accuracy` judges the table as nn-Meter judges its predictors: over held-out random
networks of the space (20 by default; the table is fitted on no whole network), the share
predicted within +-10 % and +-5 %, the mean and worst error, the RMSE, and the measurement
noise (every network timed twice in the same run). Each network is also timed interleaved
with its own pieces measured again, which tells the error of summing pieces from the
machine's load drift since the table was built. On this project's 2-core CPU (1 thread, 224x224, the
default space's 201 pieces measured in 30-35 s, 8 random networks): table vs network mean
4.6 % (worst +10.6 %) on onnxruntime, 6.8 % (worst +30 %, a load change) on torch-cpu; the
sum of pieces timed with the network 1.4 % (worst -2.4 %) and 2.5 % (worst -5.7 %).

Backends (:data:`BACKENDS`): every backend of the runtime registry (:mod:`mmeff.runtime`),
each piece run by the backend's runner (:meth:`mmeff.runtime.Backend.runner`): ``torch-cpu``,
``torch-cuda`` (synchronised inside the timing), ``torch.compile`` (every piece compiled),
``onnxruntime`` (every piece exported with the TorchScript exporter at its fixed input shape,
the quick way, and run by an ONNX Runtime CPU session whose threads stop spinning after each call,
:func:`mmeff.runtime.ort_session`), ``onnxruntime-int8`` (the same, quantised by
:func:`mmeff.deploy.quantize.quantize_onnx_file`, every piece and checked network wholly INT8:
``keep_fp32=[]``) and ``coreml`` (macOS only: coremltools
predictions on the chosen compute units; that code path has not run in this project's CI,
which has no Mac). A backend registered later is offered too.

Table (JSON, ``format`` ``'mmeff.slimming.lut'``, ``format_version`` 1)::

    {"format": "mmeff.slimming.lut", "format_version": 1, "backend": "onnxruntime",
     "input_size": [224, 224], "batch": 1, "threads": 2, "warmup": 5, "reps": 30,
     "with_head": true, "num_classes": 1000, "compute_units": null,
     "machine": {...},            # mmeff.benchmark.latency.machine_info()
     "device": "CPU Intel(R) Xeon(R) ..., onnxruntime, 2 threads",
     "versions": {"torch": ..., "onnxruntime": ..., "coremltools": ..., "mmeff": ...},
     "date": "2026-11-30T08:00:00",
     "space": {...}, "space_fingerprint": "...",       # SearchSpace.to_dict() / fingerprint()
     "entries": {"stem.w48": {"median_ms": 0.41, "p90_ms": 0.45, "min_ms": 0.39,
                              "reps": 30, "date": "..."}, ...},
     "calibration": {"scale": 0.897, "num_networks": 5, "seed": 1, "ratios": [...],
                     "archs": [...], ...},   # calibrate(): absent (scale 1) in older tables
     "accuracy": {"num_networks": 20, "within_10pct": 0.95, "within_5pct": 0.7, ...}}
                                  # with_accuracy(): the check's statistics, when checked
"""
import datetime
import json
import math
import os
import os.path as osp
import random
import re
import tempfile
import warnings
from collections import Counter
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from mmeff.runtime import (COMPUTE_UNITS, BackendUnavailableError, NameView, backend_names,
                           check_compute_units, get_backend, pinned_threads, summarize,
                           time_interleaved)
from .space import get_space

FORMAT = 'mmeff.slimming.lut'
FORMAT_VERSION = 1
# Every backend of the runtime registry (mmeff.runtime), read on each use: one registered later
# is offered too. COMPUTE_UNITS (Core ML) is the registry's as well.
BACKENDS = NameView(backend_names)
CHUNK = 32  # pieces built, timed (interleaved) and saved together
CALIB_NETWORKS = 5  # whole networks the scale of a table is fitted on (calibrate)
CALIB_SEED = 1  # their draw (held_out_archs); the accuracy check draws with seed 0 and skips them
# Metadata two tables must share to be merged or used together.
_SHARED_KEYS = ('backend', 'input_size', 'batch', 'threads', 'with_head', 'num_classes',
                'compute_units', 'space_fingerprint')
# How the pieces were measured (one value per table).
_SETTING_KEYS = ('warmup', 'reps', 'machine', 'versions')
_ENTRY_KEYS = ('median_ms', 'p90_ms', 'min_ms', 'reps')
_PIECE_RE = re.compile(r'^(?:stem\.w(\d+)|down\.s([123])\.w(\d+)-(\d+)|'
                       r'(mb4d|mb3d|to3d)\.s([0-3])\.w(\d+)|head\.w(\d+))$')


class LatencyTableError(ValueError):
    """A latency table that cannot be used: unreadable, another format, another backend, input
    size or search space, or a piece missing."""


class TableSettingsError(LatencyTableError):
    """A table extended with other measurement settings than it was measured with (threads,
    warm-up, repetitions...): mixing them would put numbers of two methods under one label.

    Attributes:
        differ (dict): ``setting -> (the table's value, the value asked)``.
    """

    def __init__(self, message: str, differ: Dict[str, tuple]):
        super().__init__(message)
        self.differ = differ


class LatencyTableDeviceWarning(UserWarning):
    """A latency table measured on another device (CPU model or GPU) than this machine's is
    used: its latencies, and budgets in its milliseconds, are that device's."""


# ----------------------------------------------------------------------------- pieces
def _grid(input_size: Sequence[int], stage: int) -> tuple:
    from mmeff.deploy import token_grid
    return token_grid(input_size[0], input_size[1], 2 + stage)


def _vit_per_stage(arch: dict) -> List[int]:
    """MB3D blocks per stage: ``num_vit`` at the end of the network, the last stage first."""
    depths, num_vit = arch['depths'], arch['num_vit']
    last = min(num_vit, depths[3])
    if num_vit - last > depths[2]:
        raise ValueError(f"arch num_vit={num_vit} exceeds depths[2] + depths[3] = "
                         f"{depths[2] + depths[3]}")
    return [0, 0, num_vit - last, last]


def arch_pieces(arch: dict, with_head: bool = True) -> Dict[str, int]:
    """``piece name -> count`` of a network (arch dict as :meth:`SearchSpace.to_arch` gives)."""
    depths, widths = arch['depths'], arch['widths']
    counts = Counter({f'stem.w{widths[0]}': 1})
    for s, vit in enumerate(_vit_per_stage(arch)):
        if s > 0:
            counts[f'down.s{s}.w{widths[s - 1]}-{widths[s]}'] += 1
        if depths[s] - vit:
            counts[f'mb4d.s{s}.w{widths[s]}'] += depths[s] - vit
        if vit:
            counts[f'mb3d.s{s}.w{widths[s]}'] += vit
            counts[f'to3d.s{s}.w{widths[s]}'] += 1
    if with_head:
        counts[f'head.w{widths[3]}'] += 1
    return dict(counts)


def space_pieces(space, with_head: bool = True) -> List[str]:
    """Every piece a network of ``space`` may use (the full table's keys)."""
    space = get_space(space)
    w = space.widths
    names = ['call'] + [f'stem.w{a}' for a in w[0]]
    names += [f'down.s{s}.w{a}-{b}' for s in (1, 2, 3) for a in w[s - 1] for b in w[s]]
    names += [f'mb4d.s{s}.w{a}' for s in range(4) for a in w[s]]
    names += [f'{kind}.s{s}.w{a}' for s in space.mb3d_stages for kind in ('mb3d', 'to3d')
              for a in w[s]]
    if with_head:
        names += [f'head.w{a}' for a in w[3]]
    return names


class _BlockPiece(nn.Module):
    """A block called with its fixed token grid (blocks take ``(x, hw_shape)``)."""

    def __init__(self, block: nn.Module, hw: tuple):
        super().__init__()
        self.block, self.hw = block, tuple(hw)

    def forward(self, x):
        return self.block(x, self.hw)


class _To3D(nn.Module):
    """The stage's 4D -> 3D flatten and, after the MB3D blocks, the 3D -> 4D reshape."""

    def forward(self, x):
        b, c, h, w = x.shape
        return x.flatten(2).transpose(1, 2).transpose(1, 2).reshape(b, c, h, w)


class _Head(nn.Module):
    """The classifier head as :class:`EfficientFormerInference` runs it (heads averaged)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x):
        a, b = self.head(x)
        return (a + b) / 2


def _fused_network(arch: dict, input_size, with_head: bool, num_classes: int) -> nn.Module:
    from mmeff.deploy import fuse_model
    from mmeff.models import EfficientFormer
    from mmeff.models.classifiers import EfficientFormerClassifier
    if with_head:
        model = EfficientFormerClassifier(backbone=dict(arch=arch),
                                          num_classes=num_classes).as_inference_module()
    else:
        model = EfficientFormer(arch, out_indices=(3,), out_norm_cfg=None)
    return fuse_model(model.eval(), tuple(input_size), inplace=True)


def build_piece(name: str, input_size: Sequence[int], mlp_ratios: Sequence[float] = (4,) * 4,
                batch: int = 1, num_classes: int = 1000):
    """``(module, example_input)`` of a piece, cut from a fused depth-1 EfficientFormer.

    Raises:
        LatencyTableError: ``name`` is not a piece name.
    """
    if name == 'call':
        return nn.ReLU(), torch.randn(1, generator=torch.Generator().manual_seed(0))
    m = _PIECE_RE.match(name)
    if not m:
        raise LatencyTableError(f'{name!r} is not a latency table piece name (stem.w<W>, '
                                f'down.s<S>.w<A>-<B>, mb4d|mb3d|to3d.s<S>.w<W>, head.w<W>)')
    h, w = int(input_size[0]), int(input_size[1])
    widths = [16, 16, 16, 16]  # the carrier's other stages: small, never measured
    num_vit, with_head = 0, False
    if m.group(1):
        stage, widths[0], kind = 0, int(m.group(1)), 'stem'
    elif m.group(2):
        stage, kind = int(m.group(2)), 'down'
        widths[stage - 1], widths[stage] = int(m.group(3)), int(m.group(4))
    elif m.group(5):
        kind, stage, widths[int(m.group(6))] = m.group(5), int(m.group(6)), int(m.group(7))
        if kind in ('mb3d', 'to3d') and stage not in (2, 3):
            raise LatencyTableError(f'{name!r}: MB3D blocks (and their reshape) exist in '
                                    f'stages 2 and 3 only')
        if kind == 'mb3d':  # the carrier's last stage is MB3D too when stage 2's block is
            num_vit = 1 if stage == 3 else 2
    else:
        stage, widths[3], kind, with_head = 3, int(m.group(8)), 'head', True
    arch = dict(depths=[1, 1, 1, 1], widths=widths, num_vit=num_vit,
                mlp_ratios=list(mlp_ratios))
    net = _fused_network(arch, (h, w), with_head, num_classes)
    backbone = net.backbone if with_head else net
    gh, gw = _grid((h, w), stage)
    if kind == 'stem':
        module, shape = backbone.stem, (batch, 3, h, w)
    elif kind == 'down':
        ph, pw = _grid((h, w), stage - 1)
        module, shape = backbone.stages[stage].downsample, (batch, widths[stage - 1], ph, pw)
    elif kind == 'mb4d':
        module = _BlockPiece(backbone.stages[stage].blocks[0], (gh, gw))
        shape = (batch, widths[stage], gh, gw)
    elif kind == 'mb3d':
        module = _BlockPiece(backbone.stages[stage].blocks[0], (gh, gw))
        shape = (batch, gh * gw, widths[stage])
    elif kind == 'to3d':
        module, shape = _To3D(), (batch, widths[stage], gh, gw)
    else:
        module, shape = _Head(net.head), (batch, widths[3], gh, gw)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    return module.eval(), x


# ----------------------------------------------------------------------------- backends
def check_backend(backend: str) -> None:
    """Refuse a backend the table cannot be measured on, before anything is measured.

    Raises:
        ValueError: ``backend`` is not a registered backend (they are named).
        BackendUnavailableError: it cannot run here (``coreml`` off macOS, ``torch-cuda``
            without a CUDA device...), with what to use instead.
    """
    if backend not in BACKENDS:
        raise ValueError(f'unknown latency backend {backend!r}; choose one of '
                         f'{", ".join(BACKENDS)}')
    get_backend(backend).check_available()


# The ONNX opset of the pieces (onnxruntime backends): format 1 tables were measured at 18, and a
# table is one method, so pieces stay at 18 (mmeff.runtime writes 20 by default: GELU as one op).
ONNX_OPSET = 18


def _runner(module: nn.Module, x: torch.Tensor, backend: str, threads: int, work_dir: str,
            tag: str, compute_units: str = 'ALL') -> Callable[[], object]:
    """A runner of ``module`` on ``x`` on ``backend`` (:meth:`mmeff.runtime.Backend.runner`;
    files go the quick way: a table measures hundreds of small pieces)."""
    # keep_fp32=[]: an INT8 table quantises every piece and every network it checks alike (the
    # INT8 export's default keeps a whole network's stem and first stage FP32; pieces have
    # no stem to find)
    return get_backend(backend).runner(module, x, threads=threads, work_dir=work_dir, tag=tag,
                                       compute_units=compute_units, quick_export=True,
                                       opset=ONNX_OPSET, keep_fp32=[])


def _time(names: Sequence[str], make: Callable[[str], tuple], backend: str, threads: int,
          warmup: int, reps: int, compute_units: str, chunk: Optional[int] = None,
          on_chunk: Optional[Callable[[Dict[str, dict]], None]] = None) -> Dict[str, dict]:
    """Median/p90/min ms of every name (``make(name) -> (module, x)``), interleaved in chunks
    built one at a time; ``on_chunk`` gets each chunk's results as they come."""
    names, out, chunk = list(names), {}, chunk or CHUNK
    # the caller's thread setting is restored afterwards; a runner's sync (CUDA) is in the timing
    with pinned_threads(threads), tempfile.TemporaryDirectory(prefix='mmeff_lut_') as work_dir:
        for i in range(0, len(names), chunk):
            fns = {n: _runner(*make(n), backend, threads, work_dir, f'p{i + j}', compute_units)
                   for j, n in enumerate(names[i:i + chunk])}
            times = time_interleaved(fns, warmup, reps)
            done = {}
            for n, t in times.items():
                s = summarize(t, 1)
                done[n] = dict(median_ms=s['median_ms'], p90_ms=s['p90_ms'],
                               min_ms=s['min_ms'], reps=s['reps'])
            out.update(done)
            if on_chunk is not None:
                on_chunk(done)
    return out


def _threads(threads: Optional[int]) -> int:
    return int(threads) if threads else torch.get_num_threads()


def _versions() -> dict:
    from importlib import metadata
    v = dict(torch=torch.__version__)
    for dist in ('onnxruntime', 'coremltools', 'mmeff'):  # without importing them (slow)
        try:
            v[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            v[dist] = None
    return v


# ----------------------------------------------------------------------------- device
def _hardware(backend: str) -> str:
    """This machine's processor that ``backend`` runs on: the GPU's name for ``torch-cuda``,
    else the CPU's model name."""
    if backend == 'torch-cuda':
        return torch.cuda.get_device_name() if torch.cuda.is_available() else 'none here'
    from mmeff.benchmark.latency import cpu_name
    return cpu_name()


def _table_hardware(table: dict) -> Optional[str]:
    machine = table.get('machine') or {}
    return machine.get('gpu') if table.get('backend') == 'torch-cuda' else machine.get('cpu')


def _device_label(hardware: Optional[str], backend: str, threads, compute_units=None) -> str:
    if backend == 'torch-cuda':
        return f'GPU {hardware}, torch-cuda'
    if backend == 'coreml':
        return f'{hardware}, coreml (compute units {compute_units or "ALL"})'
    return f"CPU {hardware}, {backend}, {threads} thread{'' if threads == 1 else 's'}"


def device_of(table: dict) -> str:
    """Where ``table`` was measured, in words: CPU model or GPU name, backend, threads (e.g.
    ``'CPU Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz, onnxruntime, 1 thread'``)."""
    return table.get('device') or _device_label(_table_hardware(table), table.get('backend'),
                                                table.get('threads'),
                                                table.get('compute_units'))


def other_device(table: dict) -> Optional[str]:
    """``None`` when this machine has the processor ``table`` was measured on, else a message
    naming both devices."""
    backend = table.get('backend')
    here = _hardware(backend)
    if _table_hardware(table) == here:
        return None
    return (f"the latency table was measured on {device_of(table)}, but this machine is "
            f"{_device_label(here, backend, table.get('threads'), table.get('compute_units'))}"
            f": its latencies and budgets are the other device's milliseconds (measure a "
            f"table here for this machine's)")


# ----------------------------------------------------------------------------- the table
def _parse_size(input_size) -> List[int]:
    from mmeff.deploy import parse_input_size
    return list(parse_input_size(input_size))


def build_lut(space,
              backend: str = 'torch-cpu',
              input_size=224,
              pieces: Optional[Iterable[str]] = None,
              archs: Optional[Iterable[dict]] = None,
              table: Optional[dict] = None,
              batch: int = 1,
              threads: Optional[int] = None,
              warmup: int = 5,
              reps: int = 30,
              with_head: bool = True,
              num_classes: int = 1000,
              compute_units: str = 'ALL',
              save_to: Optional[str] = None,
              log: Callable[[str], None] = print) -> dict:
    """Measure the pieces of ``space`` on ``backend`` and return the table (a new dict).

    Args:
        space (SearchSpace | dict | str): The search space.
        backend (str): One of ``BACKENDS``.
        input_size (int | tuple | str): Image size, e.g. ``224`` or ``(512, 512)``.
        pieces (Iterable[str] | None): Only these pieces.
        archs (Iterable[dict] | None): Only the pieces of these arch dicts (with ``pieces``:
            both). Neither: every piece of the space (:func:`space_pieces`).
        table (dict | None): A table to extend: only its missing pieces are measured. It must
            fit ``backend``, ``input_size`` and ``space`` (:func:`check_compatible`), have
            been measured on this machine's CPU (GPU) with these runtime versions, and with
            the settings given here (``batch``, ``threads``, ``warmup``, ``reps``,
            ``with_head``, ``num_classes``, ``compute_units``).
        batch (int): Batch size. Defaults to 1.
        threads (int | None): CPU threads of torch / ONNX Runtime; ``None``: the table's when
            extending one, else torch's.
        warmup, reps (int): Untimed and timed calls per piece.
        with_head (bool): Also the classifier head (``head.w*``) and count it in predictions.
        num_classes (int): Classes of the head. Defaults to 1000.
        compute_units (str): Core ML compute units (``coreml`` only), one of
            ``COMPUTE_UNITS``.
        save_to (str | None): Save the table there (:func:`save`) after every chunk of
            pieces measured, so that an interrupted build resumes from it
            (``build_lut(..., table=load(path), save_to=path)``).
        log (callable): Progress messages.

    Returns:
        dict: The table (see the module docstring).

    Raises:
        TableSettingsError: ``table`` was measured with other settings than asked (named).
        LatencyTableError: ``table`` is of another backend, input size, space, machine or
            runtime version.
    """
    space = get_space(space)
    check_backend(backend)
    check_compute_units(compute_units)
    size = _parse_size(input_size)
    if table is not None:
        check_extendable(table, backend, size, space, batch, threads, warmup, reps, with_head,
                         num_classes, compute_units)
        if threads is None:  # nothing asked: the table's, not whatever torch has here
            threads = table['threads']
    threads = _threads(threads)
    wanted = []
    if pieces is not None:
        wanted += list(pieces)
    for arch in archs or ():
        wanted += list(arch_pieces(arch, with_head))
    if pieces is None and archs is None:
        wanted = space_pieces(space, with_head)
    wanted = list(dict.fromkeys(['call'] + wanted))  # unique, in order
    have = table['entries'] if table is not None else {}
    todo = [n for n in wanted if n not in have]
    log(f'Latency table on {backend} at {size[0]}x{size[1]}: measuring {len(todo)} of '
        f'{len(wanted)} pieces ({threads} threads, {reps} reps)')
    from mmeff.benchmark.latency import machine_info
    now = datetime.datetime.now().isoformat(timespec='seconds')
    if table is not None:
        new = json.loads(json.dumps(table))
    else:
        new = dict(format=FORMAT, format_version=FORMAT_VERSION, backend=backend,
                   input_size=size, batch=batch, threads=threads, warmup=warmup, reps=reps,
                   with_head=with_head, num_classes=num_classes,
                   compute_units=compute_units if backend == 'coreml' else None,
                   machine=machine_info('cuda' if backend == 'torch-cuda' else 'cpu', threads),
                   versions=_versions(), date=now, space=space.to_dict(),
                   space_fingerprint=space.fingerprint(), entries={})
        new['device'] = device_of(new)

    def add(done: Dict[str, dict]) -> None:
        stamp = datetime.datetime.now().isoformat(timespec='seconds')
        for entry in done.values():
            entry['date'] = stamp
        new['entries'].update(done)
        log(f"  {len(new['entries'])} pieces in the table")
        if save_to is not None:
            save(new, save_to)

    if todo:
        new.pop('accuracy', None)  # a check of the table before these pieces
        _time(todo, lambda n: build_piece(n, size, space.mlp_ratios, batch, num_classes),
              backend, threads, warmup, reps, compute_units, on_chunk=add)
    elif save_to is not None:
        save(new, save_to)
    return new


def _fix(path: Optional[str], what: str, keep: str) -> str:
    """The end of a message about a table that cannot be used as asked."""
    if path:
        return f': delete {path} to measure a new table {what} in its place, or {keep}'
    return f': use (or measure) a table {what}'


def check_extendable(table: dict, backend: str, input_size, space, batch: int = 1,
                     threads: Optional[int] = None, warmup: int = 5, reps: int = 30,
                     with_head: bool = True, num_classes: int = 1000,
                     compute_units: str = 'ALL', path: Optional[str] = None,
                     keep: str = 'keep it and measure into another file') -> None:
    """Refuse to add pieces measured otherwise than the table's (another backend, size, space,
    machine, runtime version or measurement setting): one table, one method. Arguments as
    :func:`build_lut` (``threads=None``: the table's); ``path`` and ``keep`` as
    :func:`check_compatible`.

    Raises:
        TableSettingsError: a measurement setting differs (all that differ are named).
        LatencyTableError: anything else differs.
    """
    size = _parse_size(input_size)
    check_compatible(table, backend, size, space, path=path, warn=False, keep=keep)
    asked = dict(batch=batch, threads=_threads(table.get('threads') if threads is None
                                                 else threads),
                 warmup=warmup, reps=reps, with_head=with_head, num_classes=num_classes,
                 compute_units=compute_units if backend == 'coreml' else None)
    where = f' ({path})' if path else ''
    here = _hardware(backend)
    if _table_hardware(table) != here:
        raise LatencyTableError(
            f'the latency table{where} to extend was measured on {device_of(table)}, this '
            f"machine is {_device_label(here, backend, asked['threads'], asked['compute_units'])}"
            f' (pieces of two devices cannot share a table)'
            + _fix(path, 'on this machine', keep))
    versions, had = _versions(), table.get('versions') or {}
    for key in ('torch', 'onnxruntime', 'coremltools'):
        if had.get(key) != versions.get(key):
            raise LatencyTableError(
                f'the latency table{where} to extend was measured with {key} {had.get(key)}, '
                f'this environment has {key} {versions.get(key)}'
                + _fix(path, f'with {key} {versions.get(key)}', keep))
    differ = {k: (table.get(k), v) for k, v in asked.items() if table.get(k) != v}
    if differ:
        raise TableSettingsError(
            f'the latency table{where} to extend was measured with '
            + ', '.join(f'{k}={t!r}' for k, (t, _) in differ.items()) + ', not '
            + ', '.join(f'{k}={a!r}' for k, (_, a) in differ.items())
            + ': extend it with its own settings (they are not mixed in one table)'
            + (_fix(path, 'with the new ones', keep) if path else
               ', or measure a new table with the new ones'), differ)


def predict(table: dict, arch: dict) -> float:
    """Predicted latency (ms) of ``arch``: the sum of its pieces' medians, less the call cost
    every piece but one paid (``call``, see the module docstring).

    Raises:
        LatencyTableError: a piece of ``arch`` is not in the table (named, with how to add it).
    """
    ratios = (table.get('space') or {}).get('mlp_ratios')
    asked = arch.get('mlp_ratios', ratios)
    asked = [asked] * 4 if isinstance(asked, (int, float)) else asked
    if ratios is not None and [float(r) for r in asked] != [float(r) for r in ratios]:
        raise LatencyTableError(f'the latency table was measured with mlp_ratios {ratios}, the '
                                f"arch has {arch['mlp_ratios']}")
    total, n = 0., 0
    for name, count in list(arch_pieces(arch, table['with_head']).items()) + [('call', 0)]:
        entry = table['entries'].get(name)
        if entry is None:
            raise LatencyTableError(
                f'the latency table has no piece {name!r} (needed by arch {arch}); measure it '
                f'with build_lut(..., table=table, archs=[arch])')
        total += count * entry['median_ms']
        n += count
    return _scale(table) * (total - (n - 1) * table['entries']['call']['median_ms'])


def _calibration(table: dict) -> dict:
    """The table's ``calibration`` (:func:`calibrate`), ``{}`` when it has none."""
    return table.get('calibration') or {}


def _scale(table: dict) -> float:
    return _calibration(table).get('scale', 1.)


def calibrate(table: dict, space, n: int = CALIB_NETWORKS, seed: int = CALIB_SEED,
              warmup: Optional[int] = None, reps: Optional[int] = None,
              log: Callable[[str], None] = print) -> dict:
    """A copy of ``table`` with its ``calibration``: ``n`` random networks of ``space``
    (:func:`held_out_archs` with ``seed``), each timed whole *interleaved with its own pieces*
    (as :func:`lut_accuracy` does with ``same_run``), and ``scale`` the median over them of
    measured / sum of the pieces timed beside it, which :func:`predict` applies. Timing the
    pieces again beside each network keeps the machine's speed of the moment out of the
    scale (on a shared VM it moves 5-10 % within minutes): what is left is what summing
    separately timed pieces misses. The networks are stored (``archs``) and
    :func:`lut_accuracy` leaves them out of its held-out set, so the check stays a check on
    networks the table was not fitted on.

    Raises:
        LatencyTableError: a piece of a calibration network is missing, or the table was
            measured on another device than this machine's.
    """
    space = get_space(space)
    elsewhere = other_device(table)
    if elsewhere:
        raise LatencyTableError(f'cannot calibrate a table on this machine: {elsewhere}')
    archs = held_out_archs(space, n, seed)
    reps = table['reps'] if reps is None else reps
    log(f'Calibrating the table on {len(archs)} whole networks, each timed beside its pieces '
        f'({reps} reps)')
    # lut_accuracy checks every piece of every network before it times anything
    check = lut_accuracy(dict(table, calibration=None), space, archs=archs, warmup=warmup,
                         reps=reps, same_run=True)
    ratios = [r['measured_ms'] / r['predicted_same_run_ms'] for r in check['networks']]
    drift = [r['piece_drift'] for r in check['networks']]
    calibration = dict(scale=round(float(np.median(ratios)), 4), num_networks=len(archs),
                       seed=seed, reps=reps, ratios=[round(r, 4) for r in ratios],
                       piece_drift=drift, archs=archs,
                       date=datetime.datetime.now().isoformat(timespec='seconds'))
    out = json.loads(json.dumps(table))
    out.pop('accuracy', None)  # a check of the predictions before this scale
    out['calibration'] = calibration
    return out


def _calibration_problem(calibration) -> Optional[str]:
    if not isinstance(calibration, dict):
        return f'calibration {calibration!r}, not a dict'
    scale = calibration.get('scale')
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
            or not math.isfinite(scale) or scale <= 0:
        return f'calibration scale {scale!r} (a finite number > 0)'
    if not isinstance(calibration.get('archs'), list):
        return 'calibration without the list of its networks (archs)'
    return None


def check_compatible(table: dict, backend: str, input_size, space,
                     path: Optional[str] = None, warn: bool = True,
                     keep: str = 'keep it and use a table in another file') -> None:
    """Raise :class:`LatencyTableError` if ``table`` was made for another backend, input size
    or search space than asked; warn (:class:`LatencyTableDeviceWarning`, naming both
    devices) if it was measured on another device than this machine's.

    Args:
        path (str | None): The table's file, named in the messages with the fix (delete it to
            measure a new one in its place).
        warn (bool): Whether to warn about another device.
        keep (str): The other fix, keeping the file (a tool names its option).
    """
    size = _parse_size(input_size)
    space = get_space(space)
    where = f' ({path})' if path else ''
    if table.get('backend') != backend:
        raise LatencyTableError(f"the latency table{where} was measured on backend "
                                f"{table.get('backend')!r}, not {backend!r}"
                                + _fix(path, f'on {backend!r}', keep))
    if list(table.get('input_size', [])) != size:
        raise LatencyTableError(f"the latency table{where} was measured at input size "
                                f"{table.get('input_size')}, not {size}"
                                + _fix(path, f'at {size[0]}x{size[1]}', keep))
    if table.get('space_fingerprint') != space.fingerprint():
        other = (table.get('space') or {}).get('name')
        raise LatencyTableError(f'the latency table{where} was built for search space '
                                f'{other!r} ({table.get("space_fingerprint")}), not '
                                f'{space.name!r} ({space.fingerprint()})'
                                + _fix(path, f'for search space {space.name!r}', keep))
    message = other_device(table) if warn else None
    if message:
        warnings.warn(message + (f' [{path}]' if path else ''), LatencyTableDeviceWarning,
                      stacklevel=2)


def save(table: dict, path: str) -> str:
    """Write ``table`` as JSON atomically (temporary file, fsync, rename: an interrupted save
    never leaves a truncated table; a full disk is reported as such); returns ``path``."""
    from mmeff.engine.checkpointing import write_file_atomic
    path = osp.abspath(osp.expanduser(str(path)))
    os.makedirs(osp.dirname(path), exist_ok=True)
    text = json.dumps(table, indent=1) + '\n'

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(text)

    write_file_atomic(path, write)
    return path


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _entry_problem(name: str, entry) -> Optional[str]:
    """What is wrong with one entry of a table, or ``None``."""
    if name != 'call' and not _PIECE_RE.match(name):
        return f'{name!r} is not a piece name'
    if not isinstance(entry, dict):
        return f'piece {name!r} is {entry!r}, not a dict of timings'
    missing = [k for k in _ENTRY_KEYS if k not in entry]
    if missing:
        return f'piece {name!r} has no {", ".join(missing)}'
    for key in _ENTRY_KEYS[:-1]:
        value = entry[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            return f'piece {name!r} has {key} {value!r} (a latency is a finite number >= 0)'
    if not _positive_int(entry['reps']):
        return f"piece {name!r} has reps {entry['reps']!r}"
    return None


def load(path: str) -> dict:
    """Read a table written by :func:`save`, checking every setting and every entry.

    Raises:
        LatencyTableError: the file is corrupt or truncated, not a latency table, of another
            format version, lacks a setting, or holds an entry that is not a measurement
            (missing keys, a NaN, infinite or negative time, a piece timed with other
            repetitions than the table's). Each names the file, the problem and the fix.
    """
    fix = f'delete {path} (it cannot be used) to measure a new table in its place'
    try:
        with open(path) as f:
            table = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LatencyTableError(f'{path} is not a readable latency table (corrupt or '
                                f'truncated JSON: {exc}): {fix}') from None
    if not isinstance(table, dict) or table.get('format') != FORMAT:
        raise LatencyTableError(f'{path} is not an mmeff latency table (format {FORMAT!r}): '
                                f'give the path of one, or {fix}')
    if table.get('format_version') != FORMAT_VERSION:
        raise LatencyTableError(f"{path} has latency table format version "
                                f"{table.get('format_version')!r}; this mmeff reads version "
                                f"{FORMAT_VERSION}: {fix}")
    missing = [k for k in _SHARED_KEYS + _SETTING_KEYS + ('entries',) if k not in table]
    if missing:
        raise LatencyTableError(f'{path} is an incomplete latency table (no '
                                f'{", ".join(missing)}): {fix}')
    size = table['input_size']
    problem = None
    if not (isinstance(size, list) and len(size) == 2 and all(map(_positive_int, size))):
        problem = f'input_size {size!r}'
    elif not isinstance(table['entries'], dict):
        problem = f"entries {type(table['entries']).__name__}, not a dict"
    elif not isinstance(table['machine'], dict) or not isinstance(table['versions'], dict):
        problem = 'machine or versions not a dict'
    else:
        for key in ('batch', 'threads', 'reps'):
            if not _positive_int(table[key]):
                problem = f'{key} {table[key]!r}'
                break
    if problem is None:
        for name, entry in table['entries'].items():
            problem = _entry_problem(name, entry)
            if problem is None and entry['reps'] != table['reps']:
                problem = (f"piece {name!r} timed with {entry['reps']} repetitions, the table's "
                           f"label says {table['reps']} (settings mixed)")
            if problem:
                break
    if problem is None and table.get('calibration') is not None:
        problem = _calibration_problem(table['calibration'])
    if problem:
        raise LatencyTableError(f'{path} is not a valid latency table ({problem}): {fix}')
    return table


def merge(a: dict, b: dict) -> dict:
    """One table with the pieces of both (``a``'s value where both have a piece).

    Raises:
        LatencyTableError: the tables differ in a setting that makes their numbers
            incomparable (backend, input size, batch, threads, head, space, CPU/GPU or
            runtime versions), named in the message.
    """
    for key in _SHARED_KEYS:
        if a.get(key) != b.get(key):
            raise LatencyTableError(f'cannot merge latency tables with different {key}: '
                                    f'{a.get(key)!r} vs {b.get(key)!r}')
    for key in ('cpu', 'logical_cores', 'gpu'):
        if a['machine'].get(key) != b['machine'].get(key):
            raise LatencyTableError(f'cannot merge latency tables from different machines '
                                    f'(machine {key}: {a["machine"].get(key)!r} vs '
                                    f'{b["machine"].get(key)!r})')
    for key in ('torch', 'onnxruntime', 'coremltools'):
        if a['versions'].get(key) != b['versions'].get(key):
            raise LatencyTableError(f'cannot merge latency tables measured with different '
                                    f'{key} versions: {a["versions"].get(key)!r} vs '
                                    f'{b["versions"].get(key)!r}')
    merged = json.loads(json.dumps(a))
    merged.pop('accuracy', None)  # a's check, not the merged table's
    for name, entry in b['entries'].items():
        merged['entries'].setdefault(name, entry)
    return merged


_ACCURACY_KEYS = ('num_networks', 'within_10pct', 'within_5pct', 'mean_abs_rel_err',
                  'worst_rel_err', 'rmse_ms', 'rmse_rel', 'noise_mean_abs_rel',
                  'noise_worst_rel', 'noise_within_10pct', 'mean_abs_rel_err_same_run',
                  'worst_rel_err_same_run', 'seed', 'reps', 'calibration_scale')


def with_accuracy(table: dict, check: dict, file: Optional[str] = None) -> dict:
    """A copy of ``table`` holding the statistics of its accuracy check (``accuracy``: those
    of :func:`lut_accuracy`'s result, without the per-network rows, with the date and the
    ``file`` the rows were saved to), so that the table says how well it predicts. Building
    more pieces into the table or merging it drops them.

    Raises:
        LatencyTableError: ``check`` is incomplete or was measured with another table's
            settings.
    """
    if not check.get('complete') or check.get('device') != device_of(table) \
            or check.get('backend') != table['backend'] \
            or list(check.get('input_size', [])) != list(table['input_size']):
        raise LatencyTableError(f"the accuracy check (complete: {check.get('complete')}, "
                                f"{check.get('device')}, {check.get('backend')}, input size "
                                f"{check.get('input_size')}) is not a finished check of this "
                                f"table ({device_of(table)}, input size {table['input_size']})")
    summary = {k: check[k] for k in _ACCURACY_KEYS if k in check}
    summary['date'] = datetime.datetime.now().isoformat(timespec='seconds')
    if file is not None:
        summary['file'] = file
    return dict(json.loads(json.dumps(table)), accuracy=summary)


# ----------------------------------------------------------------------------- accuracy
def measure_networks(archs: Sequence[dict], backend: str = 'torch-cpu', input_size=224,
                     batch: int = 1, threads: Optional[int] = None, warmup: int = 5,
                     reps: int = 30, with_head: bool = True, num_classes: int = 1000,
                     compute_units: str = 'ALL') -> List[dict]:
    """Measured latency of whole fused networks, timed interleaved as pieces are.

    Args:
        archs (Sequence[dict]): Arch dicts (:meth:`SearchSpace.to_arch`).
        backend, input_size, batch, threads, warmup, reps, with_head, num_classes,
        compute_units: As :func:`build_lut` (give a table's values to compare with it).

    Returns:
        list[dict]: Per arch ``median_ms``, ``p90_ms``, ``min_ms``, ``reps``.
    """
    check_backend(backend)
    size = _parse_size(input_size)
    threads = _threads(threads)
    archs = list(archs)

    def make(name: str) -> tuple:
        x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
        return _fused_network(archs[int(name[3:])], size, with_head, num_classes), x

    times = _time([f'net{i}' for i in range(len(archs))], make, backend, threads, warmup, reps,
                  compute_units)
    return [times[f'net{i}'] for i in range(len(archs))]


def measure_network(arch: dict, backend: str = 'torch-cpu', input_size=224, **kwargs) -> float:
    """Measured median latency (ms) of the whole fused network ``arch`` on ``backend``
    (other arguments as :func:`measure_networks`)."""
    return measure_networks([arch], backend, input_size, **kwargs)[0]['median_ms']


def held_out_archs(space, n: int = 20, seed: int = 0,
                   exclude: Iterable[dict] = ()) -> List[dict]:
    """``n`` distinct random networks of ``space`` (:meth:`SearchSpace.random_choices`, seeded),
    none of ``exclude`` (e.g. a table's calibration networks, the only whole networks a table
    is fitted on). Distinct, so that no network counts twice; fewer than ``n`` only when the
    space has fewer networks.
    """
    space = get_space(space)
    skip = {json.dumps(a, sort_keys=True) for a in exclude}
    rng, found = random.Random(seed), {}
    for _ in range(100 * n):
        if len(found) == n:
            break
        arch = space.to_arch(space.random_choices(rng))
        key = json.dumps(arch, sort_keys=True)
        if key not in skip:
            found.setdefault(key, arch)
    return list(found.values())


def prediction_stats(predicted: Sequence[float], measured: Sequence[float],
                     measured_again: Optional[Sequence[float]] = None) -> dict:
    """How well predicted latencies match measured ones, as nn-Meter reports it.

    With ``rel = (predicted - measured) / measured`` per network: ``within_10pct`` and
    ``within_5pct`` (share of networks with ``|rel|`` at most 10 % / 5 %, a 1e-9 tolerance
    for the rounding of the division), ``mean_abs_rel_err``, ``worst_rel_err`` (the largest in
    magnitude, signed), ``rmse_ms`` (root mean square of ``predicted - measured``) and
    ``rmse_rel`` (of ``rel``). With ``measured_again`` (the same networks timed a second time)
    the measurement noise ``(again - measured) / measured``: ``noise_mean_abs_rel``,
    ``noise_worst_rel``, and ``noise_within_10pct``, the share a perfect predictor would
    reach against this noise.

    Raises:
        ValueError: no networks, lengths differ, or a measured latency is not a positive
            finite number.
    """
    p, m = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    if p.shape != m.shape or p.ndim != 1 or not len(p):
        raise ValueError(f'need as many predicted as measured latencies (one or more), got '
                         f'{p.shape} and {m.shape}')
    if not (np.isfinite(m).all() and (m > 0).all() and np.isfinite(p).all()):
        raise ValueError(f'latencies must be finite and measured ones > 0, got predicted '
                         f'{p.tolist()}, measured {m.tolist()}')
    rel = (p - m) / m

    def share(errs, bound):
        return round(float(np.mean(np.abs(errs) <= bound + 1e-9)), 4)

    out = dict(num_networks=len(m), within_10pct=share(rel, 0.10), within_5pct=share(rel, 0.05),
               mean_abs_rel_err=round(float(np.abs(rel).mean()), 4),
               worst_rel_err=round(float(rel[np.argmax(np.abs(rel))]), 4),
               rmse_ms=round(float(np.sqrt(np.mean((p - m) ** 2))), 4),
               rmse_rel=round(float(np.sqrt(np.mean(rel ** 2))), 4))
    if measured_again is not None:
        a = np.asarray(measured_again, np.float64)
        if a.shape != m.shape or not np.isfinite(a).all():
            raise ValueError(f'measured_again must be {len(m)} finite latencies, got '
                             f'{a.tolist()}')
        noise = (a - m) / m
        out.update(noise_mean_abs_rel=round(float(np.abs(noise).mean()), 4),
                   noise_worst_rel=round(float(noise[np.argmax(np.abs(noise))]), 4),
                   noise_within_10pct=share(noise, 0.10))
    return out


def _accuracy_row(table: dict, arch: dict, measured: float, again: float,
                  pieces_ms: Optional[Dict[str, float]]) -> dict:
    summed = predict(dict(table, calibration=None), arch)
    pred = _scale(table) * summed
    row = dict(arch=arch, predicted_ms=round(pred, 4), summed_ms=round(summed, 4),
               measured_ms=measured,
               measured_again_ms=again, rel_err=round((pred - measured) / measured, 4),
               noise_rel=round((again - measured) / measured, 4))
    if pieces_ms is not None:
        entries = {k: dict(median_ms=v) for k, v in pieces_ms.items()}
        now = predict(dict(table, entries=entries), arch)
        drift = np.median([v / table['entries'][k]['median_ms'] for k, v in pieces_ms.items()])
        row.update(pieces_ms=pieces_ms, predicted_same_run_ms=round(now, 4),
                   rel_err_same_run=round((now - measured) / measured, 4),
                   piece_drift=round(float(drift), 3))
    return row


def lut_accuracy(table: dict, space, n: int = 20, seed: int = 0, warmup: Optional[int] = None,
                 reps: Optional[int] = None, archs: Optional[Sequence[dict]] = None,
                 same_run: bool = True, resume: Optional[dict] = None,
                 on_network: Optional[Callable[[dict], None]] = None) -> dict:
    """Predicted vs measured latency of ``n`` held-out random networks of ``space``
    (:func:`held_out_archs`; or of ``archs``), measured on the table's backend, input size,
    batch and threads, with the statistics of :func:`prediction_stats`.

    Every network is timed twice in the same interleaved run (two runners of the same fused
    network): the difference of the two medians is the measurement noise, the floor of what
    any predictor can reach at these repetitions.

    A table measured at one time and networks measured at another also differ by whatever
    changed on the machine in between (on a shared CPU, the load). With ``same_run`` every
    network is timed interleaved with its own pieces, measured again, which separates the
    two: ``rel_err_same_run`` is the error of summing pieces alone, ``piece_drift`` how much
    slower (> 1) or faster the pieces ran now than when the table was built.

    Args:
        resume (dict | None): An earlier (e.g. interrupted) result of this function: the
            networks it measured with the same settings are not measured again.
        on_network (callable | None): Gets the result so far (``complete`` False) after every
            network measured, e.g. to save it.

    Returns:
        dict: ``networks`` (``arch``, ``predicted_ms``, ``measured_ms``,
        ``measured_again_ms``, ``rel_err`` = ``(predicted - measured) / measured``,
        ``noise_rel``; with ``same_run`` also ``pieces_ms``, ``predicted_same_run_ms``,
        ``rel_err_same_run`` and ``piece_drift`` (median ratio of the pieces' times now to
        the table's)), the statistics of :func:`prediction_stats` (with the noise), with
        ``same_run`` ``mean_abs_rel_err_same_run`` and ``worst_rel_err_same_run``, and
        ``device``, ``backend``, ``input_size``, ``reps``, ``seed``, ``settings``,
        ``complete``.

    Raises:
        LatencyTableError: a piece is missing from the table, or the table was measured on
            another device than this machine's (both named).
    """
    space = get_space(space)
    fitted = _calibration(table).get('archs', ())
    archs = held_out_archs(space, n, seed, exclude=fitted) if archs is None else list(archs)
    for arch in archs:  # a missing piece fails before measuring
        predict(table, arch)
    size, batch, classes = table['input_size'], table['batch'], table['num_classes']
    warmup = table['warmup'] if warmup is None else warmup
    reps = table['reps'] if reps is None else reps
    units = table.get('compute_units') or 'ALL'
    check_backend(table['backend'])
    elsewhere = other_device(table)
    if elsewhere:
        raise LatencyTableError(f'cannot check a table against this machine: {elsewhere}')
    settings = dict(device=device_of(table), backend=table['backend'], input_size=size,
                    batch=batch, threads=table['threads'], warmup=warmup, reps=reps,
                    with_head=table['with_head'], num_classes=classes, compute_units=units,
                    same_run=same_run)
    before = {}
    if resume and resume.get('settings') == settings:
        before = {json.dumps(r['arch'], sort_keys=True): r for r in resume.get('networks', [])}
    rows, pieces_built = [], {}  # a piece recurs in many networks: built once

    def result(complete: bool) -> dict:
        out = dict(device=settings['device'], backend=table['backend'], input_size=size,
                   reps=reps, seed=seed, settings=settings, complete=complete, networks=rows,
                   calibration_scale=_calibration(table).get('scale'))
        if rows:
            out.update(prediction_stats([r['predicted_ms'] for r in rows],
                                        [r['measured_ms'] for r in rows],
                                        [r['measured_again_ms'] for r in rows]))
            if same_run:
                errs = np.array([r['rel_err_same_run'] for r in rows])
                out.update(mean_abs_rel_err_same_run=round(float(np.abs(errs).mean()), 4),
                           worst_rel_err_same_run=float(errs[np.argmax(np.abs(errs))]))
        return out

    for arch in archs:
        old = before.get(json.dumps(arch, sort_keys=True))
        if old is not None and (not same_run or old.get('pieces_ms') is not None):
            rows.append(_accuracy_row(table, arch, old['measured_ms'],
                                      old['measured_again_ms'], old.get('pieces_ms')))
            continue
        pieces = (['call'] + list(arch_pieces(arch, table['with_head']))) if same_run else []
        built = {}

        def make(name: str, arch=arch, built=built) -> tuple:
            if name in ('NET', 'NET.again'):
                if not built:
                    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
                    built['net'] = (_fused_network(arch, size, table['with_head'], classes), x)
                return built['net']
            if name not in pieces_built:
                pieces_built[name] = build_piece(name, size, space.mlp_ratios, batch, classes)
            return pieces_built[name]

        # the second timing half-way through the pieces: run straight after the first, the
        # same network would find its weights in the caches and always look faster
        half = len(pieces) // 2
        names = ['NET'] + pieces[:half] + ['NET.again'] + pieces[half:]
        times = _time(names, make, table['backend'], table['threads'], warmup, reps, units,
                      chunk=len(names))
        measured, again = times.pop('NET')['median_ms'], times.pop('NET.again')['median_ms']
        rows.append(_accuracy_row(table, arch, measured, again,
                                  {k: v['median_ms'] for k, v in times.items()}
                                  if same_run else None))
        if on_network is not None:
            on_network(result(False))
    return result(True)


__all__ = ['BACKENDS', 'COMPUTE_UNITS', 'check_backend', 'FORMAT', 'FORMAT_VERSION',
           'LatencyTableError',
           'BackendUnavailableError', 'arch_pieces', 'space_pieces', 'build_piece',
           'build_lut', 'predict', 'check_compatible', 'save', 'load', 'merge',
           'measure_network', 'measure_networks', 'lut_accuracy', 'held_out_archs',
           'prediction_stats', 'with_accuracy', 'check_extendable', 'device_of',
           'other_device', 'TableSettingsError', 'LatencyTableDeviceWarning', 'calibrate',
           'CALIB_NETWORKS']
