"""The model families of mmeff, each registered once, by its backbone class.

A family is one backbone class (``EfficientFormer``: L1/L3/L7, ``EfficientFormerV2``:
S0/S1/S2/L) with everything the rest of the code needs to know about it: its registry type,
arch names and default arch, timm's model names, the checkpoint converters of each layout, the
key patterns that tell its state dicts apart, the fusion rule of ``mmeff.deploy.fuse``, the
classifier head, and the papers' figures. The class declares it with :func:`register_family`
beside its ``arch_settings``; code that needs "every family" reads :data:`FAMILIES` (as timm's
code and tests read its model names), never a tuple of its own::

    >>> from mmeff.models.families import FAMILIES, family_of
    >>> list(FAMILIES)
    ['EfficientFormer', 'EfficientFormerV2']
    >>> family_of('s0').type, family_of('mmeff.EfficientFormer').default_arch
    ('mmeff.EfficientFormerV2', 'l1')

Arch names are unique across families (V2's ``'l'`` is not V1's ``'l1'``), so an arch name
alone names its family. This module imports nothing from mmeff: the backbone modules import it
to register, and importing ``mmeff.models`` (this package) imports them.
"""
import importlib
import inspect
import types
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, Mapping, Optional, Tuple, Union

# Converter layouts a family may declare (``mmeff.converters.LAYOUTS`` minus mmeff's own).
CONVERTER_LAYOUTS = ('authors', 'timm', 'mmpretrain')
_SCOPE = 'mmeff'


def _resolve(ref: Union[str, Callable, None], what: str) -> Optional[Callable]:
    """A callable from a ``'package.module:function'`` reference (imported on first use, so a
    family can name converters and fusion rules of modules that import the models)."""
    if ref is None or callable(ref):
        return ref
    module, _, name = str(ref).partition(':')
    if not module or not name:
        raise ValueError(f"{what} reference {ref!r} must be 'package.module:function'")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True, eq=False)  # one record per family: compared and hashed by identity
