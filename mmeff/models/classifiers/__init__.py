from .distillation import TeacherRef, build_teacher, distillation_loss
from .efficientformer_classifier import (EfficientFormerClassifier, EfficientFormerClsHead,
                                         EfficientFormerInference, EfficientFormerV2ClsHead)

__all__ = ['EfficientFormerClassifier', 'EfficientFormerClsHead', 'EfficientFormerInference',
           'EfficientFormerV2ClsHead',
           'TeacherRef', 'build_teacher', 'distillation_loss']
