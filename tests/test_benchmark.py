"""Latency benchmark (timing helpers, a tiny run of the tool) and the accuracy-latency plot.
No timing targets here: speed is what the benchmark reports, not what tests assert."""
import json

import pytest

from mmeff.benchmark.latency import (SCHEMA, benchmark, load_results, summarize,
                                     time_interleaved, to_markdown)
from mmeff.benchmark.plot import measured_series, plot_accuracy_latency

from helpers import load_tool

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def test_summarize():
    times = [0.001 * i for i in range(1, 11)]  # 1..10 ms
    s = summarize(times, batch_size=4)
    assert s['median_ms'] == pytest.approx(5.5)
    assert s['p90_ms'] == pytest.approx(9.1)
    assert s['mean_ms'] == pytest.approx(5.5) and s['min_ms'] == pytest.approx(1.0)
    assert s['throughput_img_s'] == pytest.approx(4 / 0.0055, rel=1e-3)
    assert s['reps'] == 10


def test_time_interleaved_order_and_sync():
    calls = []
    fns = {'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}
    times = time_interleaved(fns, warmup=2, reps=3, sync=lambda: calls.append('sync'))
    work = [c for c in calls if c != 'sync']
    assert work == ['a', 'a', 'b', 'b'] + ['a', 'b'] * 3  # warm-up, then interleaved
    # every timed call is bracketed by syncs (GPU work finishes inside the timing)
    timed = calls[calls.index('sync'):]
    assert timed[:4] == ['sync', 'sync', 'a', 'sync']
    assert {k: len(v) for k, v in times.items()} == {'a': 3, 'b': 3}
    with pytest.raises(ValueError, match='reps >= 1'):
        time_interleaved(fns, warmup=0, reps=0)


def test_time_interleaved_settles_outside_the_timing():
    import time
    times = time_interleaved({'a': lambda: None, 'b': lambda: None}, warmup=0, reps=3,
                             settle_s=0.02)
    t0 = time.perf_counter()
    time_interleaved({'a': lambda: None}, warmup=0, reps=3, settle_s=0.02)
    assert time.perf_counter() - t0 >= 3 * 0.02  # paused before every timed call...
    assert max(max(v) for v in times.values()) < 0.02  # ...and not inside the timings
    with pytest.raises(ValueError, match='settle_s >= 0'):
        time_interleaved({'a': lambda: None}, warmup=0, reps=1, settle_s=-1)


def test_timm_and_eager_time_alike_beside_onnxruntime():
    """A measurement bug as a user met it: L1 at 224, 2 threads, the default runtime
    order, so timm runs right after ONNX Runtime. With spinning ONNX Runtime threads timm read
    2x slower than eager with the same weights (here: 91 ms vs 43 ms, and this test failed with
    timm / eager = 1.85); now they agree. Loose bound and one retry: the machine may be
    shared."""
    ratios = []
    for _ in range(2):
        result = benchmark(['l1'], [224], [1], runtimes=('timm', 'eager', 'onnxruntime'),
                           warmup=3, reps=20, threads=2, log=lambda m: None)
        ms = {r['runtime']: r['median_ms'] for r in result['results']}
        ratios.append(ms['timm'] / ms['eager'])
        if abs(ratios[-1] - 1) < 0.25:
            break
    assert abs(ratios[-1] - 1) < 0.25, f'timm / eager medians: {ratios}'


def test_benchmark_backbone_matches_timm_and_records_unsupported():
    result = benchmark(['l1'], [224, (64, 96)], [1], runtimes=('timm', 'eager', 'fused'),
                       task='backbone', warmup=0, reps=1, threads=1, log=lambda m: None)
    rows = {(tuple(r['input_size']), r['runtime']): r for r in result['results']}
    assert rows[(224, 224), 'timm']['status'] == 'ok'
    assert rows[(224, 224), 'timm']['rel_err_vs_eager'] < 1e-5  # same weights, same input
    assert rows[(224, 224), 'fused']['rel_err_vs_eager'] < 1e-5
    assert rows[(64, 96), 'timm']['status'].startswith('unsupported: RuntimeError')
    assert 'median_ms' not in rows[(64, 96), 'timm']
    assert rows[(64, 96), 'fused']['status'] == 'ok' and rows[(64, 96), 'fused']['median_ms'] > 0
    assert result['machine']['torch_threads'] == 1


def test_benchmark_tool_tiny_run(tmp_path, repo_root):
    benchmark_latency = load_tool(repo_root, 'benchmark_latency')
    rc = benchmark_latency.main([
        '--archs', 'l1', '--input-sizes', '224', '64x64', '--batch-sizes', '1',
        '--runtimes', 'timm', 'eager', 'fused', 'onnxruntime', '--task', 'classifier',
        '--warmup', '1', '--reps', '2', '--threads', '1', '--out-dir', str(tmp_path),
        '--name', 'tiny', '--plot'])
    assert rc == 0
    result = load_results(str(tmp_path / 'tiny.json'))
    assert result['schema'] == SCHEMA
    assert result['machine']['cpu'] and result['settings']['reps'] == 2
    rows = result['results']
    assert len(rows) == 8  # 2 sizes x 4 runtimes
    for r in rows:
        if r['runtime'] == 'timm' and r['input_size'] == [64, 64]:
            assert r['status'].startswith('unsupported: ')
            continue
        assert r['status'] == 'ok', r
        assert r['reps'] == 2 and r['median_ms'] > 0 and r['p90_ms'] >= r['median_ms']
        assert r['rel_err_vs_eager'] < (1e-4 if r['runtime'] == 'onnxruntime' else 1e-5)
    md = (tmp_path / 'tiny.md').read_text()
    assert md == to_markdown(result)
    assert '| arch | input | batch | runtime | median ms |' in md
    assert '| l1 | 64x64 | 1 | timm | unsupported: ' in md
    assert '| l1 | 224x224 | 1 | timm |' in md and '1.00x' in md
    assert 'not iPhone 12' in md
    assert (tmp_path / 'tiny.png').read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_benchmark_torch_compile():
    result = benchmark(['l1'], [(64, 64)], [1], runtimes=('eager', 'compile'), task='backbone',
                       warmup=1, reps=2, threads=1, log=lambda m: None)
    row = next(r for r in result['results'] if r['runtime'] == 'compile')
    assert row['status'] == 'ok' and row['rel_err_vs_eager'] < 1e-4 and row['setup_s'] > 0


def _fake_results(path, rows, cpu='Test CPU'):
    """A results file in the benchmark's schema (as written on another machine)."""
    result = dict(schema=SCHEMA,
                  machine=dict(cpu=cpu, torch_threads=4, logical_cores=8, device='cpu'),
                  settings=dict(task='classifier'), results=rows)
    path.write_text(json.dumps(result))
    return str(path)


def test_plot_and_measured_series(tmp_path):
    rows = [dict(arch=a, task='classifier', input_size=[224, 224], batch_size=1,
                 runtime='onnxruntime', status='ok', median_ms=ms)
            for a, ms in (('l3', 30.0), ('l1', 12.0))]
    rows += [dict(arch='l1', task='classifier', input_size=[512, 512], batch_size=1,
                  runtime='onnxruntime', status='ok', median_ms=60.0),
             dict(arch='l1', task='classifier', input_size=[224, 224], batch_size=1,
                  runtime='timm', status='unsupported: x')]
    path = _fake_results(tmp_path / 'r.json', rows)
    series = measured_series([load_results(path)])
    assert series == {'onnxruntime, classifier (CPU: Test CPU, 4 threads)':
                      [('l1', 12.0), ('l3', 30.0)]}
    assert measured_series([load_results(path)], (512, 512)) == {
        'onnxruntime, classifier (CPU: Test CPU, 4 threads)': [('l1', 60.0)]}
    out = plot_accuracy_latency([path], str(tmp_path / 'fig.png'))
    assert open(out, 'rb').read(8) == PNG_MAGIC
    v2 = _fake_results(tmp_path / 'v2.json', [
        dict(arch=a, task='classifier', input_size=[224, 224], batch_size=1,
             runtime='onnxruntime', status='ok', median_ms=ms)
        for a, ms in (('s0', 3.0), ('l1', 12.0))])
    assert measured_series([load_results(v2)]) == {  # V1 and V2 never share a line
        'onnxruntime, classifier (CPU: Test CPU, 4 threads)': [('l1', 12.0)],
        'EfficientFormerV2: onnxruntime, classifier (CPU: Test CPU, 4 threads)': [('s0', 3.0)]}
    assert open(plot_accuracy_latency([v2], str(tmp_path / 'v2.png')), 'rb').read(8) == PNG_MAGIC
    paper_only = plot_accuracy_latency([], str(tmp_path / 'paper.png'))
    assert open(paper_only, 'rb').read(8) == PNG_MAGIC
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'rows': []}))
    with pytest.raises(ValueError, match='not an mmeff latency results file'):
        load_results(str(bad))


