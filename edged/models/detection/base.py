"""What every detector returns and what the pipeline needs from one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Detections:
    """Faces found in one image, best score first.

    ``boxes`` is (N, 4) ``x1, y1, x2, y2``; ``scores`` is (N,); ``landmarks`` is (N, 5, 2) in
    the order left eye, right eye, nose tip, left mouth corner, right mouth corner (left/right
    as seen in the image). All in original-image pixels.
    """

    boxes: FloatArray
    scores: FloatArray
    landmarks: FloatArray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0, 5, 2), np.float32),
        )


class Detector(Protocol):
    """What the pipeline needs from a detector."""

    name: str
    provider: str

    def __call__(self, image: npt.NDArray[np.uint8]) -> Detections: ...
