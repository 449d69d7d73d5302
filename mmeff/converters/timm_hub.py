"""timm's published EfficientFormer weights (``efficientformer_l{1,3,7}.snap_dist_in1k``,
``efficientformerv2_{s0,s1,s2,l}.snap_dist_in1k``).

timm hosts the authors' distilled ImageNet-1K weights on the Hugging Face hub. This module
fetches the weight file of timm's hub repo (``model.safetensors``, else ``pytorch_model.bin``,
as timm does) with ``huggingface_hub`` (same cache as timm), reads it with mmeff's safe reader
(:func:`mmeff.checkpoint.read_checkpoint_file`: safetensors through safetensors, anything else
with ``weights_only=True``, refused when it holds other Python objects unless
``MMEFF_ALLOW_UNSAFE_LOAD=1``) and hands the tensors to timm's own model
(``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(state_dict=...))``:
timm's checkpoint filter and strict load), so what comes out is exactly the state dict of
timm's model with those weights; :func:`mmeff.converters.convert_timm` then maps it to mmeff's
layout. timm's own file loader is never used: it unpickles with ``weights_only=False``, which
runs whatever code a file holds.

Offline, pass the weight file (``model.safetensors`` / ``pytorch_model.bin`` of the hub repo,
or, for V1, the authors' ``efficientformer_l*_300d.pth``) as ``file``: it goes through the same
reader, filter and strict load. timm has no filter for the authors' V2 files
(``eformer_s0_450.pth``): convert those directly (``tools/convert_checkpoint.py FILE DST``).

Without a network the download fails fast: the hub (``HF_ENDPOINT``, default
https://huggingface.co) is asked once, with a short timeout, whether it answers; when it does
not, or with ``HF_HUB_OFFLINE=1``, only the local cache is looked at, and a file not found
there is one error naming the page to download it from and the option to pass it with.
"""
import os
import os.path as osp
from typing import Dict, List, Optional

import torch

from mmeff.checkpoint import CheckpointError, read_checkpoint_file

# Seconds to wait for the hub's first answer before taking the machine for offline.
HUB_TIMEOUT_S = 5.0

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
    """The pretrained weights timm knows of every family's archs, e.g.
    ``efficientformer_l1.snap_dist_in1k``, ``efficientformerv2_s0.snap_dist_in1k``."""
    import timm

    from mmeff.models.families import FAMILIES
    return [name for family in FAMILIES.values()  # family by family, each sorted as timm does
            for name in sorted(n for timm_name in family.timm_names.values()
                               for n in timm.list_pretrained(timm_name + '.*'))]


def timm_hub_page(name: str) -> str:
    """Where the weights of ``name`` live (the Hugging Face hub repo timm downloads from)."""
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    hub_id = getattr(cfg, 'hf_hub_id', None) if cfg is not None else None
    if hub_id in (None, '', 'timm/'):
        hub_id = f'timm/{name}'
    return f'{hub_endpoint()}/{hub_id.partition("@")[0]}'


def _is_download_error(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return any(cls.__module__.split('.')[0] in _NETWORK_MODULES for cls in type(exc).__mro__)


def _resolve_name(name: str) -> str:
    """``name`` with its pretrained tag: a bare architecture (``efficientformer_l1``) means its
    default weights, the first tag timm registers for it."""
    if '.' in name:
        return name
    from timm.models import get_arch_pretrained_cfgs
    tags = list(get_arch_pretrained_cfgs(name))
    return tags[0] if tags else name


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network access (as huggingface_hub reads it)."""
    return os.environ.get('HF_HUB_OFFLINE', '').strip().upper() in ('1', 'ON', 'YES', 'TRUE')


def hub_endpoint() -> str:
    """The hub's address: ``HF_ENDPOINT``, default https://huggingface.co."""
    return (os.environ.get('HF_ENDPOINT') or 'https://huggingface.co').rstrip('/')


def hub_unreachable(endpoint: Optional[str] = None, timeout: float = HUB_TIMEOUT_S
                    ) -> Optional[str]:
    """None when the hub answers an HTTP request (any status) within ``timeout`` seconds, else
    why not. One request, no retries (proxies from the environment are used, as downloads
    use them): huggingface_hub itself retries a refused connection for most of a minute."""
    import urllib.error
    import urllib.request
    endpoint = endpoint or hub_endpoint()
    request = urllib.request.Request(endpoint + '/api/whoami-v2', method='HEAD')
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, 'reason', exc)
        return f'{endpoint} does not answer ({reason})'
    return None


