"""edged's own FER-style model: 48×48 grayscale crops, FER2013's 7 classes.

The preprocessing is exactly the one the training package (``edged_train``) uses:
BGR → gray with ``cv2.COLOR_BGR2GRAY``, resize to 48×48 with INTER_AREA, /255, then
(x - 0.5)/0.5. A model that sees other pixels than it was trained on loses accuracy
silently, so the constants come from the catalogue spec, and the gray conversion is
OpenCV's (same weights and rounding as in training).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import onnxruntime as ort

from edged.models.catalog import ModelSpec
from edged.models.classification.base import Crops, FloatArray, OnnxClassifier


def gray_input(crop: np.ndarray, size: int) -> np.ndarray:
    """One BGR or gray uint8 crop → (size, size) uint8 gray: OpenCV's gray first, then
    INTER_AREA. The training tool (``edged_train``) cuts its images with this, so training
    and the daemon cannot see different pixels."""
    if crop.ndim == 3:
        crop = cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_BGR2GRAY)
    if crop.shape[:2] != (size, size):
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return crop


class FerClassifier(OnnxClassifier):
    """One ONNX file: ``input`` N×1×48×48 → logits N×7."""

    def __init__(
        self, spec: ModelSpec, sessions: Sequence[ort.InferenceSession], provider: str
    ) -> None:
        mean = float(spec.mean[0]) if spec.mean else 0.5
        std = float(spec.std[0]) if spec.std else 0.5
        self._scale = np.float32(1.0 / (255.0 * std))
        self._shift = np.float32(-mean / std)
        super().__init__(spec, sessions, provider)

    def _gray(self, crops: Crops) -> np.ndarray:
        """(N, S, S) uint8 gray crops at the input size: gray first, then INTER_AREA resize."""
        size = self.input_size
        if isinstance(crops, np.ndarray) and crops.ndim == 4 and crops.shape[3] == 3:
            n, h, w, _ = crops.shape
            # cvtColor is per pixel: the whole batch as one tall image is one call.
            tall = np.ascontiguousarray(crops, dtype=np.uint8).reshape(n * h, w, 3)
            gray = cv2.cvtColor(tall, cv2.COLOR_BGR2GRAY).reshape(n, h, w)
            if (h, w) == (size, size):
                return gray
            items: Sequence[np.ndarray] = list(gray)
        else:
            items = list(crops)
        out = [gray_input(c, size) for c in items]
        return np.stack(out) if out else np.zeros((0, size, size), np.uint8)

    def preprocess(self, crops: Crops) -> FloatArray:
        gray = self._gray(crops)
        out = np.empty((gray.shape[0], 1, gray.shape[1], gray.shape[2]), np.float32)
        np.multiply(gray[:, None], self._scale, out=out)
        out += self._shift
        return out
