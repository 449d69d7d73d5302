"""timm's published EfficientFormer weights (``efficientformer_l{1,3,7}.snap_dist_in1k``,
``efficientformerv2_{s0,s1,s2,l}.snap_dist_in1k``).

timm hosts the authors' distilled ImageNet-1K weights on the Hugging Face hub. This module gets
them through timm's own loader (``timm.create_model(name, pretrained=True)``: download, cache,
timm's checkpoint filter, strict load), so what comes out is exactly the state dict of timm's
model with those weights; :func:`mmeff.converters.convert_timm` then maps it to mmeff's layout.

Offline, pass the weight file (``model.safetensors`` / ``pytorch_model.bin`` of the hub repo,
or, for V1, the authors' ``efficientformer_l*_300d.pth``) as ``file``: timm reads it instead of
downloading (its ``pretrained_cfg_overlay=dict(file=...)``), through the same filter and strict
load. timm has no filter for the authors' V2 files (``eformer_s0_450.pth``): convert those
directly (``tools/convert_checkpoint.py FILE DST``).
"""
import os.path as osp
from typing import Dict, List, Optional

import torch

from . import CheckpointError

# Name prefixes of the exception types raised by the download stacks timm uses (Hugging Face
# hub over requests or httpx, torch.hub over urllib): a failed download, not a bad name or file.
_NETWORK_MODULES = ('huggingface_hub', 'requests', 'httpx', 'httpcore', 'urllib', 'urllib3',
                    'socket', 'ssl')


class WeightsDownloadError(CheckpointError):
    """timm's pretrained weights could not be downloaded (offline, blocked, hub error).

    Attributes ``name``, ``page`` and ``reason`` let a tool say the same with its own option
    (``how``) for passing a local file.
    """

    def __init__(self, name: str, page: str, reason: str, how: str = 'pass its path as file'):
        self.name, self.page, self.reason = name, page, reason
        super().__init__(f'could not download the weights of {name} from {page} ({reason}); '
                         f'offline, download model.safetensors (or pytorch_model.bin) from that '
                         f'page on a machine with internet and {how}')


def timm_pretrained_names() -> List[str]:
    """The pretrained EfficientFormer (V1 and V2) weights timm knows, e.g.
    ``efficientformer_l1.snap_dist_in1k``, ``efficientformerv2_s0.snap_dist_in1k``."""
    import timm
    return timm.list_pretrained('efficientformer_l*') + timm.list_pretrained('efficientformerv2_*')


def timm_hub_page(name: str) -> str:
    """Where the weights of ``name`` live (the Hugging Face hub repo timm downloads from)."""
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    hub_id = getattr(cfg, 'hf_hub_id', None) if cfg is not None else None
    if hub_id in (None, '', 'timm/'):
        hub_id = f'timm/{name}'
    return f'https://huggingface.co/{hub_id}'


def _is_download_error(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return any(cls.__module__.split('.')[0] in _NETWORK_MODULES for cls in type(exc).__mro__)


def load_timm_pretrained(name: str, file: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """State dict (timm's layout) of timm's ``name`` with its pretrained weights.

    Args:
        name: a timm pretrained tag, one of :func:`timm_pretrained_names`
            (``efficientformer_l1.snap_dist_in1k``, ...). A bare architecture name
            (``efficientformer_l1``) means its default weights.
        file: read the weights from this local file instead of downloading them.

    Raises:
        ValueError: ``name`` is not one of timm's pretrained EfficientFormer weights.
        FileNotFoundError: ``file`` does not exist.
        WeightsDownloadError: the download failed (the message says how to pass a file).
    """
    import timm
    known = timm_pretrained_names()
    archs = sorted({n.split('.')[0] for n in known})
    if name not in known and name not in archs:
        raise ValueError(f'{name!r} is not a timm EfficientFormer with pretrained weights; '
                         f'timm has: {", ".join(known)}')
    overlay = None
    if file is not None:
        file = osp.abspath(osp.expanduser(str(file)))
        if not osp.isfile(file):
            raise FileNotFoundError(f'weights file {file!r} (for {name}) does not exist')
        overlay = dict(file=file)
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [''])[0].split('. ')[0][:200]
        reason = f'{type(exc).__name__}: {first}'
        if file is not None:  # unreadable, or another model's weights (strict load)
            authors = ("the authors' .pth of the same variant" if 'v2' not in name else
                       "(the authors' eformer_*.pth files are not in timm's layout: convert "
                       "them directly with tools/convert_checkpoint.py FILE DST)")
            raise CheckpointError(
                f'weights file {file!r} does not load into timm\'s {name} ({reason}); it must be '
                f'that model\'s weights: the hub\'s model.safetensors / pytorch_model.bin or '
                f'{authors}') from exc
        if _is_download_error(exc):
            raise WeightsDownloadError(name, timm_hub_page(name), reason) from exc
        raise
    return model.state_dict()


__all__ = ['WeightsDownloadError', 'timm_pretrained_names', 'timm_hub_page',
           'load_timm_pretrained']
