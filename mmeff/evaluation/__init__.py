"""Metrics (registered in ``mmeff.registry.METRICS``)."""
from .accuracy import Accuracy

__all__ = ['Accuracy']