def hub_weights_file(name: str, how: str = 'pass its path as file') -> str:
    """The local path of the weight file of timm's ``name`` (downloaded into the Hugging Face
    cache, or found there): ``model.safetensors``, else ``pytorch_model.bin``.

    Raises:
        WeightsDownloadError: no network (checked once, see the module docstring) or
            ``HF_HUB_OFFLINE=1`` and the file is not in the cache, or the download failed.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    from timm.models import get_pretrained_cfg
    cfg = get_pretrained_cfg(name)
    hub_id = getattr(cfg, 'hf_hub_id', None) or f'timm/{name}'
    repo_id, _, revision = hub_id.partition('@')
    page = timm_hub_page(name)
    names = [cfg.hf_hub_filename] if getattr(cfg, 'hf_hub_filename', None) else \
        ['model.safetensors', 'pytorch_model.bin']
    reason = 'HF_HUB_OFFLINE is set' if hub_offline() else hub_unreachable()
    local_only = reason is not None
    for filename in names:
        try:
            return hf_hub_download(repo_id, filename, revision=revision or None,
                                   local_files_only=local_only)
        except LocalEntryNotFoundError as exc:
            if local_only:
                continue  # not in the cache; maybe the other file is
            raise WeightsDownloadError(name, page, f'{type(exc).__name__}: '
                                       f'{str(exc).splitlines()[0][:200]}', how) from exc
        except EntryNotFoundError:
            continue  # the repo has no such file: try the next name
        except Exception as exc:  # noqa: BLE001  (sorted: network errors, else re-raised)
            if _is_download_error(exc):
                raise WeightsDownloadError(name, page, f'{type(exc).__name__}: '
                                           f'{str(exc).splitlines()[0][:200]}', how) from exc
            raise
    if local_only:
        raise WeightsDownloadError(name, page, f'{reason}, and the file is not in the Hugging '
                                   f'Face cache', how)
    raise WeightsDownloadError(name, page, f'the hub repo {repo_id} has none of {names}', how)


def read_weights_file(path: str) -> Dict[str, torch.Tensor]:
    """The state dict in a weight file, read safely (:func:`mmeff.checkpoint.
    read_checkpoint_file`), picked as timm's own loader picks it: ``state_dict_ema``,
    ``model_ema``, ``state_dict`` or ``model`` when the file holds a training checkpoint, with
    ``module.``/``_orig_mod.`` prefixes removed."""
    from timm.models import clean_state_dict
    checkpoint = read_checkpoint_file(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'weights file {path!r} holds a {type(checkpoint).__name__}, not '
                              f'a state dict')
    for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return clean_state_dict(checkpoint)


def load_timm_pretrained(name: str, file: Optional[str] = None,
                         how: str = 'pass its path as file') -> Dict[str, torch.Tensor]:
    """State dict (timm's layout) of timm's ``name`` with its pretrained weights.

    Args:
        name: a timm pretrained tag, one of :func:`timm_pretrained_names`
            (``efficientformer_l1.snap_dist_in1k``, ...). A bare architecture name
            (``efficientformer_l1``) means its default weights.
        file: read the weights from this local file instead of downloading them.
        how: how the caller passes a local file, for the download error's message.

    Raises:
        ValueError: ``name`` is not one of timm's pretrained EfficientFormer weights.
        FileNotFoundError: ``file`` does not exist.
        UnsafeCheckpointError: the file holds Python objects besides tensors (refused unless
            ``MMEFF_ALLOW_UNSAFE_LOAD=1``).
        CheckpointError: the file is corrupt, or not the weights of that model.
        WeightsDownloadError: the download failed (the message says how to pass a file).
    """
    import timm
    known = timm_pretrained_names()
    archs = sorted({n.split('.')[0] for n in known})
    if name not in known and name not in archs:
        raise ValueError(f'{name!r} is not a timm EfficientFormer with pretrained weights; '
                         f'timm has: {", ".join(known)}')
    tagged = _resolve_name(name)
    if file is not None:
        file = osp.abspath(osp.expanduser(str(file)))
        if not osp.isfile(file):
            raise FileNotFoundError(f'weights file {file!r} (for {name}) does not exist')
        source = file
    else:
        source = hub_weights_file(tagged, how)
    state_dict = read_weights_file(source)
    try:  # timm's filter and strict load, on tensors read safely above
        model = timm.create_model(tagged, pretrained=True,
                                  pretrained_cfg_overlay=dict(state_dict=state_dict))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [''])[0].split('. ')[0][:200]
        reason = f'{type(exc).__name__}: {first}'
        authors = ("the authors' .pth of the same variant" if 'v2' not in name else
                   "(the authors' eformer_*.pth files are not in timm's layout: convert "
                   "them directly with tools/convert_checkpoint.py FILE DST)")
        raise CheckpointError(
            f'weights file {source!r} does not load into timm\'s {name} ({reason}); it must be '
            f'that model\'s weights: the hub\'s model.safetensors / pytorch_model.bin or '
            f'{authors}') from exc
    return model.state_dict()


__all__ = ['WeightsDownloadError', 'timm_pretrained_names', 'timm_hub_page', 'hub_offline',
           'hub_endpoint', 'hub_unreachable', 'hub_weights_file', 'read_weights_file',
           'load_timm_pretrained']
