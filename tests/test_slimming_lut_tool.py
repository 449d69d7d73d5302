"""``tools/slim.py --phase build-lut``: nothing measured is lost to a kill, a table is completed
only with its own settings, and a table that cannot be used names the file to delete or the
``--work-dir`` to use.

The tiny supernet config's space at 64x64, 1 thread, 1-2 repetitions, an accuracy check over 3
networks (the tool's default is 20): these check the contract, not the speed of anything."""
import json
import os.path as osp
import re

import pytest

from helpers import load_tool
from mmeff.slimming import lut
from mmeff.slimming import run as slim_run

CONFIG = 'configs/slimming/supernet_tiny_synthetic.py'
FAST = ['--threads', '1', '--warmup', '0', '--reps', '1']


@pytest.fixture(scope='module')
def slim(repo_root):
    return load_tool(repo_root, 'slim')


@pytest.fixture
def fast(slim, monkeypatch):
    monkeypatch.setattr(slim_run, 'LUT_CHECK_NETWORKS', 3)  # read by run.build_lut
    monkeypatch.setattr(lut, 'CHUNK', 8)
    return slim


def _build(slim, repo_root, work_dir, *more):
    return slim.main([osp.join(repo_root, CONFIG), '--work-dir', str(work_dir), '--phase',
                      'build-lut', *FAST, *more])


