"""SCRFD (InsightFace): anchor-free "distance" heads at strides 8/16/32, 2 anchors per cell.

Every ``*_kps`` / ``*_bnkps`` export (0.5G, 2.5G, 10G = buffalo's ``det_10g``) has 9 outputs:
scores (rows x 1, sigmoid already applied), box distances (rows x 4: left, top, right,
bottom) and landmark offsets (rows x 10) for each stride, ``rows = (H/s) * (W/s) * 2``.
Output *names* differ between exports (``out0``..``out8``, ``score_8``, ``448``...) and so
does their order, so the outputs are told apart by shape alone: the last dimension says
which head, the row count says which stride. Decoding follows InsightFace's
``model_zoo/scrfd.py``: ``box = center -/+ distance * stride``,
``landmark = center + offset * stride``, centers at ``(col, row) * stride``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import cv2
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

_HEADS = {1: "scores", 4: "boxes", 10: "kps"}
_MAX_CACHED_SHAPES = 64


class DistanceHead:
    """The output layout and decode shared by SCRFD and InsightFace's ONNX RetinaFace.

    Built from the warm-up outputs (whose shapes are concrete even when the export declares
    symbolic ones) for the canonical input size; decodes one run's outputs into candidate
    boxes/scores/landmarks in network-input pixels. Anchor centers for the canonical size are
    computed here; other sizes (dynamic exports, non-square frames) are cached on first use.
    """

    def __init__(
        self,
        file: str,
        names: list[str],
        outs: list[npt.NDArray[np.float32]],
        in_w: int,
        in_h: int,
    ) -> None:
        shapes = [(n, list(o.shape)) for n, o in zip(names, outs, strict=True)]
        expected = "9 outputs (scores/boxes/kps × strides 8,16,32)"
        groups: dict[int, list[tuple[int, str]]] = {1: [], 4: [], 10: []}
        for name, arr in zip(names, outs, strict=True):
            batched_ok = arr.ndim == 2 or (arr.ndim == 3 and arr.shape[0] == 1)
            if not batched_ok or arr.shape[-1] not in groups:
                raise ModelMismatchError(f"{file}: expected {expected}, got {shapes}")
            groups[arr.shape[-1]].append((int(arr.shape[-2]), name))
        if any(len(g) != len(STRIDES) for g in groups.values()):
            raise ModelMismatchError(f"{file}: expected {expected}, got {shapes}")
        for g in groups.values():
            g.sort(reverse=True)  # most rows = finest stride
        self.anchors = 0
        order: list[str] = []
        for level, stride in enumerate(STRIDES):
            rows = {groups[c][level][0] for c in groups}
            cells = (in_w // stride) * (in_h // stride)
            n = rows.pop() if len(rows) == 1 else -1
            if n <= 0 or n % cells or (self.anchors and n // cells != self.anchors):
                raise ModelMismatchError(
                    f"{file}: outputs do not form a {in_w}x{in_h} pyramid at strides "
                    f"{STRIDES} (stride {stride} has {cells} cells): {shapes}"
                )
            self.anchors = n // cells
            order += [groups[c][level][1] for c in (1, 4, 10)]
        #: Output names to request, in (scores, boxes, kps) per stride order.
        self.names = order
        self._centers: dict[tuple[int, int], list[FloatArray]] = {
            (in_w, in_h): self._make_centers(in_w, in_h)
        }

    def _make_centers(self, in_w: int, in_h: int) -> list[FloatArray]:
        return [np.repeat(grid_centers(in_w, in_h, s) * s, self.anchors, axis=0) for s in STRIDES]

    def centers(self, in_w: int, in_h: int) -> list[FloatArray]:
        key = (in_w, in_h)
        found = self._centers.get(key)
        if found is None:
            found = self._make_centers(in_w, in_h)
            if len(self._centers) < _MAX_CACHED_SHAPES:
                self._centers[key] = found  # idempotent: same value whoever writes it
        return found

    def decode(
        self, outs: list[npt.NDArray[np.float32]], in_w: int, in_h: int, threshold: float
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Candidates above ``threshold``: boxes (N, 4), scores (N,), landmarks (N, 5, 2)."""
        boxes, scores, kps = [], [], []
        for level, (stride, centers) in enumerate(
            zip(STRIDES, self.centers(in_w, in_h), strict=True)
        ):
            score = outs[3 * level].reshape(-1)
            pos = np.flatnonzero(score >= threshold)
            if pos.size == 0:
                continue
            c = centers[pos]
            dist = outs[3 * level + 1].reshape(-1, 4)[pos] * stride
            boxes.append(np.concatenate([c - dist[:, :2], c + dist[:, 2:]], axis=1))
            kps.append(outs[3 * level + 2].reshape(-1, 5, 2)[pos] * stride + c[:, None, :])
            scores.append(score[pos])
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


class SCRFD:
    """SCRFD face detector on one ONNX Runtime session; ``__call__`` is thread-safe.

    Preprocessing (InsightFace's): letterbox into the model input (fixed exports) or to
    ``det_size`` on the longer side padded to a multiple of 32 (dynamic exports), RGB,
    ``(x - 127.5) / 128``, NCHW float32.
    """

    family = "scrfd"
    MEAN = 127.5
    STD = 128.0

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
        declared = session.get_outputs()
        if len(declared) != 9:
            shapes = [(o.name, list(o.shape)) for o in declared]
            raise ModelMismatchError(
                f"{self._file}: expected 9 outputs (scores/boxes/kps × strides 8,16,32), "
                f"got {len(declared)}: {shapes}"
            )
        names = [o.name for o in declared]
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
        self._head = DistanceHead(self._file, names, outs, in_w, in_h)
        log.info(
            "detector_ready",
            model=self.name,
            family=self.family,
            provider=provider,
            input=f"{in_w}x{in_h}" + ("" if fixed else " (dynamic)"),
            warmup_ms=round(warm_ms, 1),
        )

    def preprocess(self, image: npt.NDArray[np.uint8]) -> tuple[npt.NDArray[np.float32], Geometry]:
        """The network input blob for ``image`` and how it was fitted (for mapping back)."""
        h, w = image.shape[:2]
        geo = self._plan.geometry(w, h)
        canvas = letterbox(image, geo)
        blob = cv2.dnn.blobFromImage(
            canvas, 1.0 / self.STD, (geo.in_w, geo.in_h), (self.MEAN,) * 3, swapRB=True
        )
        return np.asarray(blob, np.float32), geo

    def __call__(self, image: npt.NDArray[np.uint8]) -> Detections:
        check_image(image)
        h, w = image.shape[:2]
        if h == 0 or w == 0:
            return Detections.empty()
        blob, geo = self.preprocess(image)
        outs = run_session(self.spec, self._session, self._head.names, {self._input: blob})
        boxes, scores, kps = self._head.decode(outs, geo.in_w, geo.in_h, self.limits.threshold)
        return finish(boxes, scores, kps, geo, w, h, self.limits)
