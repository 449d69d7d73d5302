"""Reading checkpoints safely, and checking that a checkpoint fits the model it goes into.

Every place that puts a checkpoint into a model uses this module: ``tools/test.py`` and
``tools/demo.py`` (the whole model), ``tools/train.py`` (``load_from``, an explicit ``--resume``
file), the backbone's ``Pretrained`` init_cfg and ``pretrained=`` (local files and, through
mmengine's ``CheckpointLoader``, ``http(s)://``, ``open-mmlab://``, ``torchvision://``), the
classifier's ``_load_from_state_dict`` and export (``mmeff.deploy.build``). mmengine itself only
logs missing or mismatched keys and goes on with random weights; here a checkpoint that does not
fit is an error naming the file, what does not fit, what the file seems to be, and the fix.

Reading unpickles with ``weights_only=True``, allowing exactly the types mmengine's checkpoints
hold (:func:`mmengine_safe_globals`); a file with any other Python object is refused, unless the
user opts in with the environment variable ``MMEFF_ALLOW_UNSAFE_LOAD=1`` for a file they trust.

Imports: nothing of mmeff at module level, so the converters and the models can import this
module and it never imports them back while being imported. Only the diagnosis of a checkpoint
that does not fit (what the file is, which family and arch, which config to use) reads
``mmeff.converters`` and the family registry (``mmeff.models.families``), inside the functions.
"""
import os
import os.path as osp
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn

UNSAFE_ENV = 'MMEFF_ALLOW_UNSAFE_LOAD'
PURPOSES = ('exact', 'load_from', 'shapes')
# Names that no loader of mmengine understands (timm's ``pretrained_cfg`` hub ids).
_HUB_NAME = re.compile(r'^(hf[-_]hub:|timm/)')
# Model zoos of mmengine's loaders: none holds EfficientFormer weights.
_MODEL_ZOO_SCHEMES = ('open-mmlab://', 'openmmlab://', 'torchvision://', 'modelzoo://', 'mmcls://')
# torchvision's and mmcv's ResNet/ResNetV1c layouts, bare or under ``backbone.``.
_RESNET_KEY = re.compile(r'^(backbone\.)?(layer[1-4]\.\d+\.(conv|bn)\d|conv1\.weight|stem\.0\.)')


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or understood."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holding Python objects that ``weights_only`` loading refuses."""


class CheckpointMismatchError(CheckpointError, ValueError, KeyError):
    """A checkpoint that does not fit the model it is loaded into.

    A ``ValueError`` (a value that does not fit); also a ``KeyError`` for code written against
    earlier versions, which raised ``KeyError`` when no key matched.
    """

    __str__ = CheckpointError.__str__  # not KeyError's, which quotes the message


# ---------------------------------------------------------------------------- reading
def unsafe_load_allowed() -> bool:
    """Whether the user opted in to unpickling arbitrary objects (``MMEFF_ALLOW_UNSAFE_LOAD``)."""
    return os.environ.get(UNSAFE_ENV, '').strip().lower() in ('1', 'true', 'yes')


