"""PyTorch itself as a backend: ``torch-cpu``, ``torch-cuda`` (eager, in this process) and
``torch.compile`` (inductor). They write no file; they run the module as it is."""
import time
from typing import Optional

import torch

from .base import Backend, BackendUnavailableError
from .timing import Runner


def _no_cuda(name: str) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"backend {name!r} needs a CUDA device, but no CUDA device is available here "
        f"(torch.cuda.is_available() is False); use 'torch-cpu' or 'onnxruntime', or run "
        f"on a GPU machine")


class TorchBackend(Backend):
    """The module run by PyTorch on one device, under ``torch.inference_mode``; on CUDA the
    runner's ``sync`` (``torch.cuda.synchronize``) puts the asynchronous work inside the
    timing."""

    def __init__(self, device: str):
        self.device = device
        self.name = f'torch-{device}'
        self.description = f'PyTorch eager on {device.upper()}'
        super().__init__()

    def check_available(self, device: Optional[str] = None) -> None:
        if self.device == 'cuda' and not torch.cuda.is_available():
            raise _no_cuda(self.name)

    def _device(self, device: Optional[str]) -> str:
        """The device asked for (``'cuda:1'``) if it is this backend's kind, else its own."""
        if device and str(device).split(':')[0] == self.device:
            return str(device)
        return self.device

    def runner(self, module, x, *, threads: Optional[int] = None, device: Optional[str] = None,
               **unused) -> Runner:
        """``module(x)`` on this backend's device (``device``: which CUDA device). Options of
        other backends are ignored."""
        self.check_available()
        dev = self._device(device)
        module, x = module.to(dev), x.to(dev)

        def run():
            with torch.inference_mode():
                return module(x)
        sync = torch.cuda.synchronize if dev.startswith('cuda') else None
        return Runner(run, sync=sync, backend=self.name)


class TorchCompileBackend(Backend):
    """``torch.compile`` (inductor) of the module on the device given to :meth:`runner`,
    compiled when the runner is made (the compile time is ``setup_s``, not in the timing).
    The latency benchmark has always called this runtime ``compile``."""
    name = 'torch.compile'
    runtime_name = 'compile'
    description = 'torch.compile (inductor), on the device asked for'

    def check_available(self, device: str = 'cpu') -> None:
        if str(device).startswith('cuda') and not torch.cuda.is_available():
            raise _no_cuda(self.name)

    def runner(self, module, x, *, threads: Optional[int] = None, device: Optional[str] = None,
               **unused) -> Runner:
        device = device or 'cpu'
        self.check_available(device)
        t0 = time.perf_counter()
        module, x = module.to(device), x.to(device)
        compiled = torch.compile(module)

        def run():
            with torch.no_grad():  # as compiled: no graph breaks to re-trace
                return compiled(x)
        run()  # compile now (setup time), not during the warm-up
        sync = torch.cuda.synchronize if device.startswith('cuda') else None
        return Runner(run, sync=sync, backend=self.name, setup_s=time.perf_counter() - t0)
