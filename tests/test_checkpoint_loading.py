"""Loading checkpoints (``mmeff.checkpoint``): files that do not fit the model, unsafe pickles,
and checkpoints named by URL, everywhere a checkpoint goes into a model (tools/test.py,
tools/demo.py, tools/train.py's load_from, the backbone's Pretrained init_cfg, export).

Models are L1 and inputs tiny; the tools run in-process with the expensive part (the test or
train loop) replaced, since what is checked happens before it. Nothing is downloaded: URLs are
served from the caches mmengine's loaders read first (``$TORCH_HOME/hub/checkpoints``).
"""
import glob
import os
import os.path as osp
import textwrap

import numpy as np
import pytest
import torch
from mmengine.config import Config

import mmeff.models  # noqa: F401  (registers mmeff, patches mmengine's local loader)
from helpers import load_tool
from mmeff.checkpoint import (UNSAFE_ENV, CheckpointError, CheckpointMismatchError,
                              UnsafeCheckpointError, read_checkpoint)
from mmeff.converters import load_checkpoint_file
from mmeff.models import EfficientFormer, EfficientFormerClassifier

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET_L1 = osp.join(ROOT, 'configs', 'detection', 'mask_rcnn_effformer_l1.py')
DET_L3 = osp.join(ROOT, 'configs', 'detection', 'mask_rcnn_effformer_l3.py')
SEG_L1 = osp.join(ROOT, 'configs', 'segmentation', 'fpn_effformer_l1_ade20k_40k.py')
OPEN_MMLAB_R50 = 'https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth'


def build_model(config: str, scope: str, **options):
    """The model of a config, built by its library's registry (no weights loaded)."""
    from mmengine.registry import DefaultScope

    from mmeff.compat import sync_bn_to_bn
    cfg = Config.fromfile(config)
    if options:
        cfg.merge_from_dict(options)
    sync_bn_to_bn(cfg.model)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        return registry.build(cfg.model)


def save(path, obj) -> str:
    torch.save(obj, path)
    return str(path)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """Checkpoints of every kind the issue lists, and ones that fit."""
    import timm
    import torchvision
    tmp = tmp_path_factory.mktemp('ckpts')
    torch.manual_seed(0)
    out = {}
    for name, config in (('det_l1', DET_L1), ('det_l3', DET_L3)):
        out[name] = save(tmp / f'{name}.pth', {'state_dict': build_model(config, 'mmdet')
                                               .state_dict(), 'meta': {}})
    out['seg_l1'] = save(tmp / 'seg_l1.pth',
                         {'state_dict': build_model(SEG_L1, 'mmseg').state_dict(), 'meta': {}})
    out['cls_l1'] = save(tmp / 'cls_l1.pth', {'state_dict': EfficientFormerClassifier(
        backbone=dict(arch='l1'), num_classes=10).state_dict()})
    out['timm_l1'] = save(tmp / 'timm_l1.pth', timm.create_model(
        'efficientformer_l1', pretrained=False).state_dict())
    out['resnet'] = save(tmp / 'resnet18.pth', torchvision.models.resnet18().state_dict())
    backbone = EfficientFormer('l1', out_norm_cfg=None)
    out['bb_l1'] = save(tmp / 'bb_l1.pth', {'state_dict': {
        'backbone.' + k: v for k, v in backbone.state_dict().items()}})
    return out


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    from mmeff.datasets.synthetic_coco import make_coco_dataset
    return make_coco_dataset(str(tmp_path_factory.mktemp('coco')), num_images=(1, 1),
                             size=(64, 64))


@pytest.fixture(scope='module')
def ade(tmp_path_factory):
    from mmeff.datasets.synthetic_ade import make_ade_dataset
    return make_ade_dataset(str(tmp_path_factory.mktemp('ade')), num_images=(1, 1),
                            size=(64, 64))


