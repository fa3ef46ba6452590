"""What every detector family shares: input geometry, letterboxing, session checks, NMS.

The families differ only in how they read their network's outputs. Everything around that
(fitting the frame into the network input without distorting it, mapping results back to
the caller's pixels, suppressing duplicates, the size/count limits) is the same and lives
here so that the three decoders cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from edged.detection import Detections, FloatArray
from edged.errors import ModelError, ModelMismatchError

if TYPE_CHECKING:
    import onnxruntime as ort

    from edged.catalog import ModelSpec

#: Feature-pyramid strides of every supported detector; the padded input is a multiple of
#: the largest so each level's grid is exact.
STRIDES: tuple[int, ...] = (8, 16, 32)
DIVISOR = 32


@dataclass(frozen=True)
class Geometry:
    """How one image is fitted into the network input.

    The image is resized to ``new_w`` x ``new_h`` (aspect kept) and placed at the top-left
    of an ``in_w`` x ``in_h`` canvas; ``scale_x``/``scale_y`` are the exact per-axis factors
    (after rounding to whole pixels) used to map results back.
    """

    in_w: int
    in_h: int
    new_w: int
    new_h: int
    scale_x: float
    scale_y: float


class InputPlan:
    """The network input size policy, fixed once in ``__init__`` for a session.

    A fixed-size export (e.g. 1x3x640x640) gets every image letterboxed into exactly that
    size. A dynamic export gets the image's longer side resized to ``det_size`` and each side
    padded up to a multiple of 32, so a 16:9 camera does not pay for a square input.
    """

    def __init__(self, fixed: tuple[int, int] | None, det_size: int) -> None:
        if det_size < DIVISOR:
            raise ValueError(f"det_size must be at least {DIVISOR}, got {det_size}")
        self.fixed = fixed  # (width, height) or None
        self.det_size = det_size

    @property
    def canonical(self) -> tuple[int, int]:
        """The (width, height) input used for the warm-up run and the precomputed anchors."""
        if self.fixed is not None:
            return self.fixed
        side = _ceil_to(self.det_size, DIVISOR)
        return side, side

    def geometry(self, width: int, height: int) -> Geometry:
        if self.fixed is not None:
            in_w, in_h = self.fixed
            scale = min(in_w / width, in_h / height)
            new_w = min(in_w, max(1, round(width * scale)))
            new_h = min(in_h, max(1, round(height * scale)))
        else:
            scale = self.det_size / max(width, height)
            new_w = max(1, round(width * scale))
            new_h = max(1, round(height * scale))
            in_w, in_h = _ceil_to(new_w, DIVISOR), _ceil_to(new_h, DIVISOR)
        return Geometry(in_w, in_h, new_w, new_h, new_w / width, new_h / height)


def _ceil_to(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def letterbox(image: npt.NDArray[np.uint8], geo: Geometry) -> npt.NDArray[np.uint8]:
    """The image resized into the top-left of a black canvas of the network's input size.

    Padding only bottom/right keeps the mapping back a pure scale (no offset), as in the
    InsightFace and OpenCV reference implementations.
    """
    h, w = image.shape[:2]
    resized = (
        image
        if (w, h) == (geo.new_w, geo.new_h)
        else cv2.resize(image, (geo.new_w, geo.new_h), interpolation=cv2.INTER_LINEAR)
    )
    if (geo.new_w, geo.new_h) == (geo.in_w, geo.in_h):
        return np.ascontiguousarray(resized)
    canvas = np.zeros((geo.in_h, geo.in_w, 3), np.uint8)
    canvas[: geo.new_h, : geo.new_w] = resized
    return canvas


def check_image(image: npt.NDArray[Any]) -> None:
    """Reject what no detector can read: the pipeline always passes HxWx3 uint8 BGR."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"detectors take an HxWx3 uint8 BGR image, got shape {image.shape} {image.dtype}"
        )


def model_file(spec: ModelSpec) -> str:
    """The file name to put in error messages (the session does not know its path)."""
    return spec.files[0] if spec.files else spec.name


