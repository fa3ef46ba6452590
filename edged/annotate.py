"""Drawing results onto frames: boxes, the 5 landmarks, and the emotion with its confidence.

Kept apart from the pipeline so the hot path never imports drawing code, and so ``edged
analyze --out`` and any future debug stream draw the same way. Line widths and text size
scale with the frame, so a 4K frame and a 320×240 one are both readable.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from edged.pipeline import Face

#: BGR colour per canonical label (and for detection-only faces).
EMOTION_COLORS: dict[str, tuple[int, int, int]] = {
    "neutral": (200, 200, 200),
    "happy": (0, 215, 255),
    "sad": (255, 128, 0),
    "angry": (0, 0, 230),
    "fearful": (180, 0, 180),
    "disgusted": (0, 160, 0),
    "surprised": (255, 255, 0),
    "contemptuous": (0, 128, 255),
}
DETECTION_COLOR = (0, 255, 0)
#: Left eye, right eye, nose, left and right mouth corner.
LANDMARK_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 0, 255),
    (0, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
)


def draw_faces(image: npt.NDArray[np.uint8], faces: Sequence[Face]) -> npt.NDArray[np.uint8]:
    """A copy of ``image`` with every face drawn; the input is left untouched."""
    out = image.copy()
    h, w = out.shape[:2]
    scale = max(min(h, w) / 600.0, 0.8)
    thick = max(1, round(2 * scale))
    radius = max(1, round(2 * scale))
    font = cv2.FONT_HERSHEY_SIMPLEX
    font_scale = 0.5 * scale
    for face in faces:
        x1, y1, x2, y2 = (round(v) for v in face.bbox)
        if face.emotion is not None:
            color = EMOTION_COLORS.get(face.emotion, DETECTION_COLOR)
            text = f"{face.emotion} {face.confidence:.2f}"
        else:
            color = DETECTION_COLOR
            text = f"face {face.score:.2f}"
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        for (px, py), lm_color in zip(face.landmarks, LANDMARK_COLORS, strict=False):
            cv2.circle(out, (round(float(px)), round(float(py))), radius, lm_color, -1, cv2.LINE_AA)
        (tw, th), base = cv2.getTextSize(text, font, font_scale, max(1, thick // 2))
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else y2 + th + 4
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 4, ty + base), color, -1)
        cv2.putText(
            out, text, (x1 + 2, ty), font, font_scale, (0, 0, 0), max(1, thick // 2), cv2.LINE_AA
        )
    return np.asarray(out, np.uint8)
