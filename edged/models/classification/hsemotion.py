"""HSEmotion-style single-file classifiers (EfficientNet-B0/B2, AffectNet MobileNet).

HSEmotion's ONNX exports take an RGB face crop resized straight to S×S (224 or 260), scaled
to [0, 1] and normalised with the ImageNet mean/std, and output logits in the HSEmotion
class order (7 or 8 classes). All of that comes from the model's catalogue spec, so a new
file of this family is a catalogue entry, not code.
"""

from __future__ import annotations

from edged.models.classification.base import NormalizedRgbClassifier


class HSEmotionClassifier(NormalizedRgbClassifier):
    """One ONNX file: ``input`` N×3×S×S → logits N×C."""
