"""Checks every written graph gets, whatever its format.

A deployment graph of an EfficientFormer must hold no gather (an attention bias looked up
per call instead of cached for the export size) and no bicubic resize (a V2 bias table
resized in the graph: coremltools cannot convert it), and no NaN/Inf constant. Core ML
graphs must also be FP16 inside (:func:`mmeff.runtime.coreml.coreml_problems`).
"""
import os
import os.path as osp
from collections import Counter
from typing import Dict, List

import numpy as np


def file_size(path: str) -> int:
    """Bytes of a file, or of everything inside a directory (an ``.mlpackage``)."""
    if osp.isdir(path):
        return sum(osp.getsize(osp.join(root, f)) for root, _, files in os.walk(path)
                   for f in files)
    return osp.getsize(path)


def nonfinite(named_arrays) -> List[str]:
    """``'<name>: N NaN, M Inf of K values'`` for each floating array (numpy or torch) of the
    ``(name, array)`` pairs that holds NaN or Inf; an empty list when all are finite."""
    import torch
    found = []
    for name, a in named_arrays:
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().float().numpy() if a.is_floating_point() else None
        a = np.asarray(a) if a is not None else None
        if a is None or not np.issubdtype(a.dtype, np.floating):
            continue
        n_nan = int(np.isnan(a).sum())
        n_inf = int(np.isinf(a).sum())
        if n_nan or n_inf:
            found.append(f'{name}: {n_nan} NaN, {n_inf} Inf of {a.size} values')
    return found


def shown(items: List[str], limit: int = 5) -> str:
    """The first ``limit`` items joined by ``'; '``, and how many more there are."""
    more = f'; and {len(items) - limit} more' if len(items) > limit else ''
    return '; '.join(items[:limit]) + more


def _is_forbidden(op_name: str) -> bool:
    name = op_name.lower()
    return 'bicubic' in name or 'gather' in name


def forbidden_torch_ops(program) -> Dict[str, int]:
    """Ops no deployment graph may hold, with their counts: bicubic resizes (an uncached
    V2 bias resize; coremltools cannot convert them) and gathers (an uncached bias lookup), in
    an ``ExportedProgram`` or a traced ``ScriptModule``."""
    import torch
    if isinstance(program, torch.export.ExportedProgram):
        names = [str(node.target) for node in program.graph.nodes
                 if node.op == 'call_function']
    else:
        names = [node.kind() for node in program.inlined_graph.nodes()]
    return dict(Counter(n for n in names if _is_forbidden(n)))


def forbidden_error(where: str, found: Dict[str, int]) -> RuntimeError:
    """The error for :func:`forbidden_torch_ops` found in ``where``, with the fix."""
    ops = ', '.join(f'{op} x{n}' for op, n in sorted(found.items()))
    return RuntimeError(
        f'{where} holds {ops}: attention biases must be precomputed for the export size '
        f'(bicubic bias resizing and bias gathers cannot run in Core ML); export through '
        f'prepare_for_export/fuse_model, or call mmeff.deploy.cache_attention_bias(model, size)')


def rel_err(out, ref) -> float:
    """Largest ``||a - b|| / ||b||`` over the outputs of a run (a tensor, a numpy array or a
    list/tuple of them, as a runner returns) against a reference run, in float64 on the CPU.

    Raises:
        RuntimeError: the two runs return different numbers of outputs.
    """
    import torch

    def outputs(o):
        return tuple(o) if isinstance(o, (list, tuple)) else (o,)
    outs, refs = outputs(out), outputs(ref)
    if len(outs) != len(refs):
        raise RuntimeError(f'{len(outs)} outputs, the reference gives {len(refs)}')
    errs = []
    for o, r in zip(outs, refs):
        o = torch.as_tensor(o).detach().double().cpu()
        r = torch.as_tensor(r).detach().double().cpu()
        errs.append(float((o - r).norm() / r.norm().clamp_min(1e-12)))
    return max(errs)


def short_error(exc: BaseException) -> str:
    """``'<ExceptionType>: <first line of the message, 300 characters at most>'``, for a result
    row that records a failure instead of raising it."""
    lines = str(exc).strip().splitlines()
    return f'{type(exc).__name__}: {lines[0][:300] if lines else ""}'