@pytest.fixture
def no_loops(monkeypatch):
    """Replace the Runner's train/test loops (what is checked happens before them)."""
    from mmengine.runner import Runner
    calls = []
    monkeypatch.setattr(Runner, 'test', lambda self: calls.append('test') or {'ran': 'test'})
    monkeypatch.setattr(Runner, 'train', lambda self: calls.append('train'))
    return calls


# ---------------------------------------------------------------------------- tools/test.py
WRONG_FOR_DETECTION = {
    # key: (what the message must say, ...): the file, the mismatch, the fix
    'det_l3': ("checkpoint arch: 'l3', model arch: 'l1'", 'model.backbone.arch',
               'shape mismatches'),
    'cls_l1': ('classification checkpoint', "init_cfg=dict(type='Pretrained'",
               'tools/train.py saved with this config', 'tensors missing'),
    'timm_l1': ("timm's layout", 'tools/convert_checkpoint.py', 'tensors missing'),
    'resnet': ('ResNet checkpoint', 'model.pretrained=None', 'tensors missing'),
    'bb_l1': ('backbone checkpoint', "init_cfg=dict(type='Pretrained'", 'tensors missing'),
}


@pytest.mark.parametrize('which', sorted(WRONG_FOR_DETECTION))
def test_test_tool_refuses_a_checkpoint_that_does_not_fit(which, files, coco, tmp_path,
                                                          no_loops):
    with pytest.raises(CheckpointMismatchError) as info:
        load_tool(ROOT, 'test').main([DET_L1, files[which], '--work-dir', str(tmp_path),
                                      '--cfg-options', f"data_root={coco['data_root']}/"])
    msg = str(info.value)
    assert msg.startswith(f'{files[which]} does not fit this MaskRCNN (EfficientFormer-l1)'), msg
    for part in WRONG_FOR_DETECTION[which]:
        assert part in msg, (part, msg)
    assert no_loops == []  # refused before evaluating


def test_test_tool_accepts_a_checkpoint_of_the_same_model(files, coco, tmp_path, no_loops):
    metrics = load_tool(ROOT, 'test').main([DET_L1, files['det_l1'], '--work-dir', str(tmp_path),
                                            '--cfg-options', f"data_root={coco['data_root']}/"])
    assert metrics == {'ran': 'test'} and no_loops == ['test']


def test_test_tool_segmentation_other_model_and_class_count(files, ade, tmp_path, no_loops):
    test = load_tool(ROOT, 'test')
    opts = ['--work-dir', str(tmp_path), '--cfg-options', f"data_root={ade['data_root']}"]
    with pytest.raises(CheckpointMismatchError,
                       match=r'a checkpoint of a whole model with an EfficientFormer .arch '
                             r"'l1'. backbone and neck, roi_head, rpn_head.*Use a checkpoint "
                             r'saved with this config'):
        test.main([SEG_L1, files['det_l1'], *opts])
    with pytest.raises(CheckpointMismatchError,
                       match=r'Class-count mismatch: 2 head tensors differ.*decode_head.conv_seg'
                             r'.weight: checkpoint \(150, \d+, 1, 1\) vs model \(5, \d+, 1, 1\).*'
                             r'model.decode_head.num_classes=5'):
        test.main([SEG_L1, files['seg_l1'], *opts, 'model.decode_head.num_classes=5'])
    assert test.main([SEG_L1, files['seg_l1'], *opts]) == {'ran': 'test'}


# ---------------------------------------------------------------------------- tools/demo.py
def test_demo_refuses_a_checkpoint_that_does_not_fit(files, coco, ade, tmp_path):
    run_demo = load_tool(ROOT, 'demo').run_demo
    image = coco['val2017_images'][0]
    with pytest.raises(CheckpointMismatchError, match=r'cls_l1.pth does not fit this MaskRCNN.*'
                                                      r'classification checkpoint'):
        run_demo(DET_L1, files['cls_l1'], [image], out_dir=str(tmp_path / 'det'), device='cpu')
    with pytest.raises(CheckpointMismatchError, match=r'resnet18.pth does not fit this '
                                                      r'EncoderDecoder.*model.pretrained=None'):
        run_demo(SEG_L1, files['resnet'], [image], out_dir=str(tmp_path / 'seg'), device='cpu')
    assert not osp.exists(tmp_path / 'det' / 'vis') and not osp.exists(tmp_path / 'seg' / 'vis')


