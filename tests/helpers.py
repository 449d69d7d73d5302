"""Shared test helpers: randomised reference models, relative error, tool loading."""
import importlib.util
import os

import timm
import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``, in float64 on the CPU (any device or dtype in)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@torch.no_grad()
def randomise_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Randomise every floating parameter and buffer so that every block matters.

    Layer scales are drawn around 1 (not 1e-5), BN statistics are random but positive-variance.
    """
    g = torch.Generator().manual_seed(seed)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if not t.is_floating_point():
            continue
        if name.endswith(('gamma', 'layer_scale_1', 'layer_scale_2')) \
                or name.endswith('ls1.weight') \
                or name.endswith('ls2.weight'):
            t.copy_(0.5 + torch.rand(t.shape, generator=g))
        elif name.endswith('running_var'):
            t.copy_(0.5 + torch.rand(t.shape, generator=g))
        elif name.endswith('weight') and t.dim() == 1:  # norm weights
            t.copy_(0.5 + torch.rand(t.shape, generator=g))
        else:
            fan_in = t[0].numel() if t.dim() > 1 else 1
            t.copy_(torch.randn(t.shape, generator=g) / max(fan_in, 1) ** 0.5)
    return model


def timm_efficientformer(arch: str, seed: int = 0, num_classes: int = 1000):
    model = timm.create_model(f'efficientformer_{arch}', pretrained=False, num_classes=num_classes)
    return randomise_(model, seed).eval()


def timm_to_authors(sd):
    """Inverse of timm's ``checkpoint_filter_fn`` (test-only): timm keys -> the authors' keys.

    Tests check the result with timm's own filter (authors -> timm) before using it, so this
    fabricates a faithful authors-layout checkpoint without any download.
    """
    import re
    stem = {'conv1': '0', 'norm1': '1', 'conv2': '3', 'norm2': '4'}
    out = {}
    for k, v in sd.items():
        k2 = re.sub(r'ls([12])\.gamma', r'layer_scale_\1', k)
        m = re.match(r'^stem\.(conv1|norm1|conv2|norm2)\.(.*)$', k2)
        if m:
            out[f'patch_embed.{stem[m.group(1)]}.{m.group(2)}'] = v
            continue
        m = re.match(r'^stages\.(\d+)\.downsample\.(conv|norm)\.(.*)$', k2)
        if m:
            name = 'proj' if m.group(2) == 'conv' else 'norm'
            out[f'network.{2 * int(m.group(1)) - 1}.{name}.{m.group(3)}'] = v
            continue
        m = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.(.*)$', k2)
        if m:
            out[f'network.{2 * int(m.group(1))}.{m.group(2)}.{m.group(3)}'] = v
            continue
        out[k2.replace('head_dist', 'dist_head')] = v
    return out


def load_tool(repo_root, name):
    """Import ``tools/<name>.py`` as a module (tools/ is not a package; no sys.path change)."""
    spec = importlib.util.spec_from_file_location(
        f'mmeff_tool_{name}', os.path.join(repo_root, 'tools', name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