def _history_buffer_attribute(obj, name: str):
    """``getattr`` as far as ``HistoryBuffer`` needs it, and no further.

    A ``HistoryBuffer`` pickles its statistics methods as ``getattr(HistoryBuffer, 'mean')``
    (``builtins.getattr`` in the file). The real ``getattr`` cannot be allowed: chained with
    other calls it reaches any module (``getattr(f, '__globals__')`` ...). This stand-in,
    allowed under that name, only returns ``HistoryBuffer``'s own statistics methods.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    allowed = {'min', 'max', 'current', 'mean'} | set(HistoryBuffer._statistics_methods)
    if obj is HistoryBuffer and isinstance(name, str) and name in allowed:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'Unsupported global: getattr({getattr(obj, "__qualname__", type(obj).__name__)}, '
        f'{name!r}) (only HistoryBuffer statistics methods are allowed)')


def mmengine_safe_globals() -> list:
    """The Python types and functions (beyond tensors and containers) that mmengine's
    checkpoints hold, for ``torch.load(weights_only=True)``.

    ``message_hub`` holds ``HistoryBuffer``s (numpy arrays, and their statistics methods as
    ``getattr(HistoryBuffer, name)``: a restricted stand-in); numpy scalars appear in
    ``message_hub.runtime_info`` (e.g. a best score); ``rng_state`` (``mmeff.RNGStateHook``)
    holds numpy's MT19937 state, a ``uint32`` array. Unpickling sets a dtype's state, so numpy's
    dtype classes (``numpy.dtypes.Float64DType``...) are needed too, and an empty array's data
    is pickled as ``bytes()`` (torch allows ``bytearray`` and ``_codecs.encode``, not
    ``bytes``). Object arrays are not allowed: their elements would be arbitrary objects.
    Names of numpy 1.x (``numpy.core``) are accepted too, for files written with it.
    """
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    dtype_classes = sorted({type(np.dtype(c)) for c in '?bBhHiIlLqQefdgFDGUS'},
                           key=lambda t: t.__name__)
    return [HistoryBuffer, np.ndarray, np.dtype, *dtype_classes, bytes,
            multiarray._reconstruct, multiarray.scalar,
            (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
            (multiarray.scalar, 'numpy.core.multiarray.scalar'),
            (_history_buffer_attribute, 'builtins.getattr')]


def allowing_mmengine_globals():
    """A context in which ``weights_only`` loads accept :func:`mmengine_safe_globals` (only
    there: other ``torch.load`` calls of the process keep torch's own list)."""
    return torch.serialization.safe_globals(mmengine_safe_globals())


def _refusal_reason(exc: BaseException) -> str:
    """The line of torch's weights-only error that names the refused object."""
    for line in str(exc).splitlines():
        line = line.strip()
        if re.search(r'unsupported|unrecognized|can only create', line, re.I):
            line = re.sub(r'^WeightsUnpickler error:\s*', '', line)
            return re.split(r' was not an allowed| whose module|\. Please', line)[0]
    return str(exc).splitlines()[0][:200]


def _torch_said(exc: BaseException) -> str:
    """The informative line of a ``torch.load`` error: for a weights-only failure the
    unpickler's own line (``Unsupported operand 154``), not torch's preamble about defaults."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    for i, line in enumerate(lines):
        if 'WeightsUnpickler error:' in line:
            rest = line.split('WeightsUnpickler error:', 1)[1].strip()
            return (rest or (lines[i + 1] if i + 1 < len(lines) else line))[:200]
    return lines[0][:200]


def _refused(source: str, exc: BaseException) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f'Checkpoint {source!r} was refused: it holds a Python object that is not checkpoint '
        f'data ({_refusal_reason(exc)}), and unpickling it can run arbitrary code. Load it only '
        f'if you trust where it comes from, with the environment variable {UNSAFE_ENV}=1 (e.g. '
        f'{UNSAFE_ENV}=1 python tools/test.py ...); or re-save the weights alone where you '
        f"trust it: torch.save({{'state_dict': ckpt['state_dict']}}, path)")


# What torch's weights-only unpickler says when it meets a Python object it does not allow (a
# class, a function, a call): a refusal. Its other errors (``Unsupported operand 154``, ``String
# is too long``...) are bytes that are not a valid pickle: a corrupt file, not an unsafe one.
_REFUSED_OBJECT = re.compile(r'GLOBAL \S+|Unsupported global|Can only (create|build)|'
                             r'call reduce for unrecognized')


def _is_weights_only_refusal(exc: BaseException) -> bool:
    return (isinstance(exc, pickle.UnpicklingError) and 'Weights only load failed' in str(exc)
            and _REFUSED_OBJECT.search(str(exc)) is not None)


# The first bytes of the files torch.load reads: a zip archive (torch.save since torch 1.6) or
# a pickle of protocol 2+ (the legacy format); safetensors files start with the 8-byte length of
# their JSON header, then ``{``.
_ZIP_MAGIC = b'PK\x03\x04'
_PICKLE_MAGIC = b'\x80'


def is_safetensors_file(path: str) -> bool:
    """Whether ``path`` is a safetensors file (by its header, whatever its extension)."""
    try:
        with open(path, 'rb') as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b'{':
        return False
    n = int.from_bytes(head[:8], 'little')
    return 2 <= n <= osp.getsize(path) - 8


def _not_a_checkpoint(path: str) -> Optional[CheckpointError]:
    """The error for a file that no checkpoint reader takes (text, an image, random bytes), or
    None when it starts like a torch.save file."""
    with open(path, 'rb') as f:
        head = f.read(64)
    if head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        return None
    text, is_text = '', False
    for cut in range(4):  # the 64 bytes may end inside a multi-byte character
        try:
            text = head[:len(head) - cut].decode('utf-8')
        except UnicodeDecodeError:
            continue
        is_text = all(c.isprintable() or c in '\t\r\n' for c in text)
        break
    if is_text:
        start = ' '.join(text.split())[:40]
        what = (f'a text file (it starts with {start!r}; a web page saved by a failed '
                f'download, or the wrong file?)')
    else:
        what = (f'neither a torch.save file (zip archive or pickle) nor safetensors (first bytes '
                f'{head[:8].hex(" ")})')
    return CheckpointError(f'Checkpoint file {path!r} is not a checkpoint: it is {what}. Give '
                           f'the .pth file tools/train.py or tools/convert_checkpoint.py wrote '
                           f'(or a .safetensors file); if it should be one, it is corrupt: '
                           f'recreate or re-download it')


def _read_safetensors(path: str, map_location='cpu') -> Dict[str, torch.Tensor]:
    """A safetensors file's tensors, read by safetensors (no pickle involved)."""
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ImportError(f'{path!r} is a safetensors file; reading it needs the safetensors '
                          f'package: pip install safetensors') from exc
    device = map_location if isinstance(map_location, str) else 'cpu'
    try:
        return load_file(path, device=device)
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own SafetensorError)
        raise CheckpointError(f'Checkpoint file {path!r} is a corrupt or truncated safetensors '
                              f'file ({osp.getsize(path)} bytes; safetensors said: '
                              f'{str(exc).splitlines()[0][:200]}); recreate or re-download it'
                              ) from exc


