"""Where the ImageNet weights come from (README "Pretrained ImageNet weights") and
tools/convert_checkpoint.py --timm: timm's published weights by name, downloaded by timm or,
offline, read from a local file; no test here touches the network (``HF_HUB_OFFLINE=1``)."""
import os
import os.path as osp
import re
import shlex
import subprocess
import sys

import pytest
import timm
import torch

from mmeff.converters import convert_timm, load_checkpoint_file
from mmeff.models import EfficientFormer
from mmeff.models.classifiers import EfficientFormerClassifier

from helpers import load_tool, rel_err, timm_efficientformer

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TIMM_NAMES = ['efficientformer_l1.snap_dist_in1k', 'efficientformer_l3.snap_dist_in1k',
              'efficientformer_l7.snap_dist_in1k']


def readme_section(title='## Pretrained ImageNet weights'):
    with open(osp.join(ROOT, 'README.md')) as f:
        text = f.read()
    assert title in text, f'README.md has no {title!r} section'
    section = text.split(title, 1)[1]
    return section.split('\n## ', 1)[0]


def offline_env(tmp_path):
    """No network and an empty Hugging Face cache: a download can only fail, and fast."""
    return dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'),
                TORCH_HOME=str(tmp_path / 'torch'), PYTHONWARNINGS='ignore')


def run_convert(args, env):
    return subprocess.run([sys.executable, 'tools/convert_checkpoint.py', *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_readme_names_the_weight_sources():
    section = readme_section()
    assert 'github.com/snap-research/EfficientFormer' in section
    for name in ('efficientformer_l1_300d.pth', 'efficientformer_l1_1000d.pth',
                 'efficientformer_l3_300d.pth', 'efficientformer_l7_300d.pth'):
        assert name in section, name
    # The timm names are exactly timm's pretrained EfficientFormer (V1) weights.
    assert timm.list_pretrained('efficientformer_l*') == TIMM_NAMES
    named = sorted(set(re.findall(r'efficientformer_l\d\.\w+', section)))
    assert named == TIMM_NAMES
    # The authors' file converts to the path the detection/segmentation configs read.
    assert 'pretrained/efficientformer_l3_300d_mmeff.pth' in section
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'detection', 'mask_rcnn_effformer_l3.py'))
    assert cfg.pretrained == 'pretrained/efficientformer_l3_300d_mmeff.pth'


def readme_timm_command(family: str = 'efficientformer_l'):
    """The README's ``--timm`` command for V1 (``efficientformer_l``) or V2
    (``efficientformerv2_``)."""
    (cmd,) = [ln.strip() for ln in readme_section().splitlines()
              if f'tools/convert_checkpoint.py --timm {family}' in ln]
    return shlex.split(cmd)


