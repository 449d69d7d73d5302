"""Deployment: inference-time fusion, ONNX and Core ML export, one adapter per exported task
(:mod:`mmeff.deploy.tasks`); see docs/deployment.md."""
from .build import TASKS, build_model
from .export import (COMPUTE_UNITS, coreml_problems, export_coreml, export_onnx, format_report,
                     inspect_coreml, parse_input_shape)
from .fuse import (cache_attention_bias, fold_output_scale_, fuse_conv_bn, fuse_model,
                   fusion_report, parse_input_size, token_grid)
from .preprocess import fitted_size, labels_to_image, logits_to_image, preprocess_image
from .segmentor import (SegmentorExportModule, evaluate_onnx_segmentor, export_segmentor,
                        format_segmentor_report, load_segmentor)
from .tasks import EXPORT_TASKS, OPTIONS, TaskAdapter, get_task, refused_options

__all__ = ['TASKS', 'build_model', 'COMPUTE_UNITS', 'coreml_problems', 'export_coreml',
           'export_onnx', 'format_report', 'inspect_coreml', 'parse_input_shape',
           'cache_attention_bias', 'fold_output_scale_', 'fuse_conv_bn', 'fuse_model',
           'fusion_report', 'parse_input_size', 'token_grid',
           'fitted_size', 'labels_to_image', 'logits_to_image', 'preprocess_image',
           'SegmentorExportModule', 'evaluate_onnx_segmentor', 'export_segmentor',
           'format_segmentor_report', 'load_segmentor',
           'EXPORT_TASKS', 'OPTIONS', 'TaskAdapter', 'get_task', 'refused_options']