class Family:
    """What the code needs to know about one model family (see the module docstring).

    Attributes:
        name (str): The backbone class name, e.g. ``'EfficientFormerV2'``.
        cls (type): The backbone class.
        type (str): Its registry type, ``'mmeff.<name>'``.
        archs (tuple[str]): The named archs (``cls.arch_settings``), in declaration order.
        default_arch (str): The ``arch`` the class builds by default.
        key (str): Short tag of the family in converters and tables (``'v1'``, ``'v2'``).
        label (str): How messages name the family (``'EfficientFormer (V1)'``).
        timm_names (dict): ``{arch: timm model name}`` (``efficientformerv2_s0``).
        converters (dict): ``{layout: 'module:function'}``: the state-dict converter of each
            layout of :data:`CONVERTER_LAYOUTS` this family's files come in (see
            :meth:`converter`).
        block_keys (tuple[str, str] | None): ``(regex, how messages show it)``: some key of
            every state dict of this family matches the regex, in any layout, and no key of
            another family's; ``None`` for the one family recognised by the absence of the
            others' block keys.
        stem_keys (tuple[str, str]): ``(regex, how messages show it)`` for the stem's keys in
            timm's and mmeff's layouts (matched after ``stem.``): a second opinion that catches
            mixed or truncated files.
        infer_arch (str): ``'module:function'`` giving the arch dict of an mmeff-layout state
            dict of this family (``mmeff.converters.infer_arch``).
        fuse (str | callable | None): The family's fusion rule (``'module:function'`` or the
            function): ``mmeff.deploy.fuse.fuse_model`` calls ``rule(backbone, grids)`` on each
            backbone of this family after its per-module rules (``grids``: ``{id(attention):
            (h, w)}`` when an input size is given); None when the per-module rules cover the
            family's layers, as for V1 and V2 (:meth:`fuse_rule`).
        cls_head (str): Registry type of the ImageNet classifier head for this family.
        config_token (str): How the repository's config files name the family
            (``effformerv2`` in ``mask_rcnn_effformerv2_s0.py``).
        export_prefix (str): Prefix of export and benchmark names (``'v2_'``: ``v2_s0``).
        display_prefix (str): Prefix of the papers' variant names (``'V2-'``: ``V2-S0``).
        paper (dict): ``{arch: figures}`` from the family's paper at 224x224: ``params_m``,
            ``gmacs``, ``top1``, ``iphone12_ms`` (Core ML, iOS 16), optional ``top1_450``, and
            ``dense`` (``{'detection': {'bbox_mAP', 'segm_mAP'}, 'segmentation': {'mIoU'},
            'checked': bool}``) when the paper reports dense results for that arch.
        timm_figures (dict): ``{arch: {'params_m', 'gmacs'}}`` as timm's results list them.
        colour (str): The family's colour in plots.
        paper_ref (str): The paper the figures come from.
    """

    name: str
    cls: type
    type: str
    archs: Tuple[str, ...]
    default_arch: str
    key: str
    label: str
    timm_names: Mapping[str, str]
    converters: Mapping[str, str]
    block_keys: Optional[Tuple[str, str]]
    stem_keys: Tuple[str, str]
    infer_arch: str
    fuse: Optional[str]
    cls_head: str
    config_token: str
    export_prefix: str
    display_prefix: str
    paper: Mapping[str, dict] = field(default_factory=dict)
    timm_figures: Mapping[str, dict] = field(default_factory=dict)
    colour: str = 'black'
    paper_ref: str = ''

    def converter(self, layout: str) -> Callable:
        """The converter of ``layout`` files of this family (``convert(sd) -> sd``).

        Raises:
            ValueError: the family's files do not come in that layout.
        """
        if layout not in self.converters:
            raise ValueError(f'{self.name} has no {layout!r}-layout checkpoints; it converts '
                             f'{sorted(self.converters)}')
        return _resolve(self.converters[layout], f'{self.name} converter')

    def arch_of_state_dict(self, sd) -> dict:
        """The arch dict of an mmeff-layout state dict of this family (:attr:`infer_arch`)."""
        return _resolve(self.infer_arch, f'{self.name} infer_arch')(sd)

    def fuse_rule(self) -> Optional[Callable]:
        """The fusion rule (:attr:`fuse`) as a callable, or None."""
        return _resolve(self.fuse, f'{self.name} fusion rule')

    def timm_name(self, arch: str) -> str:
        """timm's model name of one of :attr:`archs`."""
        arch = self.arch(arch)
        if arch not in self.timm_names:
            raise ValueError(f'timm has no model for {self.name} arch {arch!r}; it has '
                             f'{sorted(self.timm_names)}')
        return self.timm_names[arch]

    def display_name(self, arch: str) -> str:
        """How the papers name a variant: ``'L1'``, ``'V2-S0'``."""
        return f'{self.display_prefix}{str(arch).upper()}'

    def arch(self, arch: str) -> str:
        """``arch`` lower-cased when it is one of :attr:`archs`, else a ``ValueError`` listing
        them."""
        name = str(arch).lower()
        if name not in self.archs:
            raise ValueError(f'{arch!r} is not an arch of {self.name}; choose one of '
                             f'{list(self.archs)}')
        return name


_REGISTRY: Dict[str, Family] = {}
# Read-only, live view: what ``FAMILIES`` shows is always the current registry.
FAMILIES: Mapping[str, Family] = types.MappingProxyType(_REGISTRY)