def test_readme_timm_command_with_a_local_file_gives_timm_outputs(tmp_path):
    """The README's command, plus --timm-file: a randomised timm L1 saved as the hub's
    model.safetensors becomes an mmeff checkpoint with timm's outputs."""
    from safetensors.torch import save_file
    argv = readme_timm_command()
    assert argv[:3] == ['.venv/bin/python', 'tools/convert_checkpoint.py', '--timm']
    name, dst_in_readme = argv[3], argv[4]
    assert name == 'efficientformer_l1.snap_dist_in1k'
    ref = timm_efficientformer('l1', seed=7)
    weights = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(weights))
    dst = tmp_path / dst_in_readme
    res = run_convert(['--timm', name, str(dst), '--timm-file', str(weights)],
                      offline_env(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f'timm:{name}' in res.stdout and 'arch l1' in res.stdout
    assert [p.name for p in dst.parent.iterdir()] == [dst.name]  # no temporary file left

    ckpt = torch.load(dst, map_location='cpu', weights_only=True)
    assert ckpt['meta']['source_layout'] == 'timm' and ckpt['meta']['arch'] == 'l1'
    assert ckpt['meta']['converted_from'].startswith(f'timm:{name}:')
    sd = load_checkpoint_file(str(dst))
    model = EfficientFormerClassifier(backbone=dict(arch='l1'), num_classes=1000)
    model.load_state_dict(sd, strict=True)
    model.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ref(x), model(x)
    assert expected.std() > 1e-2
    assert rel_err(got, expected) < 1e-5
    # ... and the dense backbone takes its part through the configs' init_cfg.
    backbone = EfficientFormer('l1', init_cfg=dict(type='Pretrained', checkpoint=str(dst),
                                                    prefix='backbone.'))
    backbone.init_weights()
    for k, v in backbone.state_dict().items():
        if not k.startswith('norm'):  # the dense output norms are not in an ImageNet model
            assert torch.equal(v, sd['backbone.' + k]), k


def test_readme_v2_timm_command_with_a_local_file_gives_timm_outputs(tmp_path):
    """The README's EfficientFormerV2 command, plus --timm-file: a randomised timm V2-S2 saved
    as the hub's model.safetensors becomes an mmeff checkpoint with timm's logits."""
    from safetensors.torch import save_file

    from test_backbone_v2 import randomise_v2_
    argv = readme_timm_command('efficientformerv2_')
    assert argv[:3] == ['.venv/bin/python', 'tools/convert_checkpoint.py', '--timm']
    name, dst_in_readme = argv[3], argv[4]
    assert name == 'efficientformerv2_s2.snap_dist_in1k' and name in timm.list_pretrained()
    ref = randomise_v2_(timm.create_model('efficientformerv2_s2', pretrained=False), seed=7)
    weights = tmp_path / 'model.safetensors'
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(weights))
    dst = tmp_path / dst_in_readme
    res = run_convert(['--timm', name, str(dst), '--timm-file', str(weights)],
                      offline_env(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    model = EfficientFormerClassifier(backbone=dict(type='mmeff.EfficientFormerV2', arch='s2'),
                                      num_classes=1000)
    model.load_state_dict(load_checkpoint_file(str(dst)), strict=True)
    model.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ref(x), model(x)
    assert expected.std() > 1e-2
    assert rel_err(got, expected) < 1e-5


def test_offline_without_a_file_fails_in_one_line(tmp_path):
    dst = tmp_path / 'out.pth'
    res = run_convert(['--timm', TIMM_NAMES[0], str(dst)], offline_env(tmp_path))
    assert res.returncode == 1
    assert 'Traceback' not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if 'error' in ln]
    assert len(lines) == 1, res.stderr
    assert 'could not download the weights of efficientformer_l1.snap_dist_in1k' in lines[0]
    assert 'https://huggingface.co/timm/efficientformer_l1.snap_dist_in1k' in lines[0]
    assert '--timm-file PATH' in lines[0]
    assert not dst.exists()


def test_timm_option_errors(tmp_path):
    main = load_tool(ROOT, 'convert_checkpoint').main
    dst = str(tmp_path / 'out.pth')
    with pytest.raises(ValueError, match=r"'efficientformer_l2' is not a timm EfficientFormer.*"
                                         r"efficientformer_l1\.snap_dist_in1k"):
        main(['--timm', 'efficientformer_l2', dst])
    with pytest.raises(FileNotFoundError, match='missing.safetensors'):
        main(['--timm', TIMM_NAMES[0], dst, '--timm-file', str(tmp_path / 'missing.safetensors')])
    # Another variant's weights: an error naming the file, not a traceback from timm.
    l3 = tmp_path / 'l3.pth'
    torch.save(timm.create_model('efficientformer_l3').state_dict(), l3)
    from mmeff.converters import CheckpointError
    with pytest.raises(CheckpointError, match=r"l3\.pth' does not load into timm's "
                                              r"efficientformer_l1\.snap_dist_in1k"):
        main(['--timm', TIMM_NAMES[0], dst, '--timm-file', str(l3)])
    for argv in ([str(l3), dst, '--timm', TIMM_NAMES[0]], [dst],
                 [str(l3), dst, '--timm-file', str(l3)],
                 ['--timm', TIMM_NAMES[0], dst, '--layout', 'authors']):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv
    assert not osp.exists(dst)


def test_explicit_layout_option(tmp_path):
    """``--layout`` names the source layout; a wrong one is refused with the detected one."""
    main = load_tool(ROOT, 'convert_checkpoint').main
    src, dst = tmp_path / 'timm_l1.pth', tmp_path / 'out.pth'
    sd = timm_efficientformer('l1').state_dict()
    torch.save(sd, src)
    out = main([str(src), str(dst), '--layout', 'timm'])
    assert list(out) == list(convert_timm(sd))
    with pytest.raises(SystemExit, match="looks like a 'timm' checkpoint, not 'authors'"):
        main([str(src), str(tmp_path / 'other.pth'), '--layout', 'authors'])