def check_checkpoint_file(source) -> None:
    """Cheap checks of a checkpoint before anything is built for it: a local file must exist,
    be a file, not be empty and start like a checkpoint (torch.save's zip or pickle, or
    safetensors). URLs and hub names are left to :func:`read_checkpoint`. Raises what
    :func:`read_checkpoint_file` would."""
    source = str(source)
    path = osp.expanduser(source)
    if is_remote(source) and not osp.exists(path):
        return
    if osp.isdir(path):
        raise IsADirectoryError(f'Checkpoint {path!r} is a directory, not a checkpoint file')
    if not osp.isfile(path):
        raise FileNotFoundError(f'Checkpoint file {path!r} does not exist')
    if osp.getsize(path) == 0:
        raise CheckpointError(f'Checkpoint file {path!r} is empty (0 bytes): the download or '
                              f'save was interrupted; recreate it')
    if not is_safetensors_file(path):
        error = _not_a_checkpoint(path)
        if error is not None:
            raise error


def read_checkpoint_file(path, map_location='cpu') -> Any:
    """``torch.load`` a local checkpoint file with ``weights_only=True`` (+ mmengine's types);
    a safetensors file is read by safetensors (a dict of tensors).

    Errors name the file and the problem: missing, a directory, empty, not a checkpoint at all
    (text, random bytes), corrupt or truncated, or holding other Python objects (refused unless
    ``MMEFF_ALLOW_UNSAFE_LOAD=1``).
    """
    path = osp.expanduser(str(path))
    if osp.isdir(path):
        raise IsADirectoryError(f'Checkpoint {path!r} is a directory, not a checkpoint file')
    if not osp.isfile(path):
        raise FileNotFoundError(f'Checkpoint file {path!r} does not exist')
    check_checkpoint_file(path)
    if is_safetensors_file(path):
        return _read_safetensors(path, map_location)
    unsafe = unsafe_load_allowed()
    try:
        if unsafe:
            return torch.load(path, map_location=map_location, weights_only=False)
        with allowing_mmengine_globals():
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if _is_weights_only_refusal(exc):
            raise _refused(path, exc) from None
        error = exc
    except Exception as exc:  # noqa: BLE001  (bytes that are no valid archive or pickle raise
        # anything: RuntimeError, EOFError, BadZipFile, KeyError and IndexError of the unpickler)
        error = exc
    raise CheckpointError(f'Checkpoint file {path!r} is corrupt or truncated '
                          f'({osp.getsize(path)} bytes; torch.load said: {_torch_said(error)}); '
                          f'recreate or re-download it') from error


def load_from_http(filename: str, map_location=None, model_dir: Optional[str] = None,
                   progress: bool = os.isatty(0)) -> Any:
    """mmengine's ``http(s)://`` loader, loading with ``weights_only=True``.

    mmengine 0.10.7 downloads through ``torch.hub.load_state_dict_from_url``, whose default is
    ``weights_only=False``: any downloaded file could run code when unpickled. This is the
    same download (same cache, rank 0 first under DDP) with :func:`read_checkpoint_file`'s
    rules: mmengine's types allowed, anything else refused unless ``MMEFF_ALLOW_UNSAFE_LOAD=1``.
    """
    from mmengine.dist import get_dist_info

    def load():
        unsafe = unsafe_load_allowed()
        try:
            with allowing_mmengine_globals():
                return torch.hub.load_state_dict_from_url(
                    filename, model_dir=model_dir, map_location=map_location,
                    progress=progress, weights_only=not unsafe)
        except pickle.UnpicklingError as exc:
            if _is_weights_only_refusal(exc):
                raise _refused(filename, exc) from None
            raise

    rank, world_size = get_dist_info()
    if rank == 0:
        checkpoint = load()
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            checkpoint = load()
    return checkpoint


def is_remote(source: str) -> bool:
    """A URL for one of mmengine's loaders (``scheme://...``) or a hub model name."""
    return '://' in source or bool(_HUB_NAME.match(source))


def read_checkpoint(source, map_location='cpu') -> Any:
    """Read a checkpoint from a local file, or from a URL through mmengine's loaders.

    URLs (``http(s)://``, ``open-mmlab://``, ``torchvision://``, ``s3://``, ...) go through
    ``mmengine.runner.checkpoint.CheckpointLoader``, as mmengine's ``load_checkpoint`` and the
    Runner's ``load_from`` do. Hub names (``timm/...``, ``hf-hub:...``) have no mmengine
    loader: the error says how to get the file.
    """
    source = str(source)
    if osp.isfile(osp.expanduser(source)) or not is_remote(source):
        return read_checkpoint_file(source, map_location)
    if _HUB_NAME.match(source):
        name = re.sub(r'^(hf[-_]hub:)?(timm/)?', '', source)
        out = f'pretrained/{name.split(".")[0]}_mmeff.pth'
        raise CheckpointError(
            f'Checkpoint {source!r} is a timm / Hugging Face Hub model name, which no mmengine '
            f'checkpoint loader downloads. Convert timm\'s weights to an mmeff file once: '
            f'python tools/convert_checkpoint.py --timm {name} {out} (offline: add --timm-file '
            f'with the downloaded model.safetensors), and give that file')
    from mmengine.runner.checkpoint import CheckpointLoader
    try:
        with allowing_mmengine_globals():  # the URL loaders call torch.load with its default
            return CheckpointLoader.load_checkpoint(source, map_location=map_location)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        if _is_weights_only_refusal(exc):
            raise _refused(source, exc) from None
        raise CheckpointError(f'Checkpoint {source!r} is corrupt: {exc}') from exc
    except Exception as exc:  # noqa: BLE001  (download, unknown model name, storage backend)
        raise CheckpointError(
            f'Cannot load checkpoint {source!r} with mmengine\'s loader for its scheme '
            f'({type(exc).__name__}: {str(exc)[:300]}). Check the URL / model name; without '
            f'network access download the file elsewhere and give its local path') from exc


