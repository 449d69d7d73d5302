"""Checkpoint files that survive a kill or a full disk.

* :func:`save_checkpoint_atomic` writes a checkpoint next to its final name under a temporary
  name that says who writes it (pid and host), flushes it to disk and renames it: ``path``
  always holds a complete checkpoint or its previous content. The file gets the mode a plain
  ``torch.save`` gives (0666 minus the umask). A full disk is reported as such (path, free
  space) instead of torch's ``inline_container.cc ... unexpected pos``.
* :func:`remove_stale_temp_files` deletes the temporary files of saves that were killed, and
  only those: a temporary file whose writer is still running is kept.
* :func:`patch_checkpoint_hook` makes mmengine's ``CheckpointHook`` delete the checkpoint that
  ``max_keep_ckpts`` drops (and the previous best one) only once the new one is complete and
  ``last_checkpoint`` names it; before, a kill or a full disk during the save left no
  checkpoint at all and ``last_checkpoint`` naming a deleted file.
"""
import errno
import os
import os.path as osp
import re
import secrets
import shutil
import socket
import time
import traceback
import zipfile
from typing import List, Optional

# ``.<name>.tmp.<pid>.<8 hex>.<host>``: hidden, never matched by mmengine's ``*.pth`` globbing,
# and the pid and host tell whether the writer still runs.
_TEMP_RE = re.compile(r'^\.(?P<target>.+)\.tmp\.(?P<pid>\d+)\.[0-9a-f]{8}\.(?P<host>[\w.-]+)$')
# What ``tempfile.mkstemp(prefix='.<name>.')`` gave in mmeff 0.1.0 (no writer recorded).
_LEGACY_TEMP_RE = re.compile(r'^\.(?P<target>.+\.pth)\.[a-z0-9_]{8}$')
# A temporary file that names no writer on this host is taken for abandoned once it has not
# been written for this long (a live save writes continuously).
STALE_AFTER_S = 3600.0


class CheckpointSaveError(OSError):
    """Writing a checkpoint failed; the message says why and where."""


def _host() -> str:
    return re.sub(r'[^\w.-]', '_', socket.gethostname()) or 'localhost'


def temp_path(path: str) -> str:
    """The temporary file name :func:`save_checkpoint_atomic` uses for ``path``."""
    folder, name = osp.split(path)
    return osp.join(folder, f'.{name}.tmp.{os.getpid()}.{secrets.token_hex(4)}.{_host()}')


def _fail_write(exc: BaseException, path: str, written: Optional[int], remove) -> None:
    """After a failed atomic write of ``path``: drop the temporary copy (``remove()``) and
    re-raise ``exc``, as the clearer error :func:`_explain_write_error` makes of it if any
    (a full disk named as such, with the folder's free space)."""
    usage = _disk_usage(osp.dirname(path))
    _release_frames(exc)
    remove()
    error = _explain_write_error(exc, path, written, usage)
    if error is not None:
        raise error from exc
    raise exc


def write_file_atomic(path: str, write) -> None:
    """Call ``write(temporary_path)``, flush the file to disk and rename it to ``path``.

    The temporary file is created with mode 0666 minus the umask (``tempfile.mkstemp`` would
    give 0600: a checkpoint other users and service accounts cannot read). On any failure,
    including KeyboardInterrupt, it is removed and a full disk is reported as such.
    """
    folder = osp.dirname(path)
    tmp = temp_path(path)
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:  # nothing created, nothing to remove
        error = _explain_write_error(exc, path, 0, _disk_usage(folder))
        if error is not None:
            raise error from exc
        raise
    try:
        write(tmp)
        # Durable before it replaces the old file; a late ENOSPC/EIO also shows here.
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        _fail_write(exc, path, _size(tmp), lambda: _remove(tmp))
    _fsync_dir(folder)