def test_a_killed_build_loses_nothing_measured(fast, repo_root, tmp_path, monkeypatch, capsys):
    """Killed (KeyboardInterrupt, as a kill between two Python instructions) while measuring
    the third chunk of pieces, then while checking the table: the rerun measures only what
    is missing, in the table and in the check."""
    path, check_path = tmp_path / 'lut_torch-cpu.json', tmp_path / 'lut_torch-cpu_accuracy.json'
    real_piece, built = lut.build_piece, []

    def killed_in_third_chunk(name, *args, **kwargs):
        if len(built) == 19:
            raise KeyboardInterrupt
        built.append(name)
        return real_piece(name, *args, **kwargs)

    monkeypatch.setattr(lut, 'build_piece', killed_in_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        _build(fast, repo_root, tmp_path)
    saved = lut.load(str(path))
    assert list(saved['entries']) == built[:16]  # two chunks of 8, complete
    monkeypatch.setattr(lut, 'build_piece', real_piece)

    real_row, rows = lut._accuracy_row, []

    def killed_in_second_network(table, *args, **kwargs):
        if not table.get('calibration'):  # the calibration's networks, before the check
            return real_row(table, *args, **kwargs)
        if len(rows) == 1:
            raise KeyboardInterrupt
        rows.append(real_row(table, *args, **kwargs))
        return rows[-1]

    monkeypatch.setattr(lut, '_accuracy_row', killed_in_second_network)
    capsys.readouterr()
    with pytest.raises(KeyboardInterrupt):
        _build(fast, repo_root, tmp_path)
    total = len(lut.space_pieces(saved['space']))
    assert f'measuring {total - 16} of {total} pieces' in capsys.readouterr().out
    table = lut.load(str(path))
    assert set(table['entries']) == set(lut.space_pieces(saved['space']))
    assert {n: table['entries'][n] for n in saved['entries']} == saved['entries']
    partial = json.loads(check_path.read_text())
    assert partial['complete'] is False and len(partial['networks']) == 1

    monkeypatch.setattr(lut, '_accuracy_row', real_row)
    timed, real_time = [], lut._time
    monkeypatch.setattr(lut, '_time', lambda names, *a, **k: timed.append(list(names)) or
                        real_time(names, *a, **k))
    _build(fast, repo_root, tmp_path)
    out = capsys.readouterr().out
    assert f'measuring 0 of {total} pieces' in out
    assert 'Resuming the accuracy check' in out and '(1 networks measured)' in out
    final = lut.load(str(path))
    # the calibration was saved with the table before the check: not measured again
    assert table['calibration'] and final.get('calibration') == table['calibration']
    assert len(timed) == 2 and all(t[0] == 'NET' and 'NET.again' in t for t in timed)
    assert final['entries'] == table['entries']  # nothing measured again
    check = json.loads(check_path.read_text())
    assert check['complete'] and check['num_networks'] == 3
    # the table holds the check's statistics
    assert final['accuracy']['file'] == str(check_path)
    assert {k: v for k, v in final['accuracy'].items() if k not in ('date', 'file')} == {
        k: check[k] for k in lut._ACCURACY_KEYS}
    assert check['networks'][0]['measured_ms'] == partial['networks'][0]['measured_ms']
    for key in ('within_10pct', 'within_5pct', 'rmse_ms', 'noise_mean_abs_rel'):
        assert f"{key}" in check
    assert re.search(r'Predicted vs measured latency of 3 held-out random networks of the '
                     r'space: \d+% within \+-10 %, \d+% within \+-5 %, mean \|error\| '
                     r'[\d.]+%, worst [-+][\d.]+%, RMSE [\d.e-]+ ms', out)
    assert 'Measurement noise (each network timed twice): mean' in out
    assert f"(measured on {table['device']})" in out and table['device'].endswith(
        'torch-cpu, 1 thread')


@pytest.fixture(scope='module')
def tiny_table(slim, repo_root):
    """A partial table of the config's space at 64x64 (a few pieces: cheap)."""
    from mmengine.config import Config
    from mmeff.slimming.space import get_space
    space = get_space(Config.fromfile(osp.join(repo_root, CONFIG)).model.space.to_dict())
    return lut.build_lut(space, 'torch-cpu', 64, pieces=['stem.w16'], threads=1, warmup=0,
                         reps=1, num_classes=5, log=lambda m: None)


def test_other_threads_or_reps_are_refused_with_the_flags(slim, repo_root, tmp_path,
                                                          tiny_table):
    path = str(tmp_path / 'lut_torch-cpu.json')
    lut.save(tiny_table, path)
    with pytest.raises(lut.TableSettingsError) as err:
        _build(slim, repo_root, tmp_path, '--reps', '5', '--threads', '2')
    assert str(err.value) == (
        f'{path} was measured with threads=1, reps=1, not threads=2, reps=5: run build-lut '
        f'with --threads 1 --reps 1 to complete it (settings are not mixed in one table), or '
        f'delete it to measure a new table with the new settings, or give another --work-dir')
    assert lut.load(path) == tiny_table  # untouched


def test_a_table_of_another_input_size_names_the_file_and_work_dir(slim, repo_root, tmp_path,
                                                                   tiny_table):
    path = str(tmp_path / 'lut_torch-cpu.json')
    lut.save(tiny_table, path)
    with pytest.raises(lut.LatencyTableError) as err:
        _build(slim, repo_root, tmp_path, '--input-size', '96')
    assert str(err.value) == (
        f'the latency table ({path}) was measured at input size [64, 64], not [96, 96]: delete '
        f'{path} to measure a new table at 96x96 in its place, or give another --work-dir to '
        f'keep it')
    assert 'build one' not in str(err.value) and lut.load(path) == tiny_table


def test_a_truncated_table_names_the_file_to_delete(slim, repo_root, tmp_path, tiny_table):
    path = tmp_path / 'lut_torch-cpu.json'
    lut.save(tiny_table, str(path))
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    with pytest.raises(lut.LatencyTableError,
                       match=rf'^{re.escape(str(path))} is not a readable latency table '
                             rf'\(corrupt or truncated JSON: .*\): delete '
                             rf'{re.escape(str(path))} \(it cannot be used\) to measure a new '
                             rf'table in its place$'):
        _build(slim, repo_root, tmp_path)
    assert path.read_text() == text[:len(text) // 2]  # left for the user to look at


@pytest.mark.slow
def test_kill_9_during_build_lut_keeps_every_saved_chunk(repo_root, tmp_path):
    """The real thing: ``kill -9`` of ``tools/slim.py --phase build-lut`` as soon as the first
    chunk of pieces is on disk; the table left is valid and the rerun measures only the
    pieces it lacks (about 70 s on a shared 2-core CPU: two tool start-ups, 58 pieces and a
    20-network check)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    path = tmp_path / 'lut_torch-cpu.json'
    # three widths a stage: 58 pieces, a second chunk long enough to be killed in
    widths = '[[16,24,32],[24,32,40],[32,48,56],[48,64,72]]'
    cmd = [sys.executable, osp.join(repo_root, 'tools', 'slim.py'),
           osp.join(repo_root, CONFIG), '--work-dir', str(tmp_path), '--phase', 'build-lut',
           *FAST, '--cfg-options', f'model.space.widths={widths}']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not path.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert path.exists(), f'no table saved: {proc.stderr.read().decode()[-2000:]}'
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = lut.load(str(path))  # valid: written atomically
    total = len(lut.space_pieces(saved['space']))
    kept = len(saved['entries'])
    assert kept == lut.CHUNK < total  # the first chunk, killed in the second
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f'measuring {total - kept} of {total} pieces' in done.stdout
    table = lut.load(str(path))
    assert {n: table['entries'][n] for n in saved['entries']} == saved['entries']
    assert len(table['entries']) == total
