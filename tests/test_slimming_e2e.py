"""tools/slim.py end to end on CPU: the tiny supernet config on a small generated ImageFolder
(5 classes of 64x64 images), one short epoch, a torch-cpu latency table with few repetitions.

The full run (every phase, each from the work dir the previous ones left) is done once per
module (``searched``) and shared: the checks of what the export refuses, the locks and the
over-budget flag each work on a copy of its work dir. The tool is a command line over
:mod:`mmeff.slimming.run`; the phases' own contracts are tested on the library at the end."""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import load_tool

CONFIG = 'configs/slimming/supernet_tiny_synthetic.py'
# fast measurements: the checks are about the contract, not the speed of anything
LUT_ARGS = ['--threads', '1', '--warmup', '1', '--reps', '5']
EVAL_ARGS = ['--calib-batches', '1', '--eval-batches', '1']


@pytest.fixture(scope='module')
def slim(repo_root):
    return load_tool(repo_root, 'slim')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from mmeff.datasets import make_imagefolder_dataset
    root = str(tmp_path_factory.mktemp('slim_data') / 'imagenet') + '/'
    # 8 train images a class: 2 iterations of the config's batch of 16 (drop_last)
    make_imagefolder_dataset(root, num_classes=5, per_class=(8, 2), size=64)
    return root


def _args(repo_root, work_dir, data, *more):
    return [osp.join(repo_root, CONFIG), '--work-dir', str(work_dir), '--cfg-options',
            f'data_root={data}', 'train_cfg.max_epochs=1', *more]


def _tiny_space(repo_root):
    from mmengine.config import Config

    from mmeff.slimming.space import get_space
    return get_space(Config.fromfile(osp.join(repo_root, CONFIG)).model.space.to_dict())


def _table(repo_root, path, input_size=64):
    """A table of every piece of the config's space (about 30: cheap), few repetitions."""
    from mmeff.slimming import lut
    table = lut.build_lut(_tiny_space(repo_root), 'torch-cpu', input_size, threads=1,
                          warmup=1, reps=2, num_classes=5)
    lut.save(table, str(path))
    return table


@pytest.fixture(scope='module')
def searched(slim, repo_root, data, tmp_path_factory):
    """Every phase, one after the other, in one work dir; returns it and the budgets."""
    from mmeff.slimming import lut
    from mmeff.slimming.search import smallest_latency
    from mmeff.slimming.space import get_space

    work = tmp_path_factory.mktemp('slim') / 'run'
    slim.main(_args(repo_root, work, data, '--phase', 'train-supernet'))
    slim.main(_args(repo_root, work, data, '--phase', 'build-lut', *LUT_ARGS))
    # budgets between the full supernet and the smallest network, as predicted by the table:
    # one relative to the full supernet, two absolute
    table = lut.load(str(work / 'lut_torch-cpu.json'))
    space = get_space(table['space'])
    full = lut.predict(table, space.to_arch(space.max_choices()))
    low = smallest_latency(space, lambda a: lut.predict(table, a))['latency_ms']
    mid = round(low + 0.35 * (full - low), 3)
    budgets = ['0.9x', str(mid), str(round(low + 1e-3, 3))]
    # every accuracy estimate on the whole validation split (10 images)
    slim.main(_args(repo_root, work, data, '--phase', 'search', '--budgets', *budgets,
                    '--calib-batches', '1'))
    slim.main(_args(repo_root, work, data, '--phase', 'export-subnet', *LUT_ARGS))
    return work, budgets, full


