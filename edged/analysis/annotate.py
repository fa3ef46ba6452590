"""Drawing results onto frames: boxes, the 5 landmarks, and the emotion with its confidence.

Kept apart from the pipeline so the hot path never imports drawing code, and so ``edged
analyze --out`` and any future debug stream draw the same way. Line widths and text size
scale with the frame, so a 4K frame and a 320×240 one are both readable.

``blur=True`` (``edged analyze --out … --blur``) makes an example shareable without sharing
faces: each face box, grown by :data:`BLUR_MARGIN` on every side, is pixelated to
:data:`BLUR_BLOCKS` blocks across and then smoothed, and no landmarks are drawn (five points
are a sketch of the face's geometry). Pixelating first matters: a Gaussian blur alone keeps
low frequencies that can be enhanced; a mosaic of a few blocks keeps nothing to identify.
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
#: Fraction of the box added on each side of a blurred region (hair, ears, chin).
BLUR_MARGIN = 0.25
#: Blocks across the longer side of a blurred region.
BLUR_BLOCKS = 6
#: Left eye, right eye, nose, left and right mouth corner.
LANDMARK_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 0, 255),
    (0, 255, 0),
    (255, 0, 255),
    (0, 255, 255),
)


def blur_faces(image: npt.NDArray[np.uint8], faces: Sequence[Face]) -> npt.NDArray[np.uint8]:
    """A copy of ``image`` with every face box (plus margin) pixelated and smoothed."""
    out = image.copy()
    h, w = out.shape[:2]
    for face in faces:
        x1, y1, x2, y2 = face.bbox
        mx, my = (x2 - x1) * BLUR_MARGIN, (y2 - y1) * BLUR_MARGIN
        left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
        right, bottom = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
        if right - left < 2 or bottom - top < 2:
            continue
        roi = out[top:bottom, left:right]
        rh, rw = roi.shape[:2]
        step = max(rw, rh) / BLUR_BLOCKS
        small = cv2.resize(
            roi,
            (max(1, round(rw / step)), max(1, round(rh / step))),
            interpolation=cv2.INTER_AREA,
        )
        mosaic = cv2.resize(small, (rw, rh), interpolation=cv2.INTER_NEAREST)
        k = max(3, int(step) | 1)  # odd kernel about one block wide: soften the block edges
        out[top:bottom, left:right] = cv2.GaussianBlur(mosaic, (k, k), 0)
    return np.asarray(out, np.uint8)


def draw_faces(
    image: npt.NDArray[np.uint8], faces: Sequence[Face], *, blur: bool = False
) -> npt.NDArray[np.uint8]:
    """A copy of ``image`` with every face drawn; the input is left untouched.

    ``blur``: the faces are made unrecognisable first and their landmarks are not drawn.
    """
    out = blur_faces(image, faces) if blur else image.copy()
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
        for (px, py), lm_color in zip(
            () if blur else face.landmarks, LANDMARK_COLORS, strict=False
        ):
            cv2.circle(out, (round(float(px)), round(float(py))), radius, lm_color, -1, cv2.LINE_AA)
        (tw, th), base = cv2.getTextSize(text, font, font_scale, max(1, thick // 2))
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else y2 + th + 4
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 4, ty + base), color, -1)
        cv2.putText(
            out, text, (x1 + 2, ty), font, font_scale, (0, 0, 0), max(1, thick // 2), cv2.LINE_AA
        )
    return np.asarray(out, np.uint8)
