"""Clear errors for mistakes that mmengine, mmdet and mmseg report late or without a name.

Each function either checks one thing before anything expensive is built, or turns a bare error
raised deep in the stack into one that names the file, the value and the fix. tools/train.py and
tools/test.py reach them through ``mmeff.engine.launch`` (``prepare_config``,
``check_data_paths``, ``build_runner``, ``explain_dataset_errors``).
"""
import glob
import json
import os
import os.path as osp
from typing import Optional

# What each ``--launcher`` needs from the program that starts the processes (torchrun, srun,
# mpirun); mmengine's ``init_dist`` reads these and fails with a bare KeyError or a rendezvous
# error when they are missing.
LAUNCHER_ENV = {
    'pytorch': ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'),
    'slurm': ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'),
    'mpi': ('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE', 'OMPI_COMM_WORLD_LOCAL_RANK'),
}
HOW_TO_LAUNCH = {
    'pytorch': ('start the processes with torchrun: bash tools/dist_train.sh {config} NUM_PROCS '
                '(or bash tools/dist_test.sh {config} CHECKPOINT NUM_PROCS; both call torchrun '
                '--nproc_per_node=NUM_PROCS ... --launcher pytorch)'),
    'slurm': ('start the tasks with srun: GPUS=N bash tools/slurm_train.sh PARTITION JOB_NAME '
              '{config} WORK_DIR'),
    'mpi': 'start the processes with mpirun -np N python tools/train.py {config} --launcher mpi',
}


class DataFileError(ValueError):
    """A data file (annotation JSON, label map) that exists but cannot be used as it is."""


def check_launcher_env(launcher: str, config: str = 'CONFIG') -> None:
    """Raise ``ValueError`` saying how to start the processes when ``--launcher`` is not
    ``none`` but the environment its launcher would have set is missing."""
    needed = LAUNCHER_ENV.get(launcher)
    if not needed:
        return
    missing = [name for name in needed if name not in os.environ]
    if missing:
        raise ValueError(
            f'--launcher {launcher} runs one of several processes, but {", ".join(missing)} '
            f'{"is" if len(missing) == 1 else "are"} not set, so nothing started this one as '
            f'part of a group: {HOW_TO_LAUNCH[launcher].format(config=config)}; or drop '
            f'--launcher to run a single process')


def check_resume(cfg) -> None:
    """With ``resume=True`` and no checkpoint given, mmengine resumes from the path written in
    ``WORK_DIR/last_checkpoint``; an empty file or a path that no longer exists fails there as
    ``FileNotFoundError(' can not be found.')``. Raise one that names the file and the way out.
    Nothing to check when ``last_checkpoint`` does not exist (mmengine starts from scratch)."""
    if not cfg.get('resume') or cfg.get('load_from'):
        return
    work_dir = cfg.get('work_dir') or '.'
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        return
    with open(pointer) as f:
        target = f.read().strip()
    if target and ('://' in target or osp.isfile(target)):
        return
    found = sorted(glob.glob(osp.join(work_dir, '*.pth')), key=osp.getmtime)
    what = ('is empty, so it names no checkpoint to resume from' if not target
            else f'names {target!r}, which does not exist')
    fix = (f'resume from the newest checkpoint there with --resume {found[-1]}' if found
           else 'the work dir holds no *.pth checkpoint: pass one with --resume CHECKPOINT')
    raise FileNotFoundError(
        f'--resume: {pointer!r} (where mmengine writes the path of its latest checkpoint) '
        f'{what}; {fix}, or delete {pointer!r} to start from scratch')


def _source_file(exc: BaseException) -> Optional[str]:
    """The file that was being read when ``exc`` was raised: the innermost frame of its
    traceback that holds an open file (``json.load(fp)``) or a path to an existing file
    (mmengine's ``load(file)``, pycocotools' ``COCO(annotation_file)``, mmdet's
    ``local_path``)."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        for name in ('fp', 'file', 'annotation_file', 'ann_file', 'local_path'):
            value = local.get(name)
            path = value if isinstance(value, str) else getattr(value, 'name', None)
            if isinstance(path, str) and osp.isfile(path):
                found = path
                break
        tb = tb.tb_next
    return found


def explain_json_error(exc: BaseException) -> Optional[DataFileError]:
    """A ``json.JSONDecodeError`` (or ``UnicodeDecodeError``) while a dataset or metric read its
    annotation file, as an error that names the file; None for anything else."""
    if isinstance(exc, json.JSONDecodeError):
        problem = f'is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})'
    elif isinstance(exc, UnicodeDecodeError):
        problem = f'is not a text file ({exc.reason} at byte {exc.start}: an image or archive?)'
    else:
        return None
    path = _source_file(exc)
    if path is None:
        return None
    size = osp.getsize(path)
    return DataFileError(
        f'annotation file {path!r} ({size} bytes) {problem}. ann_file must name the JSON '
        f'annotations (COCO format for mmdet: instances_*.json), complete and unchanged: check '
        f'the path (ann_file / --cfg-options data_root=...) and download or unpack it again')


# Label maps hold one class index per pixel; mmseg reads them with imdecode 'unchanged', so a
# colour-coded (RGB) map becomes an (H, W, 3) array that fails, or trains on garbage, much later.
SINGLE_CHANNEL_MODES = ('1', 'L', 'P', 'I', 'I;16', 'I;16B', 'I;16L', 'F')


def label_map_problem(path: str) -> Optional[str]:
    """Why the image at ``path`` is not a label map of class indices, or None if it is one."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            mode, bands = img.mode, len(img.getbands())
    except OSError as exc:
        return f'cannot be read as an image ({exc})'
    if mode in SINGLE_CHANNEL_MODES:
        return None
    return (f'has {bands} channels (mode {mode}): a label map holds one class index per pixel '
            f'(a single-channel or palette PNG); this looks like a colour-coded map or a '
            f'photo. Convert the colours to class indices, or point seg_map_path at the index '
            f'maps (ADE20K: ADEChallengeData2016/annotations)')


def check_label_maps(folder: str, suffix: str = '.png', where: str = 'dataset',
                     pipeline: Optional[list] = None) -> None:
    """Open the first label map of ``folder`` (by name) and raise ``DataFileError`` naming it
    when it is not a single-channel map of class indices. One header read: a wrongly converted
    dataset is wrong in every file.

    With a ``pipeline`` (the dataset's transforms), only when it reads the maps with
    mmseg's ``LoadAnnotations``: a pipeline with its own loader may decode colour maps itself.
    """
    if pipeline is not None and not any(
            isinstance(t, dict) and str(t.get('type', '')).split('.')[-1] == 'LoadAnnotations'
            for t in pipeline):
        return
    first = None
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        names = sorted(f for f in files if f.endswith(suffix))
        if names:
            first = osp.join(root, names[0])
            break
    if first is None:
        return
    problem = label_map_problem(first)
    if problem:
        raise DataFileError(f'{where}: label map {first!r} {problem}')
