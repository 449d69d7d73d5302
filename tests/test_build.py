"""mmeff.deploy.build.build_model with ``cfg_options`` (tools/export.py --cfg-options)."""
import os.path as osp

import pytest

from mmeff.deploy.build import build_model

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
S0_CLS = osp.join(ROOT, 'configs', 'classification', 'effformerv2_s0_in1k.py')


def test_cfg_options_change_the_config_built():
    net, meta = build_model(S0_CLS, task='backbone',
                            cfg_options={'model.backbone.arch': 's1'})
    assert meta['arch'] == 's1' and net.arch['widths'] == [32, 48, 120, 224]
    with pytest.raises(ValueError, match=r"--cfg-options changes a config: give a config file "
                                         r"\(\.py\) instead of the arch name 's0'"):
        build_model('s0', cfg_options={'model.backbone.arch': 's1'})
    with pytest.raises(ValueError, match='modle'):  # a misspelt key: the tools' check
        build_model(S0_CLS, task='backbone', cfg_options={'modle.backbone.arch': 's1'})