def save_checkpoint_atomic(obj, path: str) -> None:
    """``torch.save(obj, path)`` such that a kill or a full disk never leaves a half-written
    file under ``path`` (see :func:`write_file_atomic`)."""
    import torch
    path = osp.abspath(osp.expanduser(str(path)))
    os.makedirs(osp.dirname(path), exist_ok=True)
    write_file_atomic(path, lambda tmp: torch.save(obj, tmp))


def write_text_atomic(path: str, text: str) -> None:
    """Replace a small text file (``last_checkpoint``) atomically."""
    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
    write_file_atomic(path, write)


def _release_frames(exc: BaseException) -> None:
    """Drop the local variables of the finished frames in ``exc``'s tracebacks.

    When the disk fills up, torch's zip writer raises with the file still open, referenced from
    ``torch.save``'s frame in the traceback: removing the temporary file would not give its
    space back for as long as the exception lives (and an interactive session keeps the last
    one). Clearing those frames closes the file.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def _size(path: str) -> Optional[int]:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _disk_usage(folder: str):
    try:
        return shutil.disk_usage(folder)
    except OSError:
        return None


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _fsync_dir(folder: str) -> None:
    """Make the rename durable; not every file system can sync a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def format_bytes(n: Optional[float]) -> str:
    if n is None:
        return 'unknown'
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if abs(n) < 1024 or unit == 'GiB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024
    return f'{n:.1f} GiB'  # pragma: no cover


# What torch's zip writer says when the bytes it wrote did not all reach the file.
_TORCH_WRITE_FAILED = ('unexpected pos', 'file write failed', 'PytorchStreamWriter failed')


def _errnos(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            yield exc.errno
        exc = exc.__cause__ or exc.__context__


def _explain_write_error(exc: BaseException, path: str, written: Optional[int],
                         usage) -> Optional[CheckpointSaveError]:
    """A :class:`CheckpointSaveError` naming the cause for write failures, else None."""
    codes = set(_errnos(exc))
    torch_failed = isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_FAILED)
    if not codes & {errno.ENOSPC, errno.EDQUOT} and not torch_failed:
        return None
    folder = osp.dirname(path)
    free = (f'{format_bytes(usage.free)} free of {format_bytes(usage.total)}'
            if usage is not None else 'free space unknown')
    where = (f'writing checkpoint {path!r} failed after {format_bytes(written)}; the partial '
             f'temporary file was removed and the previous content of that path, if any, is '
             f'intact')
    fix = 'free some space or write the run elsewhere (--work-dir)'
    # Torch only says that fewer bytes reached the file than it wrote: read the free space.
    full = errno.ENOSPC in codes or (usage is not None and usage.free < 1024 * 1024)
    if full:
        return CheckpointSaveError(errno.ENOSPC, f'No space left on device: the file system '
                                   f'holding {folder!r} is full ({free}): {where}. To continue, '
                                   f'{fix}')
    if errno.EDQUOT in codes:
        return CheckpointSaveError(errno.EDQUOT, f'Disk quota exceeded on the file system '
                                   f'holding {folder!r} ({free}): {where}. To continue, {fix}')
    first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return CheckpointSaveError(errno.EIO, f'Could not write to the file system holding '
                               f'{folder!r} ({free}; torch said: {first}): {where}. It may be '
                               f'full or over quota: {fix}')


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:  # a killed process its parent has not reaped yet writes nothing any more
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return True


def is_stale_temp_file(folder: str, name: str, now: Optional[float] = None) -> bool:
    """Whether ``name`` in ``folder`` is the temporary file of a save that will never finish.

    Temporary files of this host are stale when their writer (pid) no longer runs; those of
    other hosts and of mmeff 0.1.0 (which recorded no writer; only incomplete ones) when they
    have not been written for ``STALE_AFTER_S``.
    """
    m = _TEMP_RE.match(name)
    if m and m.group('host') == _host():
        return not _pid_running(int(m.group('pid')))
    legacy = not m and _LEGACY_TEMP_RE.match(name)
    if not (m or legacy):
        return False
    path = osp.join(folder, name)
    try:
        age = (time.time() if now is None else now) - os.stat(path).st_mtime
    except OSError:
        return False
    # An old-style name could also be a user's hidden copy (``.epoch_3.pth.original``): only
    # an incomplete file (no zip directory at its end, as a killed torch.save leaves) goes.
    return age > STALE_AFTER_S and not (legacy and zipfile.is_zipfile(path))


