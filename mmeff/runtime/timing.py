"""How mmeff times a runner: the one measurement discipline of the benchmark and the
latency table.

* Every runner is built (written, converted, compiled, opened) before any timing starts and
  warmed up untimed.
* Repetitions are *interleaved* across the runners timed together (rep 1 of every runner,
  rep 2 of every runner, ...), so that a change in machine load (a shared CPU) affects them
  alike.
* An untimed pause (``settle_s``) before every timed call lets thread pools the previous
  call left spinning (torch's OpenMP workers spin a few ms after each parallel region) go to
  sleep; ONNX Runtime sessions stop their workers' spinning as each call returns
  (:func:`mmeff.runtime.onnx.ort_session`). So no runner's threads slow down the next.
* The thread count is pinned for the whole measurement (:func:`pinned_threads`) and
  restored afterwards; on CUDA the device is synchronised before starting and before
  stopping each timer.
"""
import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np


@dataclass
class Runner:
    """One inference per call, built and bound to its input beforehand.

    Attributes:
        call (callable): Zero-argument callable running one inference; returns the outputs.
        sync (callable | None): Waits for asynchronous work (``torch.cuda.synchronize``);
            called inside the timing.
        backend (str): The backend's name.
        setup_s (float): Seconds spent building it (export, conversion, compilation).
    """
    call: Callable[[], object]
    sync: Optional[Callable[[], None]] = None
    backend: str = ''
    setup_s: float = 0.

    def __call__(self):
        return self.call()


def summarize(times_s: Sequence[float], batch_size: int) -> dict:
    """Median/p90/mean/min in ms and throughput (images/s at the median) of per-call times."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    median = float(np.median(ms))
    return dict(median_ms=round(median, 4), p90_ms=round(float(np.percentile(ms, 90)), 4),
                mean_ms=round(float(ms.mean()), 4), min_ms=round(float(ms.min()), 4),
                throughput_img_s=round(batch_size * 1e3 / median, 2), reps=len(ms))


def _syncs(fns: Dict[str, Callable]) -> Optional[Callable[[], None]]:
    """One function calling the distinct ``sync`` of every :class:`Runner` in ``fns``."""
    found = list({id(f.sync): f.sync for f in fns.values()
                  if isinstance(f, Runner) and f.sync is not None}.values())
    if not found:
        return None

    def sync():
        for s in found:
            s()
    return sync


def time_interleaved(fns: Dict[str, Callable[[], object]],
                     warmup: int,
                     reps: int,
                     sync: Optional[Callable[[], None]] = None,
                     settle_s: float = 0.) -> Dict[str, List[float]]:
    """Seconds per call of every function, repetitions interleaved across functions.

    Args:
        fns (dict): name -> zero-argument callable (one inference), e.g. a :class:`Runner`.
        warmup (int): Untimed calls of each function first.
        reps (int): Timed calls of each function.
        sync (callable | None): Called before starting and before stopping each timer, e.g.
            ``torch.cuda.synchronize`` so that asynchronous GPU work is inside the timing.
            None: the ``sync`` of the :class:`Runner` objects among ``fns``, if any.
        settle_s (float): Untimed pause before every timed call, so that thread pools the
            previous call left spinning (torch's OpenMP workers spin a few ms after each
            parallel region) have gone to sleep before the next function's timer starts.
            Defaults to 0.
    """
    if reps < 1 or warmup < 0 or settle_s < 0:
        raise ValueError(f'need reps >= 1, warmup >= 0 and settle_s >= 0, got reps={reps}, '
                         f'warmup={warmup}, settle_s={settle_s}')
    sync = sync or _syncs(fns) or (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            if settle_s:
                time.sleep(settle_s)
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


@contextlib.contextmanager
def pinned_threads(threads: Optional[int]):
    """Run the block with torch using ``threads`` intra-op threads (None: as it is), and
    restore the caller's setting afterwards."""
    import torch
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