# ---------------------------------------------------------------------------- tools/train.py
def test_train_tool_load_from(files, coco, tmp_path, no_loops):
    train = load_tool(ROOT, 'train')
    opts = ['--cfg-options', f"data_root={coco['data_root']}/", f"pretrained={files['bb_l1']}"]
    # A classification checkpoint as load_from: the backbone would load, the rest stay random.
    with pytest.raises(CheckpointMismatchError,
                       match=r'load_from needs a checkpoint of the whole model.*'
                             r"init_cfg=dict\(type='Pretrained'.*instead of load_from"):
        train.main([DET_L1, '--work-dir', str(tmp_path / 'a'), *opts,
                    f"load_from={files['cls_l1']}"])
    # Another arch.
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint arch: 'l3', model arch: 'l1'"):
        train.main([DET_L1, '--work-dir', str(tmp_path / 'b'), *opts,
                    f"load_from={files['det_l3']}"])
    assert no_loops == []
    # Fine-tuning a detector to other classes: allowed (mmengine keeps the heads' initial
    # weights), and said.
    few = ['model.roi_head.bbox_head.num_classes=3', 'model.roi_head.mask_head.num_classes=3']
    train.main([DET_L1, '--work-dir', str(tmp_path / 'c'), *opts, *few,
                f"load_from={files['det_l1']}"])
    assert no_loops == ['train']
    log = ''.join(open(p).read() for p in glob.glob(str(tmp_path / 'c' / '*' / '*.log')))
    assert 'Class-count mismatch: 6 head tensors differ' in log
    assert 'these 6 head tensors keep their initial weights' in log
    # Resuming needs the exact model.
    with pytest.raises(CheckpointMismatchError, match='Class-count mismatch'):
        train.main([DET_L1, '--work-dir', str(tmp_path / 'd'), *opts, *few,
                    '--resume', files['det_l1']])


# ---------------------------------------------------------------------------- backbone / export
def test_backbone_pretrained_says_what_the_file_is(files, tmp_path):
    def init(checkpoint, arch='l1'):
        model = EfficientFormer(arch, init_cfg=dict(type='Pretrained', checkpoint=checkpoint,
                                                    prefix='backbone.'))
        model.init_weights()
        return model

    with pytest.raises(CheckpointMismatchError, match=r"No key of '.*resnet18.pth' starts with "
                                                      r"prefix 'backbone.': it is a ResNet "
                                                      r'checkpoint.*model.pretrained=None'):
        init(files['resnet'])
    # The backbone of a whole detector checkpoint (same arch) loads.
    model = init(files['det_l1'])
    det = torch.load(files['det_l1'], weights_only=True)['state_dict']
    assert torch.equal(model.stages[3].blocks[0].ls1.gamma,
                       det['backbone.stages.3.blocks.0.ls1.gamma'])
    # A tensor the model has and the file lacks is an error, not a warning (here: a fourth
    # block in the first stage).
    arch = dict(EfficientFormer.arch_settings['l1'], depths=[4, 2, 6, 4])
    with pytest.raises(CheckpointMismatchError,
                       match=r"does not fit this arch \(\d+ backbone tensors missing, e.g. "
                             r"\['stages.0.blocks.3"):
        init(files['det_l1'], arch=arch)


