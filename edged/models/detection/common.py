"""What every detector family shares: input geometry, letterboxing, session checks, NMS.

The families differ only in how they read their network's outputs. Everything around that
(fitting the frame into the network input without distorting it, mapping results back to
the caller's pixels, suppressing duplicates, the size/count limits) is the same and lives
here so that the three decoders cannot drift apart.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import cv2
import numpy as np
import numpy.typing as npt
import structlog

from edged.errors import ModelError, ModelMismatchError
from edged.models.detection.base import Detections, FloatArray

if TYPE_CHECKING:
    from pathlib import Path

    import onnxruntime as ort

    from edged.models.catalog import ModelSpec

log = structlog.get_logger(__name__)

T = TypeVar("T")
#: Candidates in network-input pixels: boxes (N, 4), scores (N,), landmarks (N, 5, 2).
Candidates = tuple[FloatArray, FloatArray, FloatArray]

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

    An image smaller than the input is enlarged by at most ``max_upscale`` (default 1:
    never). Enlarging a 350 px photo or a close-up 320x240 frame to 640 makes a face that
    fills it larger than the detectors' biggest anchors: SCRFD then found 1 face in 912
    real photos and YuNet missed 116 (``tools/eval_emotion.py --pipeline``); at 1x they
    miss 7 and 3. Faces too small to find unenlarged are below ``min_face_px`` anyway.
    """

    def __init__(
        self, fixed: tuple[int, int] | None, det_size: int, max_upscale: float = 1.0
    ) -> None:
        if det_size < DIVISOR:
            raise ValueError(f"det_size must be at least {DIVISOR}, got {det_size}")
        self.fixed = fixed  # (width, height) or None
        self.det_size = det_size
        self.max_upscale = max_upscale

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
            scale = min(in_w / width, in_h / height, self.max_upscale)
            new_w = min(in_w, max(1, round(width * scale)))
            new_h = min(in_h, max(1, round(height * scale)))
        else:
            scale = min(self.det_size / max(width, height), self.max_upscale)
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


#: ONNX Runtime's own exception types (``onnxruntime.capi.onnxruntime_pybind11_state``):
#: each derives from Exception alone, so they are named one by one. Looked up by name
#: because older runtimes (JetPack's) lack the newer ones (EPFail, EngineError...).
_ORT_STATUS_ERRORS = (
    "Fail",
    "InvalidArgument",
    "NoSuchFile",
    "NoModel",
    "EngineError",
    "RuntimeException",
    "InvalidProtobuf",
    "ModelLoaded",
    "NotImplemented",
    "InvalidGraph",
    "EPFail",
    "ModelLoadCanceled",
    "ModelRequiresCompilation",
    "NotFound",
    "DeviceReset",
)


@functools.cache
def ort_errors() -> tuple[type[Exception], ...]:
    """What ONNX Runtime raises when a model cannot be loaded or run.

    Its status exceptions, plus RuntimeError (pybind11's translation of any other C++
    exception, e.g. a CUDA failure) and ValueError (its Python wrapper's, e.g. a graph whose
    input names differ from the ones fed). Deliberately not Exception: a TypeError or
    AttributeError is a bug in edged and must surface as one, not as a model "falling back".
    Imported lazily so that importing the detectors does not need the runtime.
    """
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    found = (getattr(state, name, None) for name in _ORT_STATUS_ERRORS)
    status = tuple(t for t in found if isinstance(t, type) and issubclass(t, Exception))
    return (*status, RuntimeError, ValueError)


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
    except ort_errors() as exc:
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


def output_names(file: str, declared: Sequence[ort.NodeArg], count: int, what: str) -> list[str]:
    """The declared output names, or ModelMismatchError when there are not ``count``."""
    if len(declared) != count:
        shapes = [(o.name, list(o.shape)) for o in declared]
        raise ModelMismatchError(
            f"{file}: expected {count} outputs ({what}), got {len(declared)}: {shapes}"
        )
    return [o.name for o in declared]


def candidates(
    boxes: list[FloatArray], scores: list[FloatArray], kps: list[FloatArray]
) -> Candidates:
    """Per-level candidate lists joined into float32 arrays (empty ones when none)."""
    if not scores:
        return (
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            np.zeros((0, 5, 2), np.float32),
        )
    return (
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(kps).astype(np.float32),
    )


#: Input sizes whose anchor grids are kept; a dynamic model fed ever-new frame shapes would
#: otherwise grow the cache without bound.
_MAX_CACHED_SHAPES = 64


class PerInputSize(Generic[T]):
    """Values (anchor grids) computed once per network input size, the canonical one eagerly.

    Read without a lock from every pipeline thread: a miss computes the value again and
    writes it, which is idempotent (the same value whoever writes it).
    """

    def __init__(self, make: Callable[[int, int], T], in_w: int, in_h: int) -> None:
        self._make = make
        self._values: dict[tuple[int, int], T] = {(in_w, in_h): make(in_w, in_h)}

    def get(self, in_w: int, in_h: int) -> T:
        key = (in_w, in_h)
        found = self._values.get(key)
        if found is None:
            found = self._make(in_w, in_h)
            if len(self._values) < _MAX_CACHED_SHAPES:
                self._values[key] = found
        return found


