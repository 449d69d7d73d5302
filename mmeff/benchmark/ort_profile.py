"""Where ONNX Runtime spends a model's time: its own profiler, per operator type.

:func:`profile_onnx` runs an ``.onnx`` file with ``SessionOptions.enable_profiling`` (the
session as :func:`mmeff.runtime.ort_session` makes it: workers that stop spinning after a call)
and sums the kernel time of each operator type over the timed calls only (the warm-up calls are
in the profiler's file too and are left out by their timestamps). It also counts the operators
of the graph ONNX Runtime actually runs, after its optimisations
(:func:`mmeff.runtime.ort_graph_ops`): ``ReorderInput``/``ReorderOutput`` there are the
conversions into and out of its blocked NCHWc conv layout, which an export should avoid
(:func:`mmeff.deploy.fuse.onnx_mixers`).
``tools/profile_onnx.py`` is the command-line form; ``benchmarks/ort_profile_*.md`` its results.
"""
import collections
import json
import os
import os.path as osp
import statistics
import tempfile
import time
from typing import Dict, Optional, Sequence

import numpy as np


def _input_shape(session) -> list:
    return [d if isinstance(d, int) and d > 0 else 1 for d in session.get_inputs()[0].shape]


def profile_onnx(path: str, threads: Optional[int] = 2, warmup: int = 10, runs: int = 10,
                 seed: int = 0) -> Dict[str, object]:
    """Profile ``path`` on ONNX Runtime's CPU provider.

    Args:
        path (str): An ``.onnx`` file with one input (its static shape is fed; a dynamic
            dimension gets 1).
        threads (int | None): Intra-op threads (None: ONNX Runtime's default). Defaults to 2.
        warmup (int): Untimed calls first. Defaults to 10.
        runs (int): Profiled calls. Defaults to 10.
        seed (int): Seed of the random input. Defaults to 0.

    Returns:
        dict: ``path``, ``threads``, ``warmup``, ``runs``, ``run_ms_median`` (wall time of one
        call with the profiler on), ``kernel_ms_per_run`` (sum over operators), ``ops`` (list of
        ``{op, ms_per_run, nodes, share}``, largest first; ``nodes`` is how many nodes of that
        type ran), ``graph_ops`` (operator counts of the optimised graph) and ``reorders``
        (``ReorderInput`` + ``ReorderOutput`` there).
    """
    from mmeff.runtime import ort_graph_ops, ort_session
    if not osp.isfile(path):
        raise FileNotFoundError(f'no ONNX model at {path!r}: export one first '
                                f'(tools/export.py --format onnx)')
    for name, value, least in (('warmup', warmup, 0), ('runs', runs, 1)):
        if not isinstance(value, int) or value < least:
            raise ValueError(f'{name} must be an int >= {least}, got {value!r}')
    graph_ops = ort_graph_ops(path)
    with tempfile.TemporaryDirectory(prefix='mmeff_ort_profile_') as tmp:
        session = ort_session(path, threads, profile_prefix=osp.join(tmp, 'profile'))
        x = np.random.default_rng(seed).standard_normal(_input_shape(session)).astype(np.float32)
        feed = {session.get_inputs()[0].name: x}
        for _ in range(warmup):
            session.run(None, feed)
        wall = []
        for _ in range(runs):
            t0 = time.perf_counter()
            session.run(None, feed)
            wall.append(time.perf_counter() - t0)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    # The timed calls are the last `runs` model runs; keep the kernels inside them.
    calls = sorted((e['ts'], e['ts'] + e['dur']) for e in events
                   if e.get('cat') == 'Session' and e.get('name') == 'model_run')[-runs:]
    time_us, nodes = collections.Counter(), collections.defaultdict(set)
    for e in events:
        if e.get('cat') != 'Node' or not e.get('name', '').endswith('_kernel_time'):
            continue
        if not any(start <= e['ts'] <= end for start, end in calls):
            continue
        op = e.get('args', {}).get('op_name', '?')
        time_us[op] += e['dur']
        nodes[op].add(e['name'])
    total = sum(time_us.values()) or 1
    ops = [dict(op=op, ms_per_run=round(us / runs / 1e3, 3), nodes=len(nodes[op]),
                share=round(us / total, 4)) for op, us in time_us.most_common()]
    return dict(path=osp.abspath(path), threads=threads, warmup=warmup, runs=runs,
                run_ms_median=round(statistics.median(wall) * 1e3, 3),
                kernel_ms_per_run=round(total / runs / 1e3, 3), ops=ops,
                graph_ops=dict(sorted(graph_ops.items())),
                reorders=graph_ops['ReorderInput'] + graph_ops['ReorderOutput'])


def format_profile(result: dict, title: str, min_share: float = 0.005) -> str:
    """Markdown: a heading with the call time, then one row per operator type of at least
    ``min_share`` of the kernel time."""
    lines = [f"## {title} (model run median {result['run_ms_median']:.2f} ms with the "
             f"profiler on; {result['reorders']} NCHWc reorder nodes in the graph run)", '',
             '| op | ms per run | nodes | share |', '|---|---:|---:|---:|']
    for row in result['ops']:
        if row['share'] >= min_share:
            lines.append(f"| {row['op']} | {row['ms_per_run']:.2f} | {row['nodes']} | "
                         f"{100 * row['share']:.1f}% |")
    return '\n'.join(lines) + '\n'


def write_profiles(results: Sequence[dict], header: str, stem: str) -> None:
    """``stem.json`` (the results) and ``stem.md`` (``header`` then each result's table), each
    written atomically."""
    from mmeff.engine.checkpointing import write_text_atomic
    os.makedirs(osp.dirname(osp.abspath(stem)), exist_ok=True)
    write_text_atomic(stem + '.json', json.dumps(list(results), indent=1) + '\n')
    write_text_atomic(stem + '.md', header.rstrip('\n') + '\n\n' + '\n'.join(
        format_profile(r, r.get('title', osp.basename(r['path']))) for r in results))


__all__ = ['profile_onnx', 'format_profile', 'write_profiles']