def test_export_says_what_the_file_is(files):
    from mmeff.deploy.build import build_model as build_export
    with pytest.raises(CheckpointMismatchError, match=r'resnet18.pth cannot be exported: it is '
                                                      r'a ResNet checkpoint'):
        build_export('l1', checkpoint=files['resnet'])
    with pytest.raises(CheckpointMismatchError, match=r"does not fit this arch.*checkpoint arch: "
                                                      r"'l3', model arch: 'l1'"):
        build_export('l1', checkpoint=files['det_l3'])
    with pytest.raises(CheckpointMismatchError, match=r'classifier head: export it with task '
                                                      r'"backbone"'):
        build_export('l1', task='classifier', checkpoint=files['det_l1'], num_classes=10)
    net, meta = build_export('l1', checkpoint=files['det_l1'])
    assert 'mmeff layout' in meta['weights']


# ---------------------------------------------------------------------------- URLs
@pytest.fixture
def url_cache(tmp_path, monkeypatch):
    """Serve ``https://.../NAME`` from the download cache (``torch.hub`` reads
    ``$TORCH_HOME/hub/checkpoints/NAME`` before downloading); any real download fails."""
    import urllib.error
    cache = tmp_path / 'torch' / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError(f'offline test, no download of {url}')

    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)

    def put(url, src):
        os.symlink(src, cache / url.rsplit('/', 1)[1])
    return put


def test_urls_load_through_mmengine_with_the_same_checks(files, url_cache):
    url = 'https://example.org/weights/efficientformer_l1_mmeff.pth'
    url_cache(url, files['bb_l1'])
    model = EfficientFormer('l1', init_cfg=dict(type='Pretrained', checkpoint=url))
    model.init_weights()
    ref = torch.load(files['bb_l1'], weights_only=True)['state_dict']
    assert torch.equal(model.stem.conv1.weight, ref['backbone.stem.conv1.weight'])
    assert read_checkpoint(url)['state_dict'].keys() == ref.keys()
    # torchvision:// (stock mmdet configs' ResNet-50): a ResNet, with the fix.
    from mmengine.runner.checkpoint import get_torchvision_models
    url_cache(get_torchvision_models()['resnet50'], files['resnet'])
    model = EfficientFormer('l1', init_cfg=dict(type='Pretrained',
                                                checkpoint='torchvision://resnet50'))
    with pytest.raises(CheckpointMismatchError, match=r"'torchvision://resnet50' starts with "
                                                      r'prefix.*ResNet.*model.pretrained=None'):
        model.init_weights()
    # A model-zoo name that cannot be downloaded (offline) still says what to change.
    model = EfficientFormer('l1', init_cfg=dict(type='Pretrained',
                                                checkpoint='open-mmlab://resnet101_v1c'))
    with pytest.raises(CheckpointError, match=r"Cannot load checkpoint 'open-mmlab://resnet101_"
                                              r"v1c'.*URLError.*model.pretrained=None"):
        model.init_weights()
    # Hub names have no mmengine loader: the message says how to get an mmeff file.
    model = EfficientFormer('l1', init_cfg=dict(
        type='Pretrained', checkpoint='timm/efficientformer_l1.snap_dist_in1k'))
    with pytest.raises(CheckpointError, match=r'convert_checkpoint.py --timm efficientformer_l1.'
                                              r'snap_dist_in1k pretrained/efficientformer_l1_'):
        model.init_weights()


STOCK_MMSEG_SWAP = """
    _base_ = ['mmseg::_base_/models/fpn_r50.py']
    custom_imports = dict(imports=['mmeff.models'], allow_failed_imports=False)
    model = dict(
        backbone=dict(_delete_=True, type='mmeff.EfficientFormer', arch='l1'),
        neck=dict(in_channels=[48, 96, 224, 448]))
    """


