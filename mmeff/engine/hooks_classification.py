"""Hooks for classification runs (``configs/classification``), registered in
``mmeff.registry.HOOKS``; import with ``custom_imports=dict(imports=[
'mmeff.engine.hooks_classification'])``."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mmeff.registry import HOOKS


@HOOKS.register_module()
class ClassNumCheckHook(Hook):
    """Before training/validation/testing, check that the dataset's classes fit the model.

    An ImageFolder's labels are the indices of its sorted class folders: a dataset with more
    classes than ``model.num_classes`` fails deep inside the loss, and a ``val/`` folder whose
    classes differ from ``train/``'s silently evaluates against shifted labels. Both become a
    ``ValueError`` that says what to change.
    """

    @staticmethod
    def _num_classes(runner) -> int:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if not hasattr(model, 'num_classes'):
            raise TypeError(f'ClassNumCheckHook needs a model with num_classes, got '
                            f'{type(model).__name__}')
        return model.num_classes

    @staticmethod
    def _classes(loader):
        dataset = loader.dataset
        folder = (getattr(dataset, 'data_prefix', None) or {}).get('img_path')
        return dataset.metainfo.get('classes'), folder or getattr(dataset, 'data_root', '')

    def _check(self, runner, loader, name: str) -> None:
        classes, root = self._classes(loader)
        if classes is None:
            return
        num_classes = self._num_classes(runner)
        if len(classes) != num_classes:
            raise ValueError(
                f'{name}: the dataset under {root!r} has {len(classes)} class folders but the '
                f'model has num_classes={num_classes}; set model.num_classes={len(classes)} '
                f'(e.g. --cfg-options model.num_classes={len(classes)}) or fix the folder tree')

    def before_train(self, runner) -> None:
        self._check(runner, runner.train_dataloader, 'train_dataloader')
        if runner.val_loop is not None:
            train_classes, train_root = self._classes(runner.train_dataloader)
            val_classes, val_root = self._classes(runner.val_dataloader)
            if train_classes is not None and val_classes is not None and \
                    tuple(train_classes) != tuple(val_classes):
                diff = sorted(set(train_classes) ^ set(val_classes))
                how = (f'e.g. {diff[:3]} is in only one of them' if diff else
                       'the same names in another order')
                raise ValueError(
                    f'train and val class folders differ ({len(train_classes)} vs '
                    f'{len(val_classes)}; {how}), so the '
                    f'labels would not match: give both splits the same class folders '
                    f'(train root {train_root!r}, val root {val_root!r})')

    def before_val(self, runner) -> None:
        self._check(runner, runner.val_dataloader, 'val_dataloader')

    def before_test(self, runner) -> None:
        self._check(runner, runner.test_dataloader, 'test_dataloader')
