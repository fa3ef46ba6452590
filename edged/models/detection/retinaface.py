"""InsightFace RetinaFace, the legacy detector of the ``current`` phase.

Two kinds of file circulate as "InsightFace RetinaFace-R50" ONNX, and the class accepts
both, telling them apart by output shapes:

``distance`` layout: what InsightFace's own ``model_zoo/retinaface.py`` (and its model router,
which sends every >= 5-output detector there) loads: 9 outputs of rows x 1/4/10 with the
SCRFD-style anchor-free decode and ``(x - 127.5) / 128`` RGB input. That decode is
:class:`~edged.models.detection.scrfd.DistanceHead`, exercised on the real SCRFD files.

``anchor`` layout: ONNX conversions of the original MXNet ``retinaface_r50_v1``: 9 NCHW
outputs per stride 32/16/8: class probabilities (2A channels, background first), box deltas
(4A) and landmark deltas (10A), A = 2 anchors of 16 * (32, 16) / (8, 4) / (2, 1) pixels
centred at ``(col, row) * stride + 7.5``; raw RGB 0..255 input. The decode follows
InsightFace's MXNet-era ``model_zoo/face_detection.py`` (``bbox_pred``/``landmark_pred``,
the "+1" box convention, landmark_std 1.0).

UNTESTED AGAINST A REAL FILE: no RetinaFace-R50 ONNX was available while this was written.
The ``anchor`` decode is checked only against hand-computed values from a synthetic model
built to the layout above; ``__init__`` validates the outputs and refuses (with
ModelMismatchError naming the file) anything that fits neither layout. Verify on the real
file (``edged analyze --detector retinaface``) before relying on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import structlog

from edged.errors import ModelMismatchError
from edged.models.detection.base import FloatArray
from edged.models.detection.common import (
    STRIDES,
    Candidates,
    OnnxDetector,
    PerInputSize,
    candidates,
    grid_centers,
    output_names,
)
from edged.models.detection.scrfd import DistanceHead

if TYPE_CHECKING:
    import onnxruntime as ort

log = structlog.get_logger(__name__)

#: Anchor scales per stride of RetinaFace-R50 ("net3"): anchor side = 16 * scale.
ANCHOR_SCALES: dict[int, tuple[float, ...]] = {32: (32.0, 16.0), 16: (8.0, 4.0), 8: (2.0, 1.0)}
ANCHOR_BASE = 16.0


class AnchorHead:
    """The MXNet RetinaFace layout: NCHW outputs, anchor-relative box/landmark deltas."""

    def __init__(
        self,
        file: str,
        names: list[str],
        outs: list[npt.NDArray[np.float32]],
        in_w: int,
        in_h: int,
    ) -> None:
        shapes = [(n, list(o.shape)) for n, o in zip(names, outs, strict=True)]
        self.anchors = len(ANCHOR_SCALES[STRIDES[0]])
        a = self.anchors
        by_key: dict[tuple[int, int], str] = {}
        for name, arr in zip(names, outs, strict=True):
            if arr.ndim != 4 or arr.shape[0] != 1:
                raise ModelMismatchError(f"{file}: expected NCHW outputs, got {shapes}")
            stride = in_w // arr.shape[3] if arr.shape[3] else 0
            key = (int(arr.shape[1]), stride)
            if (
                key[0] not in (2 * a, 4 * a, 10 * a)
                or stride not in STRIDES
                or arr.shape[2] != in_h // stride
                or key in by_key
            ):
                raise ModelMismatchError(
                    f"{file}: expected per stride {STRIDES} a {2 * a}/{4 * a}/{10 * a}-channel "
                    f"cls/bbox/landmark map for a {in_w}x{in_h} input, got {shapes}"
                )
            by_key[key] = name
        #: Output names in (cls, bbox, landmark) per stride order.
        self.names = [by_key[(c * a, s)] for s in STRIDES for c in (2, 4, 10)]
        self.planes = PerInputSize(self._make_planes, in_w, in_h)

    def _make_planes(self, in_w: int, in_h: int) -> list[tuple[FloatArray, FloatArray]]:
        """Per stride: anchor centers (cells*A, 2) and anchor sides (cells*A,), order h, w, a."""
        planes = []
        for s in STRIDES:
            centers = grid_centers(in_w, in_h, s) * s + (ANCHOR_BASE - 1) / 2
            sides = ANCHOR_BASE * np.array(ANCHOR_SCALES[s], np.float32)
            planes.append(
                (
                    np.repeat(centers, self.anchors, axis=0),
                    np.tile(sides, centers.shape[0]).astype(np.float32),
                )
            )
        return planes

    def decode(
        self, outs: list[npt.NDArray[np.float32]], in_w: int, in_h: int, threshold: float
    ) -> Candidates:
        a = self.anchors
        boxes, scores, kps = [], [], []
        for level, (centers, sides) in enumerate(self.planes.get(in_w, in_h)):
            # (1, C, H, W) -> (H, W, C): rows in h, w, anchor order like the anchor planes.
            cls, reg, lmk = (outs[3 * level + i][0].transpose(1, 2, 0) for i in range(3))
            score = cls[:, :, a:].reshape(-1)
            pos = np.flatnonzero(score >= threshold)
            if pos.size == 0:
                continue
            c, side = centers[pos], sides[pos][:, None]
            d = reg.reshape(-1, 4)[pos]
            center = c + d[:, :2] * side
            half = (np.exp(d[:, 2:]) * side - 1.0) / 2.0
            boxes.append(np.concatenate([center - half, center + half], axis=1))
            kps.append(lmk.reshape(-1, 5, 2)[pos] * side[:, :, None] + c[:, None, :])
            scores.append(score[pos])
        return candidates(boxes, scores, kps)


class RetinaFace(OnnxDetector):
    """RetinaFace face detector (see the module docstring: the anchor layout is unverified)."""

    family = "retinaface"
    layout: Literal["anchor", "distance"]

    def _select_outputs(self, declared: Sequence[ort.NodeArg]) -> list[str]:
        return output_names(self._file, declared, 9, "cls/bbox/landmarks × strides 8,16,32")

    def _setup(
        self, names: list[str], outs: list[npt.NDArray[np.float32]], in_w: int, in_h: int
    ) -> list[str]:
        self._head: AnchorHead | DistanceHead
        if all(o.ndim == 4 for o in outs):
            self.layout = "anchor"
            self._head = AnchorHead(self._file, names, outs, in_w, in_h)
            self._blob_params = (1.0, 0.0, True)  # raw RGB 0..255
            log.warning(
                "detector_unverified",
                model=self.name,
                file=self._file,
                reason="RetinaFace anchor-layout decode was never checked against a real file",
            )
        else:
            self.layout = "distance"
            self._head = DistanceHead(self._file, names, outs, in_w, in_h)
            self._blob_params = (1.0 / 128.0, 127.5, True)
        return self._head.names

    def _ready_fields(self) -> dict[str, Any]:
        return {"layout": self.layout}

    def _decode(self, outs: list[npt.NDArray[np.float32]], in_w: int, in_h: int) -> Candidates:
        return self._head.decode(outs, in_w, in_h, self.limits.threshold)