class OnnxDetector:
    """What every detector family shares: settings, input plan, warm-up, the call itself.

    A family only says which outputs it reads (:meth:`_select_outputs`, from the declared
    ones), how it reads them (:meth:`_setup` on the warm-up outputs, :meth:`_decode` on
    each call's) and how pixels are normalised (:attr:`_blob_params`). Sizes, letterboxing,
    the warm-up run and the mapping back to image pixels live here once, so the families
    cannot drift apart. ``__call__`` is thread-safe: nothing is mutated after ``__init__``
    but the idempotent anchor caches.
    """

    family: ClassVar[str]
    #: ``(scale, mean, swap_rb)``: the input is ``(pixel - mean) * scale``, RGB if swap_rb.
    _blob_params: tuple[float, float, bool] = (1.0 / 128.0, 127.5, True)

    def __init__(
        self,
        spec: ModelSpec,
        session: ort.InferenceSession,
        provider: str,
        *,
        det_size: int = 640,
        max_upscale: float = 1.0,
        threshold: float = 0.5,
        nms_threshold: float = 0.4,
        min_face_px: int = 20,
        max_faces: int = 32,
    ) -> None:
        self.name = spec.name
        self.spec = spec
        self.provider = provider
        self.limits = Limits(threshold, nms_threshold, min_face_px, max_faces)
        self._session = session
        self._file = model_file(spec)
        self._input, fixed = fixed_input(spec, session)
        self._plan = InputPlan(fixed, det_size, max_upscale)
        names = self._select_outputs(session.get_outputs())
        in_w, in_h = self._plan.canonical
        started = time.perf_counter()
        outs = run_session(
            spec,
            session,
            names,
            {self._input: np.zeros((1, 3, in_h, in_w), np.float32)},
            mismatch=True,
        )
        warm_ms = (time.perf_counter() - started) * 1000
        #: Output names each call requests, in the order :meth:`_decode` reads them.
        self._names = self._setup(names, outs, in_w, in_h)
        log.info(
            "detector_ready",
            model=self.name,
            family=self.family,
            **self._ready_fields(),
            provider=provider,
            input=f"{in_w}x{in_h}" + ("" if fixed else " (dynamic)"),
            warmup_ms=round(warm_ms, 1),
        )

    # -- what a family provides ---------------------------------------------------------
    @classmethod
    def prepare_session(
        cls, spec: ModelSpec, session: ort.InferenceSession, path: Path
    ) -> ort.InferenceSession:
        """The session this family runs on, given the one the loader opened from ``path``:
        that one, unless the family must rebuild it from the file (CenterFace's fixed
        input). The loader calls it, so the session it records is the one that runs."""
        return session

    def _select_outputs(self, declared: Sequence[ort.NodeArg]) -> list[str]:
        """The outputs to run the warm-up on, after checking the declared ones fit."""
        raise NotImplementedError

    def _setup(
        self, names: list[str], outs: list[npt.NDArray[np.float32]], in_w: int, in_h: int
    ) -> list[str]:
        """Check the warm-up outputs (concrete shapes), build the decoder; the output
        names each call requests."""
        raise NotImplementedError

    def _decode(self, outs: list[npt.NDArray[np.float32]], in_w: int, in_h: int) -> Candidates:
        """Candidates above the threshold, in network-input pixels."""
        raise NotImplementedError

    def _ready_fields(self) -> dict[str, Any]:
        """Extra fields of the ``detector_ready`` log line."""
        return {}

    # -- shared ---------------------------------------------------------------------------
    def preprocess(self, image: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.float32], Geometry]:
        """The network input blob for ``image`` and how it was fitted (for mapping back)."""
        h, w = image.shape[:2]
        geo = self._plan.geometry(w, h)
        canvas = letterbox(image, geo)
        scale, mean, swap_rb = self._blob_params
        # What cv2.dnn.blobFromImage computes ((x - mean) * scale, NCHW, optional R/B swap),
        # in one numpy pass: blobFromImage took up to 5 ms on some letterboxed canvases,
        # this takes < 1 ms and gives the same bits.
        src = canvas[..., ::-1] if swap_rb else canvas
        blob = np.empty((1, 3, *src.shape[:2]), np.float32)
        np.subtract(src.transpose(2, 0, 1), np.float32(mean), out=blob[0], dtype=np.float32)
        blob *= np.float32(scale)
        return blob, geo

    def __call__(self, image: npt.NDArray[np.uint8]) -> Detections:
        check_image(image)
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            return Detections.empty()
        blob, geo = self.preprocess(image)
        outs = run_session(self.spec, self._session, self._names, {self._input: blob})
        boxes, scores, kps = self._decode(outs, geo.in_w, geo.in_h)
        return finish(boxes, scores, kps, geo, w, h, self.limits)
