"""tools/slim.py end to end on CPU: the tiny supernet config on a small generated ImageFolder
(5 classes of 64x64 images), one short epoch, a torch-cpu latency table with few repetitions.

The full run (every phase, each from the work dir the previous ones left) is in the default
run: about 20 s on the idle 2-core CPU (issue 9 asks for this run to take minutes, not more)."""
import json
import os.path as osp

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


def test_search_without_a_table_or_with_an_impossible_budget(slim, repo_root, data, tmp_path):
    from mmeff.slimming import lut
    from mmeff.slimming.space import get_space
    with pytest.raises(FileNotFoundError, match=r'no latency table .*lut_onnxruntime\.json: '
                                                r'run --phase build-lut --backend onnxruntime'):
        slim.main(_args(repo_root, tmp_path, data, '--phase', 'search', '--budgets', '3',
                        '--backend', 'onnxruntime'))
    # a table of the config's space (only the pieces of its minimal networks: cheap)
    from mmengine.config import Config
    space = get_space(Config.fromfile(osp.join(repo_root, CONFIG)).model.space.to_dict())
    from mmeff.slimming.search import minimal_networks
    table = lut.build_lut(space, 'torch-cpu', 64, threads=1, warmup=1, reps=2, num_classes=5,
                          archs=[space.to_arch(c) for c in minimal_networks(space)])
    lut.save(table, str(tmp_path / 'lut_torch-cpu.json'))
    with pytest.raises(ValueError, match=r'latency budget 1e-06 ms is below the smallest '
                                         r"latency the search space 'tiny' reaches, [0-9.]+ ms"):
        slim.main(_args(repo_root, tmp_path, data, '--phase', 'search', '--budgets', '5',
                        '1e-6'))
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


def test_slim_end_to_end_on_cpu(slim, repo_root, data, tmp_path):
    from mmeff.deploy.export import export_onnx
    from mmeff.models import EfficientFormerClassifier
    from mmeff.slimming import lut
    from mmeff.slimming.search import load_trajectory, smallest_latency

    work = tmp_path / 'run'
    slim.main(_args(repo_root, work, data, '--phase', 'train-supernet'))
    assert osp.isfile(work / 'supernet' / 'last_checkpoint')
    slim.main(_args(repo_root, work, data, '--phase', 'build-lut', *LUT_ARGS))
    check = json.loads((work / 'lut_torch-cpu_accuracy.json').read_text())
    assert len(check['networks']) == 8

    # budgets between the full supernet and the smallest network, as predicted by the table
    table = lut.load(str(work / 'lut_torch-cpu.json'))
    from mmeff.slimming.space import get_space
    space = get_space(table['space'])
    full = lut.predict(table, space.to_arch(space.max_choices()))
    low = smallest_latency(space, lambda a: lut.predict(table, a))['latency_ms']
    budgets = [round(low + f * (full - low), 3) for f in (0.7, 0.35, 0.)]
    budgets[-1] = round(low + 1e-3, 3)
    slim.main(_args(repo_root, work, data, '--phase', 'search', '--budgets',
                    *map(str, budgets), *EVAL_ARGS))
    slim.main(_args(repo_root, work, data, '--phase', 'export-subnet', *LUT_ARGS, *EVAL_ARGS))

    out = work / 'search_torch-cpu'
    traj = load_trajectory(str(out / 'trajectory.json'))
    assert [r['budget_ms'] for r in traj['results']] == sorted(budgets, reverse=True)
    md = (out / 'trajectory.md').read_text()
    assert traj['steps'] and all(f"| {s['step']} | {s['description']}" in md
                                 for s in traj['steps'])
    assert 'latency table accuracy' in md and traj['lut_accuracy']['networks'] == 8
    assert osp.isfile(out / 'trajectory.png') and osp.isfile(out / 'importance.json')
    measured_full = traj['start']['measured_ms']
    for r in traj['results']:
        assert r['latency_ms'] <= r['budget_ms']
        assert r['measured_ms'] > 0
        # the inherited weights load into the classifier, train a step, fuse and export
        ckpt = torch.load(r['checkpoint'], map_location='cpu', weights_only=False)
        assert ckpt['meta']['arch'] == r['arch']
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
    # machine are noisy: the order of networks of close latency is not asserted)
    assert traj['results'][-1]['measured_ms'] < measured_full