def unwrap_state_dict(obj) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint object (under ``state_dict``/``model``/``module`` or bare),
    with ``module.`` (DataParallel) prefixes removed."""
    if not isinstance(obj, dict):
        raise CheckpointError(f'expected a dict, got {type(obj).__name__}')
    for key in ('state_dict', 'model', 'module'):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    sd = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            sd[k[len('module.'):] if k.startswith('module.') else k] = v
    if not sd:
        raise CheckpointError('no tensors found (keys: ' + ', '.join(map(str, list(obj)[:5])) + ')')
    return sd


def mmengine_state_dict(checkpoint) -> Dict[str, Any]:
    """What mmengine's ``load_checkpoint`` / the Runner's ``load_from`` and ``resume`` put into
    the model: ``checkpoint['state_dict']`` if present, else the whole dict, ``module.`` removed.

    Not :func:`unwrap_state_dict`: a file holding its weights under ``model`` loads *nothing*
    through mmengine, and the check has to see that.
    """
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'a checkpoint must be a dict, got {type(checkpoint).__name__}')
    sd = checkpoint['state_dict'] if 'state_dict' in checkpoint else checkpoint
    return {re.sub(r'^module\.', '', k): v for k, v in sd.items()}


# ---------------------------------------------------------------------------- comparing
@dataclass
class Fit:
    """How a checkpoint's tensors meet a model's state dict."""
    matched: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    # (key, checkpoint shape, model shape)
    mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)

    def summary(self, total: int) -> str:
        parts = []
        if self.mismatched:
            k, ck, mk = self.mismatched[0]
            parts.append(f'{len(self.mismatched)} shape mismatches, first: {k}: checkpoint '
                         f'{ck} vs model {mk}')
        if self.missing:
            parts.append(f'{len(self.missing)} of the model\'s {total} tensors missing, e.g. '
                         f'{self.missing[:3]}')
        if self.unexpected:
            parts.append(f'{len(self.unexpected)} unexpected keys, e.g. {self.unexpected[:3]}')
        return '; '.join(parts) or 'it fits'


def compare_state_dicts(own: Mapping[str, torch.Tensor], ckpt: Mapping[str, Any]) -> Fit:
    """Compare a checkpoint state dict with a model's (``num_batches_tracked`` may be absent, as
    mmengine's loader also ignores it; non-tensor entries cannot load and count as unexpected)."""
    fit = Fit()
    for k, v in ckpt.items():
        if k not in own or not hasattr(v, 'shape'):
            fit.unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            fit.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
        else:
            fit.matched.append(k)
    fit.missing = [k for k in own if k not in ckpt and not k.endswith('num_batches_tracked')]
    return fit


def describe_checkpoint(sd: Mapping[str, Any]) -> Tuple[str, str, Optional[Any]]:
    """What a state dict seems to be: ``(kind, description, EfficientFormer arch or None)``.

    Kinds: ``'resnet'``, ``'efficientformer'`` (timm's, the authors' or mmpretrain's layout),
    ``'classifier'``, ``'backbone'`` (mmeff's, ``backbone.*`` only or a bare backbone),
    ``'model'`` (a whole mmdet/mmseg model), ``'unknown'``.
    """
    from mmeff.converters import arch_name, convert_state_dict, detect_layout
    keys = [k for k, v in sd.items() if hasattr(v, 'shape')]
    if any(_RESNET_KEY.match(k) for k in keys):
        return 'resnet', 'a ResNet checkpoint (torchvision/mmcv layout: conv1, layer1..4)', None
    if 'stem.conv1.weight' in keys and any(re.match(r'^norm\d\.', k) for k in keys):
        try:  # EfficientFormer(...).state_dict() saved as it is
            arch = arch_name({'backbone.' + k: sd[k] for k in keys})
        except Exception:  # noqa: BLE001  (described without the arch)
            arch = None
        return ('backbone', f"an mmeff EfficientFormer backbone state dict without the "
                f"'backbone.' prefix (arch {arch!r}; load it with prefix='')", arch)
    tensors = {k: sd[k] for k in keys}
    try:
        layout = detect_layout(tensors)
        converted, _ = convert_state_dict(tensors)
        arch = arch_name(converted)
    except Exception:  # noqa: BLE001  (not an EfficientFormer: described below)
        layout, arch = None, None
    parts = sorted({k.split('.')[0] for k in keys} - {'backbone', 'data_preprocessor'})
    arch_txt = f' (arch {arch!r})' if isinstance(arch, str) else ''
    if layout in ('timm', 'authors', 'mmpretrain'):
        return ('efficientformer', f'an EfficientFormer checkpoint in {layout}\'s layout{arch_txt},'
                f' not converted to mmeff\'s', arch)
    if layout == 'mmeff':
        if parts == ['head']:
            return ('classifier', f'an mmeff EfficientFormer classification checkpoint{arch_txt}',
                    arch)
        if not parts:
            return 'backbone', f'an mmeff EfficientFormer backbone checkpoint{arch_txt}', arch
        return ('model', f'a checkpoint of a whole model with an EfficientFormer{arch_txt} '
                f'backbone and {", ".join(parts)}', arch)
    if parts:
        return 'unknown', f'a checkpoint with top-level parts {", ".join(parts[:6])}', None
    return 'unknown', 'a checkpoint of unknown layout', None