def remove_stale_temp_files(folder: str) -> List[tuple]:
    """Delete the temporary files of interrupted saves in ``folder`` (not below it).

    Returns ``[(path, size), ...]`` of what was removed.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in sorted(names):
        if not name.startswith('.') or not is_stale_temp_file(folder, name):
            continue
        path = osp.join(folder, name)
        size = _size(path) or 0
        try:
            os.remove(path)
        except OSError:
            continue
        removed.append((path, size))
    return removed


# ---------------------------------------------------------------------------- CheckpointHook
class _DeferredRemovals:
    """Stands in for a CheckpointHook's file backend: records ``remove``/``rmtree`` calls
    instead of running them, passes everything else through."""

    def __init__(self, backend) -> None:
        self._backend = backend
        self.pending: List[tuple] = []

    def remove(self, path) -> None:
        self.pending.append(('remove', path))

    def rmtree(self, path) -> None:
        self.pending.append(('rmtree', path))

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def run(self, keep=()) -> None:
        for method, path in self.pending:
            if path not in keep:
                getattr(self._backend, method)(path)
        self.pending.clear()


def _remove_checkpoint(backend, path: str) -> None:
    if backend.isfile(path):
        backend.remove(path)
    elif backend.isdir(path):  # DeepSpeed saves a checkpoint as a folder
        backend.rmtree(path)


def _save_checkpoint_with_step(self, runner, step, meta) -> None:
    """``CheckpointHook._save_checkpoint_with_step`` in the order that loses nothing.

    mmengine deletes the checkpoint that ``max_keep_ckpts`` drops, then saves the new one, then
    writes ``last_checkpoint`` in place: a kill or a full disk during the save left no checkpoint
    and ``last_checkpoint`` naming a deleted file, so every ``--resume`` failed. Here the kept
    steps are updated first as before (the new checkpoint stores them), the new checkpoint is
    saved (atomically, see :func:`save_checkpoint_atomic`), ``last_checkpoint`` is replaced
    atomically, and only then is the dropped checkpoint deleted.
    """
    from mmengine.dist import is_main_process
    dropped = []
    # The best-checkpoint logic saves the same step a second time: nothing to rotate then.
    if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
        if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
            dropped.append(self.keep_ckpt_ids.popleft())
        self.keep_ckpt_ids.append(step)
        runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

    filename = self.filename_tmpl.format(step)
    self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
    runner.message_hub.update_info('last_ckpt', self.last_ckpt)
    runner.save_checkpoint(self.out_dir, filename, self.file_client_args,
                           save_optimizer=self.save_optimizer,
                           save_param_scheduler=self.save_param_scheduler, meta=meta,
                           by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
    if not is_main_process():  # only the main process writes files
        return
    write_text_atomic(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
    for old in dropped:
        path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
        if path != self.last_ckpt:
            _remove_checkpoint(self.file_backend, path)


def _wrap_save_best_checkpoint(original):
    def _save_best_checkpoint(self, runner, metrics) -> None:
        """mmengine deletes the previous best checkpoint before saving the new one; the
        deletions are run once the new best (and the step checkpoint) are saved."""
        backend = self.file_backend
        deferred = _DeferredRemovals(backend)
        self.file_backend = deferred
        try:
            original(self, runner, metrics)
        finally:
            self.file_backend = backend
        # Never the file just saved (mmengine removed before saving, so a name reused for
        # the new best checkpoint was harmless there).
        deferred.run(keep={getattr(self, 'best_ckpt_path', None), self.last_ckpt,
                           *getattr(self, 'best_ckpt_path_dict', {}).values()})
    _save_best_checkpoint._mmeff_ordered = True
    return _save_best_checkpoint


def _wrap_before_train(original):
    def before_train(self, runner) -> None:
        """Also delete what killed saves left in the checkpoint folder (and the work dir,
        where ``last_checkpoint`` is written)."""
        original(self, runner)
        from mmengine.dist import is_main_process
        if not is_main_process():
            return
        removed = []
        for folder in dict.fromkeys([str(self.out_dir), runner.work_dir]):
            if '://' not in folder:
                removed += remove_stale_temp_files(folder)
        if removed:
            names = ', '.join(osp.basename(p) for p, _ in removed[:3])
            more = f' and {len(removed) - 3} more' if len(removed) > 3 else ''
            runner.logger.info(
                f'Removed {len(removed)} temporary file(s) of interrupted checkpoint saves '
                f'({format_bytes(sum(s for _, s in removed))}): {names}{more}')
    before_train._mmeff_ordered = True
    return before_train


def patch_checkpoint_hook() -> None:
    """Apply the orderings above to mmengine's ``CheckpointHook`` (idempotent)."""
    from mmengine.hooks import CheckpointHook
    if getattr(CheckpointHook.before_train, '_mmeff_ordered', False):
        return
    _save_checkpoint_with_step._mmeff_ordered = True
    CheckpointHook._save_checkpoint_with_step = _save_checkpoint_with_step
    CheckpointHook._save_best_checkpoint = _wrap_save_best_checkpoint(
        CheckpointHook._save_best_checkpoint)
    CheckpointHook.before_train = _wrap_before_train(CheckpointHook.before_train)


