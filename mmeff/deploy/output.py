"""Where exports are written: beside their target, checked there, then put in place.

An ONNX file or a Core ML ``.mlpackage`` is written into a hidden staging directory next to its
target (same file system, named like :func:`mmeff.engine.checkpointing.temp_path`, so that the
writer's pid and host tell a live export from a killed one), checked there, and only then
renamed over the target (:func:`mmeff.engine.checkpointing.replace_atomic`). So the target
always holds a complete model: the previous one when the export fails (a NaN checkpoint, a
check that does not pass, a full disk, ``kill -9``), the new one once it passed.

An export whose checks report problems (:func:`place_checked`) is kept for inspection beside
the target under :func:`failed_path` (``model.failed.onnx``), never in its place.
"""
import os
import os.path as osp
import shutil
from typing import List, Optional

from mmeff.engine.checkpointing import (fsync_tree, is_stale_temp_file, replace_atomic,
                                        temp_path)


def failed_path(path: str) -> str:
    """Where an export that failed its checks is kept: ``a/model.onnx`` ->
    ``a/model.failed.onnx``, ``a/m.mlpackage`` -> ``a/m.failed.mlpackage``."""
    root, ext = osp.splitext(str(path).rstrip('/'))
    return f'{root}.failed{ext}'


def remove_stale_staging(path: str) -> List[str]:
    """Delete the staging directories of killed exports to ``path``; returns their paths."""
    folder, name = osp.split(osp.abspath(path))
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for entry in names:
        if entry.startswith(f'.{name}.tmp.') and is_stale_temp_file(folder, entry):
            full = osp.join(folder, entry)
            if osp.isdir(full):
                shutil.rmtree(full, ignore_errors=True)
            else:
                os.remove(full)
            removed.append(full)
    return removed


class StagedOutput:
    """A staging place for an export to ``target``.

    Write to :attr:`path` (a file or a directory, with the target's own name, so that tools
    that derive names from it, such as ONNX's external data files, see the final one), check
    it, then :meth:`place` it. Leaving the ``with`` block without placing it (an exception, a
    failed check) removes it and leaves ``target`` as it was.
    """

    def __init__(self, target: str):
        self.target = osp.abspath(osp.expanduser(str(target)))
        folder, self.name = osp.split(self.target)
        os.makedirs(folder, exist_ok=True)
        remove_stale_staging(self.target)
        self.dir = temp_path(self.target)
        os.mkdir(self.dir)
        self.path = osp.join(self.dir, self.name)
        self.placed_at: Optional[str] = None

    def place(self, target: Optional[str] = None) -> str:
        """Flush what was written to disk and move it to ``target`` (default: the target given
        at construction); companion files (ONNX external data) go first, the model last.
        Returns the absolute path it now has."""
        if not osp.lexists(self.path):
            raise FileNotFoundError(f'nothing was written to {self.path!r} to place at '
                                    f'{target or self.target!r}')
        target = osp.abspath(target or self.target)
        fsync_tree(self.dir)
        for entry in sorted(os.listdir(self.dir)):
            if entry != self.name:
                replace_atomic(osp.join(self.dir, entry),
                               osp.join(osp.dirname(target), entry))
        replace_atomic(self.path, target)
        self.placed_at = target
        self.discard()
        return target

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> 'StagedOutput':
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def place_checked(staged: StagedOutput, report: dict) -> dict:
    """Place a staged export according to its report: at the target when
    ``report['problems']`` is empty, else at :func:`failed_path` (the target keeps its previous
    content). Sets ``report['path']`` to where it went and, on failure, ``report['rejected']``
    to the target it was not written to."""
    if report.get('problems'):
        report['path'] = staged.place(failed_path(staged.target))
        report['rejected'] = staged.target
    else:
        report['path'] = staged.place()
    return report


__all__ = ['StagedOutput', 'failed_path', 'place_checked', 'remove_stale_staging']
