"""Checkpoints survive kills and full disks, and one work dir holds one run
(``mmeff.engine.checkpointing``, ``mmeff.engine.workdir_lock``, ``tools/train.py``).

The in-process tests train a toy model with mmengine's Runner for a few iterations; one real
run of ``tools/train.py`` (the demo classification config on a 10-image generated ImageFolder)
is killed with SIGKILL while it saves, and resumed.
"""
import errno
import os
import os.path as osp
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel

import mmeff.models  # noqa: F401  (applies mmeff.compat: atomic saves, ordered CheckpointHook)
from mmeff.engine import checkpointing
from mmeff.engine.checkpointing import (CheckpointSaveError, remove_stale_temp_files,
                                        save_checkpoint_atomic)
from mmeff.engine.workdir_lock import LOCK_NAME, WorkDirBusyError, WorkDirLock, lock_work_dir

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
HOST = checkpointing._host()
# What torch's zip writer raises when the disk fills up during torch.save (seen on a full tmpfs).
TORCH_DISK_FULL = RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 576 '
                               'vs 534')


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def _temp_files(folder):
    return sorted(n for n in os.listdir(folder) if '.tmp.' in n or n.startswith('.epoch'))


def _dead_pid():
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------------------- toy runner
class ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.linear(inputs)
        if mode == 'loss':
            return dict(loss=((out.squeeze(1) - labels) ** 2).mean())
        return out


class ToyDataset(torch.utils.data.Dataset):
    metainfo = dict()

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return dict(inputs=torch.tensor([float(i), 1.0]), labels=torch.tensor(float(i)))


def toy_runner(work_dir, max_epochs, resume=False, **checkpoint):
    from mmengine.runner import Runner
    return Runner(
        model=ToyModel(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=ToyDataset(), sampler=dict(type='DefaultSampler',
                                                                 shuffle=False),
                              batch_size=2, num_workers=0, collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1, **checkpoint),
                           logger=dict(type='LoggerHook', interval=1)),
        resume=resume, default_scope='mmengine', experiment_name=f'toy_{time.time_ns()}',
        log_level='WARNING')


