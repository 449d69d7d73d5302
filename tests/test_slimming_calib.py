"""The images behind a slimming run's accuracies (mmeff.slimming.calib): the same calibration
batches, through the validation pipeline, in every phase; records that tell when they differ."""
import os.path as osp

import pytest
import torch

CONFIG = 'configs/slimming/supernet_tiny_synthetic.py'


@pytest.fixture(scope='module')
def cfg(repo_root, tmp_path_factory):
    from mmeff.datasets import make_imagefolder_dataset
    from mmeff.engine import prepare_config
    root = str(tmp_path_factory.mktemp('calib_data') / 'imagenet') + '/'
    make_imagefolder_dataset(root, num_classes=5, per_class=(8, 2), size=64)
    return prepare_config(osp.join(repo_root, CONFIG), str(tmp_path_factory.mktemp('w')),
                          dict(data_root=root))


def _paths(batches):
    return [ds.img_path for b in batches for ds in b['data_samples']]


def test_calibration_batches_are_the_same_in_every_phase(cfg):
    from mmeff.slimming.calib import calibration_batches
    first, record = calibration_batches(cfg, 2)
    again, record_again = calibration_batches(cfg, 2)
    assert record == record_again
    assert _paths(first) == _paths(again)
    for a, b in zip(first, again):
        # the validation pipeline: no random crop, flip, RandAugment or erasing
        assert torch.equal(a['inputs'], b['inputs'])
    paths = _paths(first)
    assert len(paths) == 32 and len(set(paths)) == 32
    assert all(f'{osp.sep}train{osp.sep}' in p for p in paths)
    assert tuple(first[0]['inputs'][0].shape) == (3, 64, 64)
    assert record['batches'] == 2 and record['batch_size'] == 16 and record['images'] == 32
    assert record['transforms'] == 'val_dataloader.dataset.pipeline'
    # shuffled by the seed: another seed draws other images (or another order)
    other, other_record = calibration_batches(cfg, 2, seed=1)
    assert _paths(other) != paths and other_record['images_sha256'] != record['images_sha256']


def test_too_many_calibration_batches_is_a_clear_error(cfg):
    from mmeff.slimming.calib import calibration_batches
    with pytest.raises(ValueError, match=r'the training split \(40 images, batch size 16\) '
                                         r'gives 2 calibration batches, not 5: use '
                                         r'--calib-batches 2 or fewer'):
        calibration_batches(cfg, 5)
    with pytest.raises(ValueError, match='must be a positive int, got 0'):
        calibration_batches(cfg, 0)


def test_accuracy_estimates_repeat_exactly(cfg):
    from mmeff.slimming.calib import accuracy_estimator, calibration_batches, validation_loader
    from mmeff.slimming.supernet import SlimmingSupernet
    torch.manual_seed(0)
    model = SlimmingSupernet(space=cfg.model.space.to_dict(), num_classes=5).eval()
    calib, _ = calibration_batches(cfg, 1)
    estimate = accuracy_estimator(model, calib, validation_loader(cfg))
    small = dict(blocks=[['mb4d', 'id'], ['mb4d', 'id'], ['mb4d', 'id', 'id'], ['mb4d', 'id']],
                 width_idx=[0, 0, 0, 0])
    full = model.space.max_choices()
    first = [estimate(full), estimate(small)]
    assert [estimate(small), estimate(full)] == first[::-1]  # any order, same numbers


def test_changed_images_are_named(cfg):
    from mmeff.slimming.calib import check_same_images, validation_loader, validation_record
    loader = validation_loader(cfg)
    record = validation_record(cfg, loader, None)
    assert record['images'] == 10
    check_same_images(record, dict(record), 'validation', 'trajectory.json', 'search again')
    changed = dict(record, images_sha256='0' * 64)
    with pytest.raises(ValueError, match=r'the validation images differ from those of '
                                         r'trajectory.json \(images_sha256: .*: search again'):
        check_same_images(record, changed, 'validation', 'trajectory.json', 'search again')
    with pytest.raises(ValueError, match=r'trajectory.json does not record its calibration '
                                         r'images .*: search again'):
        check_same_images(None, record, 'calibration', 'trajectory.json', 'search again')


def test_wrapped_datasets_are_refused_by_name(cfg):
    from mmeff.slimming.calib import calibration_batches
    wrapped = cfg.copy()
    wrapped.train_dataloader = dict(cfg.train_dataloader, dataset=dict(
        type='RepeatDataset', times=2, dataset=cfg.train_dataloader.dataset))
    with pytest.raises(ValueError, match=r"own pipeline .* got types 'RepeatDataset' and "
                                         r"'ImageFolderDataset'"):
        calibration_batches(wrapped, 1)
