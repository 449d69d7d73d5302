"""Dataset helpers. Kept import-light: submodules import their heavy dependencies lazily."""
from .imagenet import (ImageFolderDataset, LoadPILImage, PackClsInputs,  # registers them
                       RepeatAugSampler, TimmTransform)
from .synthetic_ade import make_ade_dataset
from .synthetic_imagenet import make_imagefolder_dataset

__all__ = ['ImageFolderDataset', 'LoadPILImage', 'PackClsInputs', 'RepeatAugSampler',
           'TimmTransform', 'make_imagefolder_dataset', 'make_ade_dataset']