def fixed_input(
    spec: ModelSpec, session: ort.InferenceSession
) -> tuple[str, tuple[int, int] | None]:
    """The single NCHW image input's name and its fixed (width, height), or None if dynamic."""
    inputs = session.get_inputs()
    shape = list(inputs[0].shape) if inputs else []
    channels = shape[1] if len(shape) == 4 else None
    if len(inputs) != 1 or len(shape) != 4 or (isinstance(channels, int) and channels != 3):
        described = [(i.name, list(i.shape)) for i in inputs]
        raise ModelMismatchError(
            f"{model_file(spec)}: expected one image input N x 3 x H x W, got {described}"
        )
    h, w = shape[2], shape[3]
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        if h % DIVISOR or w % DIVISOR:
            raise ModelMismatchError(
                f"{model_file(spec)}: fixed input {w}x{h} is not a multiple of {DIVISOR}"
            )
        return inputs[0].name, (w, h)
    return inputs[0].name, None


def run_session(
    spec: ModelSpec,
    session: ort.InferenceSession,
    names: list[str],
    feed: dict[str, npt.NDArray[np.float32]],
    *,
    mismatch: bool = False,
) -> list[npt.NDArray[np.float32]]:
    """``session.run`` with onnxruntime's exceptions wrapped into edged's.

    During the warm-up a failure means the file does not fit the family (wrong input rank,
    a shape the graph cannot take): that is a ModelMismatchError. Later it is a ModelError
    (device out of memory, a provider failing mid-run).
    """
    try:
        outs = session.run(names, feed)
    except Exception as exc:  # onnxruntime raises several unrelated types
        text = str(exc).strip().splitlines()
        short = text[0][:300] if text else type(exc).__name__
        cls = ModelMismatchError if mismatch else ModelError
        raise cls(f"{model_file(spec)}: inference failed: {short}") from exc
    return [np.asarray(o) for o in outs]


def grid_centers(in_w: int, in_h: int, stride: int) -> FloatArray:
    """(cells, 2) x, y grid indices of one pyramid level, row-major like the networks'."""
    cols, rows = in_w // stride, in_h // stride
    ys, xs = np.mgrid[:rows, :cols]
    return np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)


def nms(boxes: FloatArray, scores: FloatArray, iou_threshold: float) -> npt.NDArray[np.intp]:
    """Indices of the boxes greedy NMS keeps, best score first (OpenCV's C++ NMSBoxes)."""
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.intp)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    # NMSBoxes drops scores <= its score threshold, which must be >= 0; scores were already
    # thresholded, so shift them by 1 (order unchanged) to keep every candidate.
    keep = cv2.dnn.NMSBoxes(
        xywh.astype(np.float64).tolist(),
        (scores.astype(np.float64) + 1.0).tolist(),
        0.0,
        iou_threshold,
    )
    return np.asarray(keep, np.intp).reshape(-1)


@dataclass(frozen=True)
class Limits:
    """The per-call filters every detector applies after decoding."""

    threshold: float
    nms_threshold: float
    min_face_px: int
    max_faces: int

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if not 0.0 < self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in (0, 1], got {self.nms_threshold}")
        if self.min_face_px < 0:
            raise ValueError(f"min_face_px must be >= 0, got {self.min_face_px}")
        if self.max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {self.max_faces}")


def finish(
    boxes: FloatArray,
    scores: FloatArray,
    kps: FloatArray,
    geo: Geometry,
    width: int,
    height: int,
    limits: Limits,
) -> Detections:
    """Network-input candidates → final Detections in original-image pixels.

    Order matters: map back, NMS on the unclipped boxes (as the references do), clip to the
    image, then drop faces below ``min_face_px`` (shorter box side, after clipping, so a face
    cut by the frame edge counts by its visible part) and keep the ``max_faces`` best.
    """
    if boxes.shape[0] == 0:
        return Detections.empty()
    sx, sy = geo.scale_x, geo.scale_y
    boxes = (boxes / np.array([sx, sy, sx, sy], np.float32)).astype(np.float32)
    kps = (kps / np.array([sx, sy], np.float32)).astype(np.float32)
    keep = nms(boxes, scores, limits.nms_threshold)
    boxes, scores, kps = boxes[keep], scores[keep], kps[keep]
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    side = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    ok = (side >= limits.min_face_px) & (side > 0)
    boxes, scores, kps = boxes[ok], scores[ok], kps[ok]
    order = np.argsort(-scores, kind="stable")[: limits.max_faces]
    return Detections(
        np.ascontiguousarray(boxes[order], np.float32),
        np.ascontiguousarray(scores[order], np.float32),
        np.ascontiguousarray(kps[order], np.float32),
    )
