"""Task adapters: what ``tools/export.py`` exports for each ``--task``.

One adapter per kind of model (:data:`EXPORT_TASKS`): ``backbone`` (stage maps), ``classifier``
(logits), ``segmentor`` (a whole mmseg segmentor) and ``detector`` (a whole mmdet detector,
through :func:`mmeff.deploy.detector.export_detector`). Each adapter

* loads the model the one way: the checkpoint file is checked, then read and matched against
  the family and arch the model builds (:func:`check_checkpoint_first`:
  :func:`mmeff.checkpoint.check_checkpoint_file`,
  :func:`~mmeff.checkpoint.check_checkpoint_matches`) before anything is built; then the
  model is built and its weights loaded with :func:`mmeff.checkpoint.check_model_fit`
  (:func:`mmeff.deploy.build_model`, :func:`~mmeff.deploy.segmentor.load_segmentor`, the
  detector's ``build_detector``), so a file that does not fit is an error, never random
  weights;
* hands it to the export function of its task, which wraps it into the ``nn.Module`` that is
  exported (image in; normalisation, resize/argmax or box decoding/NMS where the task has
  them), makes the example input and the input/output names, writes the file and compares the
  exported model's outputs with PyTorch's on that input (relative error; label agreement;
  detections one by one), refusing to put a model that fails at ``out``;
* declares the export options it honours (:meth:`TaskAdapter.honours`). :func:`refused_options`
  turns any other option given on the command line into one line naming the flag and the task.
  The detector honours exactly the keywords ``export_detector``'s signature names.

Options are data (:data:`OPTIONS`): the keyword the export functions take, the command-line flag
and the formats the option means something for. ``--cfg-options`` (mmengine's ``DictAction``,
as on mmdet's and mmseg's own tools) is merged into the config before anything is read from it
(:func:`load_config`).
"""
import inspect
import json
import os.path as osp
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Tuple


@dataclass(frozen=True)
class ExportOption:
    """One export option: ``keyword`` (the export functions' argument), ``flag`` (the
    command-line flag), ``formats`` (the formats it means something for; None: every format)
    and ``negated`` (a ``--no-X`` flag, given as True and passed as ``X=False``)."""
    keyword: str
    flag: str
    formats: Optional[Tuple[str, ...]] = None
    negated: bool = False

    @property
    def dest(self) -> str:
        """The attribute argparse stores the flag in."""
        return self.flag[2:].replace('-', '_')

    def value(self, given):
        """The keyword's value for what the command line gave."""
        return not given if self.negated else given


OPTIONS: Tuple[ExportOption, ...] = (
    ExportOption('cfg_options', '--cfg-options'),
    ExportOption('batch_size', '--batch-size'),
    ExportOption('out_indices', '--out-indices'),
    ExportOption('fuse', '--no-fuse', negated=True),
    ExportOption('opset', '--opset', ('onnx',)),
    ExportOption('dynamic_batch', '--dynamic-batch', ('onnx',)),
    ExportOption('quantize', '--quantize', ('onnx',)),
    ExportOption('calib_data', '--calib-data', ('onnx',)),
    ExportOption('keep_fp32', '--keep-fp32', ('onnx',)),
    ExportOption('precision', '--precision', ('coreml',)),
    ExportOption('compute_units', '--compute-units', ('coreml',)),
    ExportOption('image_input', '--image-input', ('coreml',)),
    ExportOption('method', '--method', ('coreml',)),
    ExportOption('compress', '--compress', ('coreml',)),
    ExportOption('output', '--output'),
    ExportOption('normalize', '--no-normalize', negated=True),
    ExportOption('max_dets', '--max-dets'),
    ExportOption('score_thr', '--score-thr'),
    ExportOption('iou_thr', '--iou-thr'),
)
OPTION: Dict[str, ExportOption] = {o.keyword: o for o in OPTIONS}


def export_formats() -> Tuple[str, ...]:
    """The file formats of the runtime layer's backends (``--format``):
    :func:`mmeff.runtime.export_formats`."""
    from mmeff.runtime import export_formats as formats
    return formats()


def suffix_of(fmt: str) -> str:
    """The file name ending of format ``fmt`` (``'.onnx'``, ``'.mlpackage'``)."""
    from mmeff.runtime import backend_for_format
    return backend_for_format(fmt).suffix