def test_stock_mmseg_config_pretrained_resnet_says_set_it_to_none(tmp_path):
    """mmseg's fpn_r50.py sets model.pretrained='open-mmlab://resnet50_v1c'; EncoderDecoder
    hands it to whatever backbone the config has, even with ``_delete_=True``. It is refused
    when the backbone is built (before any data or download), with only the useful advice."""
    config = tmp_path / 'fpn_effformer_stock.py'
    config.write_text(textwrap.dedent(STOCK_MMSEG_SWAP))
    with pytest.raises(ValueError, match=r"pretrained='open-mmlab://resnet50_v1c'\): that is "
                                         r"another backbone's checkpoint.*set "
                                         r"model.pretrained=None") as info:
        build_model(str(config), 'mmseg')
    assert 'download' not in str(info.value)
    model = build_model(str(config), 'mmseg', **{'model.pretrained': None})
    model.init_weights()  # random init on purpose: no error


# ---------------------------------------------------------------------------- unsafe pickles
class Arbitrary:
    """A class no checkpoint needs."""


class RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


class ReachesPastHistoryBuffer:
    """What allowing the real ``getattr`` would open: any attribute of an allowed class."""

    def __reduce__(self):
        from mmengine.logging import HistoryBuffer
        return (getattr, (HistoryBuffer, '__init__'))


def test_unsafe_pickles_are_refused_unless_the_user_opts_in(tmp_path, monkeypatch, url_cache):
    from mmengine.runner import load_checkpoint
    from mmengine.runner.checkpoint import _load_checkpoint
    marker = tmp_path / 'ran'
    weights = {'w': torch.ones(2)}
    cases = {
        'system.pth': (RunsCommand(marker), 'GLOBAL posix.system'),
        'class.pth': (Arbitrary(), 'GLOBAL test_checkpoint_loading.Arbitrary'),
        'getattr.pth': (ReachesPastHistoryBuffer(), "getattr(HistoryBuffer, '__init__')"),
    }
    monkeypatch.delenv(UNSAFE_ENV, raising=False)
    for name, (obj, what) in cases.items():
        path = save(tmp_path / name, {'state_dict': weights, 'extra': obj})
        for load in (lambda p: load_checkpoint(torch.nn.Module(), p),  # mmengine's loader
                     load_checkpoint_file):
            with pytest.raises(UnsafeCheckpointError) as info:
                load(path)
            msg = str(info.value)
            assert f"Checkpoint '{path}' was refused" in msg and what in msg, msg
            assert f'{UNSAFE_ENV}=1' in msg
        assert not marker.exists()
    # Downloads too (mmengine's http loader alone would unpickle anything).
    url = 'https://example.org/weights/class.pth'
    url_cache(url, str(tmp_path / 'class.pth'))
    for load in (read_checkpoint, _load_checkpoint):
        with pytest.raises(UnsafeCheckpointError, match=f"'{url}' was refused.*{UNSAFE_ENV}=1"):
            load(url)
    # Opted in: loaded as before (and the command in the pickle ran: what the refusal prevents).
    monkeypatch.setenv(UNSAFE_ENV, '1')
    assert isinstance(_load_checkpoint(str(tmp_path / 'class.pth'))['extra'], Arbitrary)
    assert torch.equal(load_checkpoint_file(tmp_path / 'system.pth')['w'], torch.ones(2))
    assert marker.exists()


def test_test_tool_refuses_an_unsafe_file_before_building(files, tmp_path):
    path = save(tmp_path / 'epoch_1.pth', {'state_dict': {}, 'extra': Arbitrary()})
    with pytest.raises(UnsafeCheckpointError, match=f'{UNSAFE_ENV}=1'):
        load_tool(ROOT, 'test').main([DET_L1, path, '--work-dir', str(tmp_path)])


