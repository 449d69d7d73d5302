"""mmseg-side helpers. Importing this module registers ``mmeff.SegDataCheckHook``; it imports
neither mmseg nor any model code, so ``mmeff.models`` can import it cheaply."""
from .checks import SegDataCheckHook, check_files, check_label_range, check_num_classes

__all__ = ['SegDataCheckHook', 'check_files', 'check_label_range', 'check_num_classes']