def fail_save_of(name, error, monkeypatch):
    """Make ``torch.save`` write part of the file for ``name`` and then raise ``error``, as a
    full disk does."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if osp.basename(str(f)).startswith(f'.{name}.tmp.'):
            with open(f, 'wb') as out:
                out.write(b'PK\x03\x04' + b'\0' * 1000)
            raise error
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', save)


# ---------------------------------------------------------------------------- item 6
def test_max_keep_ckpts_1_keeps_the_old_checkpoint_when_the_save_fails(tmp_path, monkeypatch):
    """mmengine deleted epoch_1.pth before writing epoch_2.pth: a save that fails (full disk,
    kill) left no checkpoint and last_checkpoint naming a deleted file."""
    work = tmp_path / 'work'
    fail_save_of('epoch_2.pth', OSError(errno.ENOSPC, 'No space left on device'), monkeypatch)
    with pytest.raises(CheckpointSaveError, match='No space left on device'):
        toy_runner(work, max_epochs=3, max_keep_ckpts=1).train()
    assert sorted(n for n in os.listdir(work) if n.endswith('.pth')) == ['epoch_1.pth']
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_1.pth')
    assert _load(work / 'epoch_1.pth')['meta']['epoch'] == 1
    assert not _temp_files(work)

    # --resume (auto) continues from epoch 1 and, once epoch 3 is saved, only epoch 3 is kept
    monkeypatch.undo()
    runner = toy_runner(work, max_epochs=3, resume=True, max_keep_ckpts=1)
    runner.train()
    assert runner.epoch == 3
    assert sorted(n for n in os.listdir(work) if n.endswith('.pth')) == ['epoch_3.pth']
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_3.pth')
    assert _load(work / 'epoch_3.pth')['message_hub']['runtime_info']['keep_ckpt_ids'] == [3]


def test_rotation_still_deletes_only_after_the_new_checkpoint(tmp_path, monkeypatch):
    """max_keep_ckpts=2 over 4 epochs keeps epochs 3 and 4, and each old checkpoint is deleted
    after the new one exists and last_checkpoint names it."""
    work = tmp_path / 'work'
    seen = []
    real_remove = os.remove

    def remove(path, *args, **kwargs):
        if str(path).endswith('.pth') and not osp.basename(str(path)).startswith('.'):
            step = int(osp.basename(str(path))[len('epoch_'):-len('.pth')])
            newest = (work / 'last_checkpoint').read_text()
            seen.append((step, osp.basename(newest), osp.isfile(newest)))
        return real_remove(path, *args, **kwargs)

    monkeypatch.setattr(os, 'remove', remove)
    toy_runner(work, max_epochs=4, max_keep_ckpts=2).train()
    assert seen == [(1, 'epoch_3.pth', True), (2, 'epoch_4.pth', True)]
    assert sorted(n for n in os.listdir(work) if n.endswith('.pth')) == ['epoch_3.pth',
                                                                        'epoch_4.pth']


def test_previous_best_checkpoint_survives_a_failed_best_save(tmp_path, monkeypatch):
    from mmengine.hooks import CheckpointHook
    from mmengine.logging import MessageHub

    out = tmp_path / 'work'
    out.mkdir()
    old_best = out / 'best_acc_epoch_1.pth'
    torch.save({'old': 1}, old_best)
    hook = CheckpointHook(interval=1, save_best='acc', rule='greater')
    hub = MessageHub.get_instance(f'best_{time.time_ns()}')
    hub.update_info('best_score', 0.5)

    class Runner:
        epoch, iter, work_dir, message_hub = 2, 4, str(out), hub

        class logger:
            info = staticmethod(lambda msg: None)

        @staticmethod
        def save_checkpoint(out_dir, filename, *args, **kwargs):
            save_checkpoint_atomic({'new': 1}, osp.join(out_dir, filename))

    from mmengine.fileio import get_file_backend
    hook.out_dir, hook.file_backend = str(out), get_file_backend(str(out))
    hook.best_ckpt_path, hook.last_ckpt = str(old_best), None
    fail_save_of('best_acc_epoch_2.pth', TORCH_DISK_FULL, monkeypatch)
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(CheckpointSaveError, match='No space left on device'):
        hook._save_best_checkpoint(Runner, dict(acc=0.9))
    assert _load(old_best) == {'old': 1}  # mmengine had deleted it already
    assert not _temp_files(out)

    # a save that works still replaces the old best checkpoint
    monkeypatch.undo()
    hook = CheckpointHook(interval=1, save_best='acc', rule='greater')
    hook.out_dir, hook.file_backend = str(out), get_file_backend(str(out))
    hook.best_ckpt_path, hook.last_ckpt = str(old_best), None
    hook._save_best_checkpoint(Runner, dict(acc=0.95))
    assert sorted(os.listdir(out)) == ['best_acc_epoch_2.pth']


# ---------------------------------------------------------------------------- items 8, 9
@pytest.mark.parametrize('umask', [0o022, 0o077, 0o002])
def test_saved_checkpoints_honour_the_umask(tmp_path, umask):
    import mmengine.runner.runner as runner_mod
    old = os.umask(umask)
    try:
        runner_mod.save_checkpoint({'state_dict': {'w': torch.ones(1)}}, str(tmp_path / 'a.pth'))
        save_checkpoint_atomic({'w': torch.ones(1)}, str(tmp_path / 'b.pth'))
        torch.save({'w': torch.ones(1)}, tmp_path / 'plain.pth')
    finally:
        os.umask(old)
    modes = {n: oct(os.stat(tmp_path / n).st_mode & 0o777) for n in ('a.pth', 'b.pth')}
    plain = oct(os.stat(tmp_path / 'plain.pth').st_mode & 0o777)
    assert plain == oct(0o666 & ~umask)
    assert modes == {'a.pth': plain, 'b.pth': plain}, 'not what torch.save gives'


@pytest.mark.parametrize('error', [TORCH_DISK_FULL, OSError(errno.ENOSPC, 'No space left')],
                         ids=['torch_runtime_error', 'oserror_enospc'])
def test_full_disk_says_so_and_removes_the_partial_file(tmp_path, monkeypatch, error):
    path = tmp_path / 'epoch_3.pth'
    save_checkpoint_atomic({'epoch': 2}, str(path))
    fail_save_of('epoch_3.pth', error, monkeypatch)
    # torch only says "unexpected pos": the free space (none left) tells that the disk is full
    monkeypatch.setattr(shutil, 'disk_usage',
                        lambda p: shutil._ntuple_diskusage(8 * 2**30, 8 * 2**30, 0))
    with pytest.raises(CheckpointSaveError) as err:
        save_checkpoint_atomic({'epoch': 3}, str(path))
    msg = str(err.value)
    assert err.value.errno == errno.ENOSPC
    assert f"the file system holding '{tmp_path}' is full (0 B free of 8.0 GiB)" in msg
    assert f"writing checkpoint '{path}' failed after 1004 B" in msg
    assert 'the partial temporary file was removed' in msg and '--work-dir' in msg
    assert os.listdir(tmp_path) == ['epoch_3.pth']
    assert _load(path) == {'epoch': 2}


def test_write_failure_with_free_space_is_not_called_a_full_disk(tmp_path, monkeypatch):
    fail_save_of('x.pth', TORCH_DISK_FULL, monkeypatch)
    monkeypatch.setattr(shutil, 'disk_usage',
                        lambda p: shutil._ntuple_diskusage(2**40, 2**39, 2**39))
    with pytest.raises(CheckpointSaveError) as err:
        save_checkpoint_atomic({}, str(tmp_path / 'x.pth'))
    msg = str(err.value)
    assert 'is full' not in msg
    assert ('(512.0 GiB free of 1024.0 GiB; torch said: [enforce fail at '
            'inline_container.cc:672]') in msg
    assert 'It may be full or over quota' in msg
    assert os.listdir(tmp_path) == []


def test_real_full_disk(tmp_path):
    """A 256 KiB tmpfs (needs root and a kernel that lets this container mount)."""
    mnt = tmp_path / 'small'
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=256k', 'tmpfs',
                                            str(mnt)], capture_output=True).returncode != 0:
        pytest.skip('cannot mount a small tmpfs here')
    try:
        save_checkpoint_atomic({'w': torch.zeros(1000)}, str(mnt / 'epoch_1.pth'))
        with pytest.raises(CheckpointSaveError) as err:
            save_checkpoint_atomic({'w': torch.zeros(1 << 17)}, str(mnt / 'epoch_2.pth'))
        assert re.search(rf"No space left on device: the file system holding '{mnt}' is full "
                         rf"\([0-9.]+ \w+ free of 256.0 KiB\)", str(err.value)), str(err.value)
        assert os.listdir(mnt) == ['epoch_1.pth']
        # the space is free again while the error lives (torch's writer held the file open)
        assert shutil.disk_usage(mnt).free > 200 * 1024 and err.value is not None
        assert torch.equal(_load(mnt / 'epoch_1.pth')['w'], torch.zeros(1000))
    finally:
        # lazily if still busy, rather than leave a mount behind
        if subprocess.run(['umount', str(mnt)]).returncode != 0:
            subprocess.run(['umount', '-l', str(mnt)], check=True)


# ---------------------------------------------------------------------------- item 7
def test_stale_temp_files_are_removed_live_ones_kept(tmp_path):
    dead, old = _dead_pid(), time.time() - 2 * checkpointing.STALE_AFTER_S
    names = {
        f'.epoch_3.pth.tmp.{dead}.0123abcd.{HOST}': True,        # killed writer on this host
        f'.epoch_4.pth.tmp.{os.getpid()}.0123abcd.{HOST}': False,  # live writer
        '.epoch_5.pth.tmp.1.0123abcd.other-host': False,          # other host, being written
        '.epoch_6.pth.tmp.1.0123abcd.other-host.example': True,   # other host, idle for hours
        '.epoch_7.pth.k2x_9abc': True,                            # mmeff 0.1.0 (mkstemp), old
        '.epoch_8.pth.k2x_9abd': False,                           # mmeff 0.1.0, recent
        '.epoch_9.pth.original': False,  # a user's complete hidden copy, old
        '.gitignore': False, 'epoch_2.pth': False, '.notes.txt.abcdefgh': False,
    }
    for name in names:
        (tmp_path / name).write_bytes(b'x' * 10)
    torch.save({'w': 1}, tmp_path / '.epoch_9.pth.original')
    for name in ('.epoch_6.pth.tmp.1.0123abcd.other-host.example', '.epoch_7.pth.k2x_9abc',
                 '.notes.txt.abcdefgh', '.epoch_9.pth.original'):
        os.utime(tmp_path / name, (old, old))
    removed = remove_stale_temp_files(str(tmp_path))
    assert sorted(osp.basename(p) for p, _ in removed) == sorted(n for n, r in names.items() if r)
    assert all(size == 10 for _, size in removed)
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, r in names.items() if not r)


def test_sigterm_during_save_leaves_a_temp_file_that_the_next_start_removes(tmp_path):
    """SIGTERM (like SIGKILL) ends Python without running ``finally``: the temporary file of the
    save stays. Starting training in that folder removes it; the checkpoint is untouched."""
    script = textwrap.dedent(f"""
        import time, torch
        from mmeff.engine.checkpointing import save_checkpoint_atomic
        save_checkpoint_atomic({{'epoch': 1}}, {str(tmp_path / 'epoch_1.pth')!r})
        real_save = torch.save
        def slow_save(obj, f):
            real_save(obj, f)
            open({str(tmp_path / 'saving')!r}, 'w').close()
            time.sleep(300)
        torch.save = slow_save
        save_checkpoint_atomic({{'epoch': 2, 'w': torch.zeros(1000)}},
                               {str(tmp_path / 'epoch_1.pth')!r})
        """)
    proc = subprocess.Popen([sys.executable, '-c', script], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    _wait_for(tmp_path / 'saving', proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM
    (temp,) = [n for n in os.listdir(tmp_path) if n.startswith('.epoch_1.pth.tmp.')]
    assert temp.startswith(f'.epoch_1.pth.tmp.{proc.pid}.') and temp.endswith(f'.{HOST}')
    assert _load(tmp_path / 'epoch_1.pth') == {'epoch': 1}

    runner = toy_runner(tmp_path, max_epochs=1)
    runner.train()
    assert not [n for n in os.listdir(tmp_path) if '.tmp.' in n]
    assert _load(tmp_path / 'epoch_1.pth')['meta']['epoch'] == 1


# ---------------------------------------------------------------------------- item 5
def _wait_for(path, proc, timeout=300):
    start = time.time()
    while not osp.exists(path):
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ''
            raise AssertionError(f'process ended ({proc.returncode}) before {path}:\n{out[-4000:]}')
        if time.time() - start > timeout:
            proc.kill()
            raise AssertionError(f'timed out waiting for {path}')
        time.sleep(0.2)


def test_work_dir_lock_names_the_holder_and_ignores_dead_ones(tmp_path):
    work = tmp_path / 'work'
    ready = tmp_path / 'ready'
    holder = subprocess.Popen(
        [sys.executable, '-c', textwrap.dedent(f"""
            import time
            from mmeff.engine.workdir_lock import WorkDirLock
            WorkDirLock({str(work)!r}).acquire()
            open({str(ready)!r}, 'w').close()
            time.sleep(300)
            """), 'holder-arg'], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        _wait_for(ready, holder)
        with pytest.raises(WorkDirBusyError) as err:
            WorkDirLock(str(work)).acquire()
        msg = str(err.value)
        assert f"Work dir '{work}' is in use by another training run: pid {holder.pid} on host " \
               f"'{socket.gethostname()}'" in msg
        assert ', started 20' in msg and 'min ago), command: python' in msg and 'holder-arg' in msg
        assert f'kill {holder.pid} on {socket.gethostname()}' in msg and '--work-dir' in msg
    finally:
        holder.kill()
        holder.wait()
    # The killed holder's lock file stays, and does not block.
    assert (work / LOCK_NAME).exists()
    with WorkDirLock(str(work)) as lock:
        with pytest.raises(WorkDirBusyError, match='already locked by this process'):
            WorkDirLock(str(work)).acquire()
        assert lock.path == str(work / LOCK_NAME)
    assert not (work / LOCK_NAME).exists()  # a run that ends removes it


def test_only_rank_0_of_a_distributed_run_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv('RANK', '1')
    with lock_work_dir(str(tmp_path / 'a'), 'pytorch') as lock:
        assert lock is None
    assert not (tmp_path / 'a' / LOCK_NAME).exists()
    monkeypatch.setenv('RANK', '0')
    with lock_work_dir(str(tmp_path / 'b'), 'pytorch') as lock:
        assert lock is not None and (tmp_path / 'b' / LOCK_NAME).exists()
    # without a launcher every process is a run of its own, whatever RANK says
    monkeypatch.setenv('RANK', '1')
    with lock_work_dir(str(tmp_path / 'c'), 'none') as lock:
        assert lock is not None


# ---------------------------------------------------------------------------- real runs
# sitecustomize.py of the run to kill: hangs in the middle of saving epoch_2.pth (after writing
# its temporary file) so that the test can kill the run there.
SLOW_SAVE = """
import os
if os.environ.get('MMEFF_TEST_SAVING'):
    import time, torch
    _save = torch.save

    def save(obj, f, *args, **kwargs):
        if os.path.basename(str(f)).lstrip('.').startswith('epoch_2.pth'):
            _save(obj, f, *args, **kwargs)
            open(os.environ['MMEFF_TEST_SAVING'], 'w').close()
            time.sleep(600)
        return _save(obj, f, *args, **kwargs)

    torch.save = save