RESNET_FIX = (
    "Stock mmdet/mmseg configs set model.pretrained='open-mmlab://resnet50_v1c' (or a "
    "torchvision:// ResNet in the backbone's init_cfg), and mmseg passes model.pretrained to "
    "whatever backbone the config has, even with _delete_=True: set model.pretrained=None when "
    "swapping in an mmeff backbone, and give EfficientFormer weights with "
    "model.backbone.init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')")
BACKBONE_ONLY_FIX = (
    "Weights of the backbone alone only start a training run: give them as "
    "model.backbone.init_cfg=dict(type='Pretrained', checkpoint=FILE, prefix='backbone.') "
    "(with the configs in configs/: --cfg-options pretrained=FILE)")


def _backbone_of(model: nn.Module):
    return model if hasattr(model, 'arch_settings') else getattr(model, 'backbone', None)


def _backbone_arch(model: nn.Module):
    """The arch name (``'l1'``, ``'s0'``...) of the model's backbone of a registered family,
    its arch dict when it is no named one, or None when it has none."""
    backbone = _backbone_of(model)
    arch = getattr(backbone, 'arch', None)
    if not isinstance(arch, dict):
        return None
    from mmeff.converters import named_arch  # arch naming is the converters'
    from mmeff.models.families import family_of
    try:
        return named_arch(family_of(backbone), arch)
    except ValueError:  # no family's backbone: its arch dict
        return arch


# What this module knows of the model families is read from their registry
# (``mmeff.models.families``) when a message needs it: only diagnosing a checkpoint that does
# not fit imports the models, so reading checkpoints never does.
def _family_named(name: str):
    """The registered family whose backbone class is called ``name``, else None."""
    from mmeff.models.families import FAMILIES
    return FAMILIES.get(name)


def _family_label(name: str) -> str:
    """How messages name the family of backbone class ``name`` (``'EfficientFormer (V1)'``)."""
    return _family_named(name).label


def _config_arch_pattern() -> re.Pattern:
    """``<family config token>_<arch>`` in a config file name (``effformerv2_s0``), any
    registered family; longest names first so that ``effformerv2`` wins over ``effformer``."""
    from mmeff.models.families import FAMILIES
    tokens = sorted({f.config_token for f in FAMILIES.values()}, key=len, reverse=True)
    archs = sorted({a for f in FAMILIES.values() for a in f.archs}, key=len, reverse=True)
    return re.compile(rf"({'|'.join(map(re.escape, tokens))})_"
                      rf"({'|'.join(map(re.escape, archs))})(?=[_.])")


_CONFIG_DIRS = {'EncoderDecoder': 'segmentation', 'EfficientFormerClassifier': 'classification'}


def _checkpoint_family(state_dict: Mapping[str, Any]) -> Optional[str]:
    """The backbone class name of the family of a checkpoint (``'EfficientFormerV2'``...),
    else None."""
    tensors = {k: v for k, v in state_dict.items() if hasattr(v, 'shape')}
    if not any(k.startswith('backbone.') for k in tensors):
        tensors = {'backbone.' + k: v for k, v in tensors.items()}
    try:
        from mmeff.converters import convert_state_dict, family_name
        return family_name(convert_state_dict(tensors)[0])
    except Exception:  # noqa: BLE001  (not an EfficientFormer checkpoint)
        return None


def configs_for(family: str, arch: Any, config: Optional[str] = None,
                model: Optional[nn.Module] = None) -> List[str]:
    """Configs of this repository for ``family`` and ``arch`` (a name): the counterpart of
    ``config`` (same file name with the family and arch replaced) when it exists, else those of
    the model's task (detection, segmentation, classification); ``[]`` when none is found."""
    if not isinstance(arch, str):
        return []
    token = f'{_family_named(family).config_token}_{arch}'
    if config:
        folder, name = osp.split(str(config))
        twin = osp.join(folder, _config_arch_pattern().sub(token, name, count=1))
        if twin != str(config) and osp.isfile(twin):
            return [twin]
    root = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs')
    kind = _CONFIG_DIRS.get(type(model).__name__ if model is not None else '',
                            'detection' if model is not None and hasattr(model, 'neck')
                            else None)
    folders = [kind] if kind else ['detection', 'segmentation', 'classification']
    found = []
    for folder in folders:
        try:
            names = sorted(os.listdir(osp.join(root, folder)))
        except OSError:
            continue
        found += [osp.join('configs', folder, n) for n in names
                  if n.endswith('.py') and re.search(rf'{token}(?=[_.])', n)]
    return found[:3]


def _family_fix(ckpt_family: str, ckpt_arch: Any, model_family: str, config: Optional[str],
                model: Optional[nn.Module]) -> str:
    """What to do with a checkpoint of the other EfficientFormer family."""
    arch = f' (arch {ckpt_arch!r})' if isinstance(ckpt_arch, str) else ''
    configs = configs_for(ckpt_family, ckpt_arch, config, model)
    ckpt_label, model_label = _family_label(ckpt_family), _family_label(model_family)
    use = (f'use the {ckpt_label} config: {" or ".join(configs)}' if configs
           else f'use a config whose backbone is {_family_named(ckpt_family).type}')
    return (f'It is an {ckpt_label} checkpoint{arch}, and this model has an {model_label} '
            f'backbone: the two families have different layers, so no arch setting makes it '
            f'fit; {use}, or give {model_label} weights.')


