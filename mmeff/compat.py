"""Fixes for known problems of mmengine 0.10.7 / mmdet 3.3 / mmseg 1.2 on torch >= 2.6, numpy 2
and CPU, applied in one place when ``mmeff.models`` is imported (``apply_all()``).

Each fix names its source (the upstream code, issue or pull request it works around) and has a
test in ``tests/test_compat.py``.
"""
_APPLIED = False


def patch_checkpoint_loading() -> None:
    """mmengine 0.10.7 calls ``torch.load`` without ``weights_only``; torch >= 2.6 defaults to
    ``weights_only=True`` and refuses mmengine's own checkpoints (``Unsupported global:
    mmengine.logging.history_buffer.HistoryBuffer``), breaking resume, ``load_checkpoint``,
    ``init_detector``/``init_model``. Fixed upstream, not in a release
    (https://github.com/open-mmlab/mmengine/pull/1670), by loading with
    ``weights_only=False``, which lets any file run code when it is unpickled.

    Instead, mmengine's local-file loader is re-registered to load with ``weights_only=True``,
    allowing exactly the types mmengine's checkpoints hold (``HistoryBuffer``, numpy arrays,
    dtypes and scalars: ``mmeff.checkpoint.mmengine_safe_globals``) for that load only
    (``mmeff.checkpoint.read_checkpoint_file``). A file holding any other object is refused
    with a message naming the opt-in for files the user trusts, ``MMEFF_ALLOW_UNSAFE_LOAD=1``.

    Downloads get the same rules: mmengine's ``http(s)://`` loader (also used by its
    ``open-mmlab://``, ``torchvision://`` and ``mmcls://`` loaders) goes through
    ``torch.hub.load_state_dict_from_url``, whose default is ``weights_only=False``; it is
    replaced by ``mmeff.checkpoint.load_from_http``.
    """
    import mmengine.runner.checkpoint as ckpt_mod
    from mmengine.runner.checkpoint import CheckpointLoader

    from mmeff.checkpoint import load_from_http, read_checkpoint_file

    @CheckpointLoader.register_scheme(prefixes='', force=True)
    def load_from_local(filename, map_location):
        return read_checkpoint_file(filename, map_location)

    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), loader=load_from_http,
                                     force=True)
    ckpt_mod.load_from_http = load_from_http  # what the model-zoo loaders call


def check_pkg_resources() -> None:
    """``_base_ = 'mmdet::...'`` is resolved by ``mmengine.utils.package_utils.is_installed``,
    which imports ``pkg_resources`` (removed in setuptools 82). The first import of it warns
    that it is deprecated, on every run of every tool: a fact about the pinned setuptools that
    the user can do nothing about, so it is imported once here with that warning silenced."""
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='pkg_resources is deprecated',
                                    category=UserWarning)
            import pkg_resources  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "mmengine needs 'pkg_resources' to resolve 'mmdet::'/'mmseg::' config bases; "
            "install setuptools>=77.0.3,<82 (pip install 'setuptools<82')") from exc


def init_cpu_distributed(backend: str = 'gloo') -> None:
    """Initialise a CPU process group for ``--launcher pytorch`` without a GPU.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` unconditionally; initialising the
    gloo group first makes mmengine skip its own init. Call before building the Runner, and
    build with ``model_wrapper_cfg=dict(type='MMDistributedDataParallel', device_ids=None)``
    (``cpu_ddp_model_wrapper_cfg()``), since DDP rejects ``device_ids`` for CPU modules.
    """
    import torch.distributed as dist
    if dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend=backend)


