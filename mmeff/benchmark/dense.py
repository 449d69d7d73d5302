"""Parameters and MACs of a whole detection (mmdet) or segmentation (mmseg) model.

:func:`analyze` builds the model of a config with random weights (no checkpoint is read) and
counts, on one ``1 x 3 x H x W`` input (default 800 x 1333, the COCO test scale; 512 x 512 for
ADE20K):

* params: every parameter of the model (backbone, neck, heads);
* MACs: mmengine's ``FlopAnalyzer`` (fvcore's counting rules, one multiply-add = 1; the number
  mmdet's ``get_flops.py`` and most papers print as "FLOPs") of the model's ``mode='tensor'``
  forward: backbone, neck and heads without post-processing. For two-stage detectors this
  includes the RoI heads on the RPN's test-time proposals and the mask head on the first 100
  RoIs, as in mmdet's ``_forward``. How many proposals survive the RPN's NMS depends on the
  (here random) weights, so the count would change from run to run; the RPN's NMS is switched
  off for the count (IoU threshold 1.0), which keeps ``test_cfg.rpn.max_per_img`` proposals, as
  a trained RPN does on a busy image (the count is returned).

Backbone and backbone + neck figures are returned too, since they do not depend on the
proposals. :func:`format_rows` prints them as ``tools/analyze_dense.py`` does.
"""
import os.path as osp
from typing import List, Optional, Sequence, Tuple

SCOPES = ('mmdet', 'mmseg')


def _data_samples(scope: str, height: int, width: int):
    """The meta information the heads' ``mode='tensor'`` forward needs for one padded image."""
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1., 1.), img_id=0)
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        return [DetDataSample(metainfo=meta)]
    from mmseg.structures import SegDataSample
    return [SegDataSample(metainfo=meta)]


def analyze(config: str, shape: Tuple[int, int] = (800, 1333),
            cfg_options: Optional[dict] = None) -> dict:
    """Params and MACs (whole model, backbone, backbone + neck) of ``config`` at ``shape``.

    Args:
        config (str): an mmdet or mmseg config file.
        shape (tuple[int, int]): input height and width, each at least 32.
        cfg_options (dict, optional): config entries to override.

    Returns:
        dict: ``params`` / ``macs`` (whole model), ``backbone_params`` / ``backbone_macs``,
        ``neck_macs`` (backbone + neck), ``num_proposals`` (two-stage detectors, else None),
        ``shape`` and ``config``.

    Raises:
        ValueError: a side under 32 pixels, or a config of neither mmdet nor mmseg.
    """
    import torch
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS, init_default_scope

    from mmeff.benchmark.complexity import count_macs, count_params
    from mmeff.engine import prepare_config

    height, width = shape
    if height < 32 or width < 32:
        raise ValueError(f'--shape {height} {width}: both sides must be at least 32 pixels')
    cfg = prepare_config(config, cfg_options=cfg_options)
    rpn_test = (cfg.model.get('test_cfg') or {}).get('rpn')
    if rpn_test and rpn_test.get('nms'):
        rpn_test.nms.iou_threshold = 1.0  # keep max_per_img proposals (see the module doc)
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f'{config}: analyze_dense.py handles mmdet and mmseg configs; this one '
                         f'has default_scope={scope!r}')
    init_default_scope(scope)
    if scope == 'mmseg':
        import mmseg.models  # noqa: F401  (registers the segmentors)
    else:
        import mmdet.models  # noqa: F401
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).eval()
    x = torch.zeros(1, 3, height, width)
    samples = _data_samples(scope, height, width)

    num_proposals = None
    if scope == 'mmdet' and getattr(model, 'with_rpn', False):
        with torch.no_grad():
            feats = model.extract_feat(x)
            num_proposals = len(model.rpn_head.predict(feats, samples, rescale=False)[0])

    class _TensorForward(torch.nn.Module):
        """The model's ``mode='tensor'`` forward with fixed data samples, for tracing."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, inputs):
            return self.net(inputs, samples, mode='tensor')

    class _Neck(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, inputs):
            return self.net.extract_feat(inputs)

    return dict(
        config=config, shape=(height, width),
        params=count_params(model), macs=count_macs(_TensorForward(model), x),
        backbone_params=count_params(model.backbone),
        backbone_macs=count_macs(model.backbone, x),
        neck_macs=count_macs(_Neck(model), x),
        num_proposals=num_proposals)


def format_rows(rows: Sequence[dict], markdown: bool = False) -> List[str]:
    """The lines that present :func:`analyze`'s rows: one sentence a config, or a Markdown
    table (params in M, MACs in G at the rows' input size, proposals of two-stage detectors).
    """
    lines = []
    if markdown and rows:
        h, w = rows[0]['shape']
        lines += [f'| config | params (M) | GMACs @{w}x{h} | backbone params (M) | '
                  f'backbone GMACs | backbone+neck GMACs | proposals |',
                  '|---|---|---|---|---|---|---|']
    for r in rows:
        name = osp.splitext(osp.basename(r['config']))[0]
        h, w = r['shape']
        if markdown:
            lines.append(f"| {name} | {r['params'] / 1e6:.1f} | {r['macs'] / 1e9:.1f} | "
                         f"{r['backbone_params'] / 1e6:.1f} | {r['backbone_macs'] / 1e9:.1f} | "
                         f"{r['neck_macs'] / 1e9:.1f} | {r['num_proposals'] or '-'} |")
        else:
            lines.append(
                f"{name} @ {w}x{h}: {r['params'] / 1e6:.2f} M params, "
                f"{r['macs'] / 1e9:.2f} GMACs (backbone {r['backbone_params'] / 1e6:.2f} M, "
                f"{r['backbone_macs'] / 1e9:.2f} GMACs; backbone+neck "
                f"{r['neck_macs'] / 1e9:.2f} GMACs"
                + (f"; RoI heads on {r['num_proposals']} proposals" if r['num_proposals']
                   is not None else '') + ')')
    return lines


__all__ = ['analyze', 'format_rows']