def _num_classes_settings(model: nn.Module, keys) -> List[str]:
    """``model.<path>.num_classes=<n>`` of the modules owning ``keys``."""
    found = []
    for key in keys:
        parts = key.split('.')[:-1]
        for i in range(len(parts), -1, -1):
            mod = model.get_submodule('.'.join(parts[:i])) if i else model
            if isinstance(getattr(mod, 'num_classes', None), int):
                path = '.'.join(['model'] + parts[:i])
                setting = f'{path}.num_classes={mod.num_classes}'
                if setting not in found:
                    found.append(setting)
                break
    return found


def _class_count_only(fit: Fit) -> bool:
    """Every mismatch is in the first dimension of a head tensor (the number of classes)."""
    return bool(fit.mismatched) and all(
        k.split('.')[0] not in ('backbone', 'neck') and len(ck) == len(mk) and ck[1:] == mk[1:]
        for k, ck, mk in fit.mismatched)


def _class_count_message(model: nn.Module, fit: Fit) -> str:
    k, ck, mk = fit.mismatched[0]
    if k == 'head.head.weight' and isinstance(getattr(model, 'num_classes', None), int):
        n, m = ck[0], model.num_classes  # the EfficientFormer classifier
        return (f'Class-count mismatch: the checkpoint has {n} classes ({k} {ck}) but the model '
                f'was built with num_classes={m}. Set model.num_classes={n} to use the '
                f'checkpoint as it is, or, to train on {m} classes, initialise the backbone only: '
                f"model.backbone.init_cfg=dict(type='Pretrained', checkpoint=CKPT, "
                f"prefix='backbone.') instead of load_from.")
    settings = _num_classes_settings(model, [m[0] for m in fit.mismatched])
    return (f'Class-count mismatch: {len(fit.mismatched)} head tensors differ in their first '
            f'dimension (first: {k}: checkpoint {ck} vs model {mk}); the model was built with '
            f'{", ".join(settings) or "another number of classes"}. Set the heads\' num_classes '
            f'(and the dataset\'s metainfo.classes) to the checkpoint\'s, or use the config it '
            f'was trained with.')


def check_model_fit(model: nn.Module, state_dict: Mapping[str, Any], source: str,
                    purpose: str = 'exact', hint: Optional[str] = None,
                    config: Optional[str] = None) -> Fit:
    """Raise :class:`CheckpointMismatchError` unless ``state_dict`` fits ``model``.

    Args:
        model (nn.Module): The model (a wrapper such as DDP is unwrapped).
        state_dict (Mapping): What will be loaded into it (see :func:`mmengine_state_dict`).
        source (str): The file or URL, for messages.
        purpose (str): ``'exact'`` (testing, drawing, resuming, export): every tensor present
            with the model's shape. ``'load_from'`` (fine-tuning): the same, except that heads
            may differ in their number of classes (mmengine keeps their initial weights; logged).
            ``'shapes'``: only shape mismatches are errors (missing keys are reported by the
            loader).
        hint (str, optional): A caller-specific fix, added to the message.
        config (str, optional): The config the model was built from: a checkpoint of the other
            EfficientFormer family names its counterpart (``..._effformer_l1...`` for
            ``..._effformerv2_s0...``).

    Returns:
        Fit: The comparison, when it fits.
    """
    if purpose not in PURPOSES:
        raise ValueError(f'purpose must be one of {PURPOSES}, got {purpose!r}')
    from mmengine.model import is_model_wrapper
    if is_model_wrapper(model):
        model = model.module
    own = model.state_dict()
    fit = compare_state_dicts(own, state_dict)
    class_only = _class_count_only(fit)
    bad = bool(fit.mismatched) or (purpose != 'shapes' and bool(fit.missing))
    if purpose == 'load_from' and class_only and not fit.missing:
        from mmengine.logging import print_log
        print_log(f'{source}: {_class_count_message(model, fit)} Fine-tuning to other classes: '
                  f'these {len(fit.mismatched)} head tensors keep their initial weights.',
                  logger='current', level=30)
        bad = False
    if not bad:
        return fit
    kind, description, ckpt_arch = describe_checkpoint(state_dict)
    model_arch = _backbone_arch(model)
    model_family = type(_backbone_of(model)).__name__
    ckpt_family = _checkpoint_family(state_dict) if kind != 'resnet' else None
    backbone_bad = any(k.startswith('backbone.') for k, _, _ in fit.mismatched)
    if kind == 'resnet':
        fix = RESNET_FIX + '.'
        if purpose == 'exact':
            fix += (' Testing, drawing and resuming need the checkpoint that tools/train.py '
                    'saved with this config.')
    elif ckpt_family and _family_named(model_family) and ckpt_family != model_family:
        fix = _family_fix(ckpt_family, ckpt_arch, model_family, config, model)
    elif backbone_bad and ckpt_arch is not None and model_arch is not None \
            and ckpt_arch != model_arch:
        fix = (f"Another arch: checkpoint arch: {ckpt_arch!r}, model arch: {model_arch!r}. Set "
               f"model.backbone.arch to the checkpoint's arch (and the neck's in_channels), or "
               f"use the config of that arch.")
    elif class_only and not fit.missing:
        fix = _class_count_message(model, fit)
    elif kind in ('efficientformer', 'classifier', 'backbone') and model_arch is not None \
            and any(k.split('.')[0] not in ('backbone', 'head') for k in fit.missing):
        convert = (', converted first with tools/convert_checkpoint.py'
                   if kind == 'efficientformer' else '')
        if purpose == 'load_from':
            fix = ('load_from needs a checkpoint of the whole model (e.g. one tools/train.py '
                   'saved). ' + BACKBONE_ONLY_FIX + convert + ', instead of load_from.')
        else:
            fix = ('Testing, drawing and resuming need the checkpoint of the whole model that '
                   'tools/train.py saved with this config (WORK_DIR/epoch_N.pth or iter_N.pth). '
                   + BACKBONE_ONLY_FIX + convert + ', and train.')
    elif kind == 'efficientformer':
        fix = 'Convert it first: python tools/convert_checkpoint.py SRC DST, and load DST.'
    else:
        fix = 'Use a checkpoint saved with this config (tools/train.py), or the config it was ' \
              'trained with.'
    name = type(model).__name__ + (f' (EfficientFormer-{model_arch})'
                                   if isinstance(model_arch, str) else '')
    total = sum(not k.endswith('num_batches_tracked') for k in own)
    raise CheckpointMismatchError(
        f'{source} does not fit this {name} ({fit.summary(total)}): it is {description}. '
        f'{fix}' + (f' {hint}' if hint else ''))