def shutdown_distributed() -> None:
    """End a finished distributed run cleanly: wait for every rank, then destroy the group.

    Without this a process leaving right after its last collective can tear down gloo's
    connections while a peer's transport thread is still using them; that peer then dies at
    interpreter exit with ``terminate called without an active exception`` (SIGABRT), and
    torchrun reports the whole run as failed after all work was done and saved (seen here with
    torch 2.14, about 1 run in 3 on 2 busy cores). Only call it on the success path: a barrier
    after one rank failed would wait for the timeout. No-op when no group is initialised.
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def cpu_ddp_model_wrapper_cfg() -> dict:
    return dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False)


def sync_bn_to_bn(cfg) -> None:
    """SyncBN fails without CUDA (``SyncBatchNorm layers only work with GPU modules``), even
    under CPU DDP: replace every ``SyncBN`` norm_cfg in a config by ``BN``, in place."""
    def _walk(node):
        if isinstance(node, dict):
            if node.get('type') == 'SyncBN':
                node['type'] = 'BN'
            for v in node.values():
                _walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                _walk(v)
    _walk(cfg)


def patch_atomic_checkpoint_save() -> None:
    """mmengine's ``save_checkpoint`` writes the file in place: a crash or a full disk mid-write
    leaves a truncated ``epoch_N.pth`` that ``--resume`` then picks up. Local files are written
    to a temporary file and renamed instead (``os.replace`` is atomic on POSIX), with the
    umask's mode, a clear error on a full disk, and no temporary file left behind
    (``mmeff.engine.checkpointing.save_checkpoint_atomic``).

    mmengine's ``CheckpointHook`` also deleted the checkpoint that ``max_keep_ckpts`` drops
    before the new one existed: a kill or a full disk during the save left none, with
    ``last_checkpoint`` naming a deleted file. It now deletes it only after the new one is
    complete and named by ``last_checkpoint``, and removes the temporary files of killed saves
    when training starts (``mmeff.engine.checkpointing.patch_checkpoint_hook``)."""
    import mmengine.runner.checkpoint as ckpt_mod
    import mmengine.runner.runner as runner_mod
    from mmeff.engine.checkpointing import patch_checkpoint_hook
    patch_checkpoint_hook()
    if getattr(runner_mod.save_checkpoint, '_mmeff_atomic', False):
        return
    original = ckpt_mod.save_checkpoint

    def save_checkpoint(checkpoint, filename, file_client_args=None, backend_args=None):
        if '://' in str(filename) or file_client_args is not None or backend_args is not None:
            return original(checkpoint, filename, file_client_args, backend_args)
        from mmeff.engine.checkpointing import save_checkpoint_atomic
        save_checkpoint_atomic(checkpoint, filename)

    save_checkpoint._mmeff_atomic = True
    runner_mod.save_checkpoint = save_checkpoint
    ckpt_mod.save_checkpoint = save_checkpoint


def import_timm() -> None:
    """Import timm with the ``FutureWarning`` its first import prints on torch 2.14 silenced:
    timm 1.0.22's ``timm/models/hrnet.py`` uses ``torch.jit.interface``, which torch deprecates
    (``torch/jit/_script.py``). It is a fact about the pinned stack that the user can do nothing
    about, printed by every tool on every run; only that message is silenced, only for this
    import (``mmeff.models`` imports timm here first)."""
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message=r'`torch\.jit\.interface` is deprecated',
                                category=FutureWarning)
        import timm  # noqa: F401


def patch_timm_posterize() -> None:
    """DeiT's RandAugment policy ``rand-m9-mstd0.5-inc1`` (the authors' recipe) uses timm's
    ``PosterizeIncreasing``, which keeps ``4 - int(level / 10 * 4)`` bits: at the top magnitude
    (level 10, drawn for about 2 % of posterize ops at m9 with std 0.5) that is 0 bits. Older
    Pillow turned 0 bits into a black image; Pillow 13 raises ``ValueError: bits must be between
    or equal to 1 and 8`` in a dataloader worker, so an ImageNet run dies in its first epoch.
    timm 1.0.22 passes 0 through unchanged. Keep the old meaning (0 bits: black image) by
    replacing timm's posterize op in its op table (``AugmentOp`` looks it up there when built).
    """
    import_timm()
    from timm.data import auto_augment as aa
    original = aa.posterize
    if getattr(original, '_mmeff_zero_bits', False):
        return

    def posterize(img, bits_to_keep, **kwargs):
        if bits_to_keep <= 0:  # no bit kept: every channel value becomes 0
            return img.point([0] * 256 * len(img.getbands()))
        return original(img, bits_to_keep, **kwargs)

    posterize._mmeff_zero_bits = True
    for name, fn in aa.NAME_TO_OP.items():
        if fn is original:
            aa.NAME_TO_OP[name] = posterize
    aa.posterize = posterize


def apply_all() -> None:
    global _APPLIED
    if _APPLIED:
        return
    patch_checkpoint_loading()
    patch_atomic_checkpoint_save()
    check_pkg_resources()
    patch_timm_posterize()
    _APPLIED = True