def _either(names: Iterable[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _accepts(func: Callable, keyword: str) -> bool:
    """Whether ``func``'s signature names ``keyword`` (a ``**kwargs`` catch-all does not)."""
    param = inspect.signature(func).parameters.get(keyword)
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD,
                                                param.KEYWORD_ONLY)


def _qualname(func: Callable) -> str:
    return f'{func.__module__}.{func.__name__}'


def call_with(func: Callable, what: str, *args, **options):
    """``func(*args, **options)``, or a ``ValueError`` naming the flag of every option that
    ``func``'s signature does not name (``what`` says what was asked for, e.g. the task)."""
    unknown = [k for k in options if not _accepts(func, k)]
    if unknown:
        flags = ', '.join(OPTION[k].flag if k in OPTION else k for k in unknown)
        raise ValueError(f'{flags}: not honoured for {what} ({_qualname(func)} takes no '
                         f'{_either(repr(k) for k in unknown)} argument); leave '
                         f"{'it' if len(unknown) == 1 else 'them'} out")
    return func(*args, **options)


# ----------------------------------------------------------------------------- configs
def load_config(config: str, cfg_options: Optional[dict] = None):
    """The :class:`mmengine.Config` of ``config`` with ``cfg_options`` merged in as every
    mmeff tool merges ``--cfg-options`` (:func:`mmeff.engine.launch.apply_cfg_options`: a
    misspelt top-level key and a top-level variable whose change would reach nothing are
    refused, naming them; ``data_root`` / ``pretrained`` are carried into their entries)."""
    config = str(config)
    if not config.endswith('.py'):
        raise ValueError(f'--cfg-options changes a config: MODEL must be a config file (.py), '
                         f'got {config!r}')
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file {config!r} does not exist')
    from mmengine.config import Config

    from mmeff.engine.launch import apply_cfg_options
    return apply_cfg_options(Config.fromfile(config), cfg_options)


def backbone_of(model: str, cfg_options: Optional[dict] = None) -> Optional[Tuple[str, object]]:
    """``(backbone type, arch)`` that MODEL (an arch name, or a config with ``cfg_options``
    merged) builds, or None when it builds no mmeff backbone (left to the fit check)."""
    import mmeff.models  # noqa: F401  (the backbone modules register the families)
    from mmeff.models.families import family_of, family_of_arch, is_family_type
    if not str(model).endswith('.py'):
        try:
            family = family_of_arch(str(model).lower())
        except ValueError:
            return None
        return family.type, str(model).lower()
    cfg = load_config(model, cfg_options).get('model')
    if not isinstance(cfg, dict):
        return None
    for candidate in (cfg, cfg.get('backbone')):
        if not isinstance(candidate, dict):
            continue
        btype, arch = candidate.get('type'), candidate.get('arch')
        if is_family_type(btype):
            family = family_of(btype)
            return family.type, family.default_arch if arch is None else arch
        if btype is None and isinstance(arch, str) and candidate is not cfg:
            try:  # a classifier's backbone: its type follows the arch
                return family_of_arch(arch).type, arch
            except ValueError:
                return None
    return None


def check_checkpoint_first(model: str, checkpoint: Optional[str],
                           cfg_options: Optional[dict] = None) -> None:
    """Before any model is built: ``checkpoint`` exists and is a checkpoint
    (:func:`mmeff.checkpoint.check_checkpoint_file`), and the EfficientFormer in it is of the
    family and arch that MODEL builds (:func:`mmeff.checkpoint.check_checkpoint_matches`: a V1
    checkpoint for a V2 config names the V1 config). Nothing to do without a checkpoint."""
    if not checkpoint:
        return
    from mmeff.checkpoint import (check_checkpoint_file, check_checkpoint_matches,
                                  read_checkpoint)
    check_checkpoint_file(checkpoint)
    built = backbone_of(model, cfg_options)
    if built is None:
        return
    check_checkpoint_matches(read_checkpoint(checkpoint), built[0], built[1], str(checkpoint),
                             config=model if str(model).endswith('.py') else None)


def _weights(checkpoint: Optional[str]) -> str:
    return checkpoint or 'random, no --checkpoint given'


# ----------------------------------------------------------------------------- adapters
class TaskAdapter:
    """What is exported for one ``--task`` (see the module docstring).

    Subclasses set :attr:`name`, :attr:`needs_config`, :attr:`default_size` and
    :meth:`keywords`, and implement :meth:`export`.
    """
    name = ''
    needs_config = False  # MODEL must be a config (a whole model), not an arch name
    default_size: Optional[str] = None  # None: the export function's own default
    formats: Tuple[str, ...] = ('onnx', 'coreml')  # what its export function writes

    def keywords(self) -> frozenset:
        """The option keywords this task honours (each in the formats of its option)."""
        raise NotImplementedError

    def honours(self, keyword: str, fmt: Optional[str] = None) -> bool:
        """Whether this task honours option ``keyword`` for format ``fmt`` (None: for some
        format)."""
        if keyword not in self.keywords():
            return False
        formats = OPTION[keyword].formats
        return fmt is None or formats is None or fmt in formats

    def why_not(self, keyword: str) -> str:
        """Why this task does not honour ``keyword`` (empty: it has no such option)."""
        return ''

    def export(self, model: str, fmt: str, out: Optional[str] = None, input_size=None,
               checkpoint: Optional[str] = None, log: Callable[[str], None] = print,
               **options) -> dict:
        """Load MODEL (+ ``checkpoint``), export it to ``fmt`` at ``out`` and check it;
        ``options`` are keywords of :data:`OPTIONS` this task honours. Returns the report."""
        raise NotImplementedError

    def describe(self, report: dict) -> str:
        """The printed summary of an export report of this task."""
        from .export import format_report
        try:
            return format_report(report)
        except KeyError:  # a report without the keys of export_onnx/export_coreml's
            return json.dumps(report, indent=2, default=str)

    def _check_options(self, fmt: str, options: dict) -> None:
        """The library-side twin of :func:`refused_options`, for callers other than the tool."""
        message = format_refusal(self.name, fmt)
        if message:
            raise ValueError(message)
        message = refused_options(self.name, fmt, options)
        if message:
            raise ValueError(message)


class BackboneTask(TaskAdapter):
    """An EfficientFormer (V1 or V2) from an arch name or a config: image -> stage maps
    (:func:`mmeff.deploy.build_model`, :func:`mmeff.deploy.export_onnx` /
    :func:`~mmeff.deploy.export_coreml`; INT8 ONNX through
    :func:`mmeff.deploy.quantize.export_onnx_int8`, compressed Core ML through
    ``export_coreml(compress=...)``)."""
    name = 'backbone'
    default_size = '224'

    @property
    def formats(self) -> Tuple[str, ...]:
        """Every file format of the runtime layer: ONNX and Core ML through
        :func:`~mmeff.deploy.export_onnx` / :func:`~mmeff.deploy.export_coreml`, any other
        through its backend (:func:`mmeff.deploy.export.export_model`)."""
        return export_formats()
    _KEYWORDS = ('batch_size', 'out_indices', 'fuse', 'opset', 'dynamic_batch', 'quantize',
                 'calib_data', 'keep_fp32', 'precision', 'compute_units', 'image_input', 'method',
                 'compress')

    def keywords(self) -> frozenset:
        from .build import build_model
        extra = ('cfg_options',) if _accepts(build_model, 'cfg_options') else ()
        return frozenset(self._KEYWORDS + extra)

    def why_not(self, keyword: str) -> str:
        if keyword == 'cfg_options':
            return 'mmeff.deploy.build_model takes no cfg_options argument'
        return ''

    def export(self, model, fmt, out=None, input_size=None, checkpoint=None, log=print,
               **options) -> dict:
        from mmeff import deploy  # build_model looked up at call time (tests replace it)

        from .export import export_coreml, export_onnx, parse_input_shape
        self._check_options(fmt, options)
        quantize, calib = options.pop('quantize', None), options.pop('calib_data', None)
        compress = options.get('compress')
        if quantize is not None and quantize != 'int8':
            raise ValueError(f"--quantize {quantize!r}: the only quantisation is 'int8' (ONNX "
                             f'Runtime static quantisation, QDQ)')
        if (quantize is None) != (calib is None):
            raise ValueError('--quantize int8 needs --calib-data DIR (an ImageFolder of '
                             'calibration images), and --calib-data needs --quantize int8')
        if options.get('keep_fp32') and not quantize:
            raise ValueError('--keep-fp32 chooses modules that stay FP32 in an INT8 model: '
                             'use it with --quantize int8 --calib-data DIR')
        if quantize:  # missing or empty folder: before anything is built or written
            from .quantize import check_calib_data
            check_calib_data(calib)
        if compress:  # a mode the installed coremltools lacks: before anything is built
            from .compress import check_compress_mode
            check_compress_mode(compress)
        cfg_options = options.pop('cfg_options', None)
        check_checkpoint_first(model, checkpoint, cfg_options)
        batch_size = options.pop('batch_size', 1)
        shape = (batch_size,) + parse_input_shape(input_size or self.default_size)[1:]
        build = dict(task=self.name, checkpoint=checkpoint)
        if 'out_indices' in options:
            build['out_indices'] = options.pop('out_indices')
        if cfg_options:
            build['cfg_options'] = cfg_options
        net, meta = deploy.build_model(model, **build)
        shape = (shape[0], getattr(net, 'in_channels', 3)) + shape[2:]
        size = f'{shape[2]}x{shape[3]}'
        variant = '_int8' if quantize else (f'_{compress}' if compress else '')
        out = out or osp.join('work_dirs', 'export',
                              f"{meta['name']}_{self.name}_{size}{variant}{suffix_of(fmt)}")
        log(f"Exporting {meta['source']} ({self.name}, weights: {meta['weights']}) at "
            f"{'x'.join(map(str, shape))} to {fmt}{' int8' if quantize else ''}"
            f"{f' ({compress})' if compress else ''}, "
            f"{'fused' if options.get('fuse', True) else 'unfused'}")
        if quantize:
            from .quantize import export_onnx_int8
            num_classes = getattr(getattr(net, 'head', None), 'num_classes', None)
            report = call_with(export_onnx_int8, f'--task {self.name} --quantize int8', net,
                               out, shape, calib, task=self.name, num_classes=num_classes,
                               **options)
        elif fmt == 'onnx':
            report = call_with(export_onnx, f'--task {self.name} --format onnx', net, out,
                               shape, **options)
        elif fmt != 'coreml':  # a format another backend of the runtime layer writes
            from .export import export_model
            report = export_model(net, out, fmt, shape, **options)
        else:
            metadata = {'mmeff.arch': meta['arch'], 'mmeff.task': self.name,
                        'mmeff.source': meta['source'], 'mmeff.weights': meta['weights']}
            report = call_with(export_coreml, f'--task {self.name} --format coreml', net, out,
                               shape, metadata=metadata, **options)
        report['model'] = meta
        return report

    def describe(self, report: dict) -> str:
        if 'int8_vs_fp32' in report:
            from .quantize import format_int8_report
            return format_int8_report(report)
        text = super().describe(report)
        c = report.get('compression')
        if c:
            text += (f"\n  compressed: {c['mode']} ({c['method']}, coremltools "
                     f"{c['coremltools']}): weights {c['weight_bytes'] / 2**20:.2f} MiB, "
                     f"{c['ratio_vs_fp16']}x the FP16 package's")
        return text


class ClassifierTask(BackboneTask):
    """``EfficientFormerClassifier``'s inference module from an arch name or a
    classification config: image -> logits."""
    name = 'classifier'
    _KEYWORDS = tuple(k for k in BackboneTask._KEYWORDS if k != 'out_indices')


class SegmentorTask(TaskAdapter):
    """The whole mmseg segmentor of a segmentation config: image -> labels or logits
    (:func:`mmeff.deploy.segmentor.export_segmentor`)."""
    name = 'segmentor'
    needs_config = True
    default_size = '512x512'

    def keywords(self) -> frozenset:
        from .segmentor import export_segmentor
        return frozenset(k for k in OPTION if _accepts(export_segmentor, k))

    def export(self, model, fmt, out=None, input_size=None, checkpoint=None, log=print,
               **options) -> dict:
        from .fuse import parse_input_size
        from .segmentor import export_segmentor
        self._check_options(fmt, options)
        check_checkpoint_first(model, checkpoint, options.get('cfg_options'))
        size = input_size or self.default_size
        log(f'Exporting the whole segmentor of {model} (weights: {_weights(checkpoint)}) at '
            f'{size} to {fmt}')
        return call_with(export_segmentor, f'--task {self.name}', model,
                         checkpoint=checkpoint, fmt=fmt, input_size=parse_input_size(size),
                         out=out, **options)

    def describe(self, report: dict) -> str:
        from .segmentor import format_segmentor_report
        return format_segmentor_report(report)


class DetectorTask(TaskAdapter):
    """The whole mmdet detector of a detection config: image -> boxes, scores, labels (and
    masks where the detector has them), through
    :func:`mmeff.deploy.detector.export_detector`, which honours exactly the options its
    signature names."""
    name = 'detector'
    needs_config = True

    @staticmethod
    def _exporter():
        try:
            from .detector import export_detector
        except ImportError as exc:
            raise ImportError(f'--task detector needs mmeff.deploy.detector.export_detector, '
                              f'which could not be imported ({exc})') from exc
        return export_detector

    def keywords(self) -> frozenset:
        try:
            exporter = self._exporter()
        except ImportError:
            return frozenset()
        return frozenset(k for k in OPTION if _accepts(exporter, k))

    def why_not(self, keyword: str) -> str:
        try:
            self._exporter()
        except ImportError as exc:
            return str(exc)
        return f'mmeff.deploy.detector.export_detector takes no {keyword!r} argument'

    def export(self, model, fmt, out=None, input_size=None, checkpoint=None, log=print,
               **options) -> dict:
        from .fuse import parse_input_size
        exporter = self._exporter()
        self._check_options(fmt, options)
        check_checkpoint_first(model, checkpoint, options.get('cfg_options'))
        log(f'Exporting the whole detector of {model} (weights: {_weights(checkpoint)}) at '
            f"{input_size or 'the default size'} to {fmt}")
        if input_size:
            options['input_size'] = parse_input_size(input_size)
        report = call_with(exporter, f'--task {self.name}', model, checkpoint=checkpoint,
                           fmt=fmt, out=out, **options)
        report.setdefault('task', self.name)
        return report

    def describe(self, report: dict) -> str:
        from . import detector
        if hasattr(detector, 'format_detector_report'):
            return detector.format_detector_report(report)
        return super().describe(report)


EXPORT_TASKS: Dict[str, TaskAdapter] = {
    t.name: t for t in (BackboneTask(), ClassifierTask(), SegmentorTask(), DetectorTask())}


def get_task(name: str) -> TaskAdapter:
    """The adapter of ``--task name``, or a ``ValueError`` listing the tasks."""
    if name not in EXPORT_TASKS:
        raise ValueError(f'task must be one of {tuple(EXPORT_TASKS)}, got {name!r}')
    return EXPORT_TASKS[name]


def format_refusal(task: str, fmt: str) -> Optional[str]:
    """One line when ``task`` cannot export to ``fmt`` (a format of the runtime layer that
    the task's export function does not write), else None."""
    adapter = get_task(task)
    if fmt in adapter.formats:
        return None
    return (f'--task {task} exports to --format {_either(adapter.formats)}, not {fmt!r} '
            f'(formats of the runtime layer: {", ".join(export_formats())})')


def refused_options(task: str, fmt: str, options: Iterable[str]) -> Optional[str]:
    """One line naming the options of ``options`` (keywords of :data:`OPTIONS`) that ``task``
    does not honour for ``fmt``, with the tasks or formats that do; None when all are honoured.
    """
    adapter = get_task(task)
    wrong_task, wrong_format = [], []
    for option in OPTIONS:
        if option.keyword not in options:
            continue
        if not adapter.honours(option.keyword):
            others = [t for t, a in EXPORT_TASKS.items() if a.honours(option.keyword)]
            why = adapter.why_not(option.keyword)
            where = f'only for --task {_either(others)}' if others else 'no task honours it'
            wrong_task.append(f"{option.flag} ({where}{'; ' + why if why else ''})")
        elif not adapter.honours(option.keyword, fmt):
            formats = [f for f in adapter.formats if adapter.honours(option.keyword, f)]
            wrong_format.append(f'{option.flag} (only for --format {_either(formats)})')
    if wrong_task:
        return f"not an option of --task {task}: {', '.join(wrong_task)}"
    if wrong_format:
        return f"not an option of --format {fmt}: {', '.join(wrong_format)}"
    return None


def given_options(args) -> dict:
    """The options of :data:`OPTIONS` given on the command line (parsed ``args``), as the
    keywords the export functions take: an option left out keeps the function's default."""
    given = {}
    for option in OPTIONS:
        value = getattr(args, option.dest, None)
        if value is not None and value is not False:
            given[option.keyword] = option.value(value)
    return given


__all__ = ['ExportOption', 'OPTIONS', 'export_formats', 'suffix_of', 'load_config',
           'backbone_of', 'check_checkpoint_first', 'call_with', 'TaskAdapter', 'BackboneTask',
           'ClassifierTask', 'SegmentorTask', 'DetectorTask', 'EXPORT_TASKS', 'get_task',
           'format_refusal', 'refused_options', 'given_options']
