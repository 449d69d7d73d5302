"""One training run per work dir.

Two runs started into the same work dir write into one log, overwrite each other's checkpoints
and ``last_checkpoint``, and both exit 0. ``tools/train.py`` therefore holds a lock on the work
dir for the whole run (:func:`lock_work_dir`): a second run refuses to start and names the
first one (pid, host, start time, command).

The lock is a POSIX record lock (``fcntl.lockf``) on ``<work_dir>/.mmeff_train.lock``. The
kernel drops it when its process ends, however it ends (SIGKILL, OOM killer, power loss of a
client on NFS), so the file a killed run leaves behind never blocks the next run. Record locks
are not inherited by forked children (dataloader workers), so a worker that outlives a killed
run does not keep the work dir locked either; NFS supports them (flock would need emulation).
Under DDP the ranks of one run share the work dir: only global rank 0 takes the lock.

``tools/slim.py`` takes the same lock on its own work dir for every phase (two searches or two
table builds in one work dir would replace each other's results), and the search and export
phases also take the lock of the supernet's training dir: they never read a supernet that is
still being trained, and no training starts under them.
"""
import errno
import fcntl
import getpass
import json
import os
import os.path as osp
import shlex
import socket
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Iterator, Optional

LOCK_NAME = '.mmeff_train.lock'

# Locks this process holds: path -> file descriptor. A second lock on the same file from the
# same process would not conflict with the first (record locks belong to the process), and
# closing its descriptor would silently drop the first one.
_HELD = {}


class WorkDirBusyError(OSError):
    """The work dir is locked by another run that is still alive (an ``OSError``, like a busy
    resource: the tools report it as a one-line user error). ``info`` holds what the holder
    recorded (pid, host, user, start time, command), ``None`` if unreadable."""

    def __init__(self, message: str, info: Optional[dict] = None, path: str = '') -> None:
        super().__init__(message)
        self.info = info
        self.path = path


def _describe(info: Optional[dict]) -> str:
    if not info:
        return 'a run that has not recorded its details yet'
    started = info.get('started')
    when = ''
    if isinstance(started, (int, float)):
        stamp = time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(started))
        mins = max(0, int(time.time() - started)) // 60
        when = f', started {stamp} ({mins} min ago)'
    return (f"pid {info.get('pid')} on host {info.get('host')!r} (user {info.get('user')!r})"
            f"{when}, command: {info.get('command')}")


def _read_info(path: str) -> Optional[dict]:
    # The holder writes its details right after taking the lock: retry briefly if the file is
    # still empty.
    for _ in range(5):
        try:
            with open(path) as f:
                text = f.read()
            if text.strip():
                return json.loads(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    return None


def global_rank(launcher: str) -> int:
    """Global rank of this process under ``launcher`` (0 without a launcher)."""
    if launcher in (None, 'none'):
        return 0
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    # The Runner initialises the process group later (GPU runs): read the launcher's variable.
    var = {'pytorch': 'RANK', 'slurm': 'SLURM_PROCID', 'mpi': 'OMPI_COMM_WORLD_RANK'}.get(
        launcher, 'RANK')
    value = os.environ.get(var, '0')
    return int(value) if value.isdigit() else 0


class WorkDirLock:
    """An exclusive lock on a work dir, held until :meth:`release` (or the process ends).

    Args:
        work_dir (str): The directory (created if missing).
        activity (str): What holds it, in the busy message (``'training run'``).
        harm (str): What two of them in one dir would do, in the busy message.
    """

    def __init__(self, work_dir: str, activity: str = 'training run',
                 harm: str = ("write into one log and overwrite each other's "
                              'checkpoints')) -> None:
        self.work_dir = work_dir
        self.activity = activity
        self.harm = harm
        self.path = osp.join(osp.realpath(work_dir), LOCK_NAME)
        self._fd: Optional[int] = None

    def acquire(self) -> 'WorkDirLock':
        """Take the lock or raise :class:`WorkDirBusyError` naming the run that holds it."""
        os.makedirs(self.work_dir, exist_ok=True)
        if self.path in _HELD:
            # Not read back from the file: closing any descriptor of it would drop our lock.
            raise WorkDirBusyError(f'Work dir {self.work_dir!r} is already locked by this '
                                   f'process (pid {os.getpid()}): one run at a time',
                                   self._info(), self.path)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    info = _read_info(self.path)
                    raise WorkDirBusyError(self._busy_message(info), info, self.path) from None
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    warnings.warn(f'The file system of work dir {self.work_dir!r} does not '
                                  f'support locks ({os.strerror(exc.errno)}): nothing stops a '
                                  f'second run from writing into it at the same time')
                    return self
                raise
            # A holder that ended cleanly removes the file; if that happened between our open
            # and our lock, we hold a lock on a deleted file: start again on the current one.
            try:
                st = os.stat(self.path)
                current = (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        self._fd = fd
        _HELD[self.path] = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(self._info()) + '\n').encode(), 0)
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op if not held)."""
        if self._fd is None:
            return
        try:
            os.remove(self.path)  # while still locked: nobody can take it in between
        except FileNotFoundError:
            pass
        os.close(self._fd)
        _HELD.pop(self.path, None)
        self._fd = None

    def _info(self) -> dict:
        command = shlex.join([osp.basename(sys.executable)] + sys.argv)
        return dict(pid=os.getpid(), host=socket.gethostname(), user=_user(),
                    started=time.time(), command=command[:500], work_dir=self.work_dir)

    def _busy_message(self, info: Optional[dict]) -> str:
        pid, host = (info or {}).get('pid'), (info or {}).get('host')
        stop = f' (kill {pid} on {host})' if pid and host else ''
        return (f'Work dir {self.work_dir!r} is in use by another {self.activity}: '
                f'{_describe(info)}. Two runs in one work dir would {self.harm}. Wait for '
                f'that run to end or stop it{stop}, or give this run another --work-dir (lock '
                f'file: {self.path})')

    def __enter__(self) -> 'WorkDirLock':
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return str(os.getuid())


@contextmanager
def lock_work_dir(work_dir: str, launcher: str = 'none',
                  **kwargs) -> Iterator[Optional[WorkDirLock]]:
    """Hold the work dir's lock for the block; yields None on ranks other than 0.
    ``kwargs``: :class:`WorkDirLock`'s ``activity`` and ``harm``."""
    if global_rank(launcher) != 0:
        yield None
        return
    with WorkDirLock(work_dir, **kwargs) as lock:
        yield lock
