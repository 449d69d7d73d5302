"""Dataset helpers. Kept import-light: submodules import their heavy dependencies lazily."""
from .synthetic_ade import make_ade_dataset

__all__ = ['make_ade_dataset']