def test_runner_checkpoints_load_with_weights_only(tmp_path):
    """What the Runner saves (message hub, numpy scalars and arrays, RNGStateHook's states,
    dataset_meta, optimizer, LR schedulers, EMA, best-checkpoint bookkeeping) loads with
    ``weights_only=True``, resumes, and holds no type outside the allowed list."""
    from mmengine.evaluator import BaseMetric, Evaluator
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    from mmeff.checkpoint import mmengine_safe_globals

    class Toy(BaseModel):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 1)
            self.bn = torch.nn.BatchNorm1d(1)

        def forward(self, inputs, labels, mode='tensor'):
            out = self.bn(self.fc(inputs))
            if mode == 'loss':
                return dict(loss=((out.squeeze(1) - labels) ** 2).mean())
            return [dict(pred=o) for o in out]

    class ToyMetric(BaseMetric):
        def process(self, data_batch, data_samples):
            self.results.append(len(data_samples))

        def compute_metrics(self, results):
            return dict(acc=np.float64(0.5))  # a numpy scalar, as many metrics return

    class ToyData(torch.utils.data.Dataset):
        metainfo = dict(classes=('a', 'b'), palette=[(1, 2, 3), (4, 5, 6)])

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return dict(inputs=torch.full((2,), float(i)), labels=torch.tensor(float(i % 2)))

    def runner(work_dir, **kwargs):
        loader = dict(dataset=ToyData(), sampler=dict(type='DefaultSampler', shuffle=True),
                      batch_size=2, collate_fn=dict(type='default_collate'))
        return Runner(
            model=Toy(), work_dir=str(work_dir), train_dataloader=loader,
            val_dataloader=loader, val_evaluator=Evaluator(ToyMetric()), val_cfg=dict(),
            train_cfg=dict(by_epoch=True, max_epochs=2, val_interval=1),
            optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
            param_scheduler=[dict(type='LinearLR', start_factor=0.1, by_epoch=True, end=1,
                                  convert_to_iter_based=True),
                             dict(type='CosineAnnealingLR', by_epoch=True, begin=1, T_max=1)],
            default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1,
                                               save_best='acc', rule='greater')),
            custom_hooks=[dict(type='mmeff.RNGStateHook'), dict(type='EMAHook')],
            randomness=dict(seed=0), default_scope='mmengine', **kwargs)

    runner(tmp_path / 'a').train()
    path = str(tmp_path / 'a' / 'epoch_2.pth')
    allowed = {f'{g.__module__}.{g.__qualname__}' if not isinstance(g, tuple) else g[1]
               for g in mmengine_safe_globals()}
    held = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert {'mmengine.logging.history_buffer.HistoryBuffer', 'builtins.getattr'} <= held
    assert held <= allowed, held - allowed
    ckpt = read_checkpoint(path)
    assert {'message_hub', 'rng_state', 'optimizer', 'param_schedulers', 'ema_state_dict'} \
        <= set(ckpt) and ckpt['meta']['dataset_meta']['classes'] == ('a', 'b')
    resumed = runner(tmp_path / 'b', load_from=path, resume=True)
    resumed.train()  # resumes at epoch 2 of 2: loads everything, trains nothing more
    assert resumed.epoch == 2 and resumed.message_hub.get_info('best_score') == 0.5


def readme_swap_configs():
    """The config blocks of README.md's section on stock mmdet/mmseg configs."""
    with open(osp.join(ROOT, 'README.md')) as f:
        text = f.read()
    section = text.split('## Swapping the backbone into stock mmdet/mmseg configs')[1]
    section = section.split('\n## ')[0]
    return [block.split('```')[0] for block in section.split('```python\n')[1:]]


def test_readme_swap_configs_build_and_run(tmp_path):
    blocks = readme_swap_configs()
    assert len(blocks) == 2
    x = torch.rand(1, 3, 64, 64)
    for i, (block, scope) in enumerate(zip(blocks, ('mmseg', 'mmdet'))):
        assert f"_base_ = '{scope}::" in block
        config = tmp_path / f'readme_{i}.py'
        config.write_text(block)
        model = build_model(str(config), scope).eval()
        # The README's weights, not the stock config's ResNet ones.
        assert model.backbone.init_cfg['checkpoint'] == \
            'pretrained/efficientformer_l1_300d_mmeff.pth'
        with torch.no_grad():
            feats = model.extract_feat(x)  # the neck takes the backbone's maps
        assert len(feats) == 4 and all(f.shape[1] == 256 for f in feats)