def check_checkpoint_matches(checkpoint, backbone_type: str, arch: Any, source: str,
                             config: Optional[str] = None) -> None:
    """Before a model is built: raise :class:`CheckpointMismatchError` when ``checkpoint`` (the
    loaded file) holds an EfficientFormer of another family than ``backbone_type``
    (``'mmeff.EfficientFormerV2'``...) or of another named arch than ``arch``, naming the
    config of the checkpoint's family and arch (:func:`configs_for`). Checkpoints that are no
    EfficientFormer are left to the fit check after building (:func:`check_model_fit`)."""
    family = str(backbone_type).split('.')[-1]
    if _family_named(family) is None:
        return
    try:
        sd = unwrap_state_dict(checkpoint)
    except CheckpointError:
        return
    ckpt_family = _checkpoint_family(sd)
    if ckpt_family is None:
        return
    tensors = sd if any(k.startswith('backbone.') for k in sd) else \
        {'backbone.' + k: v for k, v in sd.items()}
    try:
        from mmeff.converters import arch_name, convert_state_dict
        ckpt_arch = arch_name(convert_state_dict(tensors)[0])
    except Exception:  # noqa: BLE001  (named without the arch)
        ckpt_arch = None
    where = f'{config}' if config else 'the model'
    if ckpt_family != family:
        raise CheckpointMismatchError(
            f'{source} does not fit {where} ({_family_label(family)} backbone, arch {arch!r}). '
            + _family_fix(ckpt_family, ckpt_arch, family, config, None))
    if isinstance(arch, str) and isinstance(ckpt_arch, str) and arch.lower() != ckpt_arch:
        if config:
            configs = configs_for(family, ckpt_arch, config)
            use = (f'use {" or ".join(configs)}, or ' if configs else '') + \
                f"set model.backbone.arch='{ckpt_arch}' (and the neck's in_channels to its widths)"
        else:
            use = f'build arch {ckpt_arch!r} instead of {arch!r}'
        raise CheckpointMismatchError(
            f'{source} does not fit {where}: it is an {_family_label(family)} checkpoint of '
            f'arch {ckpt_arch!r}, and {where} builds arch {arch!r}. To use it, {use}; or give '
            f'{arch!r} weights')


# ---------------------------------------------------------------------------- backbones
def backbone_part(sd: Mapping[str, Any], prefix: str, source: str) -> Dict[str, Any]:
    """The entries of ``sd`` under ``prefix`` (prefix removed); an error that says what the file
    is when none is."""
    if not prefix:
        return dict(sd)
    part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if part:
        return part
    kind, description, _ = describe_checkpoint(sd)
    fix = {'resnet': RESNET_FIX,
           'efficientformer': 'Convert it with tools/convert_checkpoint.py and load the result'
           }.get(kind, "Is it an mmeff checkpoint? Convert it with tools/convert_checkpoint.py, "
                       "or set the init_cfg's prefix to the backbone's prefix in the file")
    raise CheckpointMismatchError(f'No key of {source!r} starts with prefix {prefix!r}: it is '
                                  f'{description}. {fix}.')