# ---------------------------------------------------------------------------- directories
# renameat2(2)'s flag that swaps two paths in one step (Linux 3.15+; not every file system).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Swap the paths ``a`` and ``b`` atomically (both must exist); False where the system or
    the file system cannot, so that the caller falls back to two renames."""
    import ctypes
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), b)


def _remove_tree(path: str) -> None:
    if osp.isdir(path) and not osp.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        _remove(path)


def fsync_tree(path: str) -> None:
    """Flush a file, or every file and folder below a directory, to disk."""
    if not osp.isdir(path):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    for root, _, files in os.walk(path):
        for name in files:
            fsync_tree(osp.join(root, name))
        _fsync_dir(root)


def replace_atomic(src: str, dst: str) -> None:
    """Put the file or directory ``src`` at ``dst`` (same file system), replacing what ``dst``
    held; the previous content is deleted afterwards.

    A file replaces a file in one ``rename``. A directory (or a file replacing a directory) is
    swapped with ``renameat2(RENAME_EXCHANGE)``, so that ``dst`` always holds the old or the new
    content; where the system cannot swap, the old content is first renamed aside (a kill
    between the two renames leaves it under a temporary name beside ``dst``).
    """
    if not osp.lexists(dst) or (not osp.isdir(src) and not osp.isdir(dst)):
        os.replace(src, dst)
    else:
        if _exchange(src, dst):
            old = src  # now holds the previous content
        else:
            old = temp_path(dst)
            os.rename(dst, old)
            try:
                os.rename(src, dst)
            except BaseException:
                os.rename(old, dst)  # put the previous content back
                raise
        _remove_tree(old)
    _fsync_dir(osp.dirname(osp.abspath(dst)))


def write_dir_atomic(path: str, write) -> None:
    """Call ``write(temporary_dir)`` to fill a new, empty directory beside ``path``, flush it to
    disk and put it in place of ``path`` (:func:`replace_atomic`).

    ``path`` keeps its previous content on any failure (``write`` raising, a full disk, a kill):
    the temporary directory is removed, or left under a name :func:`is_stale_temp_file`
    recognises when the process is killed. For directory outputs such as Core ML's
    ``.mlpackage``; files use :func:`write_file_atomic`.
    """
    path = osp.abspath(osp.expanduser(str(path)))
    folder = osp.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = temp_path(path)
    os.mkdir(tmp)
    try:
        write(tmp)
        fsync_tree(tmp)
        replace_atomic(tmp, path)
    except BaseException as exc:
        _fail_write(exc, path, None, lambda: _remove_tree(tmp))
