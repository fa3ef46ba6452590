"""EfficientViT-M5 as the seed ships it: a backbone file and an emotion-head file.

The backbone maps an RGB 224×224 ImageNet-normalised crop to a 384-d ``features`` vector;
the head (BatchNorm + Linear) maps features to 8 logits in the HSEmotion 8-class order.
Keeping the two sessions separate (instead of fusing the files) means a retrained head can
be dropped in without touching the backbone. Both run on the whole batch, one after the
other, inside one classifier call.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnxruntime as ort

from edged.errors import ModelError
from edged.models.catalog import ModelSpec
from edged.models.classification.base import NormalizedRgbClassifier


class EfficientViTClassifier(NormalizedRgbClassifier):
    """Two ONNX files: backbone ``input`` N×3×224×224 → ``features`` → head → logits N×8."""

    def __init__(
        self, spec: ModelSpec, sessions: Sequence[ort.InferenceSession], provider: str
    ) -> None:
        if len(sessions) != 2:
            raise ModelError(
                f"{spec.name}: needs two sessions (backbone, head), got {len(sessions)}"
            )
        super().__init__(spec, sessions, provider)