def test_plot_tool(tmp_path, repo_root, capsys):
    plot_latency = load_tool(repo_root, 'plot_latency')
    rows = [dict(arch='l7', task='classifier', input_size=[224, 224], batch_size=1,
                 runtime='coreml-ALL', status='ok', median_ms=9.5)]
    path = _fake_results(tmp_path / 'coreml.json', rows, cpu='Apple M2')
    assert plot_latency.main([path, '--out', str(tmp_path / 'p.png')]) == 0
    assert (tmp_path / 'p.png').read_bytes()[:8] == PNG_MAGIC
    out = capsys.readouterr().out
    assert 'coreml-ALL, classifier (CPU: Apple M2, 4 threads): l7 9.50 ms' in out
    assert plot_latency.main([path, '--out', str(tmp_path / 'q.png'), '--input-size', '512']) == 0
    assert 'only the paper points are drawn' in capsys.readouterr().err


def test_benchmark_fused_row_is_channels_last_and_fastest_row_records_its_choice(monkeypatch):
    """The ``fused`` row times the eager inference path (``fuse_model(channels_last=True)``),
    ``fastest`` times :func:`mmeff.deploy.fastest.fastest` and says what it chose (compile is
    switched off here: inductor takes minutes on this CPU)."""
    import functools

    import mmeff.deploy.fastest as fastest_mod
    from mmeff.deploy import fuse as fuse_mod
    calls = []
    real_fuse = fuse_mod.fuse_model

    def spy(*args, **kwargs):
        calls.append(kwargs.get('channels_last', False))
        return real_fuse(*args, **kwargs)
    monkeypatch.setattr(fuse_mod, 'fuse_model', spy)
    monkeypatch.setattr('mmeff.deploy.fuse_model', spy)
    monkeypatch.setattr(fastest_mod, 'fastest',
                        functools.partial(fastest_mod.fastest, compile=False))
    result = benchmark(['l1'], [(64, 64)], [1], runtimes=('eager', 'fused', 'fastest'),
                       warmup=0, reps=2, threads=1, log=lambda m: None)
    rows = {r['runtime']: r for r in result['results']}
    assert calls and calls[0] is True  # the fused row: channels-last
    assert rows['fused']['status'] == 'ok' and rows['fused']['rel_err_vs_eager'] < 1e-5
    assert rows['fastest']['status'] == 'ok' and rows['fastest']['chosen'] == 'fused'
    assert rows['fastest']['rel_err_vs_eager'] < 1e-4
    assert '| fastest (fused, setup' in to_markdown(result)
