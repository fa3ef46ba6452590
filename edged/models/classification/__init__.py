"""Emotion classification: one file per model family, an explicit registry.

Every classifier is built as ``Cls(spec, sessions, provider)`` from its catalogue
:class:`~edged.models.catalog.ModelSpec` and one ONNX Runtime session per model file, and is called
on a batch of BGR ``uint8`` face crops; it returns softmax probabilities (N, C) float32 whose
columns follow :attr:`Classifier.labels` (canonical labels in the model's class order). A
7-class model's labels never include ``contemptuous``.
"""

from __future__ import annotations

from edged.models.classification.base import Classifier, OnnxClassifier, softmax
from edged.models.classification.efficientvit import EfficientViTClassifier
from edged.models.classification.fer import FerClassifier
from edged.models.classification.hsemotion import HSEmotionClassifier

#: ``ModelSpec.family`` → classifier class.
CLASSIFIERS: dict[str, type[OnnxClassifier]] = {
    "hsemotion": HSEmotionClassifier,
    "efficientvit": EfficientViTClassifier,
    "fer": FerClassifier,
}

__all__ = [
    "CLASSIFIERS",
    "Classifier",
    "EfficientViTClassifier",
    "FerClassifier",
    "HSEmotionClassifier",
    "OnnxClassifier",
    "softmax",
]
