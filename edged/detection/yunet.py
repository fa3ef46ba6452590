"""YuNet (libfacedetection / OpenCV zoo): one anchor per cell at strides 8/16/32.

Both the dynamic (N x 3 x H x W) and the fixed 1 x 3 x 640 x 640 exports, and the OpenCV
zoo's ``face_detection_yunet_2023mar.onnx``, have 12 outputs named ``cls_<s>``,
``obj_<s>``, ``bbox_<s>``, ``kps_<s>``; they are taken by name, as OpenCV does. The decode
is OpenCV's ``FaceDetectorYN::postProcess`` (modules/objdetect/src/face_detect.cpp):

- score = sqrt(clip(cls, 0, 1) * clip(obj, 0, 1))
- box center = ((col, row) + bbox[0:2]) * stride, size = exp(bbox[2:4]) * stride
- landmark k = ((col, row) + kps[2k:2k+2]) * stride

Input is the BGR image as float32 0..255 with no normalisation (``blobFromImage`` with its
defaults), padded bottom/right with zeros. YuNet's score is a geometric mean of two
probabilities and runs higher on non-faces than SCRFD's; OpenCV's samples use 0.9, so a
threshold shared with SCRFD (0.5) yields more false positives here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import structlog

from edged.detection import Detections, FloatArray
from edged.detection.common import (
    STRIDES,
    Geometry,
    InputPlan,
    Limits,
    check_image,
    finish,
    fixed_input,
    grid_centers,
    letterbox,
    model_file,
    run_session,
)
from edged.errors import ModelMismatchError

if TYPE_CHECKING:
    import onnxruntime as ort

    from edged.catalog import ModelSpec

log = structlog.get_logger(__name__)

_HEADS: dict[str, int] = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}
_MAX_CACHED_SHAPES = 64


class YuNet:
    """YuNet face detector on one ONNX Runtime session; ``__call__`` is thread-safe."""

    family = "yunet"

    def __init__(
        self,
        spec: ModelSpec,
        session: ort.InferenceSession,
        provider: str,
        *,
        det_size: int = 640,
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
        self._plan = InputPlan(fixed, det_size)
        declared = {o.name: list(o.shape) for o in session.get_outputs()}
        #: Output names in (cls, obj, bbox, kps) per stride order.
        self._names = [f"{head}_{s}" for s in STRIDES for head in _HEADS]
        missing = [n for n in self._names if n not in declared]
        if missing:
            raise ModelMismatchError(
                f"{self._file}: expected 12 outputs cls/obj/bbox/kps_{{8,16,32}}, "
                f"missing {missing}; got {len(declared)}: {declared}"
            )
        in_w, in_h = self._plan.canonical
        started = time.perf_counter()
        outs = run_session(
            spec,
            session,
            self._names,
            {self._input: np.zeros((1, 3, in_h, in_w), np.float32)},
            mismatch=True,
        )
        warm_ms = (time.perf_counter() - started) * 1000
        self._check(outs, in_w, in_h)
        self._grids: dict[tuple[int, int], list[FloatArray]] = {
            (in_w, in_h): self._make_grids(in_w, in_h)
        }
        log.info(
            "detector_ready",
            model=self.name,
            family=self.family,
            provider=provider,
            input=f"{in_w}x{in_h}" + ("" if fixed else " (dynamic)"),
            warmup_ms=round(warm_ms, 1),
        )

    def _check(self, outs: list[npt.NDArray[np.float32]], in_w: int, in_h: int) -> None:
        """Every output must be (1, cells, width-of-its-head) for the warm-up input size."""
        shapes = {n: list(o.shape) for n, o in zip(self._names, outs, strict=True)}
        for name, arr in zip(self._names, outs, strict=True):
            head, stride = name.split("_")
            cells = (in_w // int(stride)) * (in_h // int(stride))
            want = (1, cells, _HEADS[head])
            if arr.shape != want and arr.shape != want[1:]:
                raise ModelMismatchError(
                    f"{self._file}: output {name} should be {list(want)} for a {in_w}x{in_h} "
                    f"input, got {list(arr.shape)}; all outputs: {shapes}"
                )

    @staticmethod
    def _make_grids(in_w: int, in_h: int) -> list[FloatArray]:
        return [grid_centers(in_w, in_h, s) for s in STRIDES]

    def _grid(self, in_w: int, in_h: int) -> list[FloatArray]:
        key = (in_w, in_h)
        found = self._grids.get(key)
        if found is None:
            found = self._make_grids(in_w, in_h)
            if len(self._grids) < _MAX_CACHED_SHAPES:
                self._grids[key] = found  # idempotent: same value whoever writes it
        return found

    def preprocess(self, image: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.float32], Geometry]:
        """The network input blob for ``image`` and how it was fitted (for mapping back)."""
        h, w = image.shape[:2]
        geo = self._plan.geometry(w, h)
        canvas = letterbox(image, geo)
        blob = canvas.transpose(2, 0, 1)[None].astype(np.float32)
        return blob, geo

    def __call__(self, image: npt.NDArray[np.uint8]) -> Detections:
        check_image(image)
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            return Detections.empty()
        blob, geo = self.preprocess(image)
        outs = run_session(self.spec, self._session, self._names, {self._input: blob})
        threshold = self.limits.threshold
        boxes, scores, kps = [], [], []
        for level, (stride, grid) in enumerate(
            zip(STRIDES, self._grid(geo.in_w, geo.in_h), strict=True)
        ):
            cls = np.clip(outs[4 * level].reshape(-1), 0.0, 1.0)
            obj = np.clip(outs[4 * level + 1].reshape(-1), 0.0, 1.0)
            score = np.sqrt(cls * obj)
            pos = np.flatnonzero(score >= threshold)
            if pos.size == 0:
                continue
            g = grid[pos]
            reg = outs[4 * level + 2].reshape(-1, 4)[pos]
            center = (g + reg[:, :2]) * stride
            half = np.exp(reg[:, 2:]) * (stride / 2.0)
            boxes.append(np.concatenate([center - half, center + half], axis=1))
            kps.append((outs[4 * level + 3].reshape(-1, 5, 2)[pos] + g[:, None, :]) * stride)
            scores.append(score[pos])
        if not scores:
            return Detections.empty()
        return finish(
            np.concatenate(boxes).astype(np.float32),
            np.concatenate(scores).astype(np.float32),
            np.concatenate(kps).astype(np.float32),
            geo,
            w,
            h,
            self.limits,
        )