def test_search_without_a_table_or_with_an_impossible_budget(slim, repo_root, data, tmp_path):
    from mmeff.slimming import lut
    with pytest.raises(FileNotFoundError, match=r'no latency table .*lut_onnxruntime\.json: '
                                                r'run --phase build-lut --backend onnxruntime'):
        slim.main(_args(repo_root, tmp_path, data, '--phase', 'search', '--budgets', '3',
                        '--backend', 'onnxruntime'))
    table_path = tmp_path / 'lut_torch-cpu.json'
    _table(repo_root, table_path)
    # the message names the kept table, where it was measured, and the ways out
    with pytest.raises(ValueError, match=r'latency budget 1e-06 ms is below the smallest '
                                         r"latency the search space 'tiny' reaches, [0-9.]+ ms"
                       ) as info:
        slim.main(_args(repo_root, tmp_path, data, '--phase', 'search', '--budgets', '5',
                        '1e-6'))
    text = str(info.value)
    assert str(table_path) in text and 'measured on CPU' in text and 'kept' in text
    assert 'delete it or give another --work-dir' in text and '0.6x' in text
    # a relative budget below the smallest network is named as given
    with pytest.raises(ValueError, match=r'latency budget 0\.001x \([0-9.e-]+ ms\) is below'):
        slim.main(_args(repo_root, tmp_path, data, '--phase', 'search', '--budgets', '0.001x'))
    # a table for another input size
    with pytest.raises(lut.LatencyTableError, match=r'measured at input size \[64, 64\], not '
                                                    r'\[96, 96\]'):
        slim.main(_args(repo_root, tmp_path, data, '--phase', 'search', '--budgets', '5',
                        '--input-size', '96'))
    # no supernet trained yet
    with pytest.raises(FileNotFoundError, match='run --phase train-supernet first'):
        slim.main(_args(repo_root, tmp_path, data, '--phase', 'search', '--budgets', '1e3'))


def test_search_needs_a_supernet_config(slim, repo_root, tmp_path):
    with pytest.raises(ValueError, match=r"is not a supernet config \(model.type "
                                         r"'EfficientFormerClassifier'"):
        slim.main([osp.join(repo_root, 'configs/classification/effformer_l1_in1k.py'),
                   '--work-dir', str(tmp_path), '--phase', 'search', '--budgets', '3'])


@pytest.mark.parametrize('budgets, message', [
    (['-1'], r'--budgets: latency budgets must be positive finite numbers of milliseconds'),
    (['2', 'nan'], r"--budgets: latency budgets must be positive finite numbers of "
                   r"milliseconds, got 'nan'"),
    (['0x'], r'--budgets: latency budgets must be positive finite fractions'),
    (['fast'], r"--budgets: latency budget 'fast' is neither milliseconds"),
])
def test_phase_all_refuses_bad_budgets_before_training(slim, repo_root, data, tmp_path, capsys,
                                                       budgets, message):
    import re
    with pytest.raises(SystemExit) as info:
        slim.main(_args(repo_root, tmp_path, data, '--budgets', *budgets))
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / 'supernet').exists()


def test_phase_all_checks_every_argument_before_training(slim, repo_root, data, tmp_path):
    def refused(*more, exc=ValueError, match):
        with pytest.raises(exc, match=match):
            slim.main(_args(repo_root, tmp_path, data, *more))
        assert not (tmp_path / 'supernet').exists(), 'a phase ran before the check'

    refused('--budgets', '0.5x', '--relative-to', 'l1',
            match=r"EfficientFormer-L1 is not a network of the search space 'tiny': relative "
                  r"budgets \(such as 0.8x\) refer to one of \['supernet'\]")
    refused('--budgets', '0.5x', '--relative-to', 'l9', match=r"unknown reference network 'l9'")
    if not torch.cuda.is_available():
        refused('--budgets', '3', '--device', 'cuda', match=r'--device cuda asks for a GPU')
    refused('--budgets', '3', '--reps', '0', match=r'--reps must be >= 1, got 0')
    refused('--budgets', '3', '--input-size', '8', match=r'--input-size must be an int >= 32')
    refused('--budgets', '3', '--cfg-options', 'data_root=/nonexistent/',
            exc=FileNotFoundError, match=r"data_root '/nonexistent/' does not exist")
    # a table kept in the work dir: the budgets are checked against it before training
    _table(repo_root, tmp_path / 'lut_torch-cpu.json')
    refused('--budgets', '1e-6', match=r'below the smallest latency .* as predicted by the '
                                       r'latency table .*lut_torch-cpu\.json')


def test_under_a_launcher_only_rank_0_runs_the_phases_after_training(slim, repo_root, data,
                                                                     tmp_path, monkeypatch):
    """Under torchrun every process trains its share of the supernet; the table, the search
    and the export are one process's work (rank 0): the others must not write them too."""
    for name, value in dict(WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT='29511',
                            LOCAL_RANK='1', RANK='1').items():
        monkeypatch.setenv(name, value)
    argv = _args(repo_root, tmp_path, data, '--phase', 'search', '--budgets', '3',
                 '--launcher', 'pytorch')
    assert slim.main(argv) == 0  # rank 1: nothing to do
    assert not (tmp_path / 'search_torch-cpu').exists()
    monkeypatch.setenv('RANK', '0')
    with pytest.raises(FileNotFoundError, match=r'no latency table'):
        slim.main(argv)  # rank 0 searches (and finds no table here)