def register_family(*, key: str, label: str, timm_names: Mapping[str, str],
                    converters: Mapping[str, str], block_keys: Optional[Tuple[str, str]],
                    stem_keys: Tuple[str, str], infer_arch: str, cls_head: str,
                    config_token: str,
                    export_prefix: str = '', display_prefix: str = '',
                    fuse: Optional[str] = None, paper: Optional[Mapping[str, dict]] = None,
                    timm_figures: Optional[Mapping[str, dict]] = None, colour: str = 'black',
                    paper_ref: str = ''):
    """Class decorator registering a backbone class (with ``arch_settings`` and an ``arch``
    argument) as a model family; the :class:`Family` is also set as ``cls.family``.

    Raises:
        ValueError: the class or the key is registered already, an arch name is another
            family's, or a figure/timm name/converter is given for something the class lacks.
    """

    def wrap(cls):
        name = cls.__name__
        if name in _REGISTRY:
            raise ValueError(f'model family {name!r} is registered already '
                             f'({_REGISTRY[name].cls.__module__}); give the class another name')
        settings = getattr(cls, 'arch_settings', None)
        if not isinstance(settings, dict) or not settings:
            raise ValueError(f'{name}: a model family needs a non-empty dict arch_settings')
        archs = tuple(settings)
        default = inspect.signature(cls.__init__).parameters.get('arch')
        if default is None or default.default not in archs:
            raise ValueError(f'{name}: a model family needs an arch argument whose default is '
                             f'one of its arch_settings {list(archs)}')
        for other in _REGISTRY.values():
            if other.key == key:
                raise ValueError(f'{name}: family key {key!r} is {other.name}\'s already')
        for other in _REGISTRY.values():
            shared = sorted(set(archs) & set(other.archs))
            if shared:
                raise ValueError(f'{name}: arch names {shared} are {other.name}\'s already; '
                                 f'arch names must name one family')
        for what, table in (('timm_names', timm_names), ('paper', paper or {}),
                            ('timm_figures', timm_figures or {})):
            unknown = sorted(set(table) - set(archs))
            if unknown:
                raise ValueError(f'{name}: {what} has archs {unknown} that are not in its '
                                 f'arch_settings {list(archs)}')
        unknown = sorted(set(converters) - set(CONVERTER_LAYOUTS))
        if unknown:
            raise ValueError(f'{name}: converter layouts {unknown} are unknown; allowed: '
                             f'{list(CONVERTER_LAYOUTS)}')
        if block_keys is None and any(f.block_keys is None for f in _REGISTRY.values()):
            raise ValueError(f'{name}: only one family may have block_keys=None')
        family = Family(
            name=name, cls=cls, type=f'{_SCOPE}.{name}', archs=archs,
            default_arch=default.default, key=key, label=label,
            timm_names=types.MappingProxyType(dict(timm_names)),
            converters=types.MappingProxyType(dict(converters)),
            block_keys=block_keys, stem_keys=stem_keys, infer_arch=infer_arch, fuse=fuse,
            cls_head=cls_head, config_token=config_token, export_prefix=export_prefix,
            display_prefix=display_prefix,
            paper=types.MappingProxyType(dict(paper or {})),
            timm_figures=types.MappingProxyType(dict(timm_figures or {})),
            colour=colour, paper_ref=paper_ref)
        _REGISTRY[name] = family
        cls.family = family
        return cls

    return wrap


def unregister_family(name: str) -> Family:
    """Remove a family (a plug-in's or a test's) from the registry; returns it."""
    if name not in _REGISTRY:
        raise ValueError(f'no model family {name!r}; registered: {list(_REGISTRY)}')
    return _REGISTRY.pop(name)


def _valid() -> str:
    return (f'families {list(_REGISTRY)} (types {list(backbone_types())}) or archs '
            f'{list(all_archs())}')


def family_of(x) -> Family:
    """The :class:`Family` of ``x``: a backbone class or instance (a subclass's too), a
    :class:`Family`, a type string in any scope (``'mmeff.EfficientFormerV2'``,
    ``'EfficientFormerV2'``) or an arch name (``'s0'``, any case).

    Raises:
        ValueError: ``x`` is none of those; the message lists the valid ones.
    """
    if isinstance(x, Family):
        return x
    cls = x if isinstance(x, type) else type(x)
    for klass in cls.__mro__:
        family = getattr(klass, 'family', None)
        if isinstance(family, Family) and _REGISTRY.get(family.name) is family:
            return family
    if isinstance(x, str):
        name = x.rpartition('.')[2]
        if name in _REGISTRY:
            return _REGISTRY[name]
        for family in _REGISTRY.values():
            if x.lower() in family.archs:
                return family
    raise ValueError(f'{x!r} is no mmeff model family; valid: {_valid()}')


def family_of_arch(arch: str) -> Family:
    """The family that has the named arch ``arch`` (any case); ``ValueError`` listing every
    family's archs otherwise."""
    name = str(arch).lower()
    for family in _REGISTRY.values():
        if name in family.archs:
            return family
    raise ValueError(f'{arch!r} is not a named EfficientFormer arch of any family; choose one '
                     f'of ' + '; '.join(f'{f.label}: {list(f.archs)}'
                                        for f in _REGISTRY.values()))


def is_family_type(btype) -> bool:
    """Whether ``btype`` (a type string in any scope) names a registered family."""
    return isinstance(btype, str) and btype.rpartition('.')[2] in _REGISTRY


def backbone_types() -> Tuple[str, ...]:
    """Every type string of every family: scoped (``'mmeff.EfficientFormer'``) and bare."""
    return tuple(t for f in _REGISTRY.values() for t in (f.type, f.name))


def all_archs() -> Tuple[str, ...]:
    """Every named arch of every family, family by family."""
    return tuple(a for f in _REGISTRY.values() for a in f.archs)


def iter_families() -> Iterator[Family]:
    """The registered families in registration order."""
    return iter(tuple(_REGISTRY.values()))


__all__ = ['Family', 'FAMILIES', 'CONVERTER_LAYOUTS', 'register_family', 'unregister_family',
           'family_of', 'family_of_arch', 'is_family_type', 'backbone_types', 'all_archs',
           'iter_families']
