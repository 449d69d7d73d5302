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

:func:`predict` is ``sum(count * median of piece) - (number of pieces - 1) * call``.

Every piece is cut from a fused (:func:`mmeff.deploy.fuse_model`) EfficientFormer of depth 1
per stage that holds it, so it is exactly the module a network of the space runs, BN and layer
scales folded and the attention bias cached for its grid; whole networks
(:func:`measure_network`) are fused the same way. Timing is
:func:`mmeff.benchmark.latency.time_interleaved` (the benchmark's function): repetitions are
interleaved across the pieces measured together, medians are stored.

Building is lazy and resumable: :func:`build_lut` measures only the pieces asked for (or
those of given archs) that a table given to it lacks, and with ``save_to`` saves the table
after every chunk of pieces. :func:`lut_accuracy` measures whole networks of the space on the
same backend and reports predicted vs measured latency; each network is timed interleaved with
its own pieces measured again, which tells the error of summing pieces from the machine's
load drift since the table was built. On this project's 2-core CPU (1 thread, 224x224, the
default space's 201 pieces measured in 30-35 s, 8 random networks): table vs network mean
4.6 % (worst +10.6 %) on onnxruntime, 6.8 % (worst +30 %, a load change) on torch-cpu; the
sum of pieces timed with the network 1.4 % (worst -2.4 %) and 2.5 % (worst -5.7 %).

Backends: ``torch-cpu``, ``torch-cuda`` (synchronised inside the timing), ``onnxruntime``
(every piece exported with TorchScript's ``torch.onnx.export`` at its fixed input shape and
run by an ONNX Runtime CPU session whose threads do not spin,
:func:`mmeff.benchmark.latency.ort_session`) and ``coreml`` (macOS only: coremltools
predictions on the chosen compute units; that code path has not run in this project's CI,
which has no Mac).

Table (JSON, ``format`` ``'mmeff.slimming.lut'``, ``format_version`` 1)::

    {"format": "mmeff.slimming.lut", "format_version": 1, "backend": "onnxruntime",
     "input_size": [224, 224], "batch": 1, "threads": 2, "warmup": 5, "reps": 30,
     "with_head": true, "num_classes": 1000, "compute_units": null,
     "machine": {...},            # mmeff.benchmark.latency.machine_info()
     "versions": {"torch": ..., "onnxruntime": ..., "coremltools": ..., "mmeff": ...},
     "date": "2026-11-30T08:00:00",
     "space": {...}, "space_fingerprint": "...",       # SearchSpace.to_dict() / fingerprint()
     "entries": {"stem.w48": {"median_ms": 0.41, "p90_ms": 0.45, "min_ms": 0.39,
                              "reps": 30, "date": "..."}, ...}}
"""
import datetime
import json
import os
import os.path as osp
import platform
import random
import re
import tempfile
import warnings
from collections import Counter
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .space import get_space

FORMAT = 'mmeff.slimming.lut'
FORMAT_VERSION = 1
BACKENDS = ('torch-cpu', 'torch-cuda', 'onnxruntime', 'coreml')
COMPUTE_UNITS = ('ALL', 'CPU_ONLY', 'CPU_AND_GPU', 'CPU_AND_NE')
CHUNK = 32  # pieces built, timed (interleaved) and saved together
# Metadata two tables must share to be merged or used together.
_SHARED_KEYS = ('backend', 'input_size', 'batch', 'threads', 'with_head', 'num_classes',
                'compute_units', 'space_fingerprint')
_PIECE_RE = re.compile(r'^(?:stem\.w(\d+)|down\.s([123])\.w(\d+)-(\d+)|'
                       r'(mb4d|mb3d|to3d)\.s([0-3])\.w(\d+)|head\.w(\d+))$')


class LatencyTableError(ValueError):
    """A latency table that cannot be used: unreadable, another format, another backend, input
    size or search space, or a piece missing."""


class BackendUnavailableError(RuntimeError):
    """The backend asked for cannot run on this machine (``coreml`` off macOS, ``torch-cuda``
    without a CUDA device)."""


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
def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f'unknown latency backend {backend!r}; choose one of '
                         f'{", ".join(BACKENDS)}')
    if backend == 'torch-cuda' and not torch.cuda.is_available():
        raise BackendUnavailableError(
            "backend 'torch-cuda' needs a CUDA device, but no CUDA device is available here "
            "(torch.cuda.is_available() is False); use 'torch-cpu' or 'onnxruntime', or run "
            "on a GPU machine")
    if backend == 'coreml' and platform.system() != 'Darwin':
        raise BackendUnavailableError(
            f"backend 'coreml' runs Core ML predictions, which need macOS (this is "
            f"{platform.system()}); build the table on a Mac, or use 'onnxruntime' / "
            f"'torch-cpu' here")


def _runner(module: nn.Module, x: torch.Tensor, backend: str, threads: int, work_dir: str,
            tag: str, compute_units: str = 'ALL') -> Callable[[], object]:
    """A zero-argument callable running ``module`` on ``x`` on ``backend``."""
    if backend in ('torch-cpu', 'torch-cuda'):
        device = 'cuda' if backend == 'torch-cuda' else 'cpu'
        module, x = module.to(device), x.to(device)

        def run():
            with torch.inference_mode():
                return module(x)
        return run
    if backend == 'onnxruntime':
        from mmeff.benchmark.latency import ort_session
        path = osp.join(work_dir, f'{tag}.onnx')
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter('ignore')
            # TorchScript exporter: ~0.4 s a piece where the dynamo exporter takes ~5 s.
            torch.onnx.export(module.cpu(), (x.cpu(),), path, dynamo=False, input_names=['x'],
                              opset_version=18)
        sess = ort_session(path, threads)
        feed = {'x': x.cpu().numpy()}
        return lambda: sess.run(None, feed)
    # coreml (macOS only, checked by _check_backend); not run in this project's CI.
    from mmeff.deploy.export import require
    ct = require('coremltools')
    with torch.no_grad():
        traced = torch.jit.trace(module.cpu(), x.cpu())
    mlmodel = ct.convert(traced, inputs=[ct.TensorType(name='x', shape=tuple(x.shape))],
                         convert_to='mlprogram', compute_units=getattr(ct.ComputeUnit,
                                                                       compute_units))
    feed = {'x': x.cpu().numpy()}
    return lambda: mlmodel.predict(feed)


def _time(names: Sequence[str], make: Callable[[str], tuple], backend: str, threads: int,
          warmup: int, reps: int, compute_units: str, chunk: Optional[int] = None,
          on_chunk: Optional[Callable[[Dict[str, dict]], None]] = None) -> Dict[str, dict]:
    """Median/p90/min ms of every name (``make(name) -> (module, x)``), interleaved in chunks
    built one at a time; ``on_chunk`` gets each chunk's results as they come."""
    from mmeff.benchmark.latency import summarize, time_interleaved
    sync = torch.cuda.synchronize if backend == 'torch-cuda' else None
    names, out, chunk = list(names), {}, chunk or CHUNK
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # restored below: the caller's setting is theirs
    try:
        with tempfile.TemporaryDirectory(prefix='mmeff_lut_') as work_dir:
            for i in range(0, len(names), chunk):
                fns = {n: _runner(*make(n), backend, threads, work_dir, f'p{i + j}',
                                  compute_units)
                       for j, n in enumerate(names[i:i + chunk])}
                times = time_interleaved(fns, warmup, reps, sync)
                done = {}
                for n, t in times.items():
                    s = summarize(t, 1)
                    done[n] = dict(median_ms=s['median_ms'], p90_ms=s['p90_ms'],
                                   min_ms=s['min_ms'], reps=s['reps'])
                out.update(done)
                if on_chunk is not None:
                    on_chunk(done)
    finally:
        torch.set_num_threads(before)
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
        table (dict | None): A table to extend: only its missing pieces are measured (it must
            fit ``backend``, ``input_size`` and ``space``: :func:`check_compatible`).
        batch (int): Batch size. Defaults to 1.
        threads (int | None): CPU threads of torch / ONNX Runtime; ``None``: torch's.
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
    """
    space = get_space(space)
    _check_backend(backend)
    if compute_units not in COMPUTE_UNITS:
        raise ValueError(f'compute_units must be one of {COMPUTE_UNITS}, got {compute_units!r}')
    size = _parse_size(input_size)
    threads = _threads(threads)
    if table is not None:
        check_compatible(table, backend, size, space)
        asked = dict(with_head=with_head, batch=batch, num_classes=num_classes)
        differ = {k: v for k, v in asked.items() if table.get(k) != v}
        if differ:
            raise LatencyTableError(
                'the table to extend has ' + ', '.join(f'{k}={table.get(k)!r}' for k in differ)
                + '; asked: ' + ', '.join(f'{k}={v!r}' for k, v in differ.items()))
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

    def add(done: Dict[str, dict]) -> None:
        stamp = datetime.datetime.now().isoformat(timespec='seconds')
        for entry in done.values():
            entry['date'] = stamp
        new['entries'].update(done)
        log(f"  {len(new['entries'])} pieces in the table")
        if save_to is not None:
            save(new, save_to)

    _time(todo, lambda n: build_piece(n, size, space.mlp_ratios, batch, num_classes), backend,
          threads, warmup, reps, compute_units, on_chunk=add)
    if save_to is not None and not todo:
        save(new, save_to)
    return new


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
    return total - (n - 1) * table['entries']['call']['median_ms']


def check_compatible(table: dict, backend: str, input_size, space) -> None:
    """Raise :class:`LatencyTableError` if ``table`` was made for another backend, input size
    or search space than asked."""
    size = _parse_size(input_size)
    space = get_space(space)
    if table.get('backend') != backend:
        raise LatencyTableError(f"the latency table was measured on backend "
                                f"{table.get('backend')!r}, not {backend!r}: build one for "
                                f"{backend!r}")
    if list(table.get('input_size', [])) != size:
        raise LatencyTableError(f"the latency table was measured at input size "
                                f"{table.get('input_size')}, not {size}: build one for {size}")
    if table.get('space_fingerprint') != space.fingerprint():
        other = (table.get('space') or {}).get('name')
        raise LatencyTableError(f'the latency table was built for search space {other!r} '
                                f'({table.get("space_fingerprint")}), not {space.name!r} '
                                f'({space.fingerprint()})')


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


def load(path: str) -> dict:
    """Read a table written by :func:`save`.

    Raises:
        LatencyTableError: the file is corrupt or truncated, not a latency table, or of
            another format version (each names the file).
    """
    try:
        with open(path) as f:
            table = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LatencyTableError(f'{path} is not a readable latency table (corrupt or '
                                f'truncated JSON: {exc}); measure it again') from None
    if not isinstance(table, dict) or table.get('format') != FORMAT:
        raise LatencyTableError(f'{path} is not an mmeff latency table (format {FORMAT!r})')
    if table.get('format_version') != FORMAT_VERSION:
        raise LatencyTableError(f"{path} has latency table format version "
                                f"{table.get('format_version')!r}; this mmeff reads version "
                                f"{FORMAT_VERSION}: measure it again")
    missing = [k for k in _SHARED_KEYS + ('entries',) if k not in table]
    if missing or not isinstance(table['entries'], dict) or not all(
            isinstance(e, dict) and isinstance(e.get('median_ms'), (int, float))
            for e in table['entries'].values()):
        raise LatencyTableError(f'{path} is an incomplete latency table (missing '
                                f'{missing or "entries with median_ms"}); measure it again')
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
    for name, entry in b['entries'].items():
        merged['entries'].setdefault(name, entry)
    return merged


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
    _check_backend(backend)
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


def lut_accuracy(table: dict, space, n: int = 8, seed: int = 0, warmup: Optional[int] = None,
                 reps: Optional[int] = None, archs: Optional[Sequence[dict]] = None,
                 same_run: bool = True) -> dict:
    """Predicted vs measured latency of ``n`` random networks of ``space`` (or of ``archs``),
    measured on the table's backend, input size, batch and threads.

    A table measured at one time and networks measured at another also differ by whatever
    changed on the machine in between (on a shared CPU, the load). With ``same_run`` every
    network is timed interleaved with its own pieces, measured again, which separates the
    two: ``rel_err_same_run`` is the error of summing pieces alone, ``piece_drift`` how much
    slower (> 1) or faster the pieces ran now than when the table was built.

    Returns:
        dict: ``networks`` (``arch``, ``predicted_ms``, ``measured_ms``, ``rel_err`` =
        ``(predicted - measured) / measured``; with ``same_run`` also
        ``predicted_same_run_ms``, ``rel_err_same_run`` and ``piece_drift`` (median ratio of
        the pieces' times now to the table's)), ``mean_abs_rel_err``, ``worst_rel_err`` (the
        largest in magnitude, signed), with ``same_run`` the same two for
        ``rel_err_same_run``, and ``backend``, ``input_size``, ``reps``.
    """
    space = get_space(space)
    if archs is None:
        rng = random.Random(seed)
        archs = [space.to_arch(space.random_choices(rng)) for _ in range(n)]
    archs = list(archs)
    predicted = [predict(table, a) for a in archs]  # a missing piece fails before measuring
    size, batch, classes = table['input_size'], table['batch'], table['num_classes']
    warmup = table['warmup'] if warmup is None else warmup
    reps = table['reps'] if reps is None else reps
    units = table.get('compute_units') or 'ALL'
    _check_backend(table['backend'])
    nets = []
    for arch, pred in zip(archs, predicted):
        pieces = (['call'] + list(arch_pieces(arch, table['with_head']))) if same_run else []

        def make(name: str, arch=arch) -> tuple:
            if name == 'NET':
                x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
                return _fused_network(arch, size, table['with_head'], classes), x
            return build_piece(name, size, space.mlp_ratios, batch, classes)

        times = _time(['NET'] + pieces, make, table['backend'], table['threads'], warmup, reps,
                      units, chunk=len(pieces) + 1)
        measured = times.pop('NET')['median_ms']
        row = dict(arch=arch, predicted_ms=round(pred, 4), measured_ms=measured,
                   rel_err=round((pred - measured) / measured, 4))
        if same_run:
            again = predict(dict(table, entries=times), arch)
            drift = np.median([times[p]['median_ms'] / table['entries'][p]['median_ms']
                               for p in pieces])
            row.update(predicted_same_run_ms=round(again, 4),
                       rel_err_same_run=round((again - measured) / measured, 4),
                       piece_drift=round(float(drift), 3))
        nets.append(row)

    def stats(key):
        errs = np.array([e[key] for e in nets])
        return (round(float(np.abs(errs).mean()), 4),
                float(errs[np.argmax(np.abs(errs))]))

    out = dict(backend=table['backend'], input_size=size, reps=reps, networks=nets)
    out['mean_abs_rel_err'], out['worst_rel_err'] = stats('rel_err')
    if same_run:
        out['mean_abs_rel_err_same_run'], out['worst_rel_err_same_run'] = stats(
            'rel_err_same_run')
    return out


__all__ = ['BACKENDS', 'FORMAT', 'FORMAT_VERSION', 'LatencyTableError',
           'BackendUnavailableError', 'arch_pieces', 'space_pieces', 'build_piece',
           'build_lut', 'predict', 'check_compatible', 'save', 'load', 'merge',
           'measure_network', 'measure_networks', 'lut_accuracy']