def load_backbone_state_dict(model: nn.Module, state_dict: Mapping[str, Any],
                             source: str = 'state_dict', strict_min_match: float = 0.5,
                             config: Optional[str] = None) -> str:
    """Load a backbone state dict (no prefix) into an EfficientFormer, or raise why it does not fit.

    The output norms (``norm{i}``) may be missing (a classification checkpoint has none): they
    keep their initialisation, and the report says so. Anything else missing, fewer than
    ``strict_min_match`` of the model's keys matched (a wrong file), or a shape mismatch (another
    arch, or the other EfficientFormer family: ``config``, when given, names its counterpart) is
    a :class:`CheckpointMismatchError`. Returns a one-line report.
    """
    own = model.state_dict()
    fit = compare_state_dicts(own, state_dict)
    found = len(fit.matched) + len(fit.mismatched)
    missing = [k for k in fit.missing if not re.match(r'^norm\d\.', k)]
    model_family = type(model).__name__
    if (found < strict_min_match * len(own) or fit.mismatched or missing) \
            and _family_named(model_family) is not None:
        ckpt_family = _checkpoint_family(state_dict)
        if ckpt_family and ckpt_family != model_family:
            from mmeff.converters import arch_name, convert_state_dict
            try:
                ckpt_arch = arch_name(convert_state_dict(
                    {'backbone.' + k: v for k, v in state_dict.items()})[0])
            except Exception:  # noqa: BLE001  (named without the arch)
                ckpt_arch = None
            raise CheckpointMismatchError(
                f'{source} does not fit this {model_family} backbone: '
                + _family_fix(ckpt_family, ckpt_arch, model_family, config, None))
    if found < strict_min_match * len(own):
        _, description, _ = describe_checkpoint({'backbone.' + k: v for k, v in state_dict.items()})
        raise CheckpointMismatchError(
            f'{source} matches only {found} of the {len(own)} backbone keys (e.g. it has '
            f'{list(state_dict)[:3]}, the model expects {list(own)[:3]}): it is {description}. '
            f'Wrong file or not converted: run tools/convert_checkpoint.py on it first, or give '
            f"EfficientFormer weights. {RESNET_FIX if 'ResNet' in description else ''}".rstrip())
    if fit.mismatched or missing:
        ckpt_arch = None
        try:
            from mmeff.converters import arch_name
            ckpt_arch = arch_name({'backbone.' + k: v for k, v in state_dict.items()})
        except Exception:  # noqa: BLE001  (the message is clear without it)
            pass
        model_arch = _backbone_arch(model)
        what = (f'{len(fit.mismatched)} shape mismatches, first: {fit.mismatched[0][0]}: '
                f'checkpoint {fit.mismatched[0][1]} vs model {fit.mismatched[0][2]}'
                if fit.mismatched
                else f'{len(missing)} backbone tensors missing, e.g. {missing[:3]}')
        raise CheckpointMismatchError(
            f'{source} does not fit this arch ({what}); checkpoint arch: {ckpt_arch!r}, model '
            f'arch: {model_arch!r}. Set arch= to the checkpoint\'s (check arch= against the '
            f'checkpoint), or use weights of this arch.')
    model.load_state_dict(dict(state_dict), strict=False)
    out_norms = [k for k in fit.missing if re.match(r'^norm\d\.', k)]
    msg = f'{len(fit.matched)} keys loaded'
    if out_norms:
        msg += f'; output norms not in checkpoint (kept initialised): {out_norms}'
    if fit.unexpected:
        msg += f'; unexpected keys ignored: {fit.unexpected}'
    return msg


def load_pretrained_backbone(model: nn.Module, checkpoint: str, prefix: str = 'backbone.') -> str:
    """Read ``checkpoint`` (file or URL), take the ``prefix`` part and load it into the backbone
    ``model`` with :func:`load_backbone_state_dict`. Returns its report."""
    checkpoint = str(checkpoint)
    try:
        content = read_checkpoint(checkpoint)
    except CheckpointError as exc:
        if not checkpoint.startswith(_MODEL_ZOO_SCHEMES):
            raise
        # OpenMMLab's and torchvision's model zoos hold no EfficientFormer: this is a stock
        # config's backbone weights, which also fail to download offline.
        raise CheckpointError(f'{exc}. {checkpoint!r} names weights of another backbone: '
                              f'{RESNET_FIX}') from exc
    sd = unwrap_state_dict_of(checkpoint, content)
    return load_backbone_state_dict(model, backbone_part(sd, prefix, checkpoint),
                                    source=checkpoint)


def unwrap_state_dict_of(source: str, checkpoint) -> Dict[str, torch.Tensor]:
    """:func:`unwrap_state_dict` with the source named in its error."""
    try:
        return unwrap_state_dict(checkpoint)
    except CheckpointError as exc:
        raise CheckpointError(f'Checkpoint {source!r} holds no state dict: {exc}') from exc


# ---------------------------------------------------------------------------- tools
def check_checkpoint_for_model(model: nn.Module, source: str, purpose: str = 'exact',
                               checkpoint=None, hint: Optional[str] = None,
                               config: Optional[str] = None) -> Fit:
    """Read ``source`` (unless ``checkpoint``, its content, is given) and check that what
    mmengine will load from it fits ``model`` (:func:`check_model_fit`)."""
    if checkpoint is None:
        checkpoint = read_checkpoint(source)
    return check_model_fit(model, mmengine_state_dict(checkpoint), str(source), purpose, hint,
                           config=config)


__all__ = ['CheckpointError', 'UnsafeCheckpointError', 'CheckpointMismatchError', 'UNSAFE_ENV',
           'unsafe_load_allowed', 'mmengine_safe_globals', 'allowing_mmengine_globals',
           'check_checkpoint_file', 'read_checkpoint_file', 'is_safetensors_file',
           'load_from_http', 'read_checkpoint', 'is_remote', 'unwrap_state_dict',
           'unwrap_state_dict_of', 'mmengine_state_dict', 'Fit', 'compare_state_dicts',
           'describe_checkpoint', 'check_model_fit', 'check_checkpoint_matches', 'configs_for',
           'backbone_part',
           'load_backbone_state_dict', 'load_pretrained_backbone', 'check_checkpoint_for_model']
