"""The backend protocol and the one registry of backends by name.

A :class:`Backend` is one way of running a model: a file format and the runtime that runs it
(``onnxruntime`` runs ONNX files), or PyTorch itself on a device (``torch-cpu``). Everything
that exports, times or tabulates latencies looks a backend up here (:func:`get_backend`), so
a backend registered once (:func:`register_backend`) is at once offered by the export tool
(its :attr:`Backend.format`), the latency benchmark and the slimming latency table.
"""
import importlib
from collections.abc import Sequence as _SequenceABC
from typing import Callable, Dict, List, Optional, Tuple

# Core ML compute units (``coremltools.ComputeUnit``), chosen when a model is loaded: ALL is
# CPU + GPU + Neural Engine (the papers' iPhone 12 setting).
COMPUTE_UNITS = ('ALL', 'CPU_AND_NE', 'CPU_AND_GPU', 'CPU_ONLY')

_INSTALL = {
    'coremltools': 'pip install coremltools  (conversion runs on Linux and macOS; predictions '
                   'need macOS)',
    'onnx': 'pip install onnx onnxscript',
    'onnxruntime': 'pip install onnxruntime  (or onnxruntime-gpu)',
}


def require(module: str):
    """Import an optional dependency, or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f'{module} is needed for this step but is not installed: '
                          f'{_INSTALL.get(module, "pip install " + module)}') from exc


class BackendUnavailableError(RuntimeError):
    """The backend asked for cannot run on this machine (``coreml`` off macOS, ``torch-cuda``
    without a CUDA device, ``onnxruntime-int8`` without the quantiser)."""


def check_compute_units(compute_units: str) -> str:
    """``compute_units`` if it is one of :data:`COMPUTE_UNITS`, else a ValueError naming them."""
    if compute_units not in COMPUTE_UNITS:
        raise ValueError(f'compute_units must be one of {COMPUTE_UNITS}, got {compute_units!r}')
    return compute_units


class Backend:
    """One way of running a model; subclasses implement what their format allows.

    Attributes:
        name (str): Registry name, e.g. ``'onnxruntime'``.
        format (str | None): The file format :meth:`write` produces (``'onnx'``,
            ``'coreml'``), or None for a backend that runs the module in this process.
        suffix (str): File name ending of that format (``'.onnx'``, ``'.mlpackage'``).
        device (str | None): The torch device a torch backend is bound to (``'cpu'``,
            ``'cuda'``); None for backends that take the device as an argument.
        runtime_name (str): The name the latency benchmark gives this backend's rows
            (defaults to :attr:`name`).
        description (str): One line for help texts.
    """
    name: str = ''
    format: Optional[str] = None
    suffix: str = ''
    device: Optional[str] = None
    runtime_name: str = ''
    description: str = ''

    def __init__(self):
        if not self.runtime_name:
            self.runtime_name = self.name

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.name!r} format={self.format!r}>'

    def check_available(self, device: str = 'cpu') -> None:
        """Raise :class:`BackendUnavailableError` (why, and what to use instead) if this
        backend cannot run here on ``device``; return None if it can."""

    def write(self, module, example_input, path: str, **options) -> dict:
        """Write (export, convert) ``module`` traced at ``example_input`` to ``path``.

        Returns:
            dict: at least ``path`` and how it was written.
        """
        raise ValueError(f'backend {self.name!r} runs modules in this process and writes no '
                         f'file; use one of the backends with a format: '
                         f'{", ".join(b.name for b in backends() if b.format)}')

    def check(self, path: str) -> dict:
        """A report on the written graph: op histogram, gathers, bicubic resizes, non-finite
        constants (and FP16 for Core ML), with ``problems`` (empty when all checks pass)."""
        raise ValueError(f'backend {self.name!r} writes no file to check')

    def open(self, path: str, threads: Optional[int] = None, device: str = 'cpu', **options):
        """The runtime's session (loaded model) of a written file."""
        raise ValueError(f'backend {self.name!r} writes no file to open')

    def runner(self, module, x, *, threads: Optional[int] = None, device: Optional[str] = None,
               work_dir: Optional[str] = None, tag: str = 'model', **options):
        """A :class:`~mmeff.runtime.timing.Runner`: one inference of ``module`` on ``x`` per
        call, ready to be timed (written, opened and bound to ``x`` here, not in the
        timing)."""
        raise NotImplementedError


_REGISTRY: Dict[str, Backend] = {}


def register_backend(backend: Backend, *, replace: bool = False) -> Backend:
    """Add ``backend`` to the registry under ``backend.name``; returns it.

    Raises:
        ValueError: the name is empty, or taken and ``replace`` is False.
    """
    if not isinstance(backend, Backend) or not backend.name:
        raise ValueError(f'a backend is a named mmeff.runtime.Backend instance, got {backend!r}')
    if backend.name in _REGISTRY and not replace:
        raise ValueError(f'a backend named {backend.name!r} is registered already '
                         f'({_REGISTRY[backend.name]!r}); pass replace=True to replace it')
    _REGISTRY[backend.name] = backend
    return backend


def unregister_backend(name: str) -> Backend:
    """Remove the backend ``name`` from the registry and return it."""
    return _REGISTRY.pop(get_backend(name).name)


def backends() -> List[Backend]:
    """Every registered backend, in registration order."""
    return list(_REGISTRY.values())


def backend_names() -> Tuple[str, ...]:
    """The registered backends' names, in registration order."""
    return tuple(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``.

    Raises:
        ValueError: no such backend (the registered ones are named).
    """
    if isinstance(name, Backend):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f'unknown backend {name!r}; choose one of '
                         f'{", ".join(_REGISTRY)}') from None


def export_formats() -> Tuple[str, ...]:
    """The file formats the registered backends write (``'onnx'``, ``'coreml'``, ...)."""
    return tuple(dict.fromkeys(b.format for b in _REGISTRY.values() if b.format))


def backend_for_format(fmt: str) -> Backend:
    """The backend that writes ``fmt`` and runs it as written (the first registered: for
    ``'onnx'``, ``onnxruntime``; ``onnxruntime-int8`` quantises after writing).

    Raises:
        ValueError: no backend writes ``fmt`` (the formats are named).
    """
    for b in _REGISTRY.values():
        if b.format == fmt:
            return b
    raise ValueError(f'unknown export format {fmt!r}; choose one of {", ".join(export_formats())}')


class NameView(_SequenceABC):
    """A read-only, live sequence of names computed from the registry on every use: a module
    constant (``lut.BACKENDS``) or an argparse ``choices`` built from it sees backends
    registered after it was defined."""

    def __init__(self, names: Callable[[], Tuple[str, ...]]):
        self._names = names

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, item) -> bool:
        return item in self._names()

    def __iter__(self):
        return iter(self._names())

    def __eq__(self, other) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, _SequenceABC) else NotImplemented

    def __hash__(self):
        return hash(tuple(self))

    def __add__(self, other):
        return tuple(self) + tuple(other)

    def __radd__(self, other):
        return tuple(other) + tuple(self)

    def __repr__(self) -> str:
        return repr(tuple(self))