"""


@pytest.fixture(scope='module')
def imagefolder(tmp_path_factory):
    from mmeff.datasets import make_imagefolder_dataset
    return make_imagefolder_dataset(str(tmp_path_factory.mktemp('imagenet')), num_classes=5,
                                    per_class=(2, 1), size=64)


def test_killed_save_resumes_and_a_second_run_is_refused(tmp_path, imagefolder):
    """The demo classification config (max_keep_ckpts=1), 2 iterations per epoch, no
    validation: killed with SIGKILL while saving epoch 2; meanwhile a second run into the same
    work dir is refused; then --resume continues from epoch 1 and ends with epoch_2.pth only."""
    (tmp_path / 'site').mkdir()
    (tmp_path / 'site' / 'sitecustomize.py').write_text(SLOW_SAVE)
    cfg = tmp_path / 'cfg.py'
    cfg.write_text(textwrap.dedent(f"""
        _base_ = {osp.join(ROOT, 'configs', 'demo', 'effformer_l1_in1k_synthetic.py')!r}
        train_dataloader = dict(batch_size=4)
        val_dataloader = val_evaluator = val_cfg = None
        test_dataloader = test_evaluator = test_cfg = None
        train_cfg = dict(max_epochs=2)
        default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
        """))
    work = tmp_path / 'work'
    cmd = [sys.executable, 'tools/train.py', str(cfg), '--work-dir', str(work),
           '--cfg-options', f"data_root={imagefolder['data_root']}/"]
    env = dict(os.environ, PYTHONWARNINGS='ignore', OMP_NUM_THREADS='2', PYTHONPATH=ROOT)
    slow_env = dict(env, MMEFF_TEST_SAVING=str(tmp_path / 'saving'),
                    PYTHONPATH=f"{tmp_path / 'site'}{os.pathsep}{ROOT}")
    first = subprocess.Popen(cmd, cwd=ROOT, env=slow_env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(tmp_path / 'saving', first)
        second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=300)
        assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
        assert f"Work dir '{work}' is in use by another training run: pid {first.pid} on host " \
               f"'{socket.gethostname()}'" in second.stderr
        assert 'tools/train.py' in second.stderr and str(cfg) in second.stderr
        first.kill()
        assert first.wait(timeout=60) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stdout.close()

    # What the kill left: epoch 1 complete and named by last_checkpoint, the temporary file of
    # epoch 2, the lock file of the dead run.
    assert sorted(n for n in os.listdir(work) if n.endswith('.pth')) == ['epoch_1.pth']
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_1.pth')
    (temp,) = [n for n in os.listdir(work) if n.startswith('.epoch_2.pth.tmp.')]
    assert temp.startswith(f'.epoch_2.pth.tmp.{first.pid}.')
    assert (work / LOCK_NAME).exists()

    resumed = subprocess.run(cmd + ['--resume'], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-4000:]
    assert 'resumed epoch: 1, iter: 2' in out
    assert 'Removed 1 temporary file(s) of interrupted checkpoint saves' in out and temp in out
    assert 'Epoch(train) [2][2/2]' in out and 'Epoch(train) [1]' not in out
    assert sorted(os.listdir(work)) == sorted(
        ['epoch_2.pth', 'last_checkpoint', 'cfg.py'] + [d for d in os.listdir(work)
                                                        if osp.isdir(work / d)])
    assert _load(work / 'epoch_2.pth')['meta']['epoch'] == 2
    assert oct(os.stat(work / 'epoch_2.pth').st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