def test_slim_end_to_end_on_cpu(searched, repo_root, tmp_path):
    from mmeff.deploy.export import export_onnx
    from mmeff.models import EfficientFormerClassifier
    from mmeff.slimming import lut
    from mmeff.slimming.run import file_sha256
    from mmeff.slimming.search import load_trajectory

    work, budgets, full = searched
    out = work / 'search_torch-cpu'
    traj = load_trajectory(str(out / 'trajectory.json'))
    meta = traj['meta']
    # what the search was made with: supernet (path, hash), table (hash), size, budgets
    with open(work / 'supernet' / 'last_checkpoint') as f:
        ckpt_path = f.read().strip()
    assert meta['supernet'] == dict(path=osp.abspath(ckpt_path), sha256=file_sha256(ckpt_path))
    assert meta['latency_table']['sha256'] == file_sha256(str(work / 'lut_torch-cpu.json'))
    assert meta['input_size'] == 64
    assert meta['budgets']['given'] == budgets and meta['budgets']['relative_to'] == 'supernet'
    assert meta['budgets']['reference_ms'] == pytest.approx(full)
    assert meta['calibration']['batches'] == 1 and meta['calibration']['images'] == 16
    assert meta['validation']['images'] == 10
    # the relative budget: 0.9 of the full supernet's predicted latency, named as given
    first = traj['results'][0]
    assert first['budget'] == '0.9x' and first['name'] == 'tiny_0p9x'
    assert first['budget_ms'] == pytest.approx(0.9 * full, rel=1e-3)
    assert [r['budget_ms'] for r in traj['results']] == sorted(
        [first['budget_ms']] + [float(b) for b in budgets[1:]], reverse=True)
    md = (out / 'trajectory.md').read_text()
    assert traj['steps'] and all(f"| {s['step']} | {s['description']}" in md
                                 for s in traj['steps'])
    check = json.loads((work / 'lut_torch-cpu_accuracy.json').read_text())
    assert 'latency table accuracy' in md
    assert traj['lut_accuracy']['networks'] == len(check['networks']) >= 8
    assert '0.9x (' in md and meta['supernet']['sha256'] in md
    assert osp.isfile(out / 'trajectory.png') and osp.isfile(out / 'importance.json')
    measured_full = traj['start']['measured_ms']
    test_tool = load_tool(repo_root, 'test')
    for i, r in enumerate(traj['results']):
        assert r['latency_ms'] <= r['budget_ms']
        assert r['measured_ms'] > 0 and r['over_budget'] == (r['measured_ms'] > r['budget_ms'])
        # the exported weights score what the search estimated, on the same images
        assert r['exported_accuracy'] == r['accuracy']
        ckpt = torch.load(r['checkpoint'], map_location='cpu', weights_only=False)
        assert ckpt['meta']['arch'] == r['arch']
        if i == len(traj["results"]) - 1:
            # ... and so does tools/test.py with the generated evaluation config
            metrics = test_tool.main([r['eval_config'], r['checkpoint'],
                                      '--work-dir', str(tmp_path / r['name'])])
            assert metrics['accuracy/top1'] == pytest.approx(r['accuracy'], abs=1e-9)
        # the inherited weights load into the classifier, train a step, fuse and export
        model = EfficientFormerClassifier(backbone=dict(arch=r['arch']), num_classes=5,
                                          distillation=None)
        model.load_state_dict(ckpt['state_dict'], strict=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        cls, dist = model.forward_heads(torch.rand(2, 3, 64, 64))
        loss = torch.nn.functional.cross_entropy(cls + dist, torch.tensor([0, 1]))
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
        export_onnx(model.eval(), str(tmp_path / f"{r['name']}.onnx"), (1, 3, 64, 64))
        assert sorted(r['configs']) == ['fpn', 'in1k', 'mask_rcnn']
    # the smallest budget's network runs faster than the full supernet (timings on a shared
    # machine are noisy: the order of networks of close latency is not asserted, and a
    # reversed order under load is measured once more, interleaved, with more repetitions)
    if traj['results'][-1]['measured_ms'] >= measured_full:
        again = lut.measure_networks([traj['results'][-1]['arch'], traj['start']['arch']],
                                     input_size=64, threads=1, warmup=2, reps=30,
                                     num_classes=5)
        assert again[0]['median_ms'] < again[1]['median_ms']
    assert lut.load(str(work / 'lut_torch-cpu.json'))  # still a valid table


def _copy(work, tmp_path):
    dst = tmp_path / 'copy'
    shutil.copytree(work, dst)
    return dst


def test_export_refuses_a_work_dir_changed_since_the_search(slim, searched, repo_root, data,
                                                            tmp_path):
    from mmeff.slimming import lut
    work, budgets, _ = searched
    copy = _copy(work, tmp_path)
    export = _args(repo_root, copy, data, '--phase', 'export-subnet', *LUT_ARGS)
    table_path = copy / 'lut_torch-cpu.json'
    table, table_bytes = lut.load(str(table_path)), table_path.read_bytes()

    # other budgets than the searched ones
    with pytest.raises(ValueError, match=r'was for the budgets 0\.9x .* not 2 '):
        slim.main(export + ['--budgets', '2'])
    # a newer supernet checkpoint than the searched one
    marker = copy / 'supernet' / 'last_checkpoint'
    old = marker.read_text().strip()
    newer = copy / 'supernet' / 'epoch_2.pth'
    shutil.copy(old, newer)
    marker.write_text(str(newer))
    with pytest.raises(ValueError, match=r"supernet's last checkpoint is now .*epoch_2\.pth, "
                                         r'not .*epoch_1\.pth .* trained further.* run --phase '
                                         r'search again \(its budgets: --budgets 0\.9x'):
        slim.main(export)
    # ... or the same file, changed
    marker.write_text(old)
    # a rebuilt table
    lut.save(dict(table, date='2099-01-01T00:00:00'), str(table_path))
    with pytest.raises(ValueError, match=r'latency table .*lut_torch-cpu\.json changed since '
                                         r'the search .* run --phase search again'):
        slim.main(export)
    # a table at another input size, exported at that size
    lut.save(dict(table, input_size=[96, 96]), str(table_path))
    with pytest.raises(ValueError, match=r'the search in .* was at input size 64, this run is '
                                         r'at 96: give --input-size 64'):
        slim.main(export + ['--input-size', '96'])
    table_path.write_bytes(table_bytes)
    # other calibration batches than the search's
    with pytest.raises(ValueError, match=r'recalibrated BN on 1 batches, not 2: leave '
                                         r'--calib-batches out'):
        slim.main(export + ['--calib-batches', '2'])
    # a training split that changed: other calibration images
    extra = osp.join(data, 'train', 'n00000000')
    src = sorted(os.listdir(extra))[0]
    added = osp.join(extra, 'zz_' + src)
    shutil.copy(osp.join(extra, src), added)
    try:
        with pytest.raises(ValueError, match=r'the calibration images differ from those of .*'
                                             r'trajectory\.json \(images_sha256'):
            slim.main(export)
    finally:
        os.remove(added)
    # nothing was exported from the copy
    assert sorted(os.listdir(copy / 'search_torch-cpu' / 'subnets')) == sorted(
        os.listdir(work / 'search_torch-cpu' / 'subnets'))


def test_measured_latency_over_budget_is_flagged(slim, searched, repo_root, data, tmp_path,
                                                 monkeypatch, capsys):
    from mmeff.slimming import lut
    from mmeff.slimming.search import load_trajectory
    work, _, _ = searched
    copy = _copy(work, tmp_path)

    def slow(archs, *args, **kwargs):  # a machine busier than when the table was measured
        return [dict(median_ms=1e3, p90_ms=1e3, min_ms=1e3, reps=1) for _ in archs]
    monkeypatch.setattr(lut, 'measure_networks', slow)
    slim.main(_args(repo_root, copy, data, '--phase', 'export-subnet'))
    captured = capsys.readouterr()
    traj = load_trajectory(str(copy / 'search_torch-cpu' / 'trajectory.json'))
    assert all(r['over_budget'] and r['measured_ms'] == 1e3 for r in traj['results'])
    assert captured.out.count('OVER BUDGET') == len(traj['results'])
    assert f"warning: {traj['results'][0]['name']} measured 1000.000 ms, over its" in \
        captured.err
    md = (copy / 'search_torch-cpu' / 'trajectory.md').read_text()
    assert '**1000.000 (over budget)**' in md and '**Measured over budget**' in md


HOLD_LOCK = textwrap.dedent('''
    import importlib.util, sys, time
    spec = importlib.util.spec_from_file_location('lock', sys.argv[1])
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    lock.WorkDirLock(sys.argv[2]).acquire()
    print('locked', flush=True)
    time.sleep(120)
''')


@pytest.fixture
def hold_lock(repo_root):
    """Hold a work dir's lock from another process (as a second run would)."""
    procs = []

    def hold(work_dir):
        proc = subprocess.Popen(
            [sys.executable, '-c', HOLD_LOCK,
             osp.join(repo_root, 'mmeff', 'engine', 'workdir_lock.py'), str(work_dir)],
            stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == 'locked'
        return proc
    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_every_phase_takes_the_work_dir_lock(slim, searched, repo_root, data, tmp_path,
                                            hold_lock):
    from mmeff.cli import is_user_error
    from mmeff.engine.workdir_lock import WorkDirBusyError
    work, budgets, _ = searched
    copy = _copy(work, tmp_path)
    before = (copy / 'search_torch-cpu' / 'trajectory.json').read_bytes()
    holder = hold_lock(copy)
    for more in (['--phase', 'search', '--budgets', *budgets, '--calib-batches', '1'],
                 ['--phase', 'build-lut', *LUT_ARGS],
                 ['--phase', 'export-subnet'],
                 ['--phase', 'train-supernet']):
        with pytest.raises(WorkDirBusyError, match=rf"(?s)Work dir '{copy}' is in use by another "
                                                   rf'slimming run: pid {holder.pid} .* '
                                                   r"replace each other's latency tables") as e:
            slim.main(_args(repo_root, copy, data, *more))
        assert is_user_error(e.value)  # one line on stderr, exit 1
    assert (copy / 'search_torch-cpu' / 'trajectory.json').read_bytes() == before


def test_search_and_export_refuse_a_supernet_in_training(slim, searched, repo_root, data,
                                                         tmp_path, hold_lock):
    from mmeff.engine.workdir_lock import WorkDirBusyError
    work, budgets, _ = searched
    copy = _copy(work, tmp_path)
    holder = hold_lock(copy / 'supernet')  # tools/train.py's lock on the supernet's dir
    for phase, more in (('search', ['--budgets', *budgets, '--calib-batches', '1']),
                        ('export-subnet', [])):
        with pytest.raises(WorkDirBusyError, match=rf'(?s)the supernet in .*supernet is being '
                                                   rf'trained right now \(pid {holder.pid} '
                                                   rf'.*Wait for the training to end'):
            slim.main(_args(repo_root, copy, data, '--phase', phase, *more))
    # the lock of the work dir itself was released on the way out
    assert not (copy / '.mmeff_train.lock').exists()


# ---------------------------------------------------------------------------- the library
def test_train_supernet_resumes_with_the_options_as_typed(tmp_path):
    """The training phase runs tools/train.py's ``main`` on the run's supernet: the options as
    typed, the launcher, and ``--resume`` once a checkpoint exists (it is trained once)."""
    import types

    from mmeff.slimming.run import supernet_train_argv, train_supernet
    args = types.SimpleNamespace(cfg_options_argv=['train_cfg.max_epochs=1'], launcher='none')
    run = types.SimpleNamespace(args=args, config='cfg.py', supernet_dir=str(tmp_path),
                                supernet_checkpoint=lambda: 'epoch_1.pth')
    fresh = ['cfg.py', '--work-dir', str(tmp_path), '--cfg-options', 'train_cfg.max_epochs=1',
             '--launcher', 'none']
    assert supernet_train_argv(run) == fresh
    (tmp_path / 'last_checkpoint').write_text('epoch_1.pth')
    calls = []
    train_supernet(run, calls.append)
    assert calls == [fresh[:3] + ['--resume'] + fresh[3:]]


def test_run_phases_refuses_an_unknown_phase_before_anything(tmp_path):
    import types

    from mmeff.slimming.run import PHASES, run_phases
    run = types.SimpleNamespace(work_dir=str(tmp_path / 'slim'))
    with pytest.raises(ValueError, match=r"unknown slimming phase\(s\) \['serch'\]: choose "
                                         r"from \['train-supernet', 'build-lut', 'search', "
                                         r"'export-subnet'\]"):
        run_phases(run, ['serch'], train_main=None)
    assert list(PHASES) == ['train-supernet', 'build-lut', 'search', 'export-subnet']
    assert not (tmp_path / 'slim').exists()
