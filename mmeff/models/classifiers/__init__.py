from .distillation import TeacherRef, build_teacher, distillation_loss
from .efficientformer_classifier import (EfficientFormerClassifier, EfficientFormerClsHead,
                                         EfficientFormerInference)

__all__ = ['EfficientFormerClassifier', 'EfficientFormerClsHead', 'EfficientFormerInference',
           'TeacherRef', 'build_teacher', 'distillation_loss']
